"""Structured results of a sandboxed check: one verdict per test plus what an agent is shown."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum

# C0/C1 controls (but newline and tab), DEL, lone surrogates, and the bidirectional-text controls.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with ANSI escapes and other control characters, lone surrogates and bidi controls written
    as ``\\x..``/``\\u....`` escapes: always valid, printable UTF-8 (what a tokenizer and a terminal accept).

    >>> printable("ok\\n\\x1b[31mred\\udc80\\u202egnp.exe")
    'ok\\n\\\\x1b[31mred\\\\udc80\\\\u202egnp.exe'
    """
    return _UNPRINTABLE.sub(_escape, text)


class Status(StrEnum):
    """Outcome of one test (or of loading the program, for ``ExecutionResult.program_status``)."""

    PASSED = "passed"
    FAILED = "failed"  # an assertion failed / wrong stdout
    ERROR = "error"  # an exception other than AssertionError
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASHED = "crashed"  # the process died or its report was missing or malformed


@dataclass
class TestVerdict:
    """Verdict of one test. ``input``/``expected``/``actual`` are filled for ``assert f(x) == y``-style
    comparisons and for stdin/stdout cases, so feedback can show the failing case."""

    __test__ = False  # not a pytest class

    index: int
    status: Status
    test: str = ""
    error_type: str | None = None
    message: str = ""
    traceback: str = ""
    input: str | None = None
    expected: str | None = None
    actual: str | None = None
    duration_s: float = 0.0
    trusted: bool = False  # decided in the parent (split assert, call-based or stdin/stdout test)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    def describe(self) -> str:
        """One block of feedback text for this test."""
        lines = [
            f"Test {self.index}: {self.status.value.upper()}" + (f" ({self.error_type})" if self.error_type else "")
        ]
        if self.test:
            lines.append(f"  test: {self.test}")
        for label, value in (("input", self.input), ("expected", self.expected), ("actual", self.actual)):
            if value is not None:
                lines.append(f"  {label}: {value}")
        if self.message and not self.passed:
            lines.append(f"  message: {self.message}")
        return printable("\n".join(lines))


@dataclass
class ExecutionResult:
    """Everything a check produced. ``sandbox_error`` is set when the sandbox itself failed (a worker died,
    a required limit was unavailable); the tests are then reported as ``crashed``, never raised."""

    verdicts: list[TestVerdict]
    program_status: Status = Status.PASSED
    program_error: str = ""
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    duration_s: float = 0.0
    sandbox_error: str | None = None
    isolation: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.program_status = Status(self.program_status)
        self.verdicts = [v if isinstance(v, TestVerdict) else TestVerdict(**v) for v in self.verdicts]

    @property
    def num_passed(self) -> int:
        return sum(v.passed for v in self.verdicts)

    @property
    def pass_fraction(self) -> float:
        return self.num_passed / len(self.verdicts) if self.verdicts else 0.0

    @property
    def trusted_share(self) -> float:
        """Share of the tests whose verdict the parent decided (``TestVerdict.trusted``)."""
        return sum(v.trusted for v in self.verdicts) / len(self.verdicts) if self.verdicts else 0.0

    @property
    def passed(self) -> bool:
        """True iff there is at least one test and every test passed."""
        return bool(self.verdicts) and self.num_passed == len(self.verdicts)

    def feedback_text(self, max_failures: int = 3, max_chars: int = 4000) -> str:
        """What a refining agent sees: the summary line, then the first ``max_failures`` failing tests;
        always printable UTF-8 (``printable``)."""
        failing = [v for v in self.verdicts if not v.passed]
        lines = [f"Passed {self.num_passed}/{len(self.verdicts)} tests."]
        if self.sandbox_error:
            lines.append(f"Sandbox error: {self.sandbox_error}")
        if self.program_status is not Status.PASSED:
            lines.append(
                f"The program failed before the tests ran ({self.program_status.value}): {self.program_error}"
            )
        else:
            lines.extend(v.describe() for v in failing[:max_failures])
            if len(failing) > max_failures:
                lines.append(f"... and {len(failing) - max_failures} more failing tests.")
        if failing and self.stderr.strip():
            lines.append("stderr (truncated):\n" + self.stderr.strip()[-1000:])
        text = printable("\n".join(lines))
        return text if len(text) <= max_chars else text[: max_chars - 15] + "\n... (truncated)"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["program_status"] = self.program_status.value
        for v in data["verdicts"]:
            v["status"] = Status(v["status"]).value
        data.update(passed=self.passed, pass_fraction=self.pass_fraction, trusted_share=self.trusted_share)
        return data
