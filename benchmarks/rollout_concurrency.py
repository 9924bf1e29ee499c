"""Nodes/s of the MARS² search: today's lockstep, lockstep with concurrent agents, and async search, by simulation.

    python benchmarks/rollout_concurrency.py [--agents 2] [--trees 32] [--nodes 8] [--sigma 0.8] [--repeats 2]
    python benchmarks/rollout_concurrency.py --real      # the tiny models on this CPU instead of simulated servers

What runs. The real search engine (``TreeSearch``: selection, prompts, back-propagation, the async scheduler) drives
one simulated serving backend per agent, as a ``trl vllm-serve`` per agent would be. A server is a continuous-
batching model: it serves up to ``--capacity`` requests at once (the rest wait in FIFO order) and a request takes
``prefill + L x per_token`` seconds, where L, its answer length in tokens, is drawn per request from a lognormal
distribution (median ``--median``, log-space sigma ``--sigma``) truncated at ``--max-tokens``. A lockstep batch is
one call that returns when its longest answer is done (as ``VLLMClient.chat`` does). Scoring is a simulated
sandbox of ``--verify-s`` seconds per node on a pool of ``--sandbox-workers``; a node passes with probability
``--pass-first`` (first answers) or ``--pass-refine`` (refinements), drawn by the server with its answer, so the
tree shape follows the search's own choices. Time is simulated with real sleeps scaled by ``--time-scale`` (the
engine's own Python overhead runs at full speed, so it is slightly overweighted) and every figure is reported in
simulated seconds.

Parameters and where they come from (defaults): per-token decode time 20 ms and prefill 0.2 s are an 8B model on one
H100-class GPU under vLLM at moderate batch sizes (an assumption, not a measurement of ours); the median of 4096
tokens is the answer length issue 20 takes for the papers' scale (4096-token answers; MARTI generates up to 32768
tokens, the truncation used here); sigma 0.8 (p90/median = e^(1.28 x 0.8) = 2.8) is an assumed spread, not a fit
to measured lengths: no length data of the papers' runs is available to us, so ``--sigma`` is a flag and
BENCHMARKS.md reports 0.4, 0.8 and 1.2. Capacity 64 is below vLLM's default ``max_num_seqs`` (256).

The modes, on the same problems with equal node budgets (``--trees`` x ``--nodes`` per run):
- ``lockstep (today)``: each step calls the agents' servers one after the other (backends without
  ``concurrent_requests``, the engine's order before issue 20);
- ``lockstep + concurrent agents``: the same steps, both servers called at once (item 1);
- ``async, max_inflight=1``: each tree advances as soon as its last node is scored (item 2, sequential AB-MCTS
  per tree); ``async, max_inflight=2``: two requests in flight per tree, pending nodes as virtual losses.
Tree shape (mean node depth, mean tree depth, share of refinements, share passing, agent shares) is printed per mode:
the modes grow the same kind of trees, only faster. ``--real`` runs the tiny Qwen2 and Llama models of
``trl_mars.testing`` on this CPU with ``TransformersBackend`` (the same simulated sandbox): the concurrent and async
modes wrap each model so that it serves one call at a time, so async loses batching there. The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from trl_mars.search import SearchConfig, SearchProblem, SearchTree, TreeSearch
from trl_mars.search.backends import Generation
from trl_mars.search.verify import Verdict

PASS, FAIL = "# passes", "# fails"


def answer(passes: bool) -> str:
    return f"```python\ndef solve(x):\n    return x  {PASS if passes else FAIL}\n```"


def is_refinement(prompt: list[dict]) -> bool:
    return "Your previous code:" in prompt[-1]["content"]


@dataclass
class ServerModel:
    """Continuous-batching server: lognormal answer lengths, ``capacity`` requests served at once."""

    median: float = 4096
    sigma: float = 0.8
    max_tokens: int = 32768
    per_token_s: float = 0.020
    prefill_s: float = 0.2
    capacity: int = 64
    pass_first: float = 0.25
    pass_refine: float = 0.35

    def length(self, rng: np.random.Generator) -> int:
        return int(min(self.max_tokens, max(1, round(rng.lognormal(np.log(self.median), self.sigma)))))


class SimulatedServer:
    """One agent's server. ``generate`` (one call = one batch) returns when every request in it is served;
    ``concurrent_requests`` says whether the engine may call it from several threads at once."""

    def __init__(self, model: ServerModel, scale: float, seed: int, concurrent: bool) -> None:
        self.model, self.scale = model, scale
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.slots = ThreadPoolExecutor(model.capacity, thread_name_prefix="server")  # the batch slots
        self.concurrent_requests = concurrent

    def _serve(self, tokens: int) -> None:
        time.sleep(self.scale * (self.model.prefill_s + tokens * self.model.per_token_s))

    def generate(self, prompts, on_text=None) -> list[Generation]:
        with self.lock:  # draws in call order: one length and one verdict per request
            draws = [
                (self.model.length(self.rng), self.rng.random())
                for _ in prompts
            ]  # fmt: skip
        for future in [self.slots.submit(self._serve, n) for n, _ in draws]:
            future.result()
        out = []
        for prompt, (_, u) in zip(prompts, draws, strict=True):
            p = self.model.pass_refine if is_refinement(prompt) else self.model.pass_first
            out.append(Generation([], [], answer(u < p)))
            if on_text is not None:
                on_text(len(out) - 1, out[-1].text)
        return out

    def close(self) -> None:
        self.slots.shutdown()


class SimulatedSandbox:
    """Scores a node in ``seconds`` (scaled) on ``workers`` threads: 1 iff its code says it passes."""

    def __init__(self, seconds: float, workers: int, scale: float) -> None:
        self.delay = seconds * scale
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="sandbox")

    def _check(self, code: str) -> Verdict:
        time.sleep(self.delay)
        ok = PASS in code
        return Verdict(float(ok), float(ok), {"summary": "All tests passed." if ok else "Failed 1 of 2 tests."})

    def submit(self, code, tests, entry_point=None, setup="") -> Future[Verdict]:
        return self.pool.submit(self._check, code)


class OneCallAtATime:
    """``--real``: a ``TransformersBackend`` that the engine may call from several threads; its calls are served one
    after the other (one model in this process), so concurrency only overlaps different agents' models."""

    concurrent_requests = True

    def __init__(self, backend) -> None:
        self.backend, self.lock = backend, threading.Lock()

    def generate(self, prompts, on_text=None):
        with self.lock:
            return self.backend.generate(prompts, on_text)


