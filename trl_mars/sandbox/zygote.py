"""The fork server: a pre-imported Python process that forks one fresh, limited child per check.

Started by ``pool.Worker`` as ``python -m trl_mars.sandbox.zygote``; talks over stdin/stdout with
``protocol`` messages. This outer process creates the worker's cgroup, enters new namespaces and forks the
zygote proper, PID 1 of the new PID namespace, then only waits for it and removes the cgroup. The zygote
builds the filesystem view (``view``), and for each check a child (new session, rlimits, own uid, scrubbed
env, stdin on /dev/null) runs ``harness.run_check``. The zygote reads the child's records (appended to a
memfd) when the child exits or at each poll while it runs, with per-test deadlines; when a test times out or
the child dies, that test gets its verdict and a new child continues with the next test. Every process of
the check is killed and reaped.

What a check costs is mostly the fork: every page either process writes afterwards is copied (the child)
or faulted back writable (the process that forked), so both do as little Python as they can:
check-independent state (streams, pristine builtins, environment, imports) is made once, the zygote wakes
once per check rather than per record, and it imports neither the pool nor the test splitter. Where it has
the view (the usual case), the zygote is a ``Keeper``: it keeps that bookkeeping and forks only once, at
start, the ``Forker``, PID 1 of a nested PID namespace, which forks the check processes and runs a few lines
of Python between forks. Without the view, one ``Zygote`` process does both.
"""

from __future__ import annotations

import _signal
import fcntl
import gc
import importlib
import os
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, NoReturn

from trl_mars.sandbox import cgroup, limits, view
from trl_mars.sandbox.harness import FIELD_CAP, Streams, run_check, run_tests
from trl_mars.sandbox.protocol import ChannelClosed, decode_request, loads, read_request, recv_request, send_msg

if TYPE_CHECKING:  # the zygote takes the config as sent (the parent validated it), so it never imports
    from trl_mars.sandbox.config import SandboxConfig  # dataclasses, inspect, ast: fewer pages to fork

# Imported once here so checks do not pay for them (and so the forked children share their pages). A module
# is worth it when the share of checks importing it, times the import's cost in a check, exceeds what it adds
# to every check: each 4 KiB page of the zygote's own memory costs a fork and an exit about 0.17 us to copy
# and tear down, each mapping about 1 us. So not ``random`` (nor ``statistics``, which imports it): once
# imported it reseeds itself in every forked child (an at-fork hook), about 45 page faults per check; and
# not ``hashlib`` (680 KiB and 13 mappings with OpenSSL), ``datetime`` (400 KiB), ``decimal``, ``fractions``:
# together about 0.05 ms off every check, while a check importing one pays 2.5 to 5.5 ms (1 of the 164
# HumanEval problems imports hashlib, none the others).
PRELOAD = ("bisect", "collections", "copy", "functools", "heapq", "itertools", "json", "math", "operator", "re",
           "string", "typing")  # fmt: skip
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
MAX_RECORD = 1 << 22
WATCHDOG_S = 0.02  # how often memory is measured when no memory cgroup bounds the check
POLL_S = 0.1  # how often a running child's records are read: a test's start is seen at most this late
CHILD_STATUSES = ("passed", "failed", "error", "memory")  # the verdicts a child may report itself


def _verdict(
    index: int, test: dict, status: str, error_type=None, message="", tb="", actual=None, expected=None, duration=0.0
) -> dict:
    return {
        "index": index, "status": status, "test": test["display"], "error_type": error_type, "message": message,
        "traceback": tb, "input": test["input"], "expected": expected, "actual": actual, "duration_s": duration,
    }  # fmt: skip


