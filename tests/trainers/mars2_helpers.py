"""Shared by the MARS² trainer tests and their workers: a tiny CPU config, forced advantages, torchrun and
kill -9 + resume drivers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trl_mars.testing.distributed import free_port, run_or_stop
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


HERE = Path(__file__).parent
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}


def check_kill_and_resume(tmp_path: Path, tiny_cache: Path, agent_mode: str) -> None:
    """Kill -9 a run of ``mars2_resume_worker.py`` once checkpoint-2 is complete, fake a half-written checkpoint-3,
    resume, and check the run ends exactly as an uninterrupted one (weights, updates, buffers, search RNG, trees,
    learning rates)."""
    worker = str(HERE / "mars2_resume_worker.py")
    env = {**os.environ, **WORKER_ENV, "TRL_MARS_CACHE": str(tiny_cache)}

    def run(output_dir: Path, mode: str, result: Path) -> dict:
        cmd = [sys.executable, worker, str(output_dir), mode, str(result), agent_mode]
        subprocess.run(cmd, env=env, check=True, timeout=600)
        return json.loads(result.read_text())

    straight = run(tmp_path / "straight", "fresh", tmp_path / "straight.json")
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        [sys.executable, worker, str(crashed), "fresh", str(tmp_path / "unused.json"), agent_mode], env=env
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
    assert len(straight["weights"]) == (1 if agent_mode == "homogeneous" else 2)


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def run_ddp_worker(out: Path, qwen2: str, llama: str, mode: str, timeout_s: float = 180) -> list[dict]:
    """``torchrun --nproc_per_node 2`` of ``mars2_ddp_worker.py`` (gloo, CPU); both ranks' JSON reports.

    ``accelerate launch --cpu --num_processes 2`` silently runs one process on CPU, hence torchrun. On a timeout
    torchrun gets SIGTERM, which it forwards to the ranks (they run in sessions of their own, so a SIGKILL would
    orphan them)."""
    cmd = [
        *_torchrun(),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(HERE / "mars2_ddp_worker.py"),
        str(out),
        qwen2,
        llama,
        mode,
    ]
    done = run_or_stop(cmd, {**os.environ, **WORKER_ENV}, timeout_s)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    files = sorted(out.glob("rank*.json"))
    assert [f.name for f in files] == ["rank0.json", "rank1.json"], "a rank did not finish"
    return [json.loads(f.read_text()) for f in files]
