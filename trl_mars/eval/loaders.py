"""Load code benchmarks and RL code data from a local file or a ``datasets`` hub id into one ``CodeProblem``.

Formats (docs/sandbox.md, "Benchmark formats"): HumanEval (``test`` defining ``check``), MBPP full and
sanitized (``test_list``, ``test_setup_code``, ``test_imports``), LiveCodeBench ``code_generation_lite``
(``public_test_cases`` JSON, ``private_test_cases`` compressed as base64 -> zlib -> pickle -> JSON,
``metadata.func_name`` for functional problems; release-version and contest-date filters), DeepCoder
(``problem``, ``tests`` JSON in the lcbv5/codeforces/primeintellect/taco shapes, ``metadata``) and APPS/TACO
(``input_output``). Every loader checks the tests it builds and names the row and column of a bad one.
"""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from trl_mars.eval.rows import DataError, check_row, looks_like_file, read_rows
from trl_mars.sandbox import Check, make_check, split_humaneval
from trl_mars.sandbox.cases import validate_tests

LCB_HUB_ID = "livecodebench/code_generation_lite"
# LiveCodeBench code_generation_lite files: release_vN is the union of test.jsonl .. testN.jsonl.
LCB_FILES = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")
LCB_INSTRUCTION = (
    "You will be given a question (problem specification) and will generate a correct Python program that "
    "matches the specification and passes all tests."
)


@dataclass
class CodeProblem:
    """A code problem. ``tests`` are assert snippets (run after ``setup``, with ``candidate`` bound to
    ``entry_point``); ``stdio`` are input/output cases: ``{"input", "output"}`` for whole-program
    (stdin/stdout) problems, with ``fn_name`` for call-based ones (arguments as JSON lines, the output a JSON
    value). ``meta`` keeps what a dataset says about the problem (contest date, platform, difficulty)."""

    task_id: str
    prompt: str
    tests: list[str] = field(default_factory=list)
    entry_point: str | None = None
    setup: str = ""
    stdio: list[dict] = field(default_factory=list)
    reference_solution: str | None = None
    num_public: int | None = None  # a dataset's own public/private boundary, when it has one
    meta: dict = field(default_factory=dict)

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


def _column(row: Mapping, name: str, where: str):
    if name not in row:
        raise ValueError(f"{where}: missing the column {name!r} (columns: {sorted(row)})")
    return row[name]


