"""Method state is written atomically and only complete checkpoints are resumed from."""

import json
from types import SimpleNamespace

import pytest

from trl_mars.utils import (
    MethodStateMixin,
    atomic_write_json,
    last_complete_checkpoint,
    load_method_state,
    save_method_state,
)
from trl_mars.utils.checkpoint import rotate_checkpoints


def test_atomic_write_leaves_no_temporaries(tmp_path):
    atomic_write_json(tmp_path / "a" / "s.json", {"x": [1, 2]})
    atomic_write_json(tmp_path / "a" / "s.json", {"x": [3]})
    assert json.loads((tmp_path / "a" / "s.json").read_text()) == {"x": [3]}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["s.json"]


def test_only_complete_checkpoints_are_resumed(tmp_path):
    assert last_complete_checkpoint(tmp_path) is None
    save_method_state(tmp_path / "checkpoint-2", {"tree": [1]}, step=2)
    save_method_state(tmp_path / "checkpoint-10", {"tree": [1, 2]}, step=10)
    # a checkpoint killed mid-save: model files exist, the state marker does not
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoint-100").mkdir()  # a non-trl-mars folder with a higher number
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert load_method_state(tmp_path / "checkpoint-10") == {"tree": [1, 2]}
    with pytest.raises(FileNotFoundError, match="complete"):
        load_method_state(tmp_path / "checkpoint-12")


class _Base:
    def train(self, resume_from_checkpoint=None, **kwargs):
        return resume_from_checkpoint


class _Trainer(MethodStateMixin, _Base):
    def __init__(self, output_dir):
        self.args = SimpleNamespace(output_dir=str(output_dir))
        self.loaded = None

    def load_method_state(self, state):
        self.loaded = state


@pytest.mark.parametrize("flag", [True, "true", "True"])
def test_resume_true_picks_the_newest_complete_checkpoint(tmp_path, flag):
    """``train(resume_from_checkpoint=True)``, and the command line's ``--resume_from_checkpoint true``."""
    trainer = _Trainer(tmp_path)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=flag)
    save_method_state(tmp_path / "checkpoint-3", {"step": 3}, step=3)
    save_method_state(tmp_path / "checkpoint-7", {"step": 7}, step=7)
    assert trainer.train(resume_from_checkpoint=flag) == str(tmp_path / "checkpoint-7")
    assert trainer.loaded == {"step": 7} and trainer.resumed_from == str(tmp_path / "checkpoint-7")
    assert _Trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-3")) == str(
        tmp_path / "checkpoint-3"
    )


def test_rotation_counts_the_best_within_the_limit_and_keeps_later_folders(tmp_path):
    for step in (1, 3, 4, 5, 7):
        save_method_state(tmp_path / f"checkpoint-{step}", {"step": step}, step=step)
    (tmp_path / "checkpoint-2").mkdir()  # killed mid-save
    deleted = rotate_checkpoints(tmp_path, newest_step=5, save_total_limit=2, keep=[str(tmp_path / "checkpoint-1")])
    assert [p.name for p in deleted] == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    # as the Trainer does, the best (1) counts within the limit: it and the new one (5) are kept; an abandoned
    # run's later folder (7) is left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-5", "checkpoint-7"]
    assert rotate_checkpoints(tmp_path, newest_step=5, save_total_limit=None) == []
    # a limit of 1 keeps a best older checkpoint too (the Trainer raises its limit to 2 then), and nothing else
    assert rotate_checkpoints(tmp_path, newest_step=5, save_total_limit=1, keep=[str(tmp_path / "checkpoint-1")]) == []
    assert [p.name for p in rotate_checkpoints(tmp_path, newest_step=5, save_total_limit=1)] == ["checkpoint-1"]
