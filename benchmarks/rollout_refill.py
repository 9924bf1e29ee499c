"""Refill vs lockstep generation in the MARS² search with the transformers backend (issue 20, item 8).

Both arms run the real search engine (``TreeSearch``: Thompson selection, sandbox scoring overlapping generation)
on the same problems, model, seed and sampling (temperature, top-p, ``max_new_tokens``, EOS), with the backend's
``batching`` the only difference:

- ``lockstep``: one ``model.generate`` per call (or per ``--slots`` prompts); a finished row rides until the
  longest row of its batch ends;
- ``refill``: ``trl_mars.search.refill.RefillDecoder``: a finished row leaves the batch at once and pending prompts
  take the free slots (``--slots``, default all prompts of a call).

Reported per arm: nodes/s (search wall time), generated tokens/s (over the time spent in ``generate``), and the
forwards' mean batch rows; with ``--chunk`` the arms alternate chunk by chunk. A greedy check first decodes a few
prompts with lockstep, refill and transformers' continuous batching (``generate_batch``), timing each and reporting
whether the answers are identical. Default: a tiny random model on the embedded task (well under a minute);
``--smollm2 --limit N``: SmolLM2-135M-Instruct (GGUF, dequantised) on the first N HumanEval problems, 4 nodes,
MARS²-T+, up to 256 new tokens, temperature 0.8. Prints a table and, as the last line, one JSON object.

    python benchmarks/rollout_refill.py
    python benchmarks/rollout_refill.py --smollm2 --limit 12
"""

from __future__ import annotations

import argparse
import collections
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


def greedy_check(model, tok, problems, args) -> dict:
    """Greedy answers to the first prompts with lockstep ``generate``, refill and transformers' own continuous
    batching (``generate_batch``, paged attention, a small paged cache): seconds of each, and whether refill's and
    ``generate_batch``'s answers equal lockstep's. (``generate_batch`` is timed only: it drops custom logits
    processors and returns the model's log-probs, not the sampling distribution's, so the search cannot use it.)"""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    prompts = [[{"role": "user", "content": p.question}] for p in problems[: args.greedy_prompts]]
    sampling = SamplingConfig(args.greedy_tokens, temperature=0.0)
    answers, seconds = {}, {}
    for mode in ("lockstep", "refill"):
        backend = TransformersBackend(model, tok, sampling, max_batch_size=args.slots, batching=mode)
        start = time.perf_counter()
        answers[mode] = [g.completion_ids for g in backend.generate(prompts)]
        seconds[mode] = time.perf_counter() - start
    ids = [backend.encode(p) for p in prompts]
    page = 32
    blocks = sum(-(-(len(i) + args.greedy_tokens) // page) for i in ids) + len(ids)
    config = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=512, use_cuda_graph=False)
    generation = GenerationConfig(max_new_tokens=args.greedy_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)  # fmt: skip
    start = time.perf_counter()
    out = model.generate_batch(ids, generation_config=generation, continuous_batching_config=config, warmup=False)
    seconds["generate_batch"] = time.perf_counter() - start
    answers["generate_batch"] = [backend._truncate(list(out[f"req_{i}"].generated_tokens)) for i in range(len(ids))]
    return {
        "prompts": len(prompts), "max_new_tokens": args.greedy_tokens, "seconds": seconds,
        "refill_equal": answers["refill"] == answers["lockstep"],
        "generate_batch_equal": answers["generate_batch"] == answers["lockstep"],
    }  # fmt: skip


def run_arm(model, tok, problems, mode: str, args) -> dict:
    """One arm on ``problems``: nodes, generated tokens, wall and generate seconds, forward rows."""
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
    return {"nodes": sum(len(t) for t in trees), "tokens": backend.tokens, "wall_s": wall, "generate_s": backend.seconds,
            "forwards": len(rows), "rows": sum(rows), "score": sum(n.score for t in trees for n in t.solutions)}  # fmt: skip


def run_arms(model, tok, problems, modes: list[str], args) -> dict:
    """Every arm on every chunk of ``--chunk`` problems, the arms' order alternating from chunk to chunk (so load
    changes on a shared machine hit both alike); per arm, the totals and rates."""
    totals = {m: collections.Counter() for m in modes}
    for c, first in enumerate(range(0, len(problems), args.chunk)):
        chunk = problems[first : first + args.chunk]
        for mode in modes if c % 2 == 0 else modes[::-1]:
            totals[mode].update(run_arm(model, tok, chunk, mode, args))
            print(f"[{time.strftime('%H:%M:%S')}] chunk {c} {mode}: {dict(totals[mode])}", file=sys.stderr, flush=True)
    return {
        m: {**t, "nodes_per_s": t["nodes"] / t["wall_s"], "tokens_per_s": t["tokens"] / t["generate_s"],
            "mean_rows": t["rows"] / max(t["forwards"], 1), "mean_score": t["score"] / t["nodes"]}
        for m, t in totals.items()
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
    add("--chunk", type=int, help="problems searched together; arms alternate per chunk (default: all at once)")
    add("--greedy-prompts", type=int, default=4)
    add("--greedy-tokens", type=int, default=48)
    add("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.limit = args.limit or (12 if args.smollm2 else 8)
    args.max_new_tokens = args.max_new_tokens or (256 if args.smollm2 else 48)
    args.chunk = args.chunk or args.limit
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    model, tok, problems = load(args)
    greedy = greedy_check(model, tok, problems, args)
    arms = run_arms(model, tok, problems, args.arms.split(","), args)
    print(f"python benchmarks/rollout_refill.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"{'SmolLM2-135M-Instruct, HumanEval' if args.smollm2 else 'tiny qwen2, embedded task'}: {len(problems)} "
          f"problems x {args.nodes} nodes (T+), max_new_tokens {args.max_new_tokens}, temperature {args.temperature}, "
          f"{torch.get_num_threads()} threads, chunks of {args.chunk} problems")  # fmt: skip
    g = greedy["seconds"]
    print(f"greedy, {greedy['prompts']} prompts x {greedy['max_new_tokens']} tokens: lockstep {g['lockstep']:.1f} s, "
          f"refill {g['refill']:.1f} s (identical: {greedy['refill_equal']}), transformers generate_batch "
          f"{g['generate_batch']:.1f} s (identical: {greedy['generate_batch_equal']})")  # fmt: skip
    header = f"{'arm':<10} {'nodes':>6} {'tokens':>7} {'wall s':>8} {'nodes/s':>8} {'tokens/s':>9} {'rows/fwd':>9}"
    print(header + "\n" + "-" * len(header))
    for mode, r in arms.items():
        print(f"{mode:<10} {r['nodes']:>6} {r['tokens']:>7} {r['wall_s']:>8.1f} {r['nodes_per_s']:>8.3f} "
              f"{r['tokens_per_s']:>9.1f} {r['mean_rows']:>9.1f}")  # fmt: skip
    summary: dict = {"model": SMOLLM2 if args.smollm2 else "tiny-qwen2", "problems": len(problems), "nodes": args.nodes,
                     "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
                     "greedy": greedy, "arms": arms}  # fmt: skip
    if {"lockstep", "refill"} <= set(arms):
        summary["speedup_nodes_per_s"] = arms["refill"]["nodes_per_s"] / arms["lockstep"]["nodes_per_s"]
        summary["speedup_tokens_per_s"] = arms["refill"]["tokens_per_s"] / arms["lockstep"]["tokens_per_s"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
