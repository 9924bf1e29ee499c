"""Checkpointed trainer state shared by every trl-mars trainer.

A method's own state (search trees, posteriors, memory banks, curricula, buffers) is written next to the
Trainer's checkpoint as JSON, one file per rank, each by an atomic rename; a ``complete`` marker is written
last by the main process. ``resume_from_checkpoint=True`` only ever picks a checkpoint whose marker exists,
so a run killed mid-save never resumes from a partial checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch.distributed as dist

STATE_DIR = "trl_mars_state"
COMPLETE_MARKER = "complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def save_method_state(checkpoint_dir: str | os.PathLike, state: dict[str, Any], step: int) -> None:
    """Save this rank's ``state`` in ``checkpoint_dir``; the main process then marks the checkpoint complete."""
    state_dir = Path(checkpoint_dir) / STATE_DIR
    atomic_write_json(state_dir / f"rank{_rank()}.json", state)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if _rank() == 0:
        atomic_write_json(state_dir / COMPLETE_MARKER, {"global_step": step})


def load_method_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """This rank's saved state; raises if the checkpoint was never marked complete."""
    state_dir = Path(checkpoint_dir) / STATE_DIR
    if not (state_dir / COMPLETE_MARKER).exists():
        raise FileNotFoundError(
            f"{checkpoint_dir} has no complete trl-mars state (missing {STATE_DIR}/{COMPLETE_MARKER})"
        )
    return json.loads((state_dir / f"rank{_rank()}.json").read_text())


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` whose trl-mars state is marked complete, or None."""
    found = []
    for entry in Path(output_dir).glob("checkpoint-*"):
        match = _CHECKPOINT_RE.match(entry.name)
        if match and (entry / STATE_DIR / COMPLETE_MARKER).exists():
            found.append((int(match.group(1)), entry))
    return str(max(found)[1]) if found else None


class MethodStateMixin:
    """Mixin for ``transformers.Trainer`` subclasses: checkpoints ``method_state()`` and restores it on resume.

    Subclasses implement ``method_state() -> dict`` (JSON-serialisable) and ``load_method_state(state)``; binary
    state (e.g. extra optimizers) goes in ``save_method_files(checkpoint_dir)``, written before the completion
    marker, and is read back from ``self.resumed_from``. Put the mixin first in the bases:
    ``class MyTrainer(MethodStateMixin, GRPOTrainer)``.
    """

    resumed_from: str | None = None

    def method_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_method_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def save_method_files(self, checkpoint_dir: Path) -> None:
        """Write non-JSON state into ``checkpoint_dir`` (called before the checkpoint is marked complete)."""

    def _save_checkpoint(self, model, trial) -> None:  # noqa: ANN001 - transformers' signature
        super()._save_checkpoint(model, trial)
        checkpoint_dir = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        self.save_method_files(checkpoint_dir)
        save_method_state(checkpoint_dir, self.method_state(), self.state.global_step)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``resume_from_checkpoint``: a checkpoint folder, or True (also the command line's ``true``) for the newest
        complete checkpoint in ``output_dir``."""
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() == "true":
            resume_from_checkpoint = resume_from_checkpoint if os.path.isdir(resume_from_checkpoint) else True
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint found in output_dir={self.args.output_dir!r}")
        if resume_from_checkpoint:
            self.resumed_from = str(resume_from_checkpoint)
            self.load_method_state(load_method_state(resume_from_checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