def shape(trees: list[SearchTree]) -> dict:
    """Tree-shape statistics: mean node depth, mean tree depth, refinement share, passing share, agent shares."""
    nodes = [n for t in trees for n in t.solutions]
    agents = sorted({n.agent for n in nodes})
    return {
        "mean_node_depth": float(np.mean([n.depth for n in nodes])),
        "mean_tree_depth": float(np.mean([max(n.depth for n in t.solutions) for t in trees])),
        "refinement_share": float(np.mean([n.is_refinement for n in nodes])),
        "pass_share": float(np.mean([n.score for n in nodes])),
        "agent_shares": {a: float(np.mean([n.agent == a for n in nodes])) for a in agents},
    }


MODES = {  # label: (SearchConfig fields, whether the backends declare concurrent_requests)
    "lockstep (today)": ({"mode": "lockstep"}, False),
    "lockstep + concurrent agents": ({"mode": "lockstep"}, True),
    "async, max_inflight=1": ({"mode": "async", "max_inflight": 1}, True),
    "async, max_inflight=2": ({"mode": "async", "max_inflight": 2}, True),
}
KEYS = {
    "lockstep (today)": "lockstep",
    "lockstep + concurrent agents": "lockstep_concurrent",
    "async, max_inflight=1": "async_1",
    "async, max_inflight=2": "async_2",
}


def simulated_agents(args, model: ServerModel, seed: int, concurrent: bool) -> dict:
    return {
        f"agent{i}": SimulatedServer(model, args.time_scale, seed * 100 + i, concurrent) for i in range(args.agents)
    }


