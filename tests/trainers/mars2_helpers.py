"""Shared by the MARS² trainer tests and their torchrun workers: a tiny CPU config and forced advantages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer


def tiny_mars2_config(output_dir: str | Path, agents: list[dict], **overrides) -> MultiAgentTreeConfig:
    """One tree of 2 nodes per step, 16-token completions, 1-node batches, CPU fp32, no saving, no reporting."""
    fields = dict(
        output_dir=str(output_dir),
        agents=agents,
        max_nodes=2,
        trees_per_step=1,
        max_steps=1,
        max_completion_length=16,
        per_device_train_batch_size=1,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        sandbox_workers=1,
    )
    return MultiAgentTreeConfig(**{**fields, **overrides})


def force_advantages(trainer: MultiAgentTreeTrainer, advantage: Callable[[int], float]) -> None:
    """Give the i-th credited node of every round the advantage ``advantage(i)``.

    A random tiny model never passes a test, so every real advantage is 0 and no weight would move."""
    credit = trainer.credit

    def forced(trees):
        samples = credit(trees)
        for i, sample in enumerate(samples):
            sample["advantage"] = advantage(i)
        return samples

    trainer.credit = forced
