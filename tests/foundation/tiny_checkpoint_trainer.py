"""A tiny ``MethodStateMixin`` Trainer (a linear regression) for checkpoint kill / truncation / rollback tests.

As a script: ``python tiny_checkpoint_trainer.py OUTPUT_DIR MAX_STEPS SAVE_TOTAL_LIMIT KILL_AT_STEP [RESUME_FROM]``
trains (from checkpoint ``RESUME_FROM`` if given) and SIGKILLs itself while saving checkpoint ``KILL_AT_STEP``, after
the Trainer wrote its files and before the checkpoint is marked complete (the window in which the Trainer's own
rotation used to delete the last complete one, and in which a re-saved folder kept its old marker).
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from transformers import Trainer, TrainingArguments

from trl_mars.utils import checkpoint
from trl_mars.utils.checkpoint import MethodStateMixin


class Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": ((self.linear(x).squeeze(-1) - y) ** 2).mean()}


class TinyTrainer(MethodStateMixin, Trainer):
    """Method state: the number of batches seen, restored on resume."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_seen = 0

    def training_step(self, *args, **kwargs):
        self.batches_seen += 1
        return super().training_step(*args, **kwargs)

    def method_state(self) -> dict:
        return {"batches_seen": self.batches_seen}

    def load_method_state(self, state: dict) -> None:
        self.batches_seen = state["batches_seen"]


def dataset(n: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def make_trainer(output_dir: str, max_steps: int, save_total_limit: int | None = None) -> TinyTrainer:
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        save_steps=1,
        save_total_limit=save_total_limit,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1000,
        seed=0,
    )
    return TinyTrainer(model=Regression(), args=args, train_dataset=dataset())


def kill_while_saving(step: int) -> None:
    """SIGKILL this process when checkpoint ``step`` is about to be marked complete."""
    save = checkpoint.save_method_state

    def save_or_die(checkpoint_dir, state, global_step):  # noqa: ANN001
        if global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        save(checkpoint_dir, state, global_step)

    checkpoint.save_method_state = save_or_die


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, max_steps, limit, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    kill_while_saving(kill_at)
    make_trainer(out, max_steps, limit or None).train(resume_from_checkpoint=sys.argv[5] if sys.argv[5:] else None)
