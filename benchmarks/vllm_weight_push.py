"""GPU check: FSDP2-sharded weights pushed to a real ``trl vllm-serve`` in buckets (``trl_mars.search.weight_sync``).

A second process serves ``--model`` (``trl vllm-serve --model M --dtype float32``, started by
``benchmarks/gpu_checks.sh``). This one shards the same checkpoint with FSDP2 (``fully_shard`` per decoder layer,
NCCL), takes a few AdamW steps so its weights differ from the served checkpoint, then pushes them with
``VLLMServerBackend.push_weights`` (``--bucket_mb`` MiB per ``update_named_params`` request). The check: the server's
greedy completions, scored by the local trained model, have the log-probs the server reports (max |Δ| < 1e-3 after
the push; far apart before it). Prints a table, then one JSON object as the last line; exits 1 if the check fails.

    torchrun --nproc_per_node 1 benchmarks/vllm_weight_push.py --model PATH --base_url http://127.0.0.1:8011
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.search.backends import VLLMServerBackend
from trl_mars.search.weight_sync import buckets, pushed_weights


def server_vs_local(client, model, prompts: list[list[int]], max_tokens: int) -> float:
    """Max |server log-prob - local log-prob| over the server's greedy completion tokens."""
    out = client.generate(prompts=prompts, temperature=0.0, max_tokens=max_tokens, logprobs=0)
    worst = 0.0
    for prompt, completion, server_lp in zip(prompts, out["completion_ids"], out["logprobs"], strict=True):
        ids = torch.tensor([prompt + list(completion)], device="cuda")
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        local = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion, device="cuda")[:, None])[:, 0]
        server = torch.tensor([t[0] for t in server_lp], device="cuda")
        worst = max(worst, float((local - server).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--base_url", default="http://127.0.0.1:8011")
    parser.add_argument("--group_port", type=int, default=51216)
    parser.add_argument("--bucket_mb", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max_tokens", type=int, default=16)
    args = parser.parse_args()

    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda", torch.cuda.current_device())
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    for layer in [m for m in model.modules() if type(m).__name__ in model._no_split_modules]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        ids = torch.randint(0, len(tok), (4, 32), generator=gen).to(device)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    backend = VLLMServerBackend.connect(args.base_url, tok, group_port=args.group_port, timeout=240)
    if rank == 0:
        backend.client.init_communicator(device=device)
    prompts = [tok(t, add_special_tokens=False).input_ids for t in ("def add(a, b):", "Write a haiku", "1, 2, 3,")]
    before = server_vs_local(backend.client, model, prompts, args.max_tokens) if rank == 0 else 0.0
    bucket_bytes = int(args.bucket_mb * 2**20)
    weights = pushed_weights(model)
    torch.cuda.synchronize()
    start = time.perf_counter()
    requests = backend.push_weights(model, stream=rank == 0, bucket_bytes=bucket_bytes, device=device)
    torch.cuda.synchronize()
    push_s = time.perf_counter() - start
    if rank != 0:
        dist.destroy_process_group()
        return
    after = server_vs_local(backend.client, model, prompts, args.max_tokens)
    expected = len(buckets([w.nbytes for w in weights], bucket_bytes))
    ok = after < 1e-3 and before > 1e-2 and requests == expected
    result = {
        "model": args.model,
        "tensors": len(weights),
        "megabytes": round(sum(w.nbytes for w in weights) / 2**20, 2),
        "bucket_mb": args.bucket_mb,
        "requests": requests,
        "expected_requests": expected,
        "push_s": round(push_s, 3),
        "max_abs_logprob_diff_before_push": before,
        "max_abs_logprob_diff_after_push": after,
        "ok": ok,
    }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    dist.destroy_process_group()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
