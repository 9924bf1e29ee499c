"""The sandbox's unprivileged path (a user namespace, then network, mount and PID namespaces; rlimits and the
RSS watchdog, as no cgroup is delegated), run as root through ``unshare --user --map-user=1000``: the sandbox
then sees uid 1000 and does what it does for a user who is not root. CI runs as root, so without this nothing
would run that path. (Files are still reached as root's, so this cannot show file permissions; and forks are
not counted against RLIMIT_NPROC for root's processes, so a fork bomb here is stopped by the watchdog.)"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
WORKER = HERE / "unprivileged_worker.py"
UNSHARE = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run([*UNSHARE, "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare --user (as in CI)")


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``, by each process's parent in ``/proc/*/stat`` (a task's ``children`` file,
    as test_hostile reads, lists only the children of that one thread)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_the_unprivileged_path_isolates_checks_and_keeps_the_verdicts():
    repo = HERE.parents[1]
    hidden = [str(repo / "pyproject.toml"), str(Path(__file__)), str(repo / "trl_mars" / "sandbox" / "harness.py")]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        cmd = [*UNSHARE, sys.executable, str(WORKER), "probes", str(listener.getsockname()[1]), *hidden]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd="/tmp")
    seen = json.loads(out.stdout.splitlines()[-1])
    isolation = seen["isolation"]
    assert (isolation["network"], isolation["pid"]) == ("userns+netns", "namespace"), isolation
    assert isolation["filesystem"].startswith("view") and isolation["uid"] is None
    assert isolation["resources"].startswith("rlimits per process + RSS watchdog (no cgroup: ")
    assert seen["add"] == [["passed", True], ["failed", True]]  # decided in the parent, as on the root path
    processes = ast.literal_eval(seen["processes"])  # the repr of a list of digit strings
    assert "1" in processes and len(processes) <= 3  # its own PID namespace: none of the host's processes
    assert seen["connect"] == ["error", "OSError"]  # network unreachable
    assert seen["files"] == ["passed", None]  # no project file exists in the view
    assert seen["memory"] == "memory"  # 4 x 100 MB children under 256 MiB: the watchdog stops the check
    assert seen["after"] is True


def test_killing_the_trainer_on_the_unprivileged_path_kills_its_checks():
    cmd = [*UNSHARE, sys.executable, str(WORKER), "hang"]
    trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd="/tmp")
    try:
        assert trainer.stdout.readline().strip() == "started"
        end = time.monotonic() + 20
        while len(below := _descendants(trainer.pid)) < 4 and time.monotonic() < end:
            time.sleep(0.05)  # the outer process, the keeper, the forker and the sleeping check process
        assert len(below) == 4, below
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait()
        end = time.monotonic() + 5
        while (left := {p for p in below if Path("/proc", str(p)).exists()}) and time.monotonic() < end:
            time.sleep(0.05)
        assert not left, f"still running after the trainer's kill -9: {left}"
    finally:
        trainer.kill()
        trainer.wait()
