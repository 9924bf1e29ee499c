"""Turning benchmark problems and dataset rows into ``SearchProblem``s (with a public/private test split)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trl_mars.eval.loaders import CodeProblem
from trl_mars.sandbox.cases import validate_tests
from trl_mars.search.engine import SearchProblem

_IMPORT = re.compile(r"^(from\s+\S+\s+)?import\s")
INSTRUCTION = "Complete the following Python function. Answer with the full function in one ```python block."


def question_of(prompt: Any) -> str:
    """The problem text of a dataset ``prompt``: a string, or the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("prompt: a conversational prompt needs a user message")
    return users[-1]


def code_problem_row(problem: CodeProblem, public: float | int = 0.5) -> dict[str, Any]:
    """A benchmark problem as a dataset row for the trainers (conversational ``prompt``, ``tests`` visible to the
    search, ``private_tests`` that grade, ``entry_point``, ``setup``, ``preamble``): the first ``public`` tests
    (count or fraction) are public, the rest held back (the dataset's own split when it has one, as in
    LiveCodeBench).

    With no test left for grading, the public tests grade too (HumanEval/MBPP treated as all-private
    otherwise would leave the search blind). A function-completion problem's question is ``INSTRUCTION`` and its
    prompt in a python fence; the prompt's imports become the ``preamble`` put before every program."""
    public_tests, private_tests = problem.split(public)
    if problem.entry_point is not None and not problem.stdio:
        question = f"{INSTRUCTION}\n\n```python\n{problem.prompt.rstrip()}\n```"
        imports = [line for line in problem.prompt.splitlines() if _IMPORT.match(line)]
    else:
        question, imports = problem.prompt, []
    return {
        "task_id": problem.task_id,
        "prompt": [{"role": "user", "content": question}],
        "tests": public_tests,
        "private_tests": problem.all_tests if not private_tests else private_tests,
        "entry_point": problem.entry_point,
        "setup": problem.setup,
        "preamble": "\n".join(imports),
    }


def from_code_problem(problem: CodeProblem, public: float | int = 0.5) -> SearchProblem:
    """``from_row`` of ``code_problem_row``: the search problem of a benchmark problem."""
    return from_row(code_problem_row(problem, public), 0)


def from_row(row: Mapping, index: int, tests_column: str = "tests") -> SearchProblem:
    """A dataset row (``prompt`` + tests column, optional ``private_tests``, ``entry_point``, ``setup``,
    ``preamble``); malformed tests raise ``ValueError`` naming the row and column."""
    if tests_column not in row:
        raise ValueError(f"row {index} has no column {tests_column!r} (columns: {sorted(row)})")
    validate_tests(row[tests_column], f"row {index}, column {tests_column!r}")
    if row.get("private_tests") is not None:
        validate_tests(row["private_tests"], f"row {index}, column 'private_tests'")
    return SearchProblem(
        problem_id=str(row.get("task_id", index)),
        question=question_of(row["prompt"]),
        public_tests=row[tests_column],
        private_tests=row.get("private_tests"),
        entry_point=row.get("entry_point"),
        setup=row.get("setup") or "",
        preamble=row.get("preamble") or "",
    )
