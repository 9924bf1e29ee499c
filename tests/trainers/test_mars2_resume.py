"""Kill -9 mid-training, then resume: the run continues from the last COMPLETE checkpoint and ends exactly where
an uninterrupted run ends (weights, buffers, posteriors/RNG of the search, trees)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("mars2_resume_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}


def run(output_dir: Path, mode: str, result: Path, timeout: float = 600) -> dict:
    subprocess.run(
        [sys.executable, str(WORKER), str(output_dir), mode, str(result)], env=ENV, check=True, timeout=timeout
    )
    return json.loads(result.read_text())


@pytest.mark.slow
def test_kill_and_resume_continues_identically(tmp_path, tiny_cache):
    env_cache = {"TRL_MARS_CACHE": str(tiny_cache)}
    ENV.update(env_cache)
    straight = run(tmp_path / "straight", "fresh", tmp_path / "straight.json")

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(crashed), "fresh", str(tmp_path / "unused.json")], env=ENV
    )
    marker = crashed / "checkpoint-2" / "trl_mars_state" / "complete.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote checkpoint-2"
    # a checkpoint that was being written when the process died: weights but no completion marker
    partial = crashed / "checkpoint-3"
    if not (partial / "trl_mars_state" / "complete.json").exists():
        (partial / "agents" / "qwen").mkdir(parents=True, exist_ok=True)
        (partial / "agents" / "qwen" / "model.safetensors").write_bytes(b"truncated")

    resumed = run(crashed, "resume", tmp_path / "resumed.json")
    assert resumed["resumed_from"].endswith(("checkpoint-2", "checkpoint-4"))
    assert not resumed["resumed_from"].endswith("checkpoint-3")
    for key in ("weights", "updates", "buffers", "search", "trees", "learning_rates"):
        assert resumed[key] == straight[key], key
    assert sum(straight["updates"].values()) > 0
