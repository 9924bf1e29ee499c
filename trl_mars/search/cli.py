"""``trl-mars search`` / ``python -m trl_mars.search``: MARS² tree search with one or more models on a benchmark.

``system`` mode grows one joint tree per problem with every model as an agent; ``agent`` mode grows one tree per
problem per model. All trees of a run advance in lockstep (one batched ``generate`` per model per step) and the
sandbox scores code while the next batch generates. Writes ``results.jsonl`` (a line per problem per tree),
``trees.json``, ``trees.html`` (the viewer) and ``summary.json`` to ``--output``, and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from trl_mars.eval.datasets import humaneval_path
from trl_mars.eval.loaders import PARSERS, CodeProblem, load_problems
from trl_mars.sandbox import Sandbox, SandboxConfig
from trl_mars.search.backends import SamplingConfig, TransformersBackend
from trl_mars.search.engine import SearchConfig, SearchProblem, TreeSearch
from trl_mars.search.metrics import agent_shares, mean_metrics, select_final, tree_metrics
from trl_mars.search.problems import from_code_problem
from trl_mars.search.reward_model import check_reward_model, resolve_reward_model
from trl_mars.search.tree import SearchTree
from trl_mars.search.verify import SandboxVerifier
from trl_mars.search.viewer import write_html

TABLE_COLUMNS = {"pass@1": "Pass@1", "pass@1(mcts)": "Pass@1(MCTS)", "pass@n": "Pass@N", "public_pass@n": "Public@N"}


def public_arg(value: str) -> float | int:
    """``--public``: a test count (``2``) or a fraction of each problem's tests (``0.5``)."""
    number = int(value) if value.isdigit() else float(value)
    if number <= 0 or (isinstance(number, float) and number > 1):
        raise argparse.ArgumentTypeError(f"--public takes a count >= 1 or a fraction in (0, 1], got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-mars search", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", action="append", required=True, help="path or hub id, optionally NAME=PATH; repeat for agents")
    add("--benchmark", default=str(humaneval_path()), help="HumanEval/MBPP/LCB-style file, hub id, or embedded")
    add("--format", choices=sorted(PARSERS), help="row format of --benchmark (default: detect per row)")
    add("--split", default="test", help="split of a hub dataset")
    add("--release-version", help="LiveCodeBench release (release_vN, vN, vA_vB) of a folder or hub id")
    add("--start-date", help="keep contests on or after this ISO date (LiveCodeBench)")
    add("--end-date", help="keep contests on or before this ISO date (LiveCodeBench)")
    add("--num-problems", type=int, default=20, help="size of the embedded task set")
    add("--limit", type=int, help="only the first N problems")
    add("--mode", choices=["system", "agent", "both"], default="system", help="joint tree, a tree per model, or both")
    add("--max-nodes", type=int, default=8, help="nodes per tree")
    add("--tplus", action="store_true", help="MARS²-T+: detailed feedback on refinements and depth-guided GEN")
    add("--stop-on-pass", action="store_true", help="stop a tree at its first node passing the public tests")
    add("--public", type=public_arg, default=0.5, help="tests visible to the search: count or fraction (rest grade)")
    add("--posterior", choices=["beta", "gaussian"], default="beta")
    add("--order", choices=["node_then_agent", "agent_then_node"], default="node_then_agent")
    add("--tie-break", choices=["latest", "earliest", "shallowest"], default="latest", help="final answer selection")
    add(
        "--reward-model",
        help="MARS²-T+ reward-model guidance: a sequence-classification model (id or path, num_labels=1) that picks "
        "the submitted node among those with the best public score",
    )
    add(
        "--chat-template-kwargs",
        type=json.loads,
        default={},
        help="JSON passed to every chat template, e.g. '{\"enable_thinking\": false}' (Qwen3 no-think, as the authors)",
    )
    add("--temperature", type=float, default=1.0)
    add("--top-p", type=float, default=1.0)
    add("--max-new-tokens", type=int, default=512)
    add("--max-batch-size", type=int, help="split each generation call into batches of at most this many prompts")
    add("--concurrency", type=int, default=SandboxConfig.concurrency, help="sandbox workers")
    add("--timeout", type=float, default=SandboxConfig.timeout_s, help="sandbox seconds per test")
    add("--seed", type=int, default=0)
    add("--output", required=True, help="directory for results.jsonl, trees.json, trees.html, summary.json")
    return parser


def parse_models(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its last path component) -> {name: path}, names made unique."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name:
            name, path = spec.rstrip("/").rsplit("/", 1)[-1], spec
        unique, k = name, 2
        while unique in models:
            unique, k = f"{name}-{k}", k + 1
        models[unique] = path
    return models


def load_backends(
    models: dict[str, str],
    sampling: SamplingConfig,
    max_batch_size: int | None = None,
    chat_template_kwargs: dict | None = None,
) -> dict:
    """One ``TransformersBackend`` per distinct path (agents naming the same path share it, so one batch)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_mars.testing import CHAT_TEMPLATE
    from trl_mars.utils.recipes import resolve_model_path

    cuda = torch.cuda.is_available()
    by_path: dict[str, TransformersBackend] = {}
    for path in dict.fromkeys(models.values()):
        local = resolve_model_path(path)
        tokenizer = AutoTokenizer.from_pretrained(local)
        if tokenizer.chat_template is None:
            print(f"[search] {path} has no chat template; using trl_mars.testing.CHAT_TEMPLATE")
            tokenizer.chat_template = CHAT_TEMPLATE
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(local, dtype="auto" if cuda else torch.float32)
        model = model.to("cuda" if cuda else "cpu").eval()
        by_path[path] = TransformersBackend(
            model, tokenizer, sampling, chat_template_kwargs, max_batch_size=max_batch_size
        )
    return {name: by_path[path] for name, path in models.items()}


def load_search_problems(args: argparse.Namespace) -> list[SearchProblem]:
    if args.benchmark == "embedded":
        from trl_mars.data.code_tasks import generate_tasks

        tasks = generate_tasks(args.num_problems, seed=args.seed)
        problems = [CodeProblem(t.task_id, t.question, tests=list(t.tests)) for t in tasks]
    else:
        problems = load_problems(
            args.benchmark, args.format, args.split, args.release_version, args.start_date, args.end_date
        )
    return [from_code_problem(p, args.public) for p in problems[: args.limit]]


def search_runs(args: argparse.Namespace, agents: dict) -> list[tuple[str, dict]]:
    """(label, agents) of every search to run: ``system`` (all agents) and/or ``agent:NAME`` (one each)."""
    runs = []
    if args.mode in ("system", "both"):
        runs.append(("system", agents))
    if args.mode in ("agent", "both"):
        runs += [(f"agent:{name}", {name: backend}) for name, backend in agents.items()]
    return runs


def format_table(summary: dict) -> str:
    header = f"{'run':<24} {'trees':>5} {'nodes':>6} " + " ".join(f"{c:>12}" for c in TABLE_COLUMNS.values())
    lines = [header, "-" * len(header)]
    for label, run in summary["runs"].items():
        cells = " ".join(f"{run['metrics'].get(k, 0.0):>12.4f}" for k in TABLE_COLUMNS)
        lines.append(f"{label:<24} {run['trees']:>5} {run['nodes']:>6} {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    problems = load_search_problems(args)
    if not problems:
        raise SystemExit(f"no problems loaded from {args.benchmark}")
    models = parse_models(args.model)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p)
    if not isinstance(args.chat_template_kwargs, dict):
        raise SystemExit(f"--chat-template-kwargs must be a JSON object, got {args.chat_template_kwargs!r}")
    if args.reward_model:
        check_reward_model(args.reward_model, "--reward-model")
    agents = load_backends(models, sampling, args.max_batch_size, args.chat_template_kwargs)
    reward_model = resolve_reward_model(args.reward_model)
    config = SearchConfig(
        max_nodes=args.max_nodes,
        dist=args.posterior,
        order=args.order,
        tplus=args.tplus,
        stop_on_pass=args.stop_on_pass,
    )
    summary: dict = {"benchmark": args.benchmark, "problems": len(problems), "models": models, "runs": {}}
    all_trees: list[SearchTree] = []
    with (
        Sandbox(concurrency=args.concurrency, timeout_s=args.timeout) as sandbox,
        open(out / "results.jsonl", "w", encoding="utf-8") as results,
    ):
        verifier = SandboxVerifier(sandbox)
        for label, run_agents in search_runs(args, agents):
            start = time.perf_counter()
            search = TreeSearch(run_agents, verifier, config, seed=args.seed)
            trees = search.run(problems, search.new_trees(problems, prefix=f"{label}/"))
            search.grade(problems, trees)
            per_tree = [tree_metrics(t, args.tie_break, reward_model, p.question) for p, t in zip(problems, trees)]
            for problem, tree, metrics in zip(problems, trees, per_tree, strict=True):
                final = select_final(tree, args.tie_break, reward_model, problem.question)
                record = {
                    "task_id": problem.problem_id,
                    "mode": label.split(":")[0],
                    "agent": label.split(":")[1] if ":" in label else None,
                    "tree_id": tree.tree_id,
                    **metrics,
                    "nodes": len(tree),
                    "selected_node": final.node_id,
                    "selected_agent": final.agent,
                    "selected_code": final.code,
                    "agent_shares": agent_shares([tree]),
                }
                results.write(json.dumps(record) + "\n")
            summary["runs"][label] = {
                "trees": len(trees),
                "nodes": sum(map(len, trees)),
                "metrics": mean_metrics(per_tree),
                "agent_shares": agent_shares(trees),
                "seconds": time.perf_counter() - start,
            }
            all_trees += trees
    (out / "trees.json").write_text(json.dumps([t.to_dict() for t in all_trees]), encoding="utf-8")
    write_html(all_trees, out / "trees.html", tie_break=args.tie_break)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(format_table(summary))
    print(f"wrote {out}/results.jsonl, trees.json, trees.html, summary.json")
    return 0


def view_main(argv: list[str] | None = None) -> int:
    """``trl-mars view trees.json [-o trees.html]``: render saved trees with the HTML viewer."""
    parser = argparse.ArgumentParser(prog="trl-mars view", description=view_main.__doc__)
    parser.add_argument("trees", help="trees.json of `trl-mars search`, or a checkpoint's trl_mars_state/rank0.json")
    parser.add_argument("-o", "--output", help="HTML file (default: next to the JSON, .html)")
    parser.add_argument("--title", default="MARS² search trees")
    parser.add_argument(
        "--tie-break",
        choices=["latest", "earliest", "shallowest"],
        default="latest",
        help="final answer selection, as in `trl-mars search`",
    )
    args = parser.parse_args(argv)
    data = json.loads(Path(args.trees).read_text(encoding="utf-8"))
    trees = [SearchTree.from_dict(t) for t in (data["trees"] if isinstance(data, dict) else data)]
    path = write_html(trees, args.output or Path(args.trees).with_suffix(".html"), args.title, args.tie_break)
    print(f"wrote {path} ({len(trees)} trees)")
    return 0
