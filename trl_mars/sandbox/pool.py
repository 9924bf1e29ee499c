"""The parent side: a pool of zygote workers behind a sync, batch, future and asyncio API.

Each worker is one long-lived zygote (``python -m trl_mars.sandbox.zygote``) that forks a child per check,
so a check costs a fork, not an interpreter start-up. One dispatcher thread per ``Sandbox`` owns every
worker's pipes: it hands a check to an idle worker if there is one, else queues it in the pipe of a busy one
(at most ``PIPELINE`` per worker, so a zygote starts its next check as soon as it has sent a result), reads
the results as they come, judges them and completes the futures; no thread per check waits on a pipe. A
worker that dies, hangs or breaks protocol is killed (with every process of its sandbox uid) and restarted
on next use; the check it was running comes back with ``sandbox_error`` set and every test ``crashed``, and
the checks queued behind it (never started) run again. Nothing here ever raises into the caller for a
sandbox failure.
"""

from __future__ import annotations

import functools
import json
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from trl_mars.sandbox import limits
from trl_mars.sandbox.cases import Check, make_check, same_output
from trl_mars.sandbox.config import SandboxConfig
from trl_mars.sandbox.harness import compiled_tests
from trl_mars.sandbox.protocol import ChannelClosed, recv_msg, request, send_request, unframe
from trl_mars.sandbox.trusted import FIELD_CAP, Decision, decide, same_value, show
from trl_mars.sandbox.values import decode
from trl_mars.sandbox.verdict import ExecutionResult, Status, TestVerdict

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_GRACE_S = 10.0  # how much longer than a check's own budget the parent waits before declaring the worker hung
PIPELINE = 2  # checks in flight per worker: the one running and one queued behind it


class SandboxUnavailable(RuntimeError):
    """A worker could not start, or could not provide the isolation the config requires."""


class Worker:
    """One zygote process, started lazily and restarted after any failure."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.isolation: dict = {}
        # owned by the dispatcher thread: the checks sent and not yet answered (answered in this order), the
        # bytes still to write and read, and when the first in line must be answered
        self.inflight: deque[tuple[Check, Future]] = deque()
        self.outbox, self.inbox = bytearray(), bytearray()
        self.deadline = 0.0

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
        send_request(self.proc.stdin.fileno(), hello)
        reply = recv_msg(self.proc.stdout.fileno(), time.monotonic() + 60)
        if "error" in reply:
            self.stop()
            raise SandboxUnavailable(reply["error"])
        self.isolation = reply["isolation"]

    def budget(self, check: Check) -> float:
        """How long the parent waits for a check's result, from when the zygote starts it."""
        return self.config.max_total_s + len(check.tests) * 0.05 + _GRACE_S

    def stop(self, graceful: bool = False) -> None:
        """Stop the zygote: when ``graceful``, by closing its channel (it exits and removes its cgroup), else
        (or if it does not exit within a second) by SIGKILL, which takes its PID namespace with it; without
        a PID namespace, anything still running under this worker's sandbox uid is killed too."""
        proc, self.proc = self.proc, None
        self.outbox.clear()
        self.inbox.clear()
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


class CheckRunner:
    """What every sandbox offers over its ``_submit_check(check)`` (a future that never raises for sandbox
    failures): ``submit``, ``run``, ``arun`` and ``run_batch``. ``Sandbox`` runs checks locally,
    ``remote.RemoteSandbox`` on a server."""

    def _submit_check(self, check: Check) -> Future[ExecutionResult]:
        raise NotImplementedError

    def submit(self, program: str, tests, entry_point: str | None = None, setup: str = "") -> Future[ExecutionResult]:
        """Schedule one check; the future never raises for sandbox failures."""
        return self._submit_check(make_check(program, tests, entry_point, setup))

    def run(self, program: str, tests, entry_point: str | None = None, setup: str = "") -> ExecutionResult:
        return self.submit(program, tests, entry_point, setup).result()

    async def arun(self, program: str, tests, entry_point: str | None = None, setup: str = "") -> ExecutionResult:
        """``await``-able ``run``: the check runs in the background, the event loop stays free."""
        import asyncio  # imported here so zygotes (which import this package) stay small and fork fast

        return await asyncio.wrap_future(self.submit(program, tests, entry_point, setup))

    def run_batch(self, items: Iterable[Check | tuple]) -> list[ExecutionResult]:
        """Run many checks concurrently; ``items`` are ``Check`` or ``(program, tests[, entry_point[, setup]])``."""
        futures = [self._submit_check(make_check(*item) if isinstance(item, tuple) else item) for item in items]
        return [f.result() for f in futures]