def _json(value, where: str):
    """A JSON-string column decoded (lists and dicts pass through)."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else []
        except ValueError as e:
            raise ValueError(f"{where}: not valid JSON: {e}") from None
    return value


def from_humaneval(row: Mapping, where: str = "row") -> CodeProblem:
    test = _column(row, "test", where)
    validate_tests(test, f"{where}, column 'test'")
    setup, snippets = split_humaneval(test)
    solution = row.get("canonical_solution")
    return CodeProblem(
        task_id=str(_column(row, "task_id", where)),
        prompt=_column(row, "prompt", where),
        tests=snippets,
        entry_point=_column(row, "entry_point", where),
        setup=setup,
        reference_solution=row["prompt"] + solution if solution else None,
    )


def _first_def(*sources: str) -> str | None:
    for source in sources:
        if match := re.search(r"^\s*def\s+(\w+)\s*\(", source or "", re.MULTILINE):
            return match.group(1)
    return None


def from_mbpp(row: Mapping, where: str = "row") -> CodeProblem:
    """MBPP ``full`` (``text``, ``test_setup_code``, ``challenge_test_list``) or ``sanitized`` (``prompt``,
    ``test_imports``: run before the asserts, e.g. ``import math`` for ``math.isclose`` tests)."""
    tests = _column(row, "test_list", where)
    validate_tests(tests, f"{where}, column 'test_list'")
    challenge = row.get("challenge_test_list") or []
    if challenge:
        validate_tests(challenge, f"{where}, column 'challenge_test_list'")
    imports = row.get("test_imports") or []
    if isinstance(imports, str) or not all(isinstance(i, str) for i in imports):
        raise ValueError(f"{where}, column 'test_imports': expected a list of import lines, got {imports!r}")
    tests = list(tests) + list(challenge)
    entry = _first_def(row.get("code", "")) or (re.search(r"(\w+)\s*\(", tests[0]).group(1) if tests else None)
    return CodeProblem(
        task_id=str(_column(row, "task_id", where)),
        prompt=row.get("text") or row.get("prompt", ""),
        tests=tests,
        entry_point=entry,
        setup="\n".join([*imports, row.get("test_setup_code", "") or ""]).strip(),
        reference_solution=row.get("code"),
    )


class _StrOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference (how pickles run code) is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a test file")


def decode_lcb_tests(value, where: str = "private_test_cases") -> list[dict]:
    """LiveCodeBench test cases: plain JSON, or base64 -> zlib -> pickle (of a ``str``/``bytes`` only) -> JSON.

    >>> import base64, pickle, zlib
    >>> blob = base64.b64encode(zlib.compress(pickle.dumps('[{"input": "1", "output": "2"}]'))).decode()
    >>> decode_lcb_tests(blob)
    [{'input': '1', 'output': '2'}]
    """
    if not isinstance(value, str):
        return _json(value, where)
    try:
        return json.loads(value) if value.strip() else []
    except ValueError:
        pass
    try:
        data = _StrOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value.encode("utf-8"))))).load()
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"{where}: neither JSON nor base64/zlib/pickle-compressed tests: {e}") from None
    if type(data) is bytes:
        data = data.decode("utf-8")
    if type(data) is not str:
        raise ValueError(f"{where}: the compressed tests hold a {type(data).__name__}, not a JSON string")
    return _json(data, where)


def _lcb_cases(cases, fn_name: str | None, where: str) -> list[dict]:
    if not isinstance(cases, list):
        raise ValueError(f"{where}: expected a list of test cases, got {type(cases).__name__}")
    out = []
    for j, case in enumerate(cases):
        if not isinstance(case, Mapping) or not {"input", "output"} <= set(case):
            raise ValueError(f"{where}, test {j}: a case needs 'input' and 'output', got {case!r:.80}")
        functional = case.get("testtype") == "functional"
        if functional and not fn_name:
            raise ValueError(f"{where}, test {j}: a functional test but the row's metadata has no func_name")
        out.append({"input": case["input"], "output": case["output"], **({"fn_name": fn_name} if functional else {})})
    return out


def lcb_prompt(question: str, starter_code: str = "") -> str:
    """The LiveCodeBench prompt: instruction, question, then the starter code (functional) or the
    stdin/stdout convention."""
    if starter_code.strip():
        tail = ("You will use the following starter code to write the solution to the problem and enclose your "
                f"code within delimiters.\n```python\n{starter_code.rstrip()}\n```")  # fmt: skip
    else:
        tail = ("Read the inputs from stdin, solve the problem and write the answer to stdout. Enclose your code "
                "within delimiters as follows.\n```python\n# YOUR CODE HERE\n```")  # fmt: skip
    return f"{LCB_INSTRUCTION}\n\nQuestion: {question.strip()}\n\n{tail}"


def from_lcb(row: Mapping, where: str = "row") -> CodeProblem:
    """A LiveCodeBench ``code_generation_lite`` row: public tests grade the search, private tests the answer."""
    metadata = _json(row.get("metadata") or {}, f"{where}, column 'metadata'")
    fn_name = metadata.get("func_name") if isinstance(metadata, Mapping) else None
    public = _lcb_cases(_json(_column(row, "public_test_cases", where), f"{where}, column 'public_test_cases'"),
                        fn_name, f"{where}, column 'public_test_cases'")  # fmt: skip
    private_where = f"{where}, column 'private_test_cases'"
    private = _lcb_cases(decode_lcb_tests(row.get("private_test_cases") or "", private_where), fn_name, private_where)
    tests = public + private
    validate_tests(tests, f"{where}, columns 'public_test_cases' + 'private_test_cases'")
    meta = {k: row[k] for k in ("contest_date", "platform", "difficulty", "contest_id") if row.get(k) is not None}
    return CodeProblem(
        task_id=str(row.get("question_id") or row.get("task_id")),
        prompt=lcb_prompt(row.get("question_content", ""), row.get("starter_code") or ""),
        stdio=tests,
        num_public=len(public) if private else None,
        meta=meta,
    )


def _io_cases(io_spec, where: str, fn_name: str | None = None) -> list[dict]:
    """APPS/TACO ``{inputs, outputs[, fn_name]}``: stdin text (a string or a list of lines) per case, or, with
    ``fn_name``, a list of arguments per case whose expected value may be wrapped as ``[value]``."""
    if not isinstance(io_spec, Mapping) or not {"inputs", "outputs"} <= set(io_spec):
        raise ValueError(f"{where}: expected {{'inputs', 'outputs'[, 'fn_name']}}, got {str(io_spec)[:80]!r}")
    inputs, outputs = io_spec["inputs"], io_spec["outputs"]
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError(f"{where}: 'inputs' and 'outputs' must be lists of the same length")
    fn_name = io_spec.get("fn_name") or fn_name
    cases = []
    for args, expected in zip(inputs, outputs):
        if fn_name:
            args = args if isinstance(args, list) else [args]
            lines = "\n".join(json.dumps(a) for a in args)
            cases.append({"input": lines, "output": json.dumps(expected), "fn_name": fn_name, "wrapped": True})
        else:
            text = lambda v: "\n".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
            cases.append({"input": text(args), "output": text(expected)})
    return cases


def from_stdio(row: Mapping, where: str = "row") -> CodeProblem:
    """APPS/TACO-style ``inputs``/``outputs`` (possibly under ``input_output``, call-based with ``fn_name``),
    or a plain ``tests`` list of ``{"input", "output"}`` cases."""
    if "tests" in row:
        cases = _json(row["tests"], f"{where}, column 'tests'")
        column = "tests"
    else:
        column = "input_output" if "input_output" in row else "inputs/outputs"
        cases = _io_cases(
            _json(row.get("input_output") or row, f"{where}, column {column!r}"), f"{where}, column {column!r}"
        )
    validate_tests(cases, f"{where}, column {column!r}")
    task_id = row.get("task_id") or row.get("question_id") or row.get("problem_id")
    return CodeProblem(
        task_id=str(task_id),
        prompt=row.get("question_content") or row.get("question") or row.get("prompt", ""),
        stdio=[dict(c) for c in cases],
        reference_solution=row.get("reference_solution") or row.get("solution"),
    )


def from_deepcoder(row: Mapping, where: str = "row") -> CodeProblem:
    """A DeepCoder row (``problem``, ``tests`` JSON, ``metadata`` dict or JSON, ``starter_code`` on LCB rows).
    ``tests`` shapes: lcbv5 ``[{input, output, testtype}]`` (``func_name`` in the metadata), codeforces
    ``[{input, output}]``, primeintellect ``[{input, output, type, fn_name?}]`` (``fn_name`` of the first test),
    taco ``{inputs, outputs, fn_name?}``."""
    column = f"{where}, column 'tests'"
    tests = _json(_column(row, "tests", where), column)
    metadata = _json(row.get("metadata") or {}, f"{where}, column 'metadata'")
    fn_name = metadata.get("func_name") if isinstance(metadata, Mapping) else None
    if isinstance(tests, Mapping):
        cases = _io_cases(tests, column)
    elif isinstance(tests, list) and tests and all(isinstance(t, Mapping) for t in tests):
        fn_name = fn_name or tests[0].get("fn_name")
        if any(t.get("testtype") == "functional" for t in tests):
            cases = _lcb_cases(tests, fn_name, column)
        elif fn_name and any(isinstance(t.get("input"), list) for t in tests):
            cases = _io_cases({"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests]},
                              column, fn_name)  # fmt: skip
        else:
            cases = [{"input": t.get("input"), "output": t.get("output"),
                      **({"fn_name": fn_name} if fn_name else {})} for t in tests]  # fmt: skip
    else:
        raise ValueError(f"{column}: expected a list of test cases or an inputs/outputs dict, got {str(tests)[:80]!r}")
    validate_tests(cases, column)
    starter = row.get("starter_code") or (metadata.get("starter_code") if isinstance(metadata, Mapping) else "")
    task_id = (
        row.get("task_id")
        or row.get("question_id")
        or (metadata.get("question_id") if isinstance(metadata, Mapping) else None)
    )
    return CodeProblem(
        task_id=str(task_id if task_id is not None else where),
        prompt=lcb_prompt(_column(row, "problem", where), starter or ""),
        stdio=cases,
        meta={
            k: v
            for k, v in (metadata.items() if isinstance(metadata, Mapping) else [])
            if k in ("contest_date", "difficulty", "platform")
        },
    )


PARSERS = {"humaneval": from_humaneval, "mbpp": from_mbpp, "lcb": from_lcb, "deepcoder": from_deepcoder,
           "stdio": from_stdio}  # fmt: skip


def detect_format(row: Mapping) -> str:
    if "test" in row and "entry_point" in row:
        return "humaneval"
    if "test_list" in row:
        return "mbpp"
    if "public_test_cases" in row:
        return "lcb"
    return "deepcoder" if "problem" in row and "tests" in row else "stdio"


def _numbered_rows(source: str | Path, split: str, release_version: str | None = None) -> list[tuple[str, dict]]:
    """(where, row) pairs: ``file:line`` for a local file (or each LiveCodeBench file of ``release_version`` in a
    folder), ``id[split] row N`` for a hub dataset."""
    path = Path(source)
    if release_version is not None and not (path.is_dir() or str(source) == LCB_HUB_ID):
        raise DataError(
            f"release_version {release_version!r}: only for a LiveCodeBench folder (test.jsonl, test2.jsonl, ...) "
            f"or {LCB_HUB_ID!r}, not {str(source)!r}"
        )
    if path.is_dir():
        return _numbered_lcb_rows(path, release_version)
    if path.exists() or looks_like_file(str(source)):
        return [(f"{path}:{number}", row) for number, row in read_rows(path)]
    from datasets import load_dataset  # only needed for hub ids

    if str(source) == LCB_HUB_ID:
        lcb_files(release_version or "release_latest")  # validate the tag before any download
    try:
        if str(source) == LCB_HUB_ID:
            data = load_dataset(str(source), release_version or "release_latest", split=split, revision="refs/pr/5")
        else:
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


def lcb_files(release_version: str) -> tuple[str, ...]:
    """Files of a LiveCodeBench release: ``release_vN`` (= test.jsonl .. testN.jsonl; ``release_latest`` is
    the newest), ``vN`` (file N alone) or ``vA_vB`` (files A to B).

    >>> lcb_files("release_v2"), lcb_files("v3"), lcb_files("v5_v6")
    (('test.jsonl', 'test2.jsonl'), ('test3.jsonl',), ('test5.jsonl', 'test6.jsonl'))
    """
    tag = "release_v6" if release_version == "release_latest" else release_version
    if m := re.fullmatch(r"release_v(\d+)", tag):
        first, last = 1, int(m.group(1))
    elif m := re.fullmatch(r"v(\d+)(?:_v(\d+))?", tag):
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
    else:
        raise ValueError(f"release_version: unknown LiveCodeBench release {release_version!r} (release_vN, vN, vA_vB)")
    if not 1 <= first <= last <= len(LCB_FILES):
        raise ValueError(f"release_version: {release_version!r} is outside release_v1..release_v{len(LCB_FILES)}")
    return LCB_FILES[first - 1 : last]


def _numbered_lcb_rows(path: Path, release_version: str | None) -> list[tuple[str, dict]]:
    if release_version is None:
        raise DataError(f"{path} is a folder: give release_version to pick its LiveCodeBench files")
    files = [path / name for name in lcb_files(release_version)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DataError(f"release_version {release_version!r}: missing {missing}")
    return [(f"{f}:{number}", row) for f in files for number, row in read_rows(f)]


def load_rows(source: str | Path, split: str = "test", release_version: str | None = None) -> list[dict]:
    """Rows of a local ``.jsonl``/``.jsonl.gz``/``.json`` file, of the LiveCodeBench files of
    ``release_version`` in a local folder, else of the ``datasets`` hub id ``source`` (LiveCodeBench: the
    parquet revision, config = release tag)."""
    return [row for _, row in _numbered_rows(source, split, release_version)]


def _date(value, name: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return datetime.fromisoformat(str(value)).date()
    except ValueError:
        raise ValueError(f"{name}: not an ISO date: {value!r}") from None


def filter_contest_dates(rows: Iterable[Mapping], start_date=None, end_date=None) -> list[Mapping]:
    """Rows whose ``contest_date`` lies in ``[start_date, end_date]`` (inclusive; either may be None)."""
    start = _date(start_date, "start_date") if start_date is not None else None
    end = _date(end_date, "end_date") if end_date is not None else None
    out = []
    for i, row in enumerate(rows):
        if "contest_date" not in row:
            raise ValueError(f"row {i}: a contest-date filter needs the column 'contest_date'")
        day = _date(row["contest_date"], f"row {i}, column 'contest_date'")
        if (start is None or day >= start) and (end is None or day <= end):
            out.append(row)
    return out


def parse_row(row: Mapping, fmt: str | None, where: str) -> CodeProblem:
    """One row as a ``CodeProblem``; a bad row raises ``DataError`` naming ``where`` and the field."""
    kind = fmt or detect_format(row)
    check_row(row, kind, where)
    try:
        return PARSERS[kind](row, where)
    except DataError:
        raise
    except ValueError as err:
        if str(err).startswith(where):  # the parser named the row and column already
            raise DataError(str(err)) from None
        raise DataError(f"{where}: malformed {kind} row ({err})") from None
    except KeyError as err:
        raise DataError(f"{where}: missing field {err.args[0]!r}") from None
    except (TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{where}: malformed {kind} row ({type(err).__name__}: {err})") from None


def to_problems(rows: Iterable[Mapping], fmt: str | None = None, name: str = "dataset") -> list[CodeProblem]:
    """Rows as problems; ``fmt`` is one of ``PARSERS`` or detected from the first row; bad rows raise
    ``DataError`` naming row (0-based, as the rows are indexed) and column."""
    if fmt is not None and fmt not in PARSERS:
        raise ValueError(f"format: unknown {fmt!r}; choose from {sorted(PARSERS)}")
    rows = list(rows)
    kind = fmt or (detect_format(rows[0]) if rows else None)
    return [parse_row(row, kind, f"{name} row {i}") for i, row in enumerate(rows)]


def load_problems(
    source: str | Path,
    fmt: str | None = None,
    split: str = "test",
    release_version: str | None = None,
    start_date: str | date | None = None,
    end_date: str | date | None = None,
) -> list[CodeProblem]:
    """Problems from a file, a LiveCodeBench folder or a hub id; ``fmt`` is one of ``PARSERS`` or detected from
    the first row. ``release_version`` picks LiveCodeBench files; ``start_date``/``end_date`` keep contests in
    that window. Every row is checked first: a bad one raises ``DataError`` naming the file, the row and the field."""
    if fmt is not None and fmt not in PARSERS:
        raise ValueError(f"format: unknown {fmt!r}; choose from {sorted(PARSERS)}")
    rows = _numbered_rows(source, split, release_version)
    if start_date is not None or end_date is not None:
        kept = {id(row) for row in filter_contest_dates([row for _, row in rows], start_date, end_date)}
        rows = [(where, row) for where, row in rows if id(row) in kept]
        if not rows:
            raise DataError(f"{source}: no problem in the contest-date window [{start_date}, {end_date}]")
    kind = fmt or detect_format(rows[0][1])
    return [parse_row(row, kind, where) for where, row in rows]