def _describe_exit(status: int) -> tuple[str, str]:
    """(verdict status, message) for a child that died without finishing its report."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ("timeout" if sig == signal.SIGXCPU else "crashed"), f"killed by {signal.Signals(sig).name}"
    return "crashed", f"exited with code {os.waitstatus_to_exitcode(status)} before reporting"


class Scratch:
    """Where checks write: their working directory and the files that capture stdout/stderr.

    In the filesystem view the working directory is a fixed folder on a private tmpfs, reused while checks
    leave it untouched, and replaced by fresh tmpfs mounts (which drop any tree at once, however deep)
    after a check wrote anything; otherwise each check gets a new temporary folder, removed without
    recursion. stdout/stderr go to two memfds, emptied before each check."""

    def __init__(self, config: SandboxConfig, uid: int | None, in_view: bool):
        self.config, self.uid, self.in_view = config, uid, in_view
        self.out_fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdout", "stderr")]
        self.clean: tuple | None = None
        self.workdir = view.WORK if in_view else ""

    def _state(self) -> tuple:
        """What changes when a check writes anything: inodes in use on both tmpfs, the work dir's stat (its
        ctime moves with any change to it, xattrs and restored mtimes included)."""
        st = os.stat(self.workdir, follow_symlinks=False)
        used = [(fs.f_files - fs.f_ffree) for fs in map(os.statvfs, ("/tmp", "/dev/shm"))]
        return (*used, st.st_ino, st.st_mode, st.st_uid, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns)

    def prepare(self) -> None:
        """Empty output files, and the zygote itself in the next check's working directory (its children
        inherit the cwd, and outside the view ``HOME``/``TMPDIR`` naming it)."""
        for fd in self.out_fds:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        if not self.in_view:
            import tempfile  # only here: it pulls in shutil, bz2, lzma, zlib, which would make every fork dearer

            self.workdir = tempfile.mkdtemp(prefix="check-")
            self._own()
            os.chdir(self.workdir)
            os.environ.update(HOME=self.workdir, TMPDIR=self.workdir)
        elif self.clean is None:
            self._own()
            os.chdir(self.workdir)
            self.clean = self._state()

    def _own(self) -> None:
        if self.uid is not None:
            os.chown(self.workdir, self.uid, self.uid)

    def outputs(self) -> list[tuple[str, int]]:
        cap = self.config.output_cap_bytes
        return [(os.pread(fd, cap, 0).decode("utf-8", "replace"), os.fstat(fd).st_size) for fd in self.out_fds]

    def finish(self) -> None:
        """After a check (all its processes are gone): drop whatever it wrote."""
        if not self.in_view:
            os.chdir("/")
            limits.remove_tree(self.workdir)
        elif self._state() != self.clean:
            view.mount_scratch(self.config.tmpfs_bytes)
            self.clean = None  # the next ``prepare`` owns and enters the fresh work dir


class CheckRun:
    """Runs one check (a ``Check.wire()`` dict) to completion, possibly over several children."""

    def __init__(self, check: dict, zygote: Zygote):
        self.check, self.zygote, self.config = check, zygote, zygote.config
        self.tests = check["tests"]
        self.verdicts: list[dict | None] = [None] * len(self.tests)
        self.program = {"program_status": "passed", "program_error": ""}
        self.deadline = time.monotonic() + self.config.max_total_s

    def run(self) -> dict:
        t0 = time.monotonic()
        scratch = self.zygote.scratch
        scratch.prepare()
        try:
            start = self.spawn(0)
            while start < len(self.tests) and time.monotonic() < self.deadline:
                start = self.spawn(start)
            outputs = scratch.outputs()
        finally:
            scratch.finish()
        return self.report(outputs, time.monotonic() - t0, self.zygote.isolation)

    def report(self, outputs: list[tuple[str, int]], duration_s: float, isolation: dict) -> dict:
        """The check's result (an ``ExecutionResult`` as a dict); tests never reached are timeouts."""
        verdicts = [
            v or _verdict(i, t, "timeout", message="not run: the check's time budget was exhausted")
            for i, (v, t) in enumerate(zip(self.verdicts, self.tests))
        ]
        truncated = any(size >= self.config.output_cap_bytes for _, size in outputs)
        return {
            "verdicts": verdicts, **self.program, "stdout": outputs[0][0], "stderr": outputs[1][0],
            "output_truncated": truncated, "duration_s": duration_s, "isolation": isolation,
        }  # fmt: skip

    def spawn(self, start: int) -> int:
        """Run tests from ``start`` in a fresh child; returns the index to continue from."""
        # the records fd sits at a random fd above the child's RLIMIT_NOFILE (the program cannot dup2 onto it)
        random = os.urandom(18)
        nonce = random[:16].hex()  # (what secrets.token_hex does, without importing secrets into the zygote)
        oom_before = self.zygote.oom_kills()
        child = self.zygote.launch(self.check, start, 100 + int.from_bytes(random[16:], "big") % 900, random[:16])
        try:
            reason, loaded, current, in_test = self.watch(child.records, child.pid, child.exited, nonce, start)
        finally:
            status = self.zygote.end(child)
        if reason == "done":
            return len(self.tests)
        if reason == "memory" or self.zygote.oom_kills() > oom_before:
            verdict, message = "memory", f"the check exceeded its {self.config.memory_bytes >> 20} MiB memory limit"
        elif reason == "timeout":
            verdict, message = "timeout", f"exceeded the {self.config.timeout_s:g}s time limit"
        elif reason == "protocol":
            verdict, message = "crashed", "the sandboxed process sent a malformed or forged report"
        else:
            verdict, message = _describe_exit(status)
        return self.settle(start, loaded, current, verdict, message)

    def settle(self, start: int, loaded: bool, current: int, verdict: str, message: str) -> int:
        """After a child ended without finishing its report: blame the program (not loaded: every test from
        ``start`` gets ``verdict``) or the test it was in; returns the index to continue from."""
        if not loaded:
            self.program = {"program_status": verdict, "program_error": message}
            self.fill(start, verdict, "", message)
            return len(self.tests)
        if current < len(self.tests):
            self.verdicts[current] = _verdict(current, self.tests[current], verdict, message=message)
        return current + 1

    def fill(self, start: int, status: str, error_type: str | None, message: str) -> None:
        for i in range(start, len(self.tests)):
            self.verdicts[i] = _verdict(i, self.tests[i], status, error_type, message)

    def watch(self, fd: int, pid: int, pidfd: int | None, nonce: str, start: int) -> tuple[str, bool, int, bool]:
        """Read the child's records until it finishes, dies, breaks protocol, overruns a deadline or (without
        a memory cgroup) holds more memory than allowed. Returns (reason, program loaded, index of the test
        to blame/continue at, inside that test).

        The child appends its records to a memfd and the zygote sleeps until the child exits, reading them
        then, or every ``POLL_S`` while it runs (``WATCHDOG_S`` when it also measures memory): a check that
        finishes sooner wakes the zygote once, not once per test. A test's deadline counts from when its
        start was read, so a test may run up to ``timeout_s`` plus one poll interval."""
        records, buf, offset = Records(self, nonce, start), b"", 0
        deadline = time.monotonic() + self.config.timeout_s
        watchdog = self.zygote.group is None
        poll = min(POLL_S, self.config.timeout_s / 10, WATCHDOG_S if watchdog or pidfd is None else POLL_S)
        while True:
            wait = max(0.0, min(deadline, self.deadline, time.monotonic() + poll) - time.monotonic())
            if pidfd is not None:
                exited = bool(select.select([pidfd], [], [], wait)[0])
            else:
                time.sleep(wait)
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            while chunk := os.pread(fd, 1 << 16, offset):
                offset += len(chunk)
                *lines, buf = (buf + chunk).split(b"\n")
                if len(buf) > MAX_RECORD:
                    return "protocol", records.loaded, records.current, records.in_test
                for line in lines:
                    if reason := records.feed(line):
                        return reason, records.loaded, records.current, records.in_test
                    deadline = time.monotonic() + self.config.timeout_s
            if exited:
                return "eof", records.loaded, records.current, records.in_test
            if watchdog and limits.memory_in_use(self.zygote.check_pids()) > self.config.memory_bytes:
                return "memory", records.loaded, records.current, records.in_test
            if time.monotonic() >= min(deadline, self.deadline):
                return "timeout", records.loaded, records.current, records.in_test

    @staticmethod
    def parse(line: bytes, nonce: str) -> tuple | None:
        """A record minus its nonce, or None when it is malformed or carries the wrong nonce."""
        try:
            rec = loads(line.decode())
        except (ValueError, MemoryError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
        ok = type(rec) is list and len(rec) >= 2 and rec[0] == nonce
        ok = ok and all(x is None or type(x) in (str, int, float) for x in rec)
        return tuple(x[: FIELD_CAP * 40] if isinstance(x, str) else x for x in rec[1:]) if ok else None


def check_process(check: dict, start: int, records: int, nonce: str, rlimits: tuple, uid: int | None, parent: int,
                  weak_network: bool, streams: Streams) -> NoReturn:  # fmt: skip
    """In a forked check process: isolate, limit, then run the harness on tests ``start..``. Never returns.

    What a check process would only inherit is set up by the process that forks it (fds 0-2, the records fd
    at ``records``, the cwd, the environment, SIGXFSZ ignored): every line of Python run here, before the
    program, copies the pages it touches. ``parent`` is that process's pid as the child sees it."""
    try:
        os.setsid()
        os.closerange(3, records)
        os.closerange(records + 1, 1 << 16)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # (signal.signal would convert enums)
        adj = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(adj, b"1000")  # the OOM killer takes the check's processes before the zygote (or anything else)
        os.close(adj)
        limits.apply_child_limits(rlimits, uid, parent)
        if weak_network:
            limits.block_sockets()
        run_check(check, start, records, nonce, streams)
    finally:
        os._exit(70)


def kill_and_reap(pid: int, kill: Callable[[int], None]) -> int:
    """``kill`` every process of the check whose first process is ``pid`` (a child of this process); reap
    them all; return that child's status."""
    kill(pid)
    _, status = os.waitpid(pid, 0)
    give_up = time.monotonic() + 2.0
    while True:  # orphans are reparented here (init or subreaper): reap them too
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if reaped == 0:
            if time.monotonic() > give_up:
                return status
            kill(pid)
            time.sleep(0.001)


class Launched:
    """A check process as its ``CheckRun`` watches it: the fd its records are read from, the fd readable
    once it has exited (None: poll ``pid``), and its pid (None when another process forked it). (Not a
    ``NamedTuple``: making one compiles code, which would build the AST types at import, see ``warm_up``.)"""

    __slots__ = ("records", "exited", "pid")

    def __init__(self, records: int, exited: int | None, pid: int | None):
        self.records, self.exited, self.pid = records, exited, pid


class Records:
    """One child's report, read record by record into its ``CheckRun``: the program's load (``L``), then per
    test its start (``S``) and end (``E``), then ``D``. ``loaded``, ``current`` (the test to blame or continue
    at) and ``in_test`` say how far it got."""

    def __init__(self, run: CheckRun, nonce: str, start: int):
        self.run, self.nonce = run, nonce
        self.start, self.loaded, self.current, self.in_test = start, False, start, False

    def feed(self, line: bytes) -> str | None:
        """Take one record line: ``"done"`` (the report is complete), ``"protocol"`` (malformed, forged or out of
        order) or None (read on)."""
        run, current = self.run, self.current
        rec = run.parse(line, self.nonce)
        kind = rec[0] if rec else None
        if kind == "L" and not self.loaded and len(rec) == 4:
            self.loaded = True
            if rec[1] != "passed":
                run.program = {"program_status": rec[1], "program_error": f"{rec[2]}: {rec[3]}"}
                run.fill(self.start, rec[1], rec[2], rec[3])
                return "done"
        elif kind == "S" and self.loaded and not self.in_test and rec[1:] == (current,):
            self.in_test = True
        elif kind == "E" and self.in_test and len(rec) == 9 and rec[1] == current and rec[2] in CHILD_STATUSES:
            run.verdicts[current] = _verdict(current, run.tests[current], *rec[2:])
            self.current, self.in_test = current + 1, False
        elif kind == "D" and self.loaded and not self.in_test and current == len(run.tests):
            return "done"
        else:
            return "protocol"
        return None


class Zygote:
    """The state checks share: config, sandbox uid, isolation report, cgroup, scratch space."""

    def __init__(self, config: SandboxConfig, uid: int | None, isolation: dict, group: cgroup.CheckCgroup | None):
        self.config, self.uid, self.isolation, self.group = config, uid, isolation, group
        self.pid_namespace = isolation["pid"] == "namespace"
        self.pid = 1 if self.pid_namespace else os.getpid()  # the children's parent, as they see it
        self.weak_network = "netns" not in isolation["network"]
        self.scratch = Scratch(config, uid, isolation["filesystem"].startswith("view"))
        self.streams = Streams(config.output_cap_bytes)
        self._rlimits = limits.child_rlimits(config, uid)
        # The zygote's own fds 0-2 become what each check process's are (stdin /dev/null, stdout and stderr
        # the capture memfds), so a child inherits them; the requests move to another fd, and the zygote's
        # own error output (its tracebacks) keeps the original stderr.
        self.requests = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
        # (held here too: a child that replaces ``sys.stderr`` must not be the one to finalize it)
        self.log = sys.stderr = open(fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 3), "w", errors="backslashreplace")
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for target, source in ((0, null), (1, self.scratch.out_fds[0]), (2, self.scratch.out_fds[1])):
            os.dup2(source, target)
        os.close(null)
        _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # (inherited) oversized writes fail with EFBIG instead

    def rlimits(self) -> tuple:
        """The next check process's rlimits: fixed, except RLIMIT_NPROC without a uid of its own (the
        processes the zygote's uid already runs are counted in)."""
        if self.uid is None:
            return limits.child_rlimits(self.config, None)
        return self._rlimits

    def oom_kills(self) -> int:
        return self.group.oom_kills() if self.group is not None else 0

    def check_pids(self) -> list[int]:
        """Processes of the running check (for the memory watchdog)."""
        if self.pid_namespace:
            return [int(p) for p in os.listdir("/proc") if p.isdigit() and p != "1"]
        return limits.sandbox_pids(uid=self.uid) if self.uid is not None else []

    def launch(self, check: dict, start: int, records_at: int, nonce: bytes) -> Launched:
        """Fork a check process for tests ``start..`` of ``check``, with a records memfd of its own (a process
        that outlived an earlier one cannot write into its records) at an fd of at least ``records_at``."""
        memfd = os.memfd_create("records", os.MFD_CLOEXEC)
        records = fcntl.fcntl(memfd, fcntl.F_DUPFD_CLOEXEC, records_at)
        os.close(memfd)
        rlimits = self.rlimits()
        pid = os.fork()
        if pid == 0:
            check_process(check, start, records, nonce.hex(), rlimits, self.uid, self.pid, self.weak_network,
                          self.streams)  # fmt: skip
        try:
            pidfd = os.pidfd_open(pid)  # readable once the child has exited (Linux 5.3+)
        except (AttributeError, OSError):
            pidfd = None
        return Launched(records, pidfd, pid)

    def end(self, child: Launched) -> int:
        """Kill and reap every process of the check; its first process's status."""
        os.close(child.records)
        if child.exited is not None:
            os.close(child.exited)
        return kill_and_reap(child.pid, self.kill_check)

    def kill_check(self, pid: int) -> None:
        """SIGKILL the check's processes. As PID 1 of its namespace the zygote's ``kill(-1)`` reaches exactly
        the namespace's other processes (a fork racing it is cancelled by the kernel); without a namespace,
        the child's group and every process of the sandbox uid or, not root, of the child's session."""
        if self.pid_namespace:
            _kill_namespace(pid)
            return
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        limits.kill_all(uid=self.uid) if self.uid is not None else limits.kill_all(sid=pid)

    def prepare_children(self) -> None:
        """Make this process what check processes are forked from: warm, frozen, with their environment."""
        warm_up(PRELOAD + ("socket",) if self.weak_network else PRELOAD)  # block_sockets needs socket
        gc.collect()
        gc.freeze()  # the children's collections skip the zygote's objects: fewer copy-on-write faults
        os.environ.clear()
        os.environ.update(CHILD_ENV, **({"HOME": view.WORK, "TMPDIR": view.WORK} if self.scratch.in_view else {}))

    def next_check(self) -> dict:
        return recv_request(self.requests)["check"]

    def serve(self, channel_out: int) -> None:
        self.prepare_children()
        weak = self.weak_network or self.isolation["filesystem"] == "none"
        if self.config.require_isolation and weak:
            send_msg(channel_out, {"error": f"required isolation unavailable: {self.isolation}"})
            return
        send_msg(channel_out, {"isolation": self.isolation})
        while True:
            try:
                check = self.next_check()
            except ChannelClosed:
                return
            send_msg(channel_out, CheckRun(check, self).run())


