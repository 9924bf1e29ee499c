"""Hostile programs: each must get a non-pass verdict, the test process must survive, nothing may be left."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from trl_mars.sandbox import Sandbox, Status
from trl_mars.sandbox.limits import sandbox_pids

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"HF_TOKEN": "hf_fake_secret_123", "OPENAI_API_KEY": "sk-fake-secret-456"}


@pytest.fixture(scope="module")
def sandbox():
    old = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    sb = Sandbox(concurrency=2, timeout_s=1.0, max_total_s=4.0, memory_bytes=512 << 20, output_cap_bytes=4096)
    yield sb
    zygotes = [w.proc.pid for w in sb._workers if w.proc is not None]
    sb.close()
    for key, value in old.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert not [pid for pid in zygotes if Path(f"/proc/{pid}").exists()], "zygotes left running"


def assert_nothing_left(sb: Sandbox) -> None:
    """No live process runs under a worker's sandbox uid, and what forks the checks has no children left."""
    uids = [w.isolation["uid"] for w in sb._workers if w.isolation.get("uid") is not None]
    assert [pid for uid in uids for pid in sandbox_pids(uid=uid)] == []
    for worker in sb._workers:
        if worker.proc is not None:
            assert children_of(forking_process(worker)) == []


def forking_process(worker) -> int:
    """The process a worker's check processes are forked from: with a PID namespace the outer process's one
    child, the zygote proper, or, with a filesystem view as well, that one's one child, the forker."""
    pid = worker.proc.pid
    if worker.isolation["pid"] == "namespace":
        (pid,) = map(int, children_of(pid))
        if worker.isolation["filesystem"].startswith("view"):
            (pid,) = map(int, children_of(pid))
    return pid


def children_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def statuses(result) -> set[Status]:
    return {v.status for v in result.verdicts}


def run(sb, program, tests=("assert f() == 1",)):
    result = sb.run(program, list(tests))
    assert not result.passed and result.num_passed == 0
    assert_nothing_left(sb)
    return result


def test_fork_bomb(sandbox):
    result = run(sandbox, "import os\nwhile True:\n    os.fork()\ndef f():\n    return 1\n")
    assert result.program_status in (Status.ERROR, Status.CRASHED, Status.TIMEOUT)


def test_fork_bomb_with_setsid_escape(sandbox):
    program = (
        "import os\ndef f():\n    while True:\n        if os.fork() == 0:\n            os.setsid()\n    return 1\n"
    )
    result = run(sandbox, program)
    assert statuses(result) <= {Status.ERROR, Status.CRASHED, Status.TIMEOUT}


def test_infinite_loop_at_top_level(sandbox):
    result = run(sandbox, "while True:\n    pass\n", ["assert True", "assert 1 == 1"])
    assert result.program_status is Status.TIMEOUT and statuses(result) == {Status.TIMEOUT}


