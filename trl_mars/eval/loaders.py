"""Load HumanEval, MBPP and LiveCodeBench-style problems from a local file or a ``datasets`` hub id into
one ``CodeProblem`` shape."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trl_mars.eval.rows import DataError, check_row, looks_like_file, read_rows
from trl_mars.sandbox import Check, make_check, split_humaneval


@dataclass
class CodeProblem:
    """A code problem. ``tests`` are assert snippets (run after ``setup``, with ``candidate`` bound to
    ``entry_point``); ``stdio`` are ``{"input", "output"}`` cases for whole-program problems."""

    task_id: str
    prompt: str
    tests: list[str] = field(default_factory=list)
    entry_point: str | None = None
    setup: str = ""
    stdio: list[dict] = field(default_factory=list)
    reference_solution: str | None = None
    num_public: int | None = None  # a dataset's own public/private boundary, when it has one

    @property
    def all_tests(self) -> list:
        return self.stdio or self.tests

    def split(self, public: float | int = 0.5) -> tuple[list, list]:
        """(public, private) tests: the dataset's own split when known, else the first ``public`` tests
        (a count, or a fraction rounded up, at least one)."""
        tests = self.all_tests
        k = self.num_public
        if k is None:
            k = public if isinstance(public, int) else max(1, math.ceil(public * len(tests)))
        return tests[:k], tests[k:]

    def check(self, program: str, tests: list | None = None) -> Check:
        """The sandbox check of ``program`` against ``tests`` (default: all tests)."""
        return make_check(program, self.all_tests if tests is None else tests, self.entry_point, self.setup)


def from_humaneval(row: Mapping) -> CodeProblem:
    setup, snippets = split_humaneval(row["test"])
    solution = row.get("canonical_solution")
    return CodeProblem(
        task_id=str(row["task_id"]),
        prompt=row["prompt"],
        tests=snippets,
        entry_point=row["entry_point"],
        setup=setup,
        reference_solution=row["prompt"] + solution if solution else None,
    )


def _first_def(*sources: str) -> str | None:
    for source in sources:
        if match := re.search(r"^\s*def\s+(\w+)\s*\(", source or "", re.MULTILINE):
            return match.group(1)
    return None


def from_mbpp(row: Mapping) -> CodeProblem:
    tests = list(row["test_list"]) + list(row.get("challenge_test_list") or [])
    entry = _first_def(row.get("code", "")) or (re.search(r"(\w+)\s*\(", tests[0]).group(1) if tests else None)
    return CodeProblem(
        task_id=str(row["task_id"]),
        prompt=row.get("text") or row.get("prompt", ""),
        tests=tests,
        entry_point=entry,
        setup=row.get("test_setup_code", "") or "",
        reference_solution=row.get("code"),
    )


def _cases(value) -> list[dict]:
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    return [{"input": c["input"], "output": c["output"]} for c in value or []]


def from_stdio(row: Mapping) -> CodeProblem:
    """LiveCodeBench (``public_test_cases``/``private_test_cases``, JSON strings allowed), APPS-style
    ``inputs``/``outputs`` (possibly under ``input_output``), or a plain ``tests`` list of cases."""
    if "public_test_cases" in row:
        public, private = _cases(row["public_test_cases"]), _cases(row.get("private_test_cases"))
    else:
        io = row.get("input_output") or row
        io = json.loads(io) if isinstance(io, str) else io
        public = (
            _cases(row["tests"])
            if "tests" in row
            else _cases([{"input": i, "output": o} for i, o in zip(io["inputs"], io["outputs"])])
        )
        private = []
    task_id = row.get("task_id") or row.get("question_id") or row.get("problem_id")
    return CodeProblem(
        task_id=str(task_id),
        prompt=row.get("question_content") or row.get("question") or row.get("prompt", ""),
        stdio=public + private,
        num_public=len(public) if private else None,
        reference_solution=row.get("reference_solution") or row.get("solution"),
    )


PARSERS = {"humaneval": from_humaneval, "mbpp": from_mbpp, "stdio": from_stdio}


def detect_format(row: Mapping) -> str:
    if "test" in row and "entry_point" in row:
        return "humaneval"
    return "mbpp" if "test_list" in row else "stdio"


def _numbered_rows(source: str | Path, split: str) -> list[tuple[str, dict]]:
    """(where, row) pairs: ``file:line`` for a local file, ``id[split] row N`` for a hub dataset."""
    path = Path(source)
    if path.exists() or looks_like_file(str(source)):
        return [(f"{path}:{number}", row) for number, row in read_rows(path)]
    from datasets import load_dataset  # only needed for hub ids

    try:
        data = load_dataset(str(source), split=split)
    except Exception as err:  # offline, unknown id, no such split: one line instead of a long traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(
            f"{source}: no such local file, and loading it as a hub dataset failed ({type(err).__name__}: {first})"
        ) from None
    rows = [(f"{source}[{split}] row {i}", dict(row)) for i, row in enumerate(data, 1)]
    if not rows:
        raise DataError(f"{source}[{split}]: no rows")
    return rows


def load_rows(source: str | Path, split: str = "test") -> list[dict]:
    """Rows of a local ``.jsonl``/``.jsonl.gz``/``.json`` file, else of the ``datasets`` hub id ``source``."""
    return [row for _, row in _numbered_rows(source, split)]


def parse_row(row: Mapping, fmt: str | None, where: str) -> CodeProblem:
    """One row as a ``CodeProblem``; a bad row raises ``DataError`` naming ``where`` and the field."""
    kind = fmt or detect_format(row)
    check_row(row, kind, where)
    try:
        return PARSERS[kind](row)
    except KeyError as err:
        raise DataError(f"{where}: missing field {err.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, IndexError) as err:
        raise DataError(f"{where}: malformed {kind} row ({type(err).__name__}: {err})") from None


def to_problems(rows: Iterable[Mapping], fmt: str | None = None) -> list[CodeProblem]:
    """Rows as problems; ``fmt`` is ``humaneval``/``mbpp``/``stdio`` or detected from the first row."""
    rows = list(rows)
    kind = fmt or (detect_format(rows[0]) if rows else None)
    return [parse_row(row, kind, f"row {i}") for i, row in enumerate(rows, 1)]


def load_problems(source: str | Path, fmt: str | None = None, split: str = "test") -> list[CodeProblem]:
    """Problems from a file or hub id; ``fmt`` is ``humaneval``/``mbpp``/``stdio`` or detected from the first row.
    Every row is checked first: a bad one raises ``DataError`` naming the file, the row and the field."""
    rows = _numbered_rows(source, split)
    kind = fmt or detect_format(rows[0][1])
    return [parse_row(row, kind, where) for where, row in rows]
