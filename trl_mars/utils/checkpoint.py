"""Checkpointed trainer state shared by every trl-mars trainer, and checkpoints that lose nothing.

A method's own state (search trees, posteriors, memory banks, curricula, buffers) is written next to the
Trainer's checkpoint as JSON, one file per rank, each by an atomic rename; a ``complete`` marker is written
last by the main process, holding the size and sha256 of every file of the checkpoint. So:

- a run killed mid-save never resumes from a partial checkpoint: ``resume_from_checkpoint=True`` only picks a
  checkpoint whose marker exists and whose files all match it, falling back (with a warning naming the damaged
  file) to the newest intact one;
- a folder saved again (a run resumed from an older checkpoint reaches the same step) loses its marker, and its
  old files, before anything new is written, so it never reads as complete while mixing two runs;
- checkpoint rotation (``save_total_limit``) runs only after the new checkpoint is marked complete, and keeps
  the newest ``save_total_limit`` complete checkpoints: the last complete checkpoint is never deleted before a
  newer one is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.distributed as dist

STATE_DIR = "trl_mars_state"
COMPLETE_MARKER = "complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
logger = logging.getLogger(__name__)


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


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _marker(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / STATE_DIR / COMPLETE_MARKER


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of one file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def checkpoint_manifest(checkpoint_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``checkpoint_dir`` but the completion marker, by relative path."""
    root = Path(checkpoint_dir)
    marker = _marker(root)
    return {
        path.relative_to(root).as_posix(): file_digest(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path != marker
    }


def damaged_file(checkpoint_dir: str | os.PathLike) -> str | None:
    """Why ``checkpoint_dir`` cannot be trusted, naming the first file that is missing or differs (size, then
    sha256) from its completion marker; ``None`` for an intact complete checkpoint."""
    marker = _marker(checkpoint_dir)
    if not marker.exists():
        return f"{marker} is missing (the save never finished)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"{marker} is unreadable or lists no files ({err})"
    for name, expected in files.items():
        path = Path(checkpoint_dir) / name
        if not path.is_file():
            return f"{path} is missing"
        if os.path.getsize(path) != expected["bytes"]:
            return f"{path} has {os.path.getsize(path)} bytes, the checkpoint recorded {expected['bytes']}"
        if file_digest(path)["sha256"] != expected["sha256"]:
            return f"{path} does not match its recorded sha256"
    return None


def begin_checkpoint(checkpoint_dir: str | os.PathLike) -> None:
    """Before (re)writing ``checkpoint_dir``: the main process removes its completion marker first, then its old
    files, so a kill at any point of the new save leaves a folder that is not complete (and no stale file)."""
    checkpoint_dir = Path(checkpoint_dir)
    if _rank() == 0 and checkpoint_dir.exists():
        _marker(checkpoint_dir).unlink(missing_ok=True)
        shutil.rmtree(checkpoint_dir)
    _barrier()


def save_method_state(checkpoint_dir: str | os.PathLike, state: dict[str, Any], step: int) -> None:
    """Save this rank's ``state`` in ``checkpoint_dir``; the main process then marks the checkpoint complete with
    the size and sha256 of every file in it (written by any rank)."""
    state_dir = Path(checkpoint_dir) / STATE_DIR
    atomic_write_json(state_dir / f"rank{_rank()}.json", state)
    _barrier()
    if _rank() == 0:
        atomic_write_json(
            state_dir / COMPLETE_MARKER, {"global_step": step, "files": checkpoint_manifest(checkpoint_dir)}
        )


def load_method_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """This rank's saved state; raises if the checkpoint was never marked complete."""
    if not _marker(checkpoint_dir).exists():
        raise FileNotFoundError(
            f"{checkpoint_dir} has no complete trl-mars state (missing {STATE_DIR}/{COMPLETE_MARKER})"
        )
    return json.loads((Path(checkpoint_dir) / STATE_DIR / f"rank{_rank()}.json").read_text())


def _checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` folder in ``output_dir``, oldest first."""
    found = []
    for entry in Path(output_dir).glob("checkpoint-*"):
        if (match := _CHECKPOINT_RE.match(entry.name)) and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that is marked complete and whose files match the marker,
    or None. A marked checkpoint with a damaged file is skipped with a warning naming that file."""
    for _, folder in reversed(_checkpoints(output_dir)):
        if not _marker(folder).exists():
            continue
        if (damage := damaged_file(folder)) is None:
            return str(folder)
        logger.warning("skipping damaged checkpoint %s: %s", folder, damage)
    return None


def rotate_checkpoints(
    output_dir: str | os.PathLike, newest_step: int, save_total_limit: int | None, keep: Iterable[str] = ()
) -> list[Path]:
    """Delete checkpoints older than step ``newest_step`` (just marked complete) beyond the newest
    ``save_total_limit`` complete ones, counting one named in ``keep`` (the best model checkpoint) as the most
    recent older one, as the Trainer does, so it is never deleted; incomplete older folders go too. Folders of later steps (an abandoned run's) are left alone. Returns
    the deleted folders."""
    if not save_total_limit or save_total_limit <= 0:
        return []
    older = [folder for step, folder in _checkpoints(output_dir) if step < newest_step]
    protected = {Path(k).resolve() for k in keep if k}
    complete = [folder for folder in older if _marker(folder).exists()]
    # as the Trainer does: a kept folder counts as the most recent older one, within the limit (a limit of 1 with
    # a kept older folder keeps that one too)
    complete = [f for f in complete if f.resolve() not in protected] + [
        f for f in complete if f.resolve() in protected
    ]
    room = max(save_total_limit - 1, 1 if any(f.resolve() in protected for f in complete) else 0)
    kept = {folder.resolve() for folder in complete[len(complete) - room :]} if room else set()
    deleted = [folder for folder in older if folder.resolve() not in kept]
    for folder in deleted:
        logger.info("deleting checkpoint %s (save_total_limit=%d)", folder, save_total_limit)
        shutil.rmtree(folder, ignore_errors=True)
    return deleted


class MethodStateMixin:
    """Mixin for ``transformers.Trainer`` subclasses: checkpoints ``method_state()`` and restores it on resume,
    with checksummed completion markers, rotation after completion, and fallback past damaged checkpoints.

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
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint_dir = run_dir / f"checkpoint-{self.state.global_step}"
        begin_checkpoint(checkpoint_dir)
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # the Trainer would rotate before our marker exists
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.save_method_files(checkpoint_dir)
        save_method_state(checkpoint_dir, self.method_state(), self.state.global_step)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.state.global_step, limit, [self.state.best_model_checkpoint])

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``resume_from_checkpoint``: a checkpoint folder, or True (also the command line's ``true``) for the newest
        intact complete checkpoint in ``output_dir``. A named folder that is damaged is an error naming the file."""
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() == "true":
            resume_from_checkpoint = resume_from_checkpoint if os.path.isdir(resume_from_checkpoint) else True
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint found in output_dir={self.args.output_dir!r}")
        elif resume_from_checkpoint and (damage := damaged_file(resume_from_checkpoint)) is not None:
            raise ValueError(f"cannot resume from {resume_from_checkpoint}: {damage}")
        if resume_from_checkpoint:
            self.resumed_from = str(resume_from_checkpoint)
            self.load_method_state(load_method_state(resume_from_checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