def real_agents(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_mars.search import SamplingConfig, TransformersBackend
    from trl_mars.testing import tiny_model_path

    torch.set_num_threads(args.threads)
    sampling = SamplingConfig(max_new_tokens=args.real_tokens, temperature=1.0)
    backends = {}
    for arch in ("qwen2", "llama")[: args.agents]:
        path = tiny_model_path(arch, hidden_size=256, num_hidden_layers=4, intermediate_size=512)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        backends[arch] = TransformersBackend(model, AutoTokenizer.from_pretrained(path), sampling)
        backends[arch].generate([[{"role": "user", "content": "hi"}]])  # warm-up
    return backends


class PassCoin:
    """``--real``: the tiny models write no code, so every completion gets a planted program that passes with the
    simulated server's probabilities (same RNG discipline: one draw per request, in call order)."""

    def __init__(self, inner, model: ServerModel, seed: int, concurrent: bool) -> None:
        self.inner = OneCallAtATime(inner) if concurrent else inner
        self.concurrent_requests = concurrent
        self.model, self.rng, self.lock = model, np.random.default_rng(seed), threading.Lock()

    def generate(self, prompts, on_text=None):
        out = self.inner.generate(prompts)
        with self.lock:
            draws = [self.rng.random() for _ in prompts]
        for i, (prompt, gen, u) in enumerate(zip(prompts, out, draws, strict=True)):
            p = self.model.pass_refine if is_refinement(prompt) else self.model.pass_first
            gen.text += "\n" + answer(u < p)
            if on_text is not None:
                on_text(i, gen.text)
        return out


def run_mode(args, label: str, model: ServerModel, problems, seed: int, real: dict | None) -> tuple[float, list]:
    """(seconds, trees) of one search of ``problems`` in mode ``label`` (simulated seconds unless --real)."""
    fields, concurrent = MODES[label]
    config = SearchConfig(max_nodes=args.nodes, tplus=args.tplus, **fields)
    if real is None:
        agents = simulated_agents(args, model, seed, concurrent)
    else:
        agents = {name: PassCoin(b, model, seed * 100 + i, concurrent) for i, (name, b) in enumerate(real.items())}
    scale = 1.0 if real is not None else args.time_scale
    verifier = SimulatedSandbox(args.verify_s, args.sandbox_workers, scale)
    search = TreeSearch(agents, verifier, config, seed=seed)
    start = time.perf_counter()
    trees = search.run(problems)
    seconds = (time.perf_counter() - start) / scale
    verifier.pool.shutdown()
    for agent in agents.values():
        if isinstance(agent, SimulatedServer):
            agent.close()
    return seconds, trees


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--agents", type=int, default=2, help="agents, one server each")
    add("--trees", type=int, default=32, help="problems searched at once")
    add("--nodes", type=int, default=8, help="nodes per tree (the budget, equal in every mode)")
    add("--median", type=float, default=4096, help="median answer length (tokens)")
    add("--sigma", type=float, default=0.8, help="log-space sigma of the answer lengths")
    add("--max-tokens", type=int, default=32768, help="answers are cut at this many tokens")
    add("--per-token-ms", type=float, default=20.0, help="decode time per token of one request")
    add("--prefill-s", type=float, default=0.2, help="prefill time per request")
    add("--capacity", type=int, default=64, help="requests a server serves at once")
    add("--verify-s", type=float, help="sandbox seconds per node (default 0.5; --real: 0.05)")
    add("--sandbox-workers", type=int, default=32, help="sandbox checks at once")
    add("--pass-first", type=float, default=0.25, help="probability that a first answer passes")
    add("--pass-refine", type=float, default=0.35, help="probability that a refinement passes")
    add("--tplus", action="store_true", help="MARS²-T+ depth schedule in the search")
    add("--time-scale", type=float, default=0.0015, help="real seconds per simulated second")
    add("--repeats", type=int, default=2, help="searches per mode (seeds 0..repeats-1); figures are totals")
    add("--real", action="store_true", help="tiny models on this CPU instead of simulated servers")
    add("--real-tokens", type=int, default=24, help="--real: max new tokens per node")
    add("--threads", type=int, default=1, help="--real: torch threads")
    args = parser.parse_args(argv)
    if args.real and args.trees == 32 and args.nodes == 8:
        args.trees, args.nodes = 8, 4  # a CPU-sized default
    if args.verify_s is None:
        args.verify_s = 0.05 if args.real else 0.5
    model = ServerModel(
        args.median, args.sigma, args.max_tokens, args.per_token_ms / 1000, args.prefill_s, args.capacity,
        args.pass_first, args.pass_refine,
    )  # fmt: skip
    problems = [SearchProblem(f"p{i}", f"Problem {i}: return x.", public_tests=["assert solve(1) == 1"])
                for i in range(args.trees)]  # fmt: skip
    real = real_agents(args) if args.real else None
    results = {}
    for label in MODES:
        seconds, trees = 0.0, []
        for seed in range(args.repeats):
            s, t = run_mode(args, label, model, problems, seed, real)
            seconds, trees = seconds + s, trees + t
        nodes = sum(map(len, trees))
        results[label] = {"nodes": nodes, "seconds": seconds, "nodes_per_s": nodes / seconds, **shape(trees)}
    base = results["lockstep (today)"]["nodes_per_s"]
    unit = "s (CPU)" if args.real else "sim s"
    header = (f"{'mode':<30} {'nodes':>6} {unit:>9} {'nodes/s':>9} {'vs today':>8} {'node depth':>10} "
              f"{'tree depth':>10} {'refine':>7} {'pass':>6}  agent shares")  # fmt: skip
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        shares = " ".join(f"{a}={v:.2f}" for a, v in r["agent_shares"].items())
        print(f"{label:<30} {r['nodes']:>6} {r['seconds']:>9.1f} {r['nodes_per_s']:>9.4f} {r['nodes_per_s'] / base:>7.2f}x "
              f"{r['mean_node_depth']:>10.2f} {r['mean_tree_depth']:>10.2f} {r['refinement_share']:>7.2f} "
              f"{r['pass_share']:>6.2f}  {shares}")  # fmt: skip
    rate = {KEYS[label]: r["nodes_per_s"] for label, r in results.items()}
    summary = {
        "speedup_async_vs_lockstep": rate["async_1"] / rate["lockstep"],
        "speedup_concurrent_agents": rate["lockstep_concurrent"] / rate["lockstep"],
        "speedup_async_vs_concurrent_lockstep": rate["async_1"] / rate["lockstep_concurrent"],
        "speedup_async_inflight2_vs_lockstep": rate["async_2"] / rate["lockstep"],
        "nodes_per_s": rate,
        "refinement_share": {KEYS[label]: r["refinement_share"] for label, r in results.items()},
        "mode": "real-cpu" if args.real else "simulated",
        "params": {k: v for k, v in vars(args).items() if k not in ("real",)},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