# A forker command: (first test, the records fd's number in the check process, the request's length, nonce);
# a negative first test asks to kill the running check process.
_COMMAND = struct.Struct("<iii16s")
_KILL = _COMMAND.pack(-1, 0, 0, bytes(16))


class Keeper(Zygote):
    """The zygote split in two, where it has a filesystem view: this process keeps the checks' bookkeeping
    (requests, records, deadlines, scratch, results) and forks once, at start, the forker, PID 1 of a PID
    namespace nested in this one, which forks every check process and does nothing else between forks.

    A fork write-protects every page of the process that forks, which then faults on each page it writes
    next: the zygote's bookkeeping took about 240 such faults per check, the forker's loop takes about 65,
    and this process, which never forks again, none. The forker's ``kill(-1)`` reaches exactly its namespace,
    the check's processes; they cannot see or signal this process. It talks to the forker over two pipes
    (commands in, exit statuses out) and hands each request over in a memfd the check process reads itself."""

    def __init__(self, config: SandboxConfig, uid: int | None, isolation: dict, group, channel_out: int):
        super().__init__(config, uid, isolation, group)
        self.check_fd = os.memfd_create("check", os.MFD_CLOEXEC)  # the current request, for the check process
        self.records = os.memfd_create("records", os.MFD_CLOEXEC)  # emptied before each check process
        self.length = 0  # of the current request in ``check_fd``
        commands, self.commands = os.pipe()
        self.statuses, statuses = os.pipe()
        limits.unshare(limits.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd in (self.commands, self.statuses, self.requests, channel_out):
                    os.close(fd)
                Forker(self, commands, statuses).serve()
                code = 0
            except BaseException:
                traceback.print_exc(file=self.log)
            finally:
                os._exit(code)
        os.close(commands)
        os.close(statuses)
        self.forker = pid

    def prepare_children(self) -> None:
        """Nothing: the forker does it."""

    def next_check(self) -> dict:
        body = read_request(self.requests)
        os.ftruncate(self.check_fd, 0)
        os.pwrite(self.check_fd, body, 0)
        self.length = len(body)
        return decode_request(body)["check"]

    def launch(self, check: dict, start: int, records_at: int, nonce: bytes) -> Launched:
        """Have the forker fork a check process for tests ``start..`` of the current request, its records on
        the shared records memfd (emptied first: every process of the previous check is gone) at fd
        ``records_at``."""
        os.ftruncate(self.records, 0)
        os.lseek(self.records, 0, os.SEEK_SET)
        os.write(self.commands, _COMMAND.pack(start, records_at, self.length, nonce))
        return Launched(self.records, self.statuses, None)

    def end(self, child: Launched) -> int:
        """Unless the check process already exited (its status is waiting), have the forker kill it; the
        forker kills and reaps every process of the check before it reports the status."""
        if not select.select([self.statuses], [], [], 0)[0]:
            os.write(self.commands, _KILL)
        status = os.read(self.statuses, 4)
        if len(status) != 4:
            raise ChannelClosed("the forker died")
        return int.from_bytes(status, "little", signed=True)


class Forker:
    """PID 1 of the check processes' PID namespace, forked by the ``Keeper``: made warm once (imports,
    ``warm_up``, frozen objects), then per command one fork, one wait (for the check process's exit or a
    kill), ``kill(-1)`` and reaping, and the status sent back."""

    def __init__(self, keeper: Keeper, commands: int, statuses: int):
        self.keeper, self.commands, self.statuses = keeper, commands, statuses

    def serve(self) -> None:
        keeper = self.keeper
        if keeper.group is not None:
            keeper.group.join()
        # /proc of this namespace over the keeper's: check processes see their own pids, and the keeper's
        # memory watchdog counts every process here but this one, PID 1
        limits.mount("proc", "/proc", "proc", limits.MS_NOSUID | limits.MS_NODEV | limits.MS_NOEXEC, "hidepid=2")
        Zygote.prepare_children(keeper)  # (the zygote's own: the keeper's does nothing, as it happens here)
        commands, size, records, check_fd = self.commands, _COMMAND.size, keeper.records, keeper.check_fd
        while True:
            command = os.read(commands, size)
            if not command:
                return
            start, records_at, length, nonce = _COMMAND.unpack(command)
            if start < 0:
                continue  # a kill for a check process that had already exited
            os.chdir(view.WORK)  # (after a check wrote, a fresh tmpfs replaced the one the old cwd is on)
            rlimits = keeper.rlimits()
            os.dup2(records, records_at)
            pid = os.fork()
            if pid == 0:
                try:
                    check = decode_request(os.pread(check_fd, length, 0))["check"]
                except BaseException:
                    os._exit(70)
                check_process(check, start, records_at, nonce.hex(), rlimits, keeper.uid, 1, keeper.weak_network,
                              keeper.streams)  # fmt: skip
            os.close(records_at)
            pidfd = os.pidfd_open(pid)
            # until the check process exits or the keeper asks for a kill (or closed its end: it is gone)
            gone = commands in select.select([commands, pidfd], [], [])[0] and not os.read(commands, size)
            status = kill_and_reap(pid, _kill_namespace)
            os.close(pidfd)
            if gone:
                return
            os.write(self.statuses, status.to_bytes(4, "little", signed=True))


def _has_pidfd() -> bool:
    """Whether the kernel gives pidfds (Linux 5.3+), which the forker waits on."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def _kill_namespace(_pid: int) -> None:
    os.kill(-1, signal.SIGKILL)  # as PID 1: every other process of the namespace (a racing fork is cancelled)


# A trusted check the zygote runs itself before serving, over the harness's common paths: split asserts whose
# values (of the usual types) are sent to the parent, and an unsplit test run in the child.
_HOLES = ("f(1)", "f('a')", "f([1, 2])", "f(1.5)", "f(None)", "f(True)", "(f(1), {'k': 2})")
WARM_UP_CHECK = {
    "program": "def f(x):\n    return x\n", "setup": "", "prelude": "", "entry_point": None, "stdio": False,
    "names": ["f"],
    "tests": [
        *({"source": "", "display": "", "input": "", "stdin": None, "holes": [hole], "prefix": "", "fn_name": None,
           "call": None, "stdout_cap": 1024} for hole in _HOLES),
        {"source": "assert f(2) == 2\n", "display": "", "input": "", "stdin": None, "holes": [], "prefix": "",
         "fn_name": None, "call": None, "stdout_cap": 1024},
    ],
}  # fmt: skip
WARM_UP_ROUNDS = 12  # CPython 3.11 quickens a code object after 8 calls


def warm_up(modules: tuple[str, ...], rounds: int = WARM_UP_ROUNDS) -> None:
    """Do in the zygote, once, what every check process would otherwise do first, each time copying the pages
    it writes: import ``modules``; ``compile`` once, which builds the ~120 classes of the AST node types
    (``PyAST_Check`` makes them on a process's first ``compile``: about 2 ms and 130 copied pages per check
    when left to the children); and run the harness on ``WARM_UP_CHECK`` ``rounds`` times, so its code
    objects are quickened and their instructions specialized (CPython 3.11 writes both into the code
    objects as they run) and a check process starts with them warm."""
    for module in modules:
        importlib.import_module(module)
    compile("", "<warm-up>", "exec")
    records, saved = os.memfd_create("warm-up", os.MFD_CLOEXEC), (sys.stdout, sys.stderr, sys.stdin)
    try:
        streams = Streams(1024)
        for _ in range(rounds):
            os.ftruncate(records, 0)
            run_tests(WARM_UP_CHECK, 0, records, "0" * 32, streams)
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved
        os.close(records)


def _inner(config: SandboxConfig, uid: int | None, isolation: dict, group, channel_out: int, alive: int) -> None:
    """The zygote proper, PID 1 of its PID namespace: join the cgroup, enter the view, serve checks."""
    limits.prctl(limits.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([alive], [], [], 0)[0]:
        os._exit(1)  # the outer process died before PDEATHSIG was armed
    os.close(alive)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # init ignores default-action signals from its namespace
    isolation["pid"] = "namespace"
    if group is not None:
        group.open()  # (the forker, or this process, joins it once the host's filesystem is out of reach)
    try:
        limits.unshare(limits.CLONE_NEWNS)  # its own: the outer process keeps the host's filesystem
    except OSError as e:
        isolation["warnings"].append(f"no mount namespace: {e}")
    else:
        try:
            sys.path[:] = view.build(config.tmpfs_bytes, config.packages)
            sys.path_importer_cache.clear()
            isolation["filesystem"] = "view: interpreter, stdlib, allowed packages; private /tmp, /proc"
        except ModuleNotFoundError as e:
            send_msg(channel_out, {"error": str(e)})
            return
        except OSError as e:
            isolation["warnings"].append(f"no filesystem view: {e}")
            try:
                limits.read_only_filesystem(config.tmpfs_bytes)
                limits.mount("proc", "/proc", "proc", limits.MS_NOSUID | limits.MS_NODEV, "hidepid=2")
                isolation["filesystem"] = "read-only mounts + private tmpfs"
            except OSError as e2:
                isolation["warnings"].append(f"no private filesystem: {e2}")
    if isolation["filesystem"].startswith("view") and _has_pidfd():
        Keeper(config, uid, isolation, group, channel_out).serve(channel_out)
        return
    if group is not None:
        group.join()
    Zygote(config, uid, isolation, group).serve(channel_out)


def main() -> None:
    """Handshake ({config, parent_pid} -> {isolation}), then answer one result per check request."""
    channel_out = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    hello = recv_request(0)
    config = SimpleNamespace(**hello["config"])
    limits.prctl(limits.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != hello["parent_pid"]:
        sys.exit(1)
    uid = limits.sandbox_uid(config.uid_base, os.getpid())
    isolation: dict = {"network": "harness socket block (weak)", "filesystem": "none", "pid": "none", "uid": uid}
    isolation["warnings"] = []
    group, why = None, "use_cgroup=False"
    if config.use_cgroup:  # the zygote counts as one task of the check's cgroup
        group, why = cgroup.create(os.getpid(), config.memory_bytes, config.max_processes + 1, config.cpu_weight)
    isolation["resources"] = group.describe if group else f"rlimits per process + RSS watchdog (no cgroup: {why})"
    try:
        isolation["network"] = limits.enter_namespaces()
    except OSError as e:
        isolation["warnings"].append(f"no network/mount/PID namespace: {e}")
        try:
            limits.prctl(limits.PR_SET_CHILD_SUBREAPER, 1)  # orphans are reparented here and reaped
        except OSError as e2:
            isolation["warnings"].append(f"no subreaper: {e2}")
        if group is not None:  # joining from this process: the outer and the zygote are one
            group.join()
        Zygote(config, uid, isolation, group).serve(channel_out)
        return
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        code = 1
        try:
            _inner(config, uid, isolation, group, channel_out, alive_r)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    for fd in (alive_r, channel_out, 0):
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    if group is not None:
        group.remove(wait_s=1.0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__":
    main()
