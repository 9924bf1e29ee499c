"""Refill vs lockstep generation in the MARS² search with the transformers backend (issue 20, item 8).

Both arms run the real search engine (``TreeSearch``: Thompson selection, sandbox scoring overlapping generation)
on the same problems, model, seed and sampling (temperature, top-p, ``max_new_tokens``, EOS), with the backend's
``batching`` the only difference:

- ``lockstep``: one ``model.generate`` per call (or per ``--slots`` prompts); a finished row rides until the
  longest row of its batch ends;
- ``refill``: ``trl_mars.search.refill.RefillDecoder``: a finished row leaves the batch at once and pending prompts
  take the free slots (``--slots``, default all prompts of a call).

Reported per arm: nodes/s (search wall time), generated tokens/s (over the time spent in ``generate``), and the
forwards' mean batch rows. A greedy check first decodes a few prompts both ways and reports whether the answers
are identical. Default: a tiny random model on the embedded task (well under a minute);
``--smollm2 --limit N``: SmolLM2-135M-Instruct (GGUF, dequantised) on the first N HumanEval problems, 4 nodes,
MARS²-T+, up to 256 new tokens, temperature 0.8. Prints a table and, as the last line, one JSON object.

    python benchmarks/rollout_refill.py
    python benchmarks/rollout_refill.py --smollm2 --limit 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from trl_mars.sandbox import Sandbox
from trl_mars.search.backends import SamplingConfig, TransformersBackend
from trl_mars.search.engine import SearchConfig, TreeSearch
from trl_mars.search.problems import from_code_problem
from trl_mars.search.verify import SandboxVerifier

SMOLLM2 = "trl-mars/smollm2-135m-instruct"


def load(args: argparse.Namespace):
    """(model, tokenizer, problems) of the run."""
    from trl_mars.search.cli import load_backends

    if args.smollm2:
        from trl_mars.eval.datasets import humaneval_source
        from trl_mars.eval.loaders import load_problems

        backend = load_backends({"m": SMOLLM2}, SamplingConfig())["m"]
        problems = [from_code_problem(p, 0.5) for p in load_problems(humaneval_source())[: args.limit]]
    else:
        from trl_mars.data.code_tasks import generate_tasks
        from trl_mars.eval.loaders import CodeProblem
        from trl_mars.testing import tiny_model_path

        path = tiny_model_path("qwen2", cache_dir=os.path.join(tempfile.gettempdir(), "trl_mars_bench_tiny"))
        backend = load_backends({"m": path}, SamplingConfig())["m"]
        tasks = generate_tasks(args.limit, seed=args.seed)
        problems = [from_code_problem(CodeProblem(t.task_id, t.question, tests=list(t.tests)), 0.5) for t in tasks]
    return backend.model, backend.tokenizer, problems


class Counting:
    """A backend that counts generated tokens and the seconds spent generating."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend, self.tokens, self.seconds, self.calls = backend, 0, 0.0, 0

    def generate(self, prompts, on_text=None):
        start = time.perf_counter()
        out = self.backend.generate(prompts, on_text)
        self.seconds += time.perf_counter() - start
        self.tokens += sum(len(g.completion_ids) for g in out)
        self.calls += 1
        return out


def rows_per_forward(model) -> tuple[list[int], object]:
    """Record the batch rows of every forward of ``model`` (prefills and decode steps)."""
    rows: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True
    )
    return rows, handle


def greedy_check(model, tok, problems, args) -> bool:
    """Whether refill's greedy answers equal lockstep ``generate``'s on the first prompts."""
    prompts = [[{"role": "user", "content": p.question}] for p in problems[: args.greedy_prompts]]
    sampling = SamplingConfig(args.greedy_tokens, temperature=0.0)
    outs = [
        TransformersBackend(model, tok, sampling, max_batch_size=args.slots, batching=mode).generate(prompts)
        for mode in ("lockstep", "refill")
    ]
    return all(a.completion_ids == b.completion_ids for a, b in zip(*outs))


def run_arm(model, tok, problems, mode: str, args) -> dict:
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p)
    backend = Counting(TransformersBackend(model, tok, sampling, max_batch_size=args.slots, batching=mode))
    torch.manual_seed(args.seed)
    rows, handle = rows_per_forward(model)
    with Sandbox(concurrency=1) as sandbox:
        search = TreeSearch(
            {"m": backend}, SandboxVerifier(sandbox), SearchConfig(args.nodes, tplus=True), seed=args.seed
        )
        start = time.perf_counter()
        trees = search.run(problems)
        wall = time.perf_counter() - start
    handle.remove()
    nodes = sum(len(t) for t in trees)
    return {
        "nodes": nodes, "tokens": backend.tokens, "wall_s": wall, "generate_s": backend.seconds,
        "nodes_per_s": nodes / wall, "tokens_per_s": backend.tokens / backend.seconds, "forwards": len(rows),
        "mean_rows": sum(rows) / max(len(rows), 1), "mean_score": sum(n.score for t in trees for n in t.solutions) / nodes,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--smollm2", action="store_true", help=f"{SMOLLM2} on HumanEval (default: a tiny model, embedded task)")
    add("--limit", type=int, help="problems (default: 8 tiny, 12 SmolLM2)")
    add("--nodes", type=int, default=4, help="nodes per tree")
    add("--max-new-tokens", type=int, help="default: 48 tiny, 256 SmolLM2")
    add("--temperature", type=float, default=0.8)
    add("--top-p", type=float, default=1.0)
    add("--slots", type=int, help="rows per batch, both arms (default: every prompt of a call)")
    add("--arms", default="lockstep,refill")
    add("--greedy-prompts", type=int, default=4)
    add("--greedy-tokens", type=int, default=48)
    add("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.limit = args.limit or (12 if args.smollm2 else 8)
    args.max_new_tokens = args.max_new_tokens or (256 if args.smollm2 else 48)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    model, tok, problems = load(args)
    greedy_equal = greedy_check(model, tok, problems, args)
    arms = {mode: run_arm(model, tok, problems, mode, args) for mode in args.arms.split(",")}
    print(f"python benchmarks/rollout_refill.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"{'SmolLM2-135M-Instruct, HumanEval' if args.smollm2 else 'tiny qwen2, embedded task'}: {len(problems)} "
          f"problems x {args.nodes} nodes (T+), max_new_tokens {args.max_new_tokens}, temperature {args.temperature}, "
          f"{torch.get_num_threads()} threads; greedy answers identical: {greedy_equal}")  # fmt: skip
    header = f"{'arm':<10} {'nodes':>6} {'tokens':>7} {'wall s':>8} {'nodes/s':>8} {'tokens/s':>9} {'rows/fwd':>9}"
    print(header + "\n" + "-" * len(header))
    for mode, r in arms.items():
        print(f"{mode:<10} {r['nodes']:>6} {r['tokens']:>7} {r['wall_s']:>8.1f} {r['nodes_per_s']:>8.3f} "
              f"{r['tokens_per_s']:>9.1f} {r['mean_rows']:>9.1f}")  # fmt: skip
    summary: dict = {"model": SMOLLM2 if args.smollm2 else "tiny-qwen2", "problems": len(problems), "nodes": args.nodes,
                     "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
                     "greedy_equal": greedy_equal, "arms": arms}  # fmt: skip
    if {"lockstep", "refill"} <= set(arms):
        summary["speedup_nodes_per_s"] = arms["refill"]["nodes_per_s"] / arms["lockstep"]["nodes_per_s"]
        summary["speedup_tokens_per_s"] = arms["refill"]["tokens_per_s"] / arms["lockstep"]["tokens_per_s"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