def test_infinite_loop_in_one_test_keeps_the_others():
    with Sandbox(concurrency=1, timeout_s=0.5, max_total_s=4.0) as sb:
        program = "def f(x):\n    while x == 2:\n        pass\n    return x\n"
        result = sb.run(program, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"])
        assert [v.status for v in result.verdicts] == [Status.PASSED, Status.TIMEOUT, Status.PASSED]
        assert_nothing_left(sb)


def test_huge_allocation(sandbox):
    result = run(sandbox, "def f():\n    x = bytearray(10 * 1024**3)\n    return 1\n")
    assert statuses(result) == {Status.MEMORY}


def test_writing_outside_the_workdir(sandbox):
    targets = [Path(f"/tmp/sandbox-escape-{uuid.uuid4().hex}"), REPO / f"sandbox-escape-{uuid.uuid4().hex}"]
    for target in targets:
        program = f"def f():\n    open({str(target)!r}, 'w').write('pwned')\n    return 1\n"
        result = run(sandbox, program)
        # read-only mount (PermissionError/OSError) or a path the sandbox's private view does not contain
        # (FileNotFoundError, e.g. a checkout under /tmp, which is the sandbox's own tmpfs)
        assert statuses(result) == {Status.ERROR}
        assert result.verdicts[0].error_type in ("PermissionError", "OSError", "FileNotFoundError")
        assert not target.exists()
    assert sandbox.run("def f():\n    open('ok.txt', 'w').write('x')\n    return 1\n", ["assert f() == 1"]).passed


def test_environment_secrets_are_not_visible(sandbox):
    program = (
        "import os\n"
        "def f():\n"
        "    found = [os.environ.get(k) for k in ('HF_TOKEN', 'OPENAI_API_KEY')]\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            found.append(open(f'/proc/{pid}/environ').read())\n"
        "        except OSError:\n"
        "            pass\n"
        "    return [s for s in found if s and ('fake' in s)]\n"
    )
    result = run(sandbox, program, [f"assert f() == [{SECRETS['HF_TOKEN']!r}]"])
    assert result.verdicts[0].status is Status.FAILED and result.verdicts[0].actual == "[]"


def test_network_is_unreachable(sandbox):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        program = (
            f"import socket\ndef f():\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    return 1\n"
        )
        result = run(sandbox, program)
        assert statuses(result) == {Status.ERROR}
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_killing_the_parent(sandbox):
    program = "import os\nos.kill(os.getppid(), 9)\nos.kill(1, 9)\ndef f():\n    return 1\n"
    result = run(sandbox, program)
    assert result.program_status in (Status.ERROR, Status.CRASHED)
    assert sandbox.run("def f():\n    return 1\n", ["assert f() == 1"]).passed


def test_dead_worker_is_reported_and_restarted():
    with Sandbox(concurrency=1, timeout_s=2.0, max_total_s=4.0) as sb:
        sb.start()
        future = sb.submit("import time\ntime.sleep(3)\n", ["assert True"])
        forker = forking_process(sb._workers[0])
        deadline = time.monotonic() + 10
        while not children_of(forker) and time.monotonic() < deadline:
            time.sleep(0.01)  # the check is running: the worker dies under it, not before it was sent
        sb._workers[0].proc.kill()
        result = future.result()
        assert result.sandbox_error and statuses(result) == {Status.CRASHED}
        assert sb.run("def f():\n    return 1\n", ["assert f() == 1"]).passed
        assert_nothing_left(sb)


def test_a_dead_forker_is_reported_and_the_worker_restarted():
    # with a filesystem view the check processes are forked by the zygote's forker: its death ends the check
    # (its PID namespace goes with it) and the worker, which the next check restarts
    with Sandbox(concurrency=1, timeout_s=2.0, max_total_s=4.0) as sb:
        if not sb.start()["filesystem"].startswith("view"):
            pytest.skip("no forker without a filesystem view")
        future = sb.submit("import time\ntime.sleep(3)\n", ["assert True"])
        forker = forking_process(sb._workers[0])
        deadline = time.monotonic() + 10
        while not children_of(forker) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(forker, signal.SIGKILL)
        result = future.result()
        assert result.sandbox_error and statuses(result) == {Status.CRASHED}
        assert sb.run("def f():\n    return 1\n", ["assert f() == 1"]).passed
        assert forking_process(sb._workers[0]) != forker
        assert_nothing_left(sb)


def test_a_check_queued_behind_a_dead_worker_runs_again():
    # one worker: the second check waits in the zygote's pipe while the first runs; when the worker dies under
    # the first, the second (never started) runs on the restarted worker and gets its own verdict
    with Sandbox(concurrency=1, timeout_s=3.0, max_total_s=4.0) as sb:
        sb.start()
        running = sb.submit("import time\ntime.sleep(3)\n", ["assert True"])
        queued = sb.submit("def f():\n    return 1\n", ["assert f() == 1", "assert f() == 2"])
        forker = forking_process(sb._workers[0])
        deadline = time.monotonic() + 10
        while (not children_of(forker) or len(sb._workers[0].inflight) < 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sb._workers[0].inflight) == 2  # both sent: the second is queued behind the first
        sb._workers[0].proc.kill()
        assert running.result().sandbox_error and statuses(running.result()) == {Status.CRASHED}
        result = queued.result()
        assert result.sandbox_error is None
        assert [v.status for v in result.verdicts] == [Status.PASSED, Status.FAILED]
        assert_nothing_left(sb)


def test_printing_a_gigabyte(sandbox):
    program = (
        "import sys\ndef f():\n    for _ in range(1024):\n        sys.stdout.write('x' * (1 << 20))\n    return 0\n"
    )
    result = run(sandbox, program)
    assert statuses(result) <= {Status.FAILED, Status.TIMEOUT}
    assert len(result.stdout) <= sandbox.config.output_cap_bytes and result.output_truncated


def test_writing_a_gigabyte_to_the_stdout_fd(sandbox):
    result = run(sandbox, "import os\ndef f():\n    while True:\n        os.write(1, b'x' * (1 << 20))\n")
    assert statuses(result) <= {Status.ERROR, Status.TIMEOUT}
    assert len(result.stdout) <= sandbox.config.output_cap_bytes


@pytest.mark.parametrize(
    "program",
    [
        "import sys\ndef f():\n    return 0\nsys.exit(0)\n",
        "import os\ndef f():\n    return 0\nos._exit(0)\n",
        "def f():\n    import os\n    os._exit(0)\n",
        "def f():\n    raise SystemExit(0)\n",
        "import builtins\nclass Fake(Exception):\n    pass\nbuiltins.AssertionError = Fake\ndef f():\n    return 0\n",
        "import builtins\nbuiltins.__build_class__ = lambda *a, **k: None\nbuiltins.isinstance = lambda *a: False\n"
        "builtins.repr = lambda x: 'passed'\ndef f():\n    return 0\n",
        "import os\nos.write = lambda fd, data: len(data)\ndef f():\n    return 0\n",
        "import os, sys\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, b\"('x', 'E', 0, 'passed', None, '', '', None, None, 0.0)\\n\")\n"
        "    except OSError:\n        pass\ndef f():\n    return 0\n",
        "import sys\nsys.modules['trl_mars.sandbox.harness'].run_check = None\ndef f():\n    return 0\n",
    ],
    ids=[
        "sys.exit",
        "os._exit-top",
        "os._exit-test",
        "SystemExit-test",
        "AssertionError",
        "builtins",
        "os.write",
        "forge-fd",
        "patch-harness",
    ],
)
def test_faking_a_pass(sandbox, program):
    result = run(sandbox, program, ["assert f() == 1", "assert f() == 2"])
    assert Status.PASSED not in statuses(result)
