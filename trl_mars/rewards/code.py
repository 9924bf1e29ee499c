"""TRL reward functions that run extracted code against each row's tests in the sandbox."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

from trl_mars.rewards.code_extraction import extract_code
from trl_mars.sandbox import ExecutionResult, Sandbox
from trl_mars.sandbox.cases import validate_tests

_DEFAULT_SANDBOX: Sandbox | None = None


def default_sandbox() -> Sandbox:
    """A process-wide sandbox with default limits, created on first use."""
    global _DEFAULT_SANDBOX
    if _DEFAULT_SANDBOX is None:
        _DEFAULT_SANDBOX = Sandbox()
    return _DEFAULT_SANDBOX


def completion_text(completion) -> str:
    """Text of a completion given as a string or as a conversational list of ``{role, content}`` dicts
    (the last assistant message, else the last message)."""
    if isinstance(completion, str):
        return completion
    messages = [m for m in completion if isinstance(m, dict)]
    assistant = [m for m in messages if m.get("role") == "assistant"] or messages
    content = assistant[-1].get("content", "") if assistant else ""
    if isinstance(content, list):  # multimodal-style [{"type": "text", "text": ...}]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def score_completions(
    completions: Sequence, tests: Sequence, entry_points: Sequence | None = None, sandbox: Sandbox | None = None
) -> list[ExecutionResult | None]:
    """Sandbox results per completion (``None`` where no code could be extracted)."""
    sandbox = sandbox or default_sandbox()
    entry_points = entry_points if entry_points is not None else [None] * len(completions)
    codes = [extract_code(completion_text(c), e) for c, e in zip(completions, entry_points)]
    jobs = [(i, (code, t, e)) for i, (code, t, e) in enumerate(zip(codes, tests, entry_points)) if code is not None]
    results: list[ExecutionResult | None] = [None] * len(completions)
    for (i, _), result in zip(jobs, sandbox.run_batch([job for _, job in jobs])):
        results[i] = result
    return results


def check_tests_column(
    rows: Iterable[Mapping], tests_column: str = "tests", name: str = "dataset", optional: bool = False
) -> None:
    """Fail fast, naming the row and column, when any row's tests are malformed (``validate_tests``):
    expressions without ``assert``, lists of non-strings, one assert given as a string, JSON-encoded lists,
    numbers, input/output dicts with the wrong keys. A row without the column is reported too
    (``optional``: rows whose value is None are skipped)."""
    for i, row in enumerate(rows):
        if tests_column not in row:
            raise ValueError(f"{name} row {i} has no column {tests_column!r} (columns: {sorted(row)})")
        if optional and row[tests_column] is None:
            continue
        validate_tests(row[tests_column], f"{name} row {i}, column {tests_column!r}")


def make_code_reward(
    kind: Literal["binary", "fraction"] = "binary",
    sandbox: Sandbox | None = None,
    tests_column: str = "tests",
    entry_point_column: str | None = "entry_point",
    dataset: Iterable[Mapping] | None = None,
) -> Callable[..., list[float]]:
    """A TRL reward ``reward_func(prompts, completions, **kwargs) -> list[float]``.

    ``binary``: 1.0 iff every test passes; ``fraction``: share of tests passed. Tests come from the dataset
    column ``tests_column`` (assert snippets, HumanEval check code, stdin/stdout or call-based cases) and the
    function name from ``entry_point_column`` when that column exists. No extractable code scores 0.0.
    Pass the training ``dataset`` to have its tests checked now, before any model loads
    (``check_tests_column``); each batch's tests are checked before they run in any case."""
    if kind not in ("binary", "fraction"):
        raise ValueError(f"kind must be 'binary' or 'fraction', got {kind!r}")
    if dataset is not None:
        check_tests_column(dataset, tests_column)

    def reward_func(prompts, completions, **kwargs) -> list[float]:
        if tests_column not in kwargs:
            raise KeyError(f"code reward needs the dataset column {tests_column!r}; got {sorted(kwargs)}")
        entry_points = kwargs.get(entry_point_column) if entry_point_column else None
        for i, tests in enumerate(kwargs[tests_column]):
            validate_tests(tests, f"batch row {i}, column {tests_column!r}")
        results = score_completions(completions, kwargs[tests_column], entry_points, sandbox)
        if kind == "binary":
            return [float(r is not None and r.passed) for r in results]
        return [r.pass_fraction if r is not None else 0.0 for r in results]

    reward_func.__name__ = f"code_{kind}_reward"
    return reward_func
