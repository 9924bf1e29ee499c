"""Two GradCache steps of TraceEmbedTrainer under torchrun with gradient checkpointing and L_gen on.

Usage: torchrun --nproc_per_node 2 ddp_checkpointing_worker.py MODEL_PATH OUT_DIR [images]. Each rank writes
``OUT_DIR/rank<r>.pt`` with its logged losses and its parameters after training (DDP keeps ranks identical).
``images``: the multimodal rows of ``trace_image_rows`` with a vision-language model at MODEL_PATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset

from trl_mars.embed.movielens_task import build_movielens_retrieval_task
from trl_mars.embed.tiny import TINY_TRACE_ARGS
from trl_mars.trainers.trace_config import TraceConfig
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer


def main(model_path: str, out_dir: Path, images: bool = False) -> None:
    args = TraceConfig(
        **{**TINY_TRACE_ARGS, "gradient_checkpointing": True},
        output_dir=str(out_dir / "run"),
        per_device_train_batch_size=4,
        max_steps=2,  # the untied-lm_head failure was raised at the start of step 2
        mini_batch_size=2,
        use_cpu=True,
        logging_steps=1,
    )
    if images:
        from trace_image_rows import image_rows

        dataset = Dataset.from_list(image_rows(16))
    else:
        task = build_movielens_retrieval_task(num_movies=40, seed=0)
        dataset = Dataset.from_list(task.train_rows(hard_negative=True)[:24])
    trainer = TraceEmbedTrainer(model_path, args=args, train_dataset=dataset)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save({"losses": losses, "params": params}, out_dir / f"rank{trainer.accelerator.process_index}.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), images=sys.argv[3:] == ["images"])
