"""Scoring nodes: the bridge from the package's sandbox to the search (score, pass fraction, feedback)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from trl_mars.sandbox import ExecutionResult, Sandbox
from trl_mars.sandbox.verdict import printable
from trl_mars.search.prompts import NO_CODE_FEEDBACK

MAX_FAILURES_KEPT = 3


@dataclass(frozen=True)
class Verdict:
    """``score`` is 1.0 iff every test passed; ``feedback`` holds the ``summary`` and ``detailed`` texts an
    agent may be shown, plus the structured failing-test records under ``failures``."""

    score: float
    pass_fraction: float
    feedback: dict[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    def submit(self, code: str, tests: Any, entry_point: str | None = None, setup: str = "") -> Future[Verdict]: ...


def no_code_verdict() -> Verdict:
    return Verdict(0.0, 0.0, {"summary": NO_CODE_FEEDBACK, "detailed": NO_CODE_FEEDBACK, "failures": []})


def verdict_of(result: ExecutionResult) -> Verdict:
    """Score, pass fraction and feedback (summary line, detailed report, first failing tests, all printable
    text) of a check; ``duration_s`` is left out to keep trees deterministic."""
    failures = [
        {k: printable(v) if isinstance(v, str) else v for k, v in record.items() if k != "duration_s"}
        for record in result.to_dict()["verdicts"]
        if record["status"] != "passed"
    ][:MAX_FAILURES_KEPT]
    summary = f"Passed {result.num_passed} of {len(result.verdicts)} tests."
    if result.program_status.value != "passed":
        summary += f" The program itself failed ({result.program_status.value})."
    feedback = {"summary": summary, "detailed": result.feedback_text(), "failures": failures}
    if result.sandbox_error:
        feedback["sandbox_error"] = result.sandbox_error
    return Verdict(1.0 if result.passed else 0.0, result.pass_fraction, feedback)


class SandboxVerifier:
    """Submits code to a ``trl_mars.sandbox.Sandbox`` and resolves to a ``Verdict`` (never raises)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def submit(self, code: str, tests: Any, entry_point: str | None = None, setup: str = "") -> Future[Verdict]:
        out: Future[Verdict] = Future()

        def done(f: Future[ExecutionResult]) -> None:
            try:
                out.set_result(verdict_of(f.result()))
            except Exception as e:  # noqa: BLE001 - the sandbox promises not to raise; never hang the search
                text = printable(f"verifier error: {e!r}")
                out.set_result(Verdict(0.0, 0.0, {"summary": text, "detailed": text, "failures": []}))

        self.sandbox.submit(code, tests, entry_point, setup).add_done_callback(done)
        return out
