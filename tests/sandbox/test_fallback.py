"""The sandbox where the kernel gives no namespaces (some containers): checks still run, with the weak
network block reported, cleanup by uid (as root) and per-check folders removed without recursion."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

from trl_mars.sandbox import Sandbox, Status, pool
from trl_mars.sandbox.limits import sandbox_pids

NO_NAMESPACES = """
from trl_mars.sandbox import limits, zygote

def refuse():
    raise OSError("namespaces disabled for this test")

limits.enter_namespaces = refuse
zygote.main()
"""


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    script = tmp_path / "zygote_without_namespaces.py"
    script.write_text(NO_NAMESPACES)
    popen = subprocess.Popen

    def start_without_namespaces(cmd, **kwargs):
        if cmd[1:] == ["-m", "trl_mars.sandbox.zygote"]:
            cmd = [cmd[0], str(script)]
        return popen(cmd, **kwargs)

    monkeypatch.setattr(pool.subprocess, "Popen", start_without_namespaces)
    with Sandbox(concurrency=1, timeout_s=2.0, max_total_s=4.0) as sb:
        yield sb


@pytest.mark.skipif(os.geteuid() != 0, reason="cleanup by uid needs root")
def test_checks_run_and_are_cleaned_up_without_namespaces(sandbox):
    isolation = sandbox.start()
    assert (isolation["network"], isolation["filesystem"], isolation["pid"]) == (
        "harness socket block (weak)", "none", "none"
    )  # fmt: skip
    before = set(glob.glob("/tmp/check-*"))
    assert sandbox.run("def f():\n    return 1\n", ["assert f() == 1"]).passed
    escape = (
        "import os\ndef f():\n    while True:\n        if os.fork() == 0:\n            os.setsid()\n    return 1\n"
    )
    result = sandbox.run(escape, ["assert f() == 1"])
    assert result.verdicts[0].status in (Status.ERROR, Status.TIMEOUT) and result.sandbox_error is None
    assert sandbox_pids(uid=isolation["uid"]) == []
    # a deep tree in the per-check folder (on the host's /tmp, often a slow disk: 3000 levels are shown on
    # tmpfs in test_isolation.py)
    deep = "import os\nfor _ in range(300):\n    os.mkdir('d')\n    os.chdir('d')\ndef f():\n    return 1\n"
    assert sandbox.run(deep, ["assert f() == 1"]).passed
    socket = "import socket\ndef f():\n    socket.socket()\n"
    assert sandbox.run(socket, ["f()"]).verdicts[0].error_type == "PermissionError"
    assert set(glob.glob("/tmp/check-*")) == before


NO_PIDFD = """
import os
from trl_mars.sandbox import zygote

def refuse(pid, flags=0):
    raise OSError("pidfd_open disabled for this test")

os.pidfd_open = refuse
zygote.main()
"""


def test_without_pidfd_the_zygote_polls_for_the_childs_exit(tmp_path, monkeypatch):
    # kernels before 5.3 have no pidfd: the zygote checks the child (waitid, WNOWAIT) every 20 ms instead
    script = tmp_path / "zygote_without_pidfd.py"
    script.write_text(NO_PIDFD)
    popen = subprocess.Popen

    def start_without_pidfd(cmd, **kwargs):
        if cmd[1:] == ["-m", "trl_mars.sandbox.zygote"]:
            cmd = [cmd[0], str(script)]
        return popen(cmd, **kwargs)

    monkeypatch.setattr(pool.subprocess, "Popen", start_without_pidfd)
    program = "import time\ndef f(x):\n    time.sleep(x)\n    return x\n"
    with Sandbox(concurrency=1, timeout_s=0.5, max_total_s=8.0) as sb:
        result = sb.run(program, ["assert f(0) == 0", "assert f(30) == 30", "assert f(0.2) == 0.2"])
        crashed = sb.run("import os\nos._exit(3)\n", ["assert True"])
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.TIMEOUT, Status.PASSED]
    assert result.duration_s < 3.0
    assert crashed.program_status == Status.CRASHED and "code 3" in crashed.program_error
