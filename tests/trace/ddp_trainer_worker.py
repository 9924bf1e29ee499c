"""One SGD step of TraceEmbedTrainer on 8 rows: under torchrun 2 x 4 rows, in-process 1 x 8 rows.

Usage: torchrun ... ddp_trainer_worker.py MODEL_PATH OUT_DIR MINI_BATCH_SIZE (0 = no GradCache) [images]
(``images``: the multimodal rows of ``trace_image_rows`` with a vision-language model at MODEL_PATH).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset

from trl_mars.embed.movielens_task import build_movielens_retrieval_task
from trl_mars.embed.tiny import TINY_TRACE_ARGS
from trl_mars.trainers.trace_config import TraceConfig
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer


def run_one_step(model_path: str, out_dir: Path, mini_batch_size: int, images: bool = False) -> dict:
    """Train one step; returns (and on rank 0 saves) the logged loss and every parameter's change."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if images:
        from trace_image_rows import image_rows

        dataset = Dataset.from_list(image_rows(8))
    else:
        task = build_movielens_retrieval_task(num_movies=40, seed=0)
        dataset = Dataset.from_list(task.train_rows(hard_negative=True)[:8])
    args = TraceConfig(
        **TINY_TRACE_ARGS,
        output_dir=str(out_dir / "run"),
        per_device_train_batch_size=8 // world,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        lambda_gen=0.0,  # L_gen is a per-rank token mean; L_ret is exactly the global-batch loss on every rank
        mini_batch_size=mini_batch_size or None,
        use_cpu=True,
        logging_steps=1,
    )
    trainer = TraceEmbedTrainer(model_path, args=args, train_dataset=dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    delta = {n: (p.detach() - before[n]) for n, p in model.named_parameters()}
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    result = {"world": trainer.accelerator.num_processes, "loss": loss, "delta": delta}
    if trainer.accelerator.is_main_process:
        torch.save(result, out_dir / "result.pt")
    if dist.is_initialized() and world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    run_one_step(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), images=sys.argv[4:] == ["images"])
