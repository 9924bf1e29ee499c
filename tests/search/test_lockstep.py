"""Lockstep search across processes (``TreeSearch(sync=...)``), as FSDP-sharded agents need: every process makes
the same generation calls in the same order although each searches its own problems, and its own trees come out
exactly as without the other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("lockstep_worker.py")


def run_pair(tmp_path: Path, mode: str) -> list[int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "rendezvous"), str(tmp_path), mode]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", *args], env=env) for r in range(2)]
    return [p.wait(timeout=120) for p in procs]


def test_processes_generate_in_lockstep(tmp_path):
    assert run_pair(tmp_path, "lockstep") == [0, 0]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["calls"] == ranks[1]["calls"] and min(ranks[0]["calls"].values()) > 0
    for rank in ranks:
        assert rank["trees"] == rank["alone"]  # idle calls change nothing in a process's own search
    # the processes' searches differ (3 problems vs 1, trees stopping at their first pass): not trivially in step
    sizes = [[len(tree["nodes"]) for tree in rank["trees"]] for rank in ranks]
    assert len(sizes[0]) == 3 and len(sizes[1]) == 1 and len(set(map(sum, sizes))) == 2


def test_without_lockstep_processes_fall_out_of_step(tmp_path):
    assert run_pair(tmp_path, "free") != [0, 0]
