"""CPU decoding throughput of a MoDA model vs the same model without depth attention (its Llama source).

A random Llama-shaped decoder (`--layers` layers, hidden 512, 8 query / 2 KV heads of dim 64) is converted to
MoDA (`depth_kv="attn_ffn"`, every depth slot read: near_identity=False, the decode cost does not depend on
the gate). Both generate greedily from the same [batch, prompt] random prompts with a KV cache; MoDA's decode
steps attend over the cache with SDPA and merge the step's own depth slots through the log-sum-exp. Decode
time is generate(new tokens) minus generate(1 token) (the prefill), best of `--repeats`. Prints a table, then
one JSON line with the ratio MoDA / Llama of decode tokens per second.

    python benchmarks/moda_decode.py [--batch 4] [--prompt 128] [--new-tokens 64] [--layers 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trl_mars.models.moda import convert_to_moda


def generate_seconds(model, prompts: torch.Tensor, new_tokens: int) -> float:
    kwargs = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, **kwargs)
    assert out.shape[1] == prompts.shape[1] + new_tokens
    return time.perf_counter() - start


def decode_tokens_per_s(model, prompts: torch.Tensor, new_tokens: int, repeats: int) -> float:
    generate_seconds(model, prompts, 2)  # warm-up
    decode = min(
        generate_seconds(model, prompts, new_tokens) - generate_seconds(model, prompts, 1) for _ in range(repeats)
    )
    return prompts.shape[0] * (new_tokens - 1) / decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=args.layers,
        num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
        attn_implementation="sdpa",
    )  # fmt: skip
    llama = LlamaForCausalLM(config).eval()
    moda = convert_to_moda(llama, near_identity=False, moda_backend="cpu").eval()
    prompts = torch.randint(
        1, config.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1)
    )
    rows = {
        name: decode_tokens_per_s(m, prompts, args.new_tokens, args.repeats)
        for name, m in [("llama", llama), ("moda", moda)]
    }
    depth_slots = moda.config.num_depth_slots
    print(f"batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new tokens, {args.layers} layers, "
          f"{depth_slots} depth slots in the last layer, {args.threads} threads")  # fmt: skip
    print(f"{'model':<8} {'decode tokens/s':>16}")
    for name, tps in rows.items():
        print(f"{name:<8} {tps:>16.1f}")
    ratio = rows["moda"] / rows["llama"]
    print(f"ratio MoDA / Llama: {ratio:.3f}")
    settings = {k: getattr(args, k) for k in ("batch", "prompt", "new_tokens", "layers", "threads")}
    print(
        json.dumps(
            {**settings, "llama_tokens_per_s": rows["llama"], "moda_tokens_per_s": rows["moda"], "ratio": ratio}
        )
    )


if __name__ == "__main__":
    main()
