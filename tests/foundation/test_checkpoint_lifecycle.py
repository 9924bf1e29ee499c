"""Checkpoints that lose nothing, on a tiny Trainer: kill -9 during rotation, rollback re-saves, damaged files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_mars.utils import checkpoint
from trl_mars.utils.checkpoint import COMPLETE_MARKER, STATE_DIR, damaged_file, last_complete_checkpoint

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helper sits here
from tiny_checkpoint_trainer import TinyTrainer, make_trainer  # noqa: E402

SCRIPT = Path(__file__).with_name("tiny_checkpoint_trainer.py")


def run_and_kill(out: Path, max_steps: int, save_total_limit: int, kill_at: int, resume_from: str = "") -> int:
    """Train in a subprocess that SIGKILLs itself while checkpoint ``kill_at`` is saved; its return code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [str(out), str(max_steps), str(save_total_limit), str(kill_at), *([resume_from] if resume_from else [])]
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, timeout=300).returncode


def marker(folder: Path) -> Path:
    return folder / STATE_DIR / COMPLETE_MARKER


def weights(trainer: TinyTrainer) -> list[float]:
    return [round(v, 6) for v in torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).tolist()]


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory) -> tuple[Path, list[float]]:
    """A finished 3-step run with a checkpoint per step, and its final weights."""
    out = tmp_path_factory.mktemp("run")
    trainer = make_trainer(str(out), max_steps=3)
    trainer.train()
    return out, weights(trainer)


def test_kill_between_trainer_files_and_marker_keeps_the_last_complete_checkpoint(tmp_path, three_checkpoints):
    """save_total_limit=1, SIGKILL while checkpoint-2 is saved: checkpoint-1 survives and the run resumes from it
    to the weights of an uninterrupted run. (The Trainer's rotation used to delete checkpoint-1 before
    checkpoint-2 was marked complete, leaving nothing to resume.)"""
    assert run_and_kill(tmp_path, max_steps=3, save_total_limit=1, kill_at=2) == -9
    first, second = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    assert (second / "model.safetensors").exists() and not marker(second).exists()  # killed mid-save
    assert damaged_file(first) is None and last_complete_checkpoint(tmp_path) == str(first)

    trainer = make_trainer(str(tmp_path), max_steps=3, save_total_limit=1)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.resumed_from == str(first) and trainer.batches_seen == 3
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]  # rotated once complete
    assert damaged_file(tmp_path / "checkpoint-3") is None
    assert weights(trainer) == three_checkpoints[1]


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    trainer = make_trainer(str(tmp_path), max_steps=4, save_total_limit=2)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def test_rollback_resave_drops_the_old_marker_and_files(tmp_path, three_checkpoints):
    """Resume from checkpoint-1 of a finished run and SIGKILL while checkpoint-2 is written again: checkpoint-2
    is not complete (it kept its old marker, reading as complete while mixing two runs) and holds no old file."""
    out = tmp_path / "run"
    shutil.copytree(three_checkpoints[0], out)
    (out / "checkpoint-2" / "stale.bin").write_bytes(b"from the first run")
    assert run_and_kill(out, max_steps=3, save_total_limit=0, kill_at=2, resume_from=str(out / "checkpoint-1")) == -9
    assert (out / "checkpoint-2" / "model.safetensors").exists() and not marker(out / "checkpoint-2").exists()
    assert not (out / "checkpoint-2" / "stale.bin").exists()
    assert "missing" in damaged_file(out / "checkpoint-2")

    trainer = make_trainer(str(out), max_steps=3)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    assert damaged_file(out / "checkpoint-2") is None and damaged_file(out / "checkpoint-3") is None
    assert weights(trainer) == three_checkpoints[1]


DAMAGEABLE = ["model.safetensors", "optimizer.pt", f"{STATE_DIR}/rank0.json", "trainer_state.json", "rng_state.pth"]


@pytest.mark.parametrize("name", DAMAGEABLE)
def test_damaged_newest_checkpoint_falls_back_with_a_warning_naming_the_file(
    tmp_path, three_checkpoints, name, caplog
):
    out = tmp_path / "run"
    shutil.copytree(three_checkpoints[0], out)
    recorded = json.loads(marker(out / "checkpoint-3").read_text())["files"]
    assert set(DAMAGEABLE) <= set(recorded)
    damaged = out / "checkpoint-3" / name
    damaged.write_bytes(damaged.read_bytes()[: recorded[name]["bytes"] // 2])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    assert str(damaged) in caplog.text and "bytes" in caplog.text
    with pytest.raises(ValueError, match=f"cannot resume from .*checkpoint-3: {damaged}"):
        make_trainer(str(out), max_steps=3).train(resume_from_checkpoint=str(out / "checkpoint-3"))


def test_same_size_corruption_is_caught_by_the_checksum(tmp_path, three_checkpoints, caplog):
    """A flipped byte keeps the size; the sha256 in the marker catches it, and resume=True continues from the
    newest intact checkpoint to the uninterrupted run's weights."""
    out = tmp_path / "run"
    shutil.copytree(three_checkpoints[0], out)
    path = out / "checkpoint-3" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert damaged_file(out / "checkpoint-3") == f"{path} does not match its recorded sha256"
    trainer = make_trainer(str(out), max_steps=3)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.resumed_from == str(out / "checkpoint-2") and str(path) in caplog.text
    assert weights(trainer) == three_checkpoints[1] and damaged_file(out / "checkpoint-3") is None
