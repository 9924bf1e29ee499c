"""The parent side: a pool of zygote workers behind a sync, batch, future and asyncio API.

Each worker is one long-lived zygote (``python -m trl_mars.sandbox.zygote``) that forks a child per check,
so a check costs a fork, not an interpreter start-up. A check goes to an idle worker if there is one, else
it queues in the pipe of a busy one (at most ``PIPELINE`` per worker), so a zygote starts its next check
as soon as it has sent a result, without waiting for the parent's round trip. A worker that dies, hangs or
breaks protocol is killed (with every process of its sandbox uid) and restarted on next use; the check it
was running comes back with ``sandbox_error`` set and every test ``crashed``, and one queued behind it
(never started) is run again. Nothing here ever raises into the caller for a sandbox failure.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from trl_mars.sandbox import limits
from trl_mars.sandbox.cases import Check, make_check, same_output
from trl_mars.sandbox.config import SandboxConfig
from trl_mars.sandbox.protocol import ChannelClosed, recv_msg, send_msg
from trl_mars.sandbox.trusted import FIELD_CAP, Decision, decide, same_value, show
from trl_mars.sandbox.values import decode
from trl_mars.sandbox.verdict import ExecutionResult, Status, TestVerdict

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_GRACE_S = 10.0  # how much longer than a check's own budget the parent waits before declaring the worker hung
PIPELINE = 2  # checks in flight per worker: the one running and one queued behind it


class Restarted(Exception):
    """The worker was restarted before a queued check's turn came: the check never started."""


class SandboxUnavailable(RuntimeError):
    """A worker could not start, or could not provide the isolation the config requires."""


class Worker:
    """One zygote process, started lazily and restarted after any failure."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.isolation: dict = {}
        # Requests are answered in the order they were sent: ticket i reads the i-th reply of its zygote.
        self._send_lock, self._turn, self._life = threading.Lock(), threading.Condition(), threading.RLock()
        self._sent = self._answered = self._generation = 0

    def start(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _PACKAGE_ROOT, "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trl_mars.sandbox.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd="/",
        )
        hello = {"config": self.config.to_dict(), "parent_pid": os.getpid()}
        send_msg(self.proc.stdin.fileno(), hello)
        reply = recv_msg(self.proc.stdout.fileno(), time.monotonic() + 60)
        if "error" in reply:
            self.stop()
            raise SandboxUnavailable(reply["error"])
        self.isolation = reply["isolation"]

    def run(self, wire: dict) -> dict:
        """Send one check and read its result once the checks sent before it have theirs. A failure stops the
        worker (it restarts on next use) and raises; ``Restarted`` means the worker was stopped before this
        check's turn, so it never ran."""
        with self._send_lock:
            with self._life:
                if self._sent == self._answered and (self.proc is None or self.proc.poll() is not None):
                    self.stop()
                    try:
                        self.start()
                    except BaseException:
                        self.stop()
                        raise
                with self._turn:
                    proc, ticket, generation = self.proc, self._sent, self._generation
                    self._sent += 1
            try:
                send_msg(proc.stdin.fileno(), {"check": wire})
            except (OSError, ValueError):
                self.stop(generation)
                if ticket == 0:
                    raise
                raise Restarted from None  # the zygote died under an earlier check (which reports it)
        with self._turn:
            self._turn.wait_for(lambda: self._answered == ticket or self._generation != generation)
            if self._generation != generation:
                raise Restarted
        try:  # the zygote starts this check once it has answered the previous one: the budget counts from now
            budget = self.config.max_total_s + len(wire["tests"]) * 0.05 + _GRACE_S
            return recv_msg(proc.stdout.fileno(), time.monotonic() + budget)
        except BaseException:
            self.stop(generation)
            raise
        finally:
            with self._turn:
                if self._generation == generation:
                    self._answered += 1
                self._turn.notify_all()

    def stop(self, generation: int | None = None, graceful: bool = False) -> None:
        """Stop the zygote (only if it is still the one of ``generation``, when given): when ``graceful``, by
        closing its channel (it exits and removes its cgroup), else (or if it does not exit within a second)
        by SIGKILL, which takes its PID namespace with it; without a PID namespace, anything still running
        under this worker's sandbox uid is killed too. Checks queued behind are released (``Restarted``)."""
        with self._life:
            with self._turn:
                if generation is not None and generation != self._generation:
                    return  # already stopped (and maybe restarted) since
                self._generation += 1
                self._sent = self._answered = 0
                self._turn.notify_all()
            proc, self.proc = self.proc, None
            if proc is None:
                return
            if graceful:
                proc.stdin.close()
                try:
                    proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                pipe.close()
            uid = limits.sandbox_uid(self.config.uid_base, proc.pid)
            if uid is not None and self.isolation.get("pid") != "namespace":
                limits.kill_all(uid=uid)


