"""Generated tokens/s of the MARS² tree search versus plain batched ``model.generate`` of the same sequences.

    python benchmarks/tree_rollout.py [--trees 16] [--nodes 3] [--tokens 12] [--agents 2] [--repeats 2]

What is compared. ``--trees`` N problems (the embedded task) are searched with ``--nodes`` B nodes each, so the
search makes B lockstep steps; in each step every tree adds one node and every distinct model makes ONE batched
``generate`` call over the trees whose selected agent it is (with ``--agents 1``: one N-sequence call per step).
The tree side's clock covers everything ``TreeSearch.run`` does: selection, prompt building, chat templating and
tokenisation, generation with per-token sampling log-probs recorded, code extraction, sandbox scoring and tree
updates. The baseline replays the very same calls with plain ``model.generate``: for every (step, model)
call of the search it generates from the same prompt token ids (same batch, same left padding) with the same
sampling settings and no logits processor of ours; its clock covers only those ``generate`` calls. Both sides
generate exactly ``--tokens`` tokens per sequence (EOS suppressed by ``SamplingConfig.min_new_tokens``), so the
token counts are equal and the ratio of the two rates is the search's overhead.

Sandbox. A tiny random model never writes a fenced code block, so every completion gets one of the task's
programs appended to its text (right or subtly wrong, at random): every node is really executed against the
tests, and refinement prompts carry real feedback (and grow, as they do in a real search). The engine submits
each model's batch as soon as it is generated and only waits once per step, after the last model's call, so
with several models the sandbox scores one model's batch while the next one generates. ``sandbox wait`` is the
time the search was blocked waiting on verdicts; ``sandbox latency`` the summed submit-to-verdict time of all
checks (the work that was hidden, where it exceeds the wait). On a CPU-only machine the sandbox's processes and
``generate`` share the same cores, so the search's ``generate`` calls run slower than the idle replay even though
no wall time is spent waiting; a third measurement, ``plain generate + checks``, replays each step's calls with the
step's checks submitted right after each call and awaited at the end of the step, exactly as the engine schedules
them, which isolates the search's own overhead (selection, prompts, templating, log-prob recording) from that
contention; ``--no-code`` removes sandbox work altogether. On a GPU, generation does not compete with the
sandbox for cores.

Fairness. One warm-up call of each model first. The search is driven step by step (``TreeSearch.run``'s own
loop) and each step is immediately followed by its replays, so both sides see the same machine load (on a shared
machine the load changes by 2x within seconds); tokens/s are total tokens over total time per side, summed over
``--repeats`` searches. Torch uses ``--threads`` threads (default 1: on a small shared CPU this is both faster for
tiny matrices and leaves a core to the sandbox). The models are cached tiny Qwen2/Llama configs, larger than the
test ones (``--hidden``/``--layers``). The last line printed is one JSON object: ratio, both rates, sandbox wait.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import Future

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.data.code_tasks import CodeTask, generate_tasks
from trl_mars.sandbox import Sandbox
from trl_mars.search import (
    SamplingConfig,
    SandboxVerifier,
    SearchConfig,
    SearchProblem,
    TransformersBackend,
    TreeSearch,
)
from trl_mars.testing import tiny_model_path


class PlantedCode:
    """Wraps a backend: appends a task program (the reference, or a wrong variant) to every completion's text."""

    def __init__(self, backend: TransformersBackend, tasks: list[CodeTask], seed: int, plant: bool = True) -> None:
        self.backend, self.tasks, self.rng, self.plant = backend, tasks, random.Random(seed), plant
        self.generate_s = 0.0

    def program(self, prompt) -> str:
        if not self.plant:
            return ""
        task = next(t for t in self.tasks if t.question in prompt[-1]["content"])
        code = task.canonical_solution
        if self.rng.random() < 0.5:
            code = code.replace("return ", "return 1 + ", 1)  # wrong: fails asserts or raises TypeError
        return f"\n```python\n{code}```"

    def generate(self, prompts, on_text=None):
        start = time.perf_counter()
        planted = [self.program(p) for p in prompts]
        stream = None if on_text is None else (lambda i, text: on_text(i, text + planted[i]))
        out = self.backend.generate(prompts, on_text=stream)
        self.generate_s += time.perf_counter() - start
        for gen, extra in zip(out, planted, strict=True):
            gen.text += extra
        return out


class TimedVerifier:
    """A ``SandboxVerifier`` that accounts for the time the search blocks on verdicts and each check's latency."""

    def __init__(self, inner: SandboxVerifier) -> None:
        self.inner = inner
        self.wait_s = self.latency_s = 0.0
        self.checks = 0

    def submit(self, code, tests, entry_point=None, setup=""):
        start = time.perf_counter()
        outer = _TimedFuture(self)

        def done(f: Future) -> None:
            self.latency_s += time.perf_counter() - start
            outer.set_result(f.result())

        self.checks += 1
        self.inner.submit(code, tests, entry_point, setup).add_done_callback(done)
        return outer


class _TimedFuture(Future):
    def __init__(self, owner: TimedVerifier) -> None:
        super().__init__()
        self.owner = owner

    def result(self, timeout=None):
        start = time.perf_counter()
        try:
            return super().result(timeout)
        finally:
            self.owner.wait_s += time.perf_counter() - start


