"""TRL reward functions that run extracted code against each row's tests in the sandbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from trl_mars.rewards.code_extraction import extract_code
from trl_mars.sandbox import ExecutionResult, Sandbox

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
    codes = [extract_code(completion_text(c)) for c in completions]
    jobs = [(i, (code, t, e)) for i, (code, t, e) in enumerate(zip(codes, tests, entry_points)) if code is not None]
    results: list[ExecutionResult | None] = [None] * len(completions)
    for (i, _), result in zip(jobs, sandbox.run_batch([job for _, job in jobs])):
        results[i] = result
    return results


def make_code_reward(
    kind: Literal["binary", "fraction"] = "binary",
    sandbox: Sandbox | None = None,
    tests_column: str = "tests",
    entry_point_column: str | None = "entry_point",
) -> Callable[..., list[float]]:
    """A TRL reward ``reward_func(prompts, completions, **kwargs) -> list[float]``.

    ``binary``: 1.0 iff every test passes; ``fraction``: share of tests passed. Tests come from the dataset
    column ``tests_column`` (assert snippets, HumanEval check code or stdin/stdout cases) and the function
    name from ``entry_point_column`` when that column exists. No extractable code scores 0.0."""
    if kind not in ("binary", "fraction"):
        raise ValueError(f"kind must be 'binary' or 'fraction', got {kind!r}")

    def reward_func(prompts, completions, **kwargs) -> list[float]:
        if tests_column not in kwargs:
            raise KeyError(f"code reward needs the dataset column {tests_column!r}; got {sorted(kwargs)}")
        entry_points = kwargs.get(entry_point_column) if entry_point_column else None
        results = score_completions(completions, kwargs[tests_column], entry_points, sandbox)
        if kind == "binary":
            return [float(r is not None and r.passed) for r in results]
        return [r.pass_fraction if r is not None else 0.0 for r in results]

    reward_func.__name__ = f"code_{kind}_reward"
    return reward_func