def _judge_stdio(verdict: TestVerdict, case) -> None:
    """stdin/stdout cases are judged here, so the expected output never enters the sandbox."""
    verdict.expected = case.expected_stdout
    truncated = verdict.message == "output truncated"
    if verdict.passed and (truncated or not same_output(verdict.actual or "", case.expected_stdout)):
        verdict.status, verdict.message = Status.FAILED, "output too long" if truncated else "wrong output"


@functools.lru_cache(maxsize=1 << 14)
def _expected_value(text: str):
    return json.loads(text)


def _decide_call(case, values: list) -> Decision:
    """Call-based cases (LiveCodeBench functional): the returned value, tuples as lists, ``==`` the JSON
    expected value (or its only element, for TACO's ``[value]`` outputs)."""
    expected = _expected_value(case.expected_json)
    value = values[0] if len(values) == 1 else None
    ok = len(values) == 1 and (
        same_value(value, expected)
        or (case.wrapped and type(expected) is list and len(expected) == 1 and same_value(value, expected[0]))
    )
    return Decision(ok, show(value), case.expected_json[:FIELD_CAP], None if ok else "AssertionError")


def _judge_values(verdict: TestVerdict, case) -> None:
    """Split and call-based tests: the child only reported values; decide the verdict here. A child status
    other than ``passed`` (an exception, a timeout) stands: it can never become a pass."""
    if not verdict.passed:
        return
    try:
        values = decode(verdict.actual)
    except ValueError:
        verdict.status, verdict.actual = Status.FAILED, None
        verdict.message = "the sandboxed process reported no valid value"
        return
    try:
        decision = _decide_call(case, values) if case.call is not None else decide(case.judge, values)
    except Exception as e:  # noqa: BLE001 - e.g. a comparison too deep to run; never raise into the caller
        decision = Decision(False, None, None, type(e).__name__, f"the value could not be judged: {e}"[:FIELD_CAP])
    verdict.actual, verdict.expected = decision.actual, decision.expected
    if not decision.passed:
        failed = decision.error_type in (None, "AssertionError")
        verdict.status = Status.FAILED if failed else Status.ERROR
        verdict.error_type = None if failed else decision.error_type
        verdict.message = decision.message or ("wrong value" if case.call is not None else "")


def judge(result: ExecutionResult, check: Check) -> None:
    """Decide, in this trusted process, every verdict the sandbox cannot be trusted with."""
    for verdict, case in zip(result.verdicts, check.tests):
        verdict.test, verdict.trusted = case.display, case.trusted
        if case.expected_stdout is not None:
            _judge_stdio(verdict, case)
        elif case.judge is not None or case.call is not None:
            _judge_values(verdict, case)


def crashed_result(check: Check, error: str) -> ExecutionResult:
    """The result reported when the sandbox itself failed."""
    verdicts = [
        TestVerdict(i, Status.CRASHED, test=c.display, message=error, input=c.input, trusted=c.trusted)
        for i, c in enumerate(check.tests)
    ]
    return ExecutionResult(verdicts, Status.CRASHED, program_error=error, sandbox_error=error)


