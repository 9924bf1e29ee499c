"""GPU benchmark: MoDA forward + backward vs the same GQA attention without depth, in the paper's terms.

Efficiency = time_attention / time_MoDA (paper, A100 bf16 vs a Triton FA2: 0.973 at T = 64K). Two baselines:
our kernel with n_depth = 0 (the exact same code without the depth loop) and torch SDPA's flash backend.
Default shape is the paper's Table 2: B = 1, 64 query / 8 KV heads (G = 8), d = 64, 64 depth slots, bf16.
Each variant is called once first (Triton autotuning per sequence-length bucket happens there), then timed as
`--samples` independent `triton.testing.do_bench` medians; the table shows the median of those samples and the
efficiencies use them, the JSON also keeps every sample. Without a CUDA device it prints a notice and
{"skipped": "no CUDA device"}.

    python benchmarks/moda_gpu.py [--max-seq-len 65536] [--n-depth 64] [--q-heads 64] [--kv-heads 8] [--samples 5]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def _fwd_bwd(fn, inputs, do):
    """Closure running fn(*inputs) forward and backward (grads reset so they do not accumulate)."""

    def run():
        for x in inputs:
            x.grad = None
        fn(*inputs).backward(do)

    return run


def _check(args) -> float:
    """RMS(diff) / RMS(ref) of the MoDA output against the naive reference at a small shape."""
    from trl_mars.ops.moda import moda_attention, naive_moda

    q, k, v, dk, dv = _inputs(args, 333, torch.bfloat16, requires_grad=False)
    o, _ = moda_attention(q, k, v, dk, dv)
    ref, _ = naive_moda(*(x.float() for x in (q, k, v, dk, dv)), args.n_depth)
    return ((o.float() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def _inputs(args, seq_len: int, dtype: torch.dtype, requires_grad: bool = True) -> list[torch.Tensor]:
    from trl_mars.ops.moda.utils import random_inputs

    shape = (args.batch, seq_len, args.q_heads, args.kv_heads, args.head_dim, args.n_depth)
    return [x.requires_grad_(requires_grad) for x in random_inputs(*shape, device="cuda", dtype=dtype)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seq-len", type=int, default=65536)
    parser.add_argument("--min-seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--q-heads", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--n-depth", type=int, default=64)
    parser.add_argument("--rep-ms", type=int, default=100, help="triton do_bench measuring time per sample")
    parser.add_argument("--samples", type=int, default=5, help="do_bench samples per variant and shape")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("moda_gpu: no CUDA device, nothing to benchmark (run it on a GPU machine)")
        print(json.dumps({"skipped": "no CUDA device"}))
        return

    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from trl_mars.ops.moda import moda_attention

    def moda(q, k, v, dk, dv):
        return moda_attention(q, k, v, dk, dv)[0]

    def moda_no_depth(q, k, v, dk, dv):
        return moda_attention(q, k, v, n_depth=0)[0]

    def sdpa_flash(q, k, v, dk, dv):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            heads_first = (x.transpose(1, 2) for x in (q, k, v))
            return F.scaled_dot_product_attention(*heads_first, is_causal=True, enable_gqa=True).transpose(1, 2)

    device = torch.cuda.get_device_name()
    print(f"{device}, bf16, fwd+bwd, B={args.batch}, HQ={args.q_heads}, H={args.kv_heads}, d={args.head_dim}, "
          f"n_depth={args.n_depth}; MoDA vs naive at T=333: RMS ratio {_check(args):.2e}")  # fmt: skip
    print(
        f"{'T':>7} {'MoDA ms':>9} {'ours L=0 ms':>12} {'SDPA flash ms':>14} {'eff. vs L=0':>12} {'eff. vs SDPA':>13}"
    )
    rows = []
    seq_len = args.min_seq_len
    while seq_len <= args.max_seq_len:
        inputs = _inputs(args, seq_len, torch.bfloat16)
        do = torch.randn_like(inputs[0])
        samples = {}
        for name, fn in (("moda", moda), ("no_depth", moda_no_depth), ("sdpa_flash", sdpa_flash)):
            run = _fwd_bwd(fn, inputs, do)
            run()  # autotuning (first call per T bucket) outside the timed samples
            torch.cuda.synchronize()
            samples[name] = [triton.testing.do_bench(run, warmup=25, rep=args.rep_ms) for _ in range(args.samples)]
        ms = {name: statistics.median(times) for name, times in samples.items()}
        row = {"T": seq_len, **{f"{k}_ms": round(v, 3) for k, v in ms.items()}}
        row["samples_ms"] = {k: [round(t, 3) for t in v] for k, v in samples.items()}
        row["eff_vs_no_depth"] = round(ms["no_depth"] / ms["moda"], 4)
        row["eff_vs_sdpa_flash"] = round(ms["sdpa_flash"] / ms["moda"], 4)
        rows.append(row)
        print(f"{seq_len:>7} {ms['moda']:>9.3f} {ms['no_depth']:>12.3f} {ms['sdpa_flash']:>14.3f} "
              f"{row['eff_vs_no_depth']:>12.4f} {row['eff_vs_sdpa_flash']:>13.4f}")  # fmt: skip
        del inputs, do
        torch.cuda.empty_cache()
        seq_len *= 2
    print(json.dumps({"device": device, **{k: v for k, v in vars(args).items() if k != "rep_ms"}, "rows": rows}))


if __name__ == "__main__":
    main()
