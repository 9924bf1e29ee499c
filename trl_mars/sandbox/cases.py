"""Turn every supported test format into one ``Check`` the harness runs test by test.

Formats: a list of assert snippets (the embedded task generator, MBPP), HumanEval ``check(candidate)``
code (split into one test per assert where the body allows it), stdin/stdout cases (LiveCodeBench,
APPS/TACO, DeepCoder) and call-based cases (LiveCodeBench functional problems, DeepCoder ``fn_name``:
arguments as JSON lines, the output as a JSON value). Assert tests are split on the trusted side where
their shape allows (``trusted.split_assert``); stdin/stdout and call-based cases are always compared in
the parent. ``validate_tests`` rejects malformed tests with the place named.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from trl_mars.sandbox.harness import ACTUAL, EXPECTED
from trl_mars.sandbox.trusted import BUILTIN_NAMES, PARENT_MODULES, Judge, child_setup, free_names, split_assert

# Statements allowed next to the asserts of a HumanEval ``check`` body when splitting it into tests.
_PREFIX_STMTS = (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.Pass, ast.Expr)
_MAX_UNROLL = 20  # a `for x in range(...)` of asserts with at most this many steps becomes one test per step
# What LiveCodeBench puts before a functional solution: star-imports, and a deep recursion limit.
CALL_PRELUDE = (
    "import bisect, collections, functools, heapq, itertools, math, re, string, sys\n"
    "from typing import *\nfrom collections import *\nfrom heapq import *\nfrom bisect import *\n"
    "from itertools import *\nfrom functools import *\nfrom math import *\nsys.setrecursionlimit(50000)\n"
)


@dataclass(frozen=True)
class TestCase:
    """One test. Assert tests carry ``source`` (run in the sandbox) or, when split on the trusted side,
    ``holes``/``prefix`` (what the sandbox evaluates) and ``judge`` (what the parent checks); stdin/stdout
    tests carry ``stdin`` and ``expected_stdout``; call-based tests ``fn_name``, ``call`` (a JSON list of
    arguments) and ``expected_json`` (``wrapped``: the expected value may also be ``[value]``, as in TACO).
    ``judge``, ``expected_stdout`` and ``expected_json`` never enter the sandbox."""

    __test__ = False  # not a pytest class

    source: str = ""
    display: str = ""
    input: str | None = None
    stdin: str | None = None
    expected_stdout: str | None = None
    holes: tuple[str, ...] = ()
    prefix: str = ""
    judge: Judge | None = None
    fn_name: str | None = None
    call: str | None = None
    expected_json: str | None = None
    wrapped: bool = False

    @property
    def trusted(self) -> bool:
        """Whether the verdict is decided in the parent (not by code running next to the program)."""
        return self.judge is not None or self.stdin is not None or self.call is not None


@dataclass(frozen=True)
class Check:
    """A program and its tests. ``setup`` is the tests' own code (HumanEval helpers, MBPP imports): it runs
    once after the program in the *test* namespace (pristine builtins, ``candidate`` bound to
    ``entry_point``, and ``names``: the program's names the tests use), never in the program's globals.
    ``prelude`` runs before the program in its globals. ``stdio`` checks re-run the whole program per case."""

    program: str
    tests: tuple[TestCase, ...]
    setup: str = ""
    entry_point: str | None = None
    stdio: bool = False
    meta: dict = field(default_factory=dict, compare=False)
    names: tuple[str, ...] = ()
    prelude: str = ""

    @property
    def trusted_share(self) -> float:
        return sum(t.trusted for t in self.tests) / len(self.tests) if self.tests else 0.0

    def wire(self, output_cap: int) -> dict:
        """What is sent into the sandbox: no expected output or value, and for tests judged in the parent
        neither their source nor their display (which hold the expected value)."""
        tests = []
        for t in self.tests:
            hidden = t.trusted
            tests.append({
                "source": "" if hidden else t.source, "display": "" if hidden else t.display, "input": t.input,
                "stdin": t.stdin, "holes": list(t.holes), "prefix": t.prefix, "fn_name": t.fn_name, "call": t.call,
                "stdout_cap": max(output_cap, 4 * len(t.expected_stdout or "") + 1024),
            })  # fmt: skip
        return {
            "program": self.program, "tests": tests, "setup": self.setup, "entry_point": self.entry_point,
            "stdio": self.stdio, "names": list(self.names), "prelude": self.prelude,
        }  # fmt: skip


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip().splitlines()]


def same_output(actual: str, expected: str) -> bool:
    """stdout comparison of LiveCodeBench-style judges: line-wise ignoring trailing whitespace and trailing
    blank lines, else token-wise."""
    return _lines(actual) == _lines(expected) or actual.split() == expected.split()


def _instrument(stmt: ast.stmt) -> tuple[str, str | None]:
    """Source of ``stmt``; ``assert a == b`` is rewritten to keep ``a`` and ``b`` for the failure report.
    Returns the source and the call input (the arguments of ``a`` when it is a call)."""
    test = stmt.test if isinstance(stmt, ast.Assert) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return ast.unparse(stmt), None
    left, right = test.left, test.comparators[0]
    call_input = (
        ", ".join(ast.unparse(a) for a in [*left.args, *left.keywords]) if isinstance(left, ast.Call) else None
    )
    check = ast.Assert(
        ast.Compare(ast.Name(ACTUAL, ast.Load()), [ast.Eq()], [ast.Name(EXPECTED, ast.Load())]), stmt.msg
    )
    lines = [f"{ACTUAL} = {ast.unparse(left)}", f"{EXPECTED} = {ast.unparse(right)}", ast.unparse(check)]
    return "\n".join(lines), call_input


@functools.lru_cache(maxsize=1 << 14)
def assert_case(snippet: str, setup: str = "", entry_point: str | None = None) -> TestCase:
    """A test from one snippet whose last statement is typically an assert (any code that raises on
    failure works). Split on the trusted side when its shape allows (``trusted.split_assert``); else it runs
    in the sandbox, earlier statements first, ``assert a == b`` rewritten to keep ``a`` and ``b``."""
    split = split_assert(snippet, setup, entry_point)
    if split is not None:
        return TestCase(display=snippet.strip(), input=split.input, holes=split.holes, prefix=split.prefix,
                        judge=split.judge)  # fmt: skip
    try:
        body = ast.parse(snippet).body
    except SyntaxError:
        return TestCase(source=snippet, display=snippet.strip())  # reported as an error when it runs
    if not body:
        return TestCase(source=snippet, display=snippet.strip())
    last, call_input = _instrument(body[-1])
    source = "\n".join([*(ast.unparse(s) for s in body[:-1]), last])
    return TestCase(source=source, display=snippet.strip(), input=call_input)


def _unrolled(stmt: ast.stmt) -> list[list[ast.Assert]] | None:
    """``for x in range(a, b[, c]): <asserts>`` with constant bounds and few steps, as one list of
    statements per step (``x = value`` then the asserts); None for any other statement."""
    if not (isinstance(stmt, ast.For) and isinstance(stmt.target, ast.Name) and not stmt.orelse):
        return None
    it = stmt.iter
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range" and not it.keywords):
        return None
    if not it.args or not all(isinstance(a, ast.Constant) and type(a.value) is int for a in it.args):
        return None
    steps = range(*(a.value for a in it.args))
    if len(steps) > _MAX_UNROLL or not all(isinstance(s, ast.Assert) for s in stmt.body):
        return None
    return [
        [ast.Assign([ast.Name(stmt.target.id, ast.Store())], ast.Constant(v), lineno=0), *stmt.body] for v in steps
    ]


def _segment(lines: list[str], stmt: ast.stmt) -> str:
    """The source text of a one-line statement (``ast.get_source_segment`` re-splits the file each call)."""
    if stmt.lineno == stmt.end_lineno:
        return lines[stmt.lineno - 1].encode()[stmt.col_offset : stmt.end_col_offset].decode()
    return ast.unparse(stmt)


@functools.lru_cache(maxsize=1024)
def split_humaneval(test_code: str) -> tuple[str, list[str]]:
    """Split HumanEval ``check(candidate)`` code into (setup, snippets): one snippet per non-trivial assert,
    preceded by the body's imports/assignments; a short constant ``for`` loop of asserts gives a snippet
    per step; any other loop or block is one snippet of its own (run in the sandbox). Falls back to the
    single snippet ``check(candidate)`` with the whole code as setup when a later statement uses names
    bound inside such a block, or when there is no single ``check``."""
    fallback = (test_code, ["check(candidate)"])
    try:
        module = ast.parse(test_code)
    except SyntaxError:
        return fallback
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        return fallback
    setup = "\n".join(ast.unparse(n) for n in module.body if n is not checks[0])
    lines = test_code.splitlines()
    prefix: list[str] = []
    snippets: list[str] = []
    block_names: set[str] = set()  # bound inside loops/blocks that became tests of their own
    for stmt in checks[0].body:
        if free_names(stmt) & block_names:
            return fallback
        steps = _unrolled(stmt)
        if isinstance(stmt, ast.Assert):
            if not isinstance(stmt.test, ast.Constant):  # skip `assert True, "..."` filler
                snippets.append("\n".join([*prefix, _segment(lines, stmt)]))
        elif steps is not None:
            snippets.extend("\n".join([*prefix, *(ast.unparse(s) for s in step)]) for step in steps)
        elif isinstance(stmt, _PREFIX_STMTS):
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
                prefix.append(ast.unparse(stmt))
        else:
            snippets.append("\n".join([*prefix, ast.unparse(stmt)]))
            block_names |= {
                n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)
            }
    return (setup, snippets) if snippets else fallback


def stdio_case(case: Mapping) -> TestCase:
    """A stdin/stdout test from ``{"input": ..., "output": ...}``."""
    stdin, expected = str(case["input"]), str(case["output"])
    return TestCase(display=f"stdin: {stdin[:200]!r}", stdin=stdin, expected_stdout=expected, input=stdin)


def call_case(case: Mapping) -> TestCase:
    """A call-based test from ``{"input": JSON lines, "output": JSON, "fn_name": name}`` (LiveCodeBench
    functional problems): each non-blank input line is one positional argument; the function is
    ``Solution().<fn_name>`` when the program defines ``class Solution``, else ``<fn_name>``."""
    fn, args = str(case["fn_name"]), str(case["input"])
    shown = ", ".join(line for line in args.split("\n") if line.strip())
    return TestCase(display=f"{fn}({shown[:200]})", input=shown[:FIELD_INPUT], fn_name=fn, call=args,
                    expected_json=str(case["output"]), wrapped=bool(case.get("wrapped")))  # fmt: skip


FIELD_INPUT = 2000
_CASE_KEYS = {"input", "output"}
_OPTIONAL_KEYS = {"testtype", "type", "fn_name", "wrapped"}


def _is_call(case: Mapping) -> bool:
    return bool(case.get("fn_name"))


def _names(codes: tuple[str, ...]) -> tuple[set[str], set[str], set[str]]:
    """(names read, names bound by assignment/import/def/class, function argument names) over the codes that parse."""
    loads, stores, args = set(), set(), set()
    for code in codes:
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Name):
                (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
            elif isinstance(n, ast.alias):
                stores.add((n.asname or n.name).split(".")[0])
            elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                stores.add(n.name)
            elif isinstance(n, ast.arg):
                args.add(n.arg)
    return loads, stores, args


def _implicit_imports(setup: str, snippets: tuple[str, ...], entry_point: str | None) -> str:
    """``import`` lines for modules of ``PARENT_MODULES`` the tests use without importing them (MBPP asserts
    using ``math``): the tests get their own module, not whatever the program bound to that name."""
    used, bound, args = _names((setup, *snippets))
    bound |= args
    modules = sorted((used & PARENT_MODULES) - bound - {entry_point})
    return "".join(f"import {m}\n" for m in modules)


def _program_names(codes: tuple[str, ...], entry_point: str | None) -> tuple[str, ...]:
    """Names the tests read that they do not bind themselves and that are not builtins (the entry point
    always counts): the harness copies these, when the program defines them, into the test namespace."""
    loads, stores, _ = _names(codes)
    names = {n for n in loads - stores if n not in BUILTIN_NAMES} - {"candidate"}
    return tuple(sorted(names | ({entry_point} if entry_point else set())))


@functools.lru_cache(maxsize=4096)
def _assert_cases(snippets: tuple[str, ...], setup: str, entry_point: str | None):
    setup = _implicit_imports(setup, snippets, entry_point) + setup
    cases = tuple(assert_case(s, setup, entry_point) for s in snippets)
    if all(c.trusted for c in cases):  # the sandbox gets only the setup its holes need, no expected values
        setup = child_setup(setup, tuple(c.prefix for c in cases) + tuple(h for c in cases for h in c.holes))
    codes = (setup, *(c.source for c in cases), *(c.prefix for c in cases), *(h for c in cases for h in c.holes))
    return cases, setup, _program_names(codes, entry_point)


def make_check(program: str, tests, entry_point: str | None = None, setup: str = "") -> Check:
    """Build a ``Check`` from any supported test format.

    ``tests`` may be: HumanEval test code (a ``str`` defining ``check``), a list of assert snippets, a list of
    ``{"input", "output"}`` dicts (with ``fn_name``: call-based), a list of ``TestCase``, or a ``Check``
    (returned unchanged)."""
    if isinstance(tests, Check):
        return tests
    if isinstance(tests, str):
        he_setup, snippets = split_humaneval(tests)
        setup = "\n".join(filter(None, [setup, he_setup]))
        cases, setup, names = _assert_cases(tuple(snippets), setup, entry_point)
        return Check(program, cases, setup, entry_point, names=names)
    items = list(tests)
    if items and all(isinstance(t, Mapping) for t in items):
        if all(_is_call(t) for t in items):
            return Check(program, tuple(call_case(t) for t in items), setup, entry_point, prelude=CALL_PRELUDE)
        return Check(program, tuple(stdio_case(t) for t in items), setup, entry_point, stdio=True)
    if all(isinstance(t, str) for t in items):
        cases, setup, names = _assert_cases(tuple(items), setup, entry_point)
        return Check(program, cases, setup, entry_point, names=names)
    cases = tuple(t if isinstance(t, TestCase) else assert_case(str(t), setup, entry_point) for t in items)
    codes = (setup, *(c.source for c in cases), *(c.prefix for c in cases), *(h for c in cases for h in c.holes))
    stdio = any(c.stdin is not None for c in cases)
    prelude = CALL_PRELUDE if any(c.call is not None for c in cases) else ""
    return Check(program, cases, setup, entry_point, stdio=stdio, names=_program_names(codes, entry_point),
                 prelude=prelude)  # fmt: skip


def _where(where: str, j: int | None = None, node: SyntaxError | None = None) -> str:
    place = where if j is None else f"{where}, test {j}"
    if node is not None and node.lineno is not None:
        place += f" (line {node.lineno}, column {node.offset})"
    return place


def validate_tests(tests, where: str = "tests") -> None:
    """Raise ``ValueError`` naming ``where`` (e.g. ``"row 3, column 'tests'"``) unless ``tests`` is a
    supported, meaningful test format: HumanEval code defining ``check``, a non-empty list of assert
    snippets that each contain an ``assert`` or ``raise`` (or end in a call that may raise, such as
    ``check(candidate)``), or a list of ``{"input", "output"}`` cases
    (call-based ones with ``fn_name``, JSON lines in and a JSON value out)."""
    if isinstance(tests, Check):
        return
    if isinstance(tests, str):
        text = tests.strip()
        if text[:1] in "[{":
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = None
            if isinstance(decoded, (list, dict)):
                raise ValueError(f"{where}: tests are a JSON-encoded {type(decoded).__name__}; decode them "
                                 "(json.loads) into a list of tests")  # fmt: skip
        try:
            module = ast.parse(tests)
        except SyntaxError as e:
            raise ValueError(f"{_where(where, node=e)}: the test code does not parse: {e.msg}") from None
        if any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in module.body):
            return
        if len(module.body) == 1 and isinstance(module.body[0], ast.Assert):
            raise ValueError(f"{where}: a single assert given as one string; give a list of assert strings")
        raise ValueError(f"{where}: test code given as one string must define check(candidate) (HumanEval)")
    if isinstance(tests, (bytes, Mapping)) or not hasattr(tests, "__iter__"):
        raise ValueError(f"{where}: expected a list of tests, got {type(tests).__name__} {str(tests)[:60]!r}")
    items = list(tests)
    if not items:
        raise ValueError(f"{where}: no tests (every program would get reward 0)")
    kinds = {"case" if isinstance(t, Mapping) else "code" if isinstance(t, (str, TestCase)) else "bad" for t in items}
    for j, t in enumerate(items):
        if isinstance(t, TestCase):
            continue
        if isinstance(t, str):
            problem, error = _snippet_problem(t)
            if problem:
                raise ValueError(f"{_where(where, j, error)}: {problem}")
        elif isinstance(t, Mapping):
            keys = set(t)
            if not _CASE_KEYS <= keys or keys - _CASE_KEYS - _OPTIONAL_KEYS:
                raise ValueError(f"{_where(where, j)}: a test case needs the keys 'input' and 'output' (optional: "
                                 f"{', '.join(sorted(_OPTIONAL_KEYS))}), got {sorted(keys)}")  # fmt: skip
            if _is_call(t):
                _check_call_case(t, _where(where, j))
            elif not all(isinstance(t[k], str) for k in _CASE_KEYS):
                raise ValueError(f"{_where(where, j)}: stdin/stdout 'input' and 'output' must be strings")
        else:
            raise ValueError(f"{_where(where, j)}: a test must be a string or an input/output dict, "
                             f"got {type(t).__name__} {str(t)[:60]!r}")  # fmt: skip
    if len(kinds) > 1:
        raise ValueError(f"{where}: mixes assert strings and input/output cases")
    if kinds == {"case"} and len({_is_call(t) for t in items}) > 1:
        raise ValueError(f"{where}: mixes call-based (fn_name) and stdin/stdout cases")


@functools.lru_cache(maxsize=1 << 14)
def _snippet_problem(snippet: str) -> tuple[str, SyntaxError | None]:
    """What is wrong with an assert snippet ("" if nothing), and its syntax error if that is it."""
    try:
        tree = ast.parse(snippet)
    except SyntaxError as e:
        return f"the test does not parse: {e.msg}", e
    last = tree.body[-1] if tree.body else None
    checks = any(isinstance(n, (ast.Assert, ast.Raise)) for n in ast.walk(tree))
    if not checks and not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)):  # check(candidate)
        return f"{snippet.strip()[:80]!r} has no assert, so any program would pass it", None
    return "", None


def _check_call_case(case: Mapping, where: str) -> None:
    if not isinstance(case["input"], str) or not isinstance(case["output"], str):
        raise ValueError(f"{where}: call-based 'input' (JSON lines) and 'output' (JSON) must be strings")
    for k, line in enumerate(case["input"].split("\n"), 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as e:
                raise ValueError(f"{where}: input line {k} is not JSON: {e}") from None
    try:
        json.loads(case["output"])
    except ValueError as e:
        raise ValueError(f"{where}: the expected output is not JSON: {e}") from None
