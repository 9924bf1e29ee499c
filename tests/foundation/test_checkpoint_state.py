"""Method state is written atomically and only complete checkpoints are resumed from."""

import json

import pytest

from trl_mars.utils import atomic_write_json, last_complete_checkpoint, load_method_state, save_method_state


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