def _shutdown(executor: ThreadPoolExecutor, workers: list[Worker]) -> None:
    executor.shutdown(wait=True, cancel_futures=True)
    for worker in workers:
        worker.stop(graceful=True)


class CheckRunner:
    """What every sandbox offers over its ``_execute(check)`` (run on the ``_executor`` threads): ``submit``,
    ``run``, ``arun`` and ``run_batch``. ``Sandbox`` runs checks locally, ``remote.RemoteSandbox`` on a server."""

    _executor: ThreadPoolExecutor

    def _execute(self, check: Check) -> ExecutionResult:
        raise NotImplementedError

    def submit(self, program: str, tests, entry_point: str | None = None, setup: str = "") -> Future[ExecutionResult]:
        """Schedule one check; the future never raises for sandbox failures."""
        return self._executor.submit(self._execute, make_check(program, tests, entry_point, setup))

    def run(self, program: str, tests, entry_point: str | None = None, setup: str = "") -> ExecutionResult:
        return self.submit(program, tests, entry_point, setup).result()

    async def arun(self, program: str, tests, entry_point: str | None = None, setup: str = "") -> ExecutionResult:
        """``await``-able ``run``: the check runs on the pool's threads, the event loop stays free."""
        import asyncio  # imported here so zygotes (which import this package) stay small and fork fast

        return await asyncio.wrap_future(self.submit(program, tests, entry_point, setup))

    def run_batch(self, items: Iterable[Check | tuple]) -> list[ExecutionResult]:
        """Run many checks concurrently; ``items`` are ``Check`` or ``(program, tests[, entry_point[, setup]])``."""
        futures = [
            self._executor.submit(self._execute, make_check(*item) if isinstance(item, tuple) else item)
            for item in items
        ]
        return [f.result() for f in futures]


class Sandbox(CheckRunner):
    """Run untrusted programs against tests, ``config.concurrency`` checks at a time.

    ``tests`` may be a list of assert snippets, HumanEval ``check`` code (with ``entry_point``), a list of
    ``{"input", "output"}`` stdin/stdout cases, or a prepared ``Check`` (see ``cases.make_check``)."""

    def __init__(self, config: SandboxConfig | None = None, **overrides):
        self.config = replace(config or SandboxConfig(), **overrides)
        self._workers = [Worker(self.config) for _ in range(self.config.concurrency)]
        self._load = [0] * len(self._workers)  # checks in flight per worker
        self._slots = threading.Condition()
        self._executor = ThreadPoolExecutor(PIPELINE * len(self._workers), thread_name_prefix="sandbox")
        self._finalizer = weakref.finalize(self, _shutdown, self._executor, self._workers)

    def _acquire(self) -> int:
        """The least loaded worker (an idle one if any), waiting while every worker has ``PIPELINE`` checks."""
        with self._slots:
            self._slots.wait_for(lambda: min(self._load) < PIPELINE)
            index = self._load.index(min(self._load))
            self._load[index] += 1
            return index

    def _release(self, index: int) -> None:
        with self._slots:
            self._load[index] -= 1
            self._slots.notify()

    def _execute(self, check: Check) -> ExecutionResult:
        wire = check.wire(self.config.output_cap_bytes)
        while True:
            index = self._acquire()
            worker = self._workers[index]
            try:
                result = ExecutionResult(**worker.run(wire))
                break
            except Restarted:
                continue  # queued behind a check that broke its worker; it never ran: run it again
            except (ChannelClosed, TimeoutError, OSError, SandboxUnavailable, ValueError, TypeError) as e:
                return crashed_result(check, f"sandbox worker failed: {type(e).__name__}: {e}")
            finally:
                self._release(index)
        judge(result, check)
        return result

    def start(self) -> dict:
        """Start every worker now (otherwise they start on first use); returns the isolation in force."""
        for worker in self._workers:
            if worker.proc is None:
                worker.start()
        return self._workers[0].isolation

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