@torch.no_grad()
def plain_generate(backend: TransformersBackend, prompt_ids: list[list[int]], tokens: int) -> int:
    """One plain batched ``generate`` of ``prompt_ids`` (left-padded as the backend does); returns new tokens."""
    tok = backend.tokenizer
    batch = tok.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt", padding_side="left")
    s = backend.sampling
    out = backend.model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=True,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=None,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", type=int, default=16, help="problems searched at once (sequences per step)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes per tree (lockstep steps)")
    parser.add_argument("--tokens", type=int, default=12, help="generated tokens per node, forced on both sides")
    parser.add_argument("--agents", type=int, choices=[1, 2], default=2, help="1: Qwen2; 2: Qwen2 + Llama")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--concurrency", type=int, default=2, help="sandbox workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-code", action="store_true", help="plant no code: no sandbox work at all (ablation)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tasks = generate_tasks(args.trees, seed=args.seed)
    problems = [SearchProblem(t.task_id, t.question, t.tests[:2], t.tests[2:] or None) for t in tasks]
    sampling = SamplingConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, temperature=1.0)
    size = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "intermediate_size": 2 * args.hidden}
    backends = {}
    for arch in ("qwen2", "llama")[: args.agents]:
        path = tiny_model_path(arch, **size)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        backends[arch] = TransformersBackend(model, AutoTokenizer.from_pretrained(path), sampling)
    for backend in backends.values():  # warm-up
        plain_generate(backend, [backend.encode(first) for first in [[{"role": "user", "content": "hi"}]]], 4)

    tree_s = plain_s = scored_s = 0.0
    tree_tokens = plain_tokens = calls = 0
    config = SearchConfig(max_nodes=args.nodes, tplus=True)
    with Sandbox(concurrency=args.concurrency, timeout_s=10.0) as sandbox:
        verifier = TimedVerifier(SandboxVerifier(sandbox))
        sandbox.run("x = 1\n", ["assert x == 1"])  # start the workers outside the clocks
        agents = {name: PlantedCode(b, tasks, args.seed, not args.no_code) for name, b in backends.items()}
        for rep in range(args.repeats):
            search = TreeSearch(agents, verifier, config, seed=args.seed + rep)
            trees = search.new_trees(problems)
            # TreeSearch.run's loop, one step at a time, each step followed by its replays
            while active := [i for i, t in enumerate(trees) if not search.done(t)]:
                start = time.perf_counter()
                search.step(problems, trees, active)
                tree_s += time.perf_counter() - start
                step_calls: dict[str, list] = {}  # this step's generate calls, in the engine's order
                for problem, tree in zip(problems, trees, strict=True):
                    for node in tree.solutions:
                        if node.step == search.steps - 1:
                            step_calls.setdefault(node.agent, []).append((node.prompt_ids, node.code, problem))
                            tree_tokens += len(node.completion_ids)
                for scored in (False, True):
                    start, pending = time.perf_counter(), []
                    for agent, nodes in step_calls.items():
                        count = plain_generate(backends[agent], [ids for ids, _, _ in nodes], args.tokens)
                        plain_tokens += 0 if scored else count
                        if scored:  # the step's checks, submitted right after each call as the engine does
                            pending += [sandbox.submit(c, p.public_tests) for _, c, p in nodes if c is not None]
                    for future in pending:
                        future.result()
                    elapsed = time.perf_counter() - start
                    scored_s, plain_s = (scored_s + elapsed, plain_s) if scored else (scored_s, plain_s + elapsed)
                calls += len(step_calls)
    if tree_tokens != plain_tokens:
        raise RuntimeError(f"unequal work: tree search generated {tree_tokens} tokens, plain {plain_tokens}")

    tree_rate, plain_rate, scored_rate = tree_tokens / tree_s, plain_tokens / plain_s, plain_tokens / scored_s
    generate_s = sum(a.generate_s for a in agents.values())
    other_s = tree_s - generate_s - verifier.wait_s
    rows = [
        ("setup", f"{args.trees} trees x {args.nodes} nodes x {args.tokens} tokens, {args.agents} model(s), "
                  f"{args.repeats} searches, {calls} generate calls per side, {args.threads} torch thread(s)"),
        ("tokens per side", f"{tree_tokens}"),
        ("plain generate", f"{plain_s:8.2f} s  {plain_rate:9.1f} tok/s"),
        ("plain generate + checks", f"{scored_s:8.2f} s  {scored_rate:9.1f} tok/s  (same checks, same schedule)"),
        ("tree search", f"{tree_s:8.2f} s  {tree_rate:9.1f} tok/s"),
        ("  in backend.generate", f"{generate_s:8.2f} s  (templating, tokenising, generate with log-probs)"),
        ("  waiting on sandbox", f"{verifier.wait_s:8.2f} s  ({verifier.checks} checks, "
                                 f"{verifier.latency_s:.2f} s summed latency)"),
        ("  selection/prompts/tree", f"{other_s:8.2f} s"),
        ("ratio tree / plain", f"{tree_rate / plain_rate:8.3f}  (target >= 0.9)"),
        ("ratio tree / plain+checks", f"{tree_rate / scored_rate:8.3f}  (the search's own overhead)"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    summary = {
        "ratio": round(tree_rate / plain_rate, 4),
        "tree_tokens_per_s": round(tree_rate, 1),
        "plain_tokens_per_s": round(plain_rate, 1),
        "sandbox_wait_s": round(verifier.wait_s, 3),
        "ratio_vs_plain_with_checks": round(tree_rate / scored_rate, 4),
        "sandbox_latency_s": round(verifier.latency_s, 3),
        "tokens": tree_tokens,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
