"""The fork server: a pre-imported Python process that forks one fresh, limited child per check.

Started by ``pool.Worker`` as ``python -m trl_mars.sandbox.zygote``; talks over stdin/stdout with
``protocol`` messages. It enters its namespaces once, then for each check forks a child (new session,
rlimits, own uid, private cwd, scrubbed env, stdin on /dev/null) that runs ``harness.run_check``. It watches
the child's records with per-test deadlines; when a test times out or the child dies, that test gets its
verdict and a new child continues with the next test. Every process of the check is killed and reaped.
"""

from __future__ import annotations

import ast
import fcntl
import importlib
import os
import secrets
import select
import shutil
import signal
import sys
import tempfile
import time

from trl_mars.sandbox import limits
from trl_mars.sandbox.config import SandboxConfig
from trl_mars.sandbox.harness import FIELD_CAP, run_check
from trl_mars.sandbox.protocol import ChannelClosed, recv_msg, send_msg

# Imported once here so checks do not pay for them (and so the forked children share their pages).
PRELOAD = ("bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools", "hashlib", "heapq",
           "itertools", "json", "math", "operator", "random", "re", "statistics", "string", "typing")  # fmt: skip
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
MAX_RECORD = 1 << 22
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


class CheckRun:
    """Runs one check (a ``Check.wire()`` dict) to completion, possibly over several children."""

    def __init__(self, check: dict, config: SandboxConfig, uid: int | None, isolation: dict):
        self.check, self.config, self.uid, self.isolation = check, config, uid, isolation
        self.tests = check["tests"]
        self.verdicts: list[dict | None] = [None] * len(self.tests)
        self.program = {"program_status": "passed", "program_error": ""}
        self.deadline = time.monotonic() + config.max_total_s

    def run(self) -> dict:
        t0 = time.monotonic()
        self.workdir = tempfile.mkdtemp(prefix="check-")
        self.outdir = tempfile.mkdtemp(prefix="out-")
        if self.uid is not None:
            os.chown(self.workdir, self.uid, self.uid)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.out_fds = [os.open(os.path.join(self.outdir, name), flags, 0o600) for name in ("stdout", "stderr")]
        try:
            start = self.spawn(0)
            while start < len(self.tests) and time.monotonic() < self.deadline:
                start = self.spawn(start)
            outputs = [self.read_output(fd, name) for fd, name in zip(self.out_fds, ("stdout", "stderr"))]
        finally:
            for fd in self.out_fds:
                os.close(fd)
            shutil.rmtree(self.workdir, ignore_errors=True)
            shutil.rmtree(self.outdir, ignore_errors=True)
        verdicts = [
            v or _verdict(i, t, "timeout", message="not run: the check's time budget was exhausted")
            for i, (v, t) in enumerate(zip(self.verdicts, self.tests))
        ]
        truncated = any(size >= self.config.output_cap_bytes for _, size in outputs)
        return {
            "verdicts": verdicts, **self.program, "stdout": outputs[0][0], "stderr": outputs[1][0],
            "output_truncated": truncated, "duration_s": time.monotonic() - t0, "isolation": self.isolation,
        }  # fmt: skip

    def read_output(self, fd: int, name: str) -> tuple[str, int]:
        size = os.fstat(fd).st_size
        with open(os.path.join(self.outdir, name), "rb") as f:
            return f.read(self.config.output_cap_bytes).decode("utf-8", "replace"), size

    def child(self, start: int, wfd: int, nonce: str) -> None:
        """In the forked child: isolate, limit, then run the harness. Never returns."""
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for target, source in ((0, null), (1, self.out_fds[0]), (2, self.out_fds[1])):
                os.dup2(source, target)
            fd = fcntl.fcntl(wfd, fcntl.F_DUPFD_CLOEXEC, 100 + secrets.randbelow(900))
            os.closerange(3, fd)
            os.closerange(fd + 1, 1 << 16)
            os.chdir(self.workdir)
            os.environ.clear()
            os.environ.update(CHILD_ENV, HOME=self.workdir, TMPDIR=self.workdir)
            limits.apply_child_limits(self.config, self.uid)
            if "netns" not in self.isolation["network"]:
                limits.block_sockets()
            run_check(self.check, start, fd, nonce, self.config.output_cap_bytes)
        finally:
            os._exit(70)

    def spawn(self, start: int) -> int:
        """Run tests from ``start`` in a fresh child; returns the index to continue from."""
        rfd, wfd = os.pipe()
        nonce = secrets.token_hex(16)
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            self.child(start, wfd, nonce)
        os.close(wfd)
        try:
            reason, loaded, current, in_test = self.watch(rfd, nonce, start)
        finally:
            os.close(rfd)
        status = self.kill_and_reap(pid)
        if reason == "done":
            return len(self.tests)
        if reason == "timeout":
            verdict, message = "timeout", f"exceeded the {self.config.timeout_s:g}s time limit"
        elif reason == "protocol":
            verdict, message = "crashed", "the sandboxed process sent a malformed or forged report"
        else:
            verdict, message = _describe_exit(status)
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

    def watch(self, rfd: int, nonce: str, start: int) -> tuple[str, bool, int, bool]:
        """Read the child's records until it finishes, dies, breaks protocol or overruns a deadline.
        Returns (reason, program loaded, index of the test to blame/continue at, inside that test)."""
        loaded, current, in_test, buf = False, start, False, b""
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            wait = min(deadline, self.deadline) - time.monotonic()
            if wait <= 0:
                return "timeout", loaded, current, in_test
            if not select.select([rfd], [], [], wait)[0]:
                continue
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                return "eof", loaded, current, in_test
            *lines, buf = (buf + chunk).split(b"\n")
            if len(buf) > MAX_RECORD:
                return "protocol", loaded, current, in_test
            for line in lines:
                rec = self.parse(line, nonce)
                kind = rec[0] if rec else None
                if kind == "L" and not loaded and len(rec) == 4:
                    loaded = True
                    if rec[1] != "passed":
                        self.program = {"program_status": rec[1], "program_error": f"{rec[2]}: {rec[3]}"}
                        self.fill(start, rec[1], rec[2], rec[3])
                        return "done", loaded, current, in_test
                elif kind == "S" and loaded and not in_test and rec[1:] == (current,):
                    in_test = True
                elif kind == "E" and in_test and len(rec) == 9 and rec[1] == current and rec[2] in CHILD_STATUSES:
                    self.verdicts[current] = _verdict(current, self.tests[current], *rec[2:])
                    current, in_test = current + 1, False
                elif kind == "D" and loaded and not in_test and current == len(self.tests):
                    return "done", loaded, current, in_test
                else:
                    return "protocol", loaded, current, in_test
                deadline = time.monotonic() + self.config.timeout_s

    @staticmethod
    def parse(line: bytes, nonce: str) -> tuple | None:
        """A record minus its nonce, or None when it is malformed or carries the wrong nonce."""
        try:
            rec = ast.literal_eval(line.decode())
        except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
            return None
        ok = isinstance(rec, tuple) and len(rec) >= 2 and rec[0] == nonce
        ok = ok and all(x is None or type(x) in (str, int, float) for x in rec)
        return tuple(x[: FIELD_CAP * 40] if isinstance(x, str) else x for x in rec[1:]) if ok else None

    def kill_and_reap(self, pid: int) -> int:
        """SIGKILL the child's group and everything running as the sandbox uid; reap; return its status."""
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.kill_escapees(pid)
        _, status = os.waitpid(pid, 0)
        give_up = time.monotonic() + 2.0
        while True:  # orphans are reparented to this subreaper: reap them too
            try:
                reaped, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if reaped == 0:
                if time.monotonic() > give_up:
                    return status
                self.kill_escapees(pid)
                time.sleep(0.005)

    def kill_escapees(self, sid: int) -> None:
        """Kill processes that left the process group: by uid when we have one, else by session."""
        if self.uid is None:
            limits.kill_all(sid=sid)
            return
        # With real and effective uid set to the sandbox uid, kill(-1) reaches exactly that uid's processes
        # (not this process, not root's); the saved uid 0 lets us switch back. No fork needed.
        os.setresuid(self.uid, self.uid, 0)
        try:
            for _ in range(3):  # a fork racing the first pass is caught by the next
                os.kill(-1, signal.SIGKILL)
        finally:
            os.setresuid(0, 0, 0)


def main() -> None:
    """Handshake ({config, parent_pid} -> {isolation}), then answer one result per check request."""
    channel_out = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    hello = recv_msg(0)
    config = SandboxConfig(**hello["config"])
    limits.prctl(limits.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != hello["parent_pid"]:
        sys.exit(1)
    isolation = limits.isolate_zygote(config.tmpfs_bytes)
    uid = limits.sandbox_uid(config.uid_base, os.getpid())
    isolation["uid"] = uid
    if uid is not None and isolation["filesystem"] != "none":
        sys.path[:] = limits.expose_import_paths(sys.path)
        sys.path_importer_cache.clear()
    for module in PRELOAD:
        importlib.import_module(module)
    os.environ.clear()
    os.environ.update(CHILD_ENV)
    weak = "netns" not in isolation["network"] or isolation["filesystem"] == "none"
    if config.require_isolation and weak:
        send_msg(channel_out, {"error": f"required isolation unavailable: {isolation}"})
        return
    send_msg(channel_out, {"isolation": isolation})
    while True:
        try:
            request = recv_msg(0)
        except ChannelClosed:
            return
        send_msg(channel_out, CheckRun(request["check"], config, uid, isolation).run())


if __name__ == "__main__":
    main()
