"""Deterministic ReRec fixtures: a synthetic catalogue and a scripted ``rollout_func`` (no sampling).

The completion of a row depends only on its global row index and the global step, so one process and two
processes produce the same batch. Also runnable as a worker (``python rerec_scripted.py MODEL OUT``, or under
``torchrun``): it trains one step and writes each process's advantages to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys

from datasets import Dataset

from trl_mars.rec import ItemAttributeGraph

TITLES = [f"Film {name} ({1990 + i})" for i, name in enumerate("Alpha Bravo Delta Echo Golf Hotel Kilo Lima".split())]
GENRES = ["Comedy", "Drama"]


def synthetic_graph() -> ItemAttributeGraph:
    return ItemAttributeGraph.from_edges(
        [(t, f"genre:{GENRES[i % 2]}") for i, t in enumerate(TITLES)]
        + [(t, f"tag:t{i % 3}") for i, t in enumerate(TITLES)]
    )


def synthetic_dataset(n: int = 8) -> Dataset:
    rows = []
    for q in range(n):
        candidates = [TITLES[(q + j) % len(TITLES)] for j in range(3)]
        lines = "\n".join(f"- {c}" for c in candidates)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Query {q}: pick one.\nCandidates:\n{lines}"}],
                "ground_truth": [candidates[q % 3]],
                "candidates": candidates,
            }
        )
    return Dataset.from_list(rows)


def scripted_text(prompt: list[dict], row: int) -> str:
    """Four behaviours by row: right answer, wrong answer with mentions, no box, two titles."""
    candidates = [line[2:] for line in prompt[-1]["content"].splitlines() if line.startswith("- ")]
    query = int(prompt[-1]["content"].split(":")[0].split()[-1])
    right, wrong = candidates[query % 3], candidates[(query + 1) % 3]
    kind = 0 if query % 4 == 0 else (row * 7 + query) % 4  # queries 0 and 4 are always answered right
    if kind == 0:
        return f"{right} fits the query.\n\\boxed{{{right}}}"
    if kind == 1:
        return f"{wrong} looks good to me.\nMaybe {right}, but no.\nSo {wrong}.\n\\boxed{{{wrong}}}"
    if kind == 2:
        return "I cannot decide."
    return f"{right} first.\n{wrong} second.\n\\boxed{{{right}; {wrong}}}"


def scripted_rollout(prompts: list, trainer) -> dict:
    """``rollout_func``: tokenised prompts and the scripted completions (+ eos) of this process's rows."""
    tok = trainer.processing_class
    offset = trainer.accelerator.process_index * len(prompts) + trainer.state.global_step
    rendered = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    prompt_ids = [tok(text, add_special_tokens=False)["input_ids"] for text in rendered]
    texts = [scripted_text(p, offset + i) for i, p in enumerate(prompts)]
    completion_ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def record_batches(trainer) -> list[dict]:
    """Wrap ``_generate_and_score_completions`` to keep each batch's advantages and completion ids."""
    seen = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs):
        out = original(inputs)
        mask = out["completion_mask"].bool()
        seen.append(
            {
                "advantages": [a[m].tolist() for a, m in zip(out["advantages"], mask)],
                "completion_ids": [c[m].tolist() for c, m in zip(out["completion_ids"], mask)],
            }
        )
        return out

    trainer._generate_and_score_completions = wrapped
    return seen


def scripted_trainer(model_path: str, args):
    """A ReasoningRecTrainer on the synthetic catalogue with scripted rollouts, and the list its batches go to."""
    from trl_mars.trainers.rerec_trainer import ReasoningRecTrainer

    trainer = ReasoningRecTrainer(
        model_path,
        args=args,
        train_dataset=synthetic_dataset(),
        item_graph=synthetic_graph(),
        rollout_func=scripted_rollout,
    )
    return trainer, record_batches(trainer)


def scripted_config(output_dir: str, **overrides):
    """CPU ReRecConfig for the scripted runs: G=4, no PAS, no saving, seed 0; ``overrides`` win."""
    from trl_mars.trainers.rerec_config import ReRecConfig

    base = dict(use_cpu=True, bf16=False, report_to="none", num_generations=4, max_completion_length=64)
    base.update(pas_weight=0.0, save_strategy="no", logging_steps=1, seed=0)
    return ReRecConfig(output_dir, **{**base, **overrides})


def worker(model_path: str, out_dir: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = scripted_config(os.path.join(out_dir, "run"), per_device_train_batch_size=12 // world, max_steps=1)
    trainer, seen = scripted_trainer(model_path, args)
    trainer.train()
    with open(os.path.join(out_dir, f"rank{trainer.accelerator.process_index}.json"), "w") as f:
        json.dump(seen, f)
    import torch.distributed as dist

    if dist.is_initialized():  # a clean teardown: a gloo abort at exit made 2-process runs flaky
        dist.barrier()
        dist.destroy_process_group()
    # Leave without the interpreter's finalisation: under load a library thread still joinable when C++
    # static destructors ran aborted rank 1 after its results were written ("terminate called without an
    # active exception", once in seven CI runs). Everything this worker owes is on disk by now.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