class Dispatcher:
    """The thread that runs a ``Sandbox``'s checks: queue -> workers' pipes -> judged results -> futures.

    Each loop waits (``select``) for a result, room in a pipe, a new check or the nearest deadline, then
    writes what it can, reads what came, completes the checks whose results are whole, and fails workers that
    closed their channel, sent a malformed message or overran a deadline. Future callbacks run on this
    thread."""

    def __init__(self, config: SandboxConfig, workers: list[Worker]):
        self.config, self.workers = config, workers
        # (check, future, resent): a resent check's future is already running (it was queued behind a failure)
        self.queue: deque[tuple[Check, Future, bool]] = deque()
        self.lock, self.closing = threading.Lock(), False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.thread = threading.Thread(target=self.loop, name="sandbox-dispatcher", daemon=True)
        self.started = False

    def submit(self, check: Check) -> Future[ExecutionResult]:
        future: Future[ExecutionResult] = Future()
        with self.lock:
            if self.closing:
                raise RuntimeError("the sandbox is closed")
            self.queue.append((check, future, False))
            if not self.started:
                self.started = True
                self.thread.start()
        self.wake()
        return future

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def start_worker(self, worker: Worker) -> None:
        """(Re)start a worker (under ``lock``); its requests are then written without blocking."""
        worker.stop()
        try:
            worker.start()
        except BaseException:
            worker.stop()
            raise
        os.set_blocking(worker.proc.stdin.fileno(), False)

    def close(self) -> None:
        """Cancel the checks not yet sent, let the workers finish theirs, stop the workers. Called on the
        dispatcher thread itself (a future callback dropping the last reference to its ``Sandbox``), it
        returns at once and the thread shuts down once its checks are answered."""
        with self.lock:
            self.closing = True
            started = self.started
        if not started:
            self.shutdown()
        elif threading.current_thread() is not self.thread:
            self.wake()
            self.thread.join()

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.stop(graceful=True)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def loop(self) -> None:
        while True:
            with self.lock:
                if self.closing:
                    while self.queue:
                        check, future, resent = self.queue.popleft()
                        if resent:
                            future.set_result(crashed_result(check, "the sandbox was closed before the check ran"))
                        else:
                            future.cancel()
                    if not any(w.inflight for w in self.workers):
                        break
            try:
                self.assign()
                self.exchange()
            except Exception as e:  # noqa: BLE001 - a bug here must not leave a future waiting forever
                for worker in self.workers:
                    self.fail(worker, e, resend=False)
                with self.lock:
                    while self.queue:
                        check, future, resent = self.queue.popleft()
                        if resent or future.set_running_or_notify_cancel():
                            future.set_result(crashed_result(check, f"sandbox dispatcher failed: {e!r}"))
        self.shutdown()

    def assign(self) -> None:
        """Send queued checks to the least loaded workers (an idle one first), up to ``PIPELINE`` each."""
        while True:
            with self.lock:
                worker = min(self.workers, key=lambda w: len(w.inflight))
                if not self.queue or len(worker.inflight) >= PIPELINE:
                    return
                check, future, resent = self.queue.popleft()
                if not resent and not future.set_running_or_notify_cancel():
                    continue
                if not worker.inflight and (worker.proc is None or worker.proc.poll() is not None):
                    try:
                        self.start_worker(worker)
                    except (ChannelClosed, TimeoutError, OSError, SandboxUnavailable, ValueError) as e:
                        future.set_result(crashed_result(check, f"sandbox worker failed: {type(e).__name__}: {e}"))
                        continue
            wire = check.wire(self.config.output_cap_bytes)
            wire["compiled"] = compiled_tests(wire)
            worker.outbox += request({"check": wire})
            if not worker.inflight:
                worker.deadline = time.monotonic() + worker.budget(check)
            worker.inflight.append((check, future))

    def exchange(self) -> None:
        """One wait, then every write, read and deadline it allows."""
        busy = [w for w in self.workers if w.inflight]
        readers = [self.wake_r, *(w.proc.stdout.fileno() for w in busy)]
        writers = [w.proc.stdin.fileno() for w in busy if w.outbox]
        timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic()) if busy else None
        readable, writable, _ = select.select(readers, writers, [], timeout)
        if self.wake_r in readable:
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        for worker in busy:
            try:
                if worker.proc.stdin.fileno() in writable:
                    try:
                        del worker.outbox[: os.write(worker.proc.stdin.fileno(), worker.outbox)]
                    except BlockingIOError:
                        pass  # less room than a small remainder needs to be written at once: next time
                if worker.proc.stdout.fileno() in readable:
                    self.receive(worker)
            except (ChannelClosed, OSError, ValueError, TypeError) as e:
                self.fail(worker, e)
                continue
            if worker.inflight and time.monotonic() > worker.deadline:
                self.fail(worker, TimeoutError("no answer from the sandbox worker"))

    def receive(self, worker: Worker) -> None:
        """Read what the worker sent; complete each check whose result is whole (they come in order)."""
        data = os.read(worker.proc.stdout.fileno(), 1 << 16)  # a pipe's capacity; 1 MiB would be an mmap per read
        if not data:
            raise ChannelClosed("sandbox worker closed its channel")
        worker.inbox += data
        for message in unframe(worker.inbox):
            result = ExecutionResult(**message)
            check, future = worker.inflight.popleft()
            if worker.inflight:  # the zygote starts the next one now
                worker.deadline = time.monotonic() + worker.budget(worker.inflight[0][0])
            try:
                judge(result, check)
            except Exception as e:  # noqa: BLE001 - never raise into the caller
                result = crashed_result(check, f"the result could not be judged: {type(e).__name__}: {e}")
            future.set_result(result)

    def fail(self, worker: Worker, error: BaseException, resend: bool = True) -> None:
        """The worker is unusable: its current check is reported crashed, the ones queued behind it (never
        started) go back to the front of the queue (with ``resend`` false, they are reported crashed too)."""
        message = f"sandbox worker failed: {type(error).__name__}: {error}"
        worker.stop()
        if worker.inflight:
            check, future = worker.inflight.popleft()
            future.set_result(crashed_result(check, message))
        with self.lock:
            while worker.inflight:
                check, future = worker.inflight.pop()
                if resend:
                    self.queue.appendleft((check, future, True))
                else:
                    future.set_result(crashed_result(check, message))


class Sandbox(CheckRunner):
    """Run untrusted programs against tests, ``config.concurrency`` checks at a time.

    ``tests`` may be a list of assert snippets, HumanEval ``check`` code (with ``entry_point``), a list of
    ``{"input", "output"}`` stdin/stdout cases, or a prepared ``Check`` (see ``cases.make_check``)."""

    def __init__(self, config: SandboxConfig | None = None, **overrides):
        self.config = replace(config or SandboxConfig(), **overrides)
        self._workers = [Worker(self.config) for _ in range(self.config.concurrency)]
        self._dispatcher = Dispatcher(self.config, self._workers)
        self._finalizer = weakref.finalize(self, self._dispatcher.close)

    def _submit_check(self, check: Check) -> Future[ExecutionResult]:
        return self._dispatcher.submit(check)

    def start(self) -> dict:
        """Start every worker now (otherwise they start on first use); returns the isolation in force."""
        with self._dispatcher.lock:
            for worker in self._workers:
                if worker.proc is None:
                    self._dispatcher.start_worker(worker)
        return self._workers[0].isolation

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
