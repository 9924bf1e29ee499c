"""CPU benchmark: the fused CPU path of MoDA vs the naive O(T^2) reference, forward + backward.

Each variant runs in a fresh process, so its peak resident memory above the inputs (the RSS high-water mark
minus the RSS before the first call) is its own. Times are the best of `--repeats` after a warm-up call (the
minimum is the figure least disturbed by other processes on a shared machine). Prints a table, then one JSON
line.

    python benchmarks/moda_cpu.py [--seq-len 2048] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

SHAPE = {"batch": 1, "q_heads": 8, "kv_heads": 2, "head_dim": 64, "n_depth": 16}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _run(variant: str, seq_len: int, repeats: int, threads: int) -> dict[str, float]:
    """Best-of-repeats forward + backward time and peak extra memory of one variant (runs in a worker process)."""
    import torch

    torch.set_num_threads(threads)

    from trl_mars.ops.moda import moda_attention, naive_moda
    from trl_mars.ops.moda.utils import random_inputs

    B, HQ, H, D, L = (SHAPE[k] for k in ("batch", "q_heads", "kv_heads", "head_dim", "n_depth"))
    inputs = [x.requires_grad_() for x in random_inputs(B, seq_len, HQ, H, D, L, torch.Generator().manual_seed(0))]
    do = torch.randn(B, seq_len, HQ, D)
    fn = naive_moda if variant == "naive" else lambda *x: moda_attention(*x, backend="cpu")

    def step():
        o, _ = fn(*inputs, L)
        o.backward(do)

    before = _rss_mb()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * min(times), "peak_mb": max(peak, 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = {}
    for variant in ("naive", "cpu"):
        with ctx.Pool(1) as pool:
            results[variant] = pool.apply(_run, (variant, args.seq_len, args.repeats, args.threads))
    speedup = results["naive"]["ms"] / results["cpu"]["ms"]
    shape = ", ".join(f"{k}={v}" for k, v in SHAPE.items())
    print(f"MoDA forward + backward, fp32, {args.threads} thread(s), T={args.seq_len}, {shape}")
    print(f"{'variant':<8} {'time (ms)':>10} {'peak extra memory (MiB)':>24}")
    for variant, r in results.items():
        print(f"{variant:<8} {r['ms']:>10.1f} {r['peak_mb']:>24.1f}")
    print(f"speedup: {speedup:.2f}x")
    summary = {"seq_len": args.seq_len, "threads": args.threads, **SHAPE, "speedup": round(speedup, 2)}
    for variant, r in results.items():
        summary |= {f"{variant}_ms": round(r["ms"], 1), f"{variant}_peak_mb": round(r["peak_mb"], 1)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
