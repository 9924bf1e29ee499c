"""Reading benchmark and sample files row by row, with errors that name the file, the row and the field.

Every problem in a file is checked before any compute, and the first bad row stops the command with one line
(``DataError``): ``HumanEval.jsonl:3: missing field 'entry_point'``. Row numbers are 1-based lines of a JSONL
file, or 1-based items of a JSON list.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

FILE_SUFFIXES = (".jsonl", ".json", ".gz")


class DataError(ValueError):
    """A benchmark or sample file that cannot be used; the message is one line naming file, row and field."""


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(row number, row) of a ``.jsonl`` / ``.jsonl.gz`` file (a JSON object per line) or a ``.json`` list."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
            rows = list(enumerate(data, 1))
        else:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                rows = []
                for number, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append((number, json.loads(line)))
                        except json.JSONDecodeError as err:
                            raise DataError(
                                f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})"
                            ) from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except (UnicodeDecodeError, OSError, EOFError) as err:  # not text, or a damaged gzip
        raise DataError(
            f"{path}: cannot be read as {'gzipped ' if path.suffix == '.gz' else ''}text ({err})"
        ) from None
    for number, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and str(value) != ""


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_cases(value: Any) -> bool:
    """stdin/stdout cases: a list of {"input", "output"}, or that list as a JSON string (LiveCodeBench)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            return False
    return isinstance(value, list) and all(isinstance(c, dict) and "input" in c and "output" in c for c in value)


Check = tuple[str, Callable[[Any], bool], str]
SCHEMAS: dict[str, list[Check]] = {
    "humaneval": [
        ("task_id", _is_id, "a string or integer"),
        ("prompt", _is_str, "a string"),
        ("test", _is_str, "a string"),
        ("entry_point", _is_str, "a string"),
    ],
    "mbpp": [("task_id", _is_id, "a string or integer"), ("test_list", _is_str_list, "a list of strings")],
}
"""Required fields per row format: (field, check, what it must be). ``stdio`` rows are checked by ``_stdio``."""


def _stdio(row: Mapping) -> str | None:
    if not any(_is_id(row.get(k)) for k in ("task_id", "question_id", "problem_id")):
        return "missing field 'task_id' (or 'question_id' / 'problem_id')"
    for name in ("public_test_cases", "tests"):
        if name in row:
            return None if _is_cases(row[name]) else f"malformed field '{name}': expected a list of {{input, output}}"
    io = row.get("input_output", row)
    if isinstance(io, str):
        try:
            io = json.loads(io)
        except json.JSONDecodeError:
            return "malformed field 'input_output': not valid JSON"
    if not isinstance(io, Mapping) or "inputs" not in io or "outputs" not in io:
        return "missing test cases: 'public_test_cases', 'tests', 'input_output' or 'inputs' + 'outputs'"
    if (
        not isinstance(io["inputs"], list)
        or not isinstance(io["outputs"], list)
        or len(io["inputs"]) != len(io["outputs"])
    ):
        return "malformed fields 'inputs' / 'outputs': expected two lists of equal length"
    return None


def row_problem(row: Mapping, fmt: str) -> str | None:
    """What is wrong with ``row`` as a ``fmt`` row (one phrase naming the field), or None; unknown formats pass."""
    if fmt == "stdio":
        return _stdio(row)
    for name, ok, what in SCHEMAS.get(fmt, []):
        if name not in row:
            return f"missing field {name!r}"
        if not ok(row[name]):
            return f"malformed field {name!r}: expected {what}, got {type(row[name]).__name__}"
    return None


def check_row(row: Mapping, fmt: str, where: str) -> None:
    """Raise ``DataError("<where>: <problem>")`` when ``row`` is not a valid ``fmt`` row."""
    if (problem := row_problem(row, fmt)) is not None:
        raise DataError(f"{where}: {problem}")


def looks_like_file(source: str) -> bool:
    """A source meant as a local file (a path ending in .jsonl / .json / .gz), not a hub id."""
    return str(source).endswith(FILE_SUFFIXES)
