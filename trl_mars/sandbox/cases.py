"""Turn the three supported test formats into one ``Check`` the harness runs test by test.

Formats: a list of assert snippets (the embedded task generator), HumanEval ``check(candidate)`` code
(split into one test per assert where the body allows it), and stdin/stdout cases (LiveCodeBench style).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

ACTUAL, EXPECTED = "__sandbox_actual__", "__sandbox_expected__"
# Statements allowed next to the asserts of a HumanEval ``check`` body when splitting it into tests.
_PREFIX_STMTS = (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.Pass, ast.Expr)


@dataclass(frozen=True)
class TestCase:
    """One test. Assert tests carry ``source``; stdin/stdout tests carry ``stdin`` and ``expected_stdout``."""

    __test__ = False  # not a pytest class

    source: str = ""
    display: str = ""
    input: str | None = None
    stdin: str | None = None
    expected_stdout: str | None = None


@dataclass(frozen=True)
class Check:
    """A program and its tests. ``setup`` runs once after the program (HumanEval helpers); ``candidate``
    is bound to ``entry_point`` when given. ``stdio`` checks re-run the whole program per case."""

    program: str
    tests: tuple[TestCase, ...]
    setup: str = ""
    entry_point: str | None = None
    stdio: bool = False
    meta: dict = field(default_factory=dict, compare=False)

    def wire(self, output_cap: int) -> dict:
        """What is sent into the sandbox: everything except the expected stdout of stdio cases."""
        data = asdict(self)
        for case in data["tests"]:
            expected = case.pop("expected_stdout")
            case["stdout_cap"] = max(output_cap, 4 * len(expected or "") + 1024)
        return data


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


def assert_case(snippet: str) -> TestCase:
    """A test from one snippet whose last statement is typically an assert (any code that raises on
    failure works); earlier statements run first, unchanged."""
    try:
        body = ast.parse(snippet).body
    except SyntaxError:
        return TestCase(source=snippet, display=snippet.strip())  # reported as an error when it runs
    if not body:
        return TestCase(source=snippet, display=snippet.strip())
    last, call_input = _instrument(body[-1])
    source = "\n".join([*(ast.unparse(s) for s in body[:-1]), last])
    return TestCase(source=source, display=snippet.strip(), input=call_input)


def split_humaneval(test_code: str) -> tuple[str, list[str]]:
    """Split HumanEval ``check(candidate)`` code into (setup, one snippet per non-trivial assert, preceded
    by the body's imports/assignments); fall back to the single snippet ``check(candidate)`` with the whole
    code as setup when the body has loops or other control flow."""
    fallback = (test_code, ["check(candidate)"])
    try:
        module = ast.parse(test_code)
    except SyntaxError:
        return fallback
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or not all(isinstance(s, (ast.Assert, *_PREFIX_STMTS)) for s in checks[0].body):
        return fallback
    setup = "\n".join(ast.unparse(n) for n in module.body if n is not checks[0])
    prefix: list[str] = []
    snippets: list[str] = []
    for stmt in checks[0].body:
        if not isinstance(stmt, ast.Assert):
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
                prefix.append(ast.unparse(stmt))
        elif not isinstance(stmt.test, ast.Constant):  # skip `assert True, "..."` filler
            snippets.append("\n".join([*prefix, ast.get_source_segment(test_code, stmt) or ast.unparse(stmt)]))
    return (setup, snippets) if snippets else fallback


def stdio_case(case: Mapping) -> TestCase:
    """A stdin/stdout test from ``{"input": ..., "output": ...}``."""
    stdin, expected = str(case["input"]), str(case["output"])
    return TestCase(display=f"stdin: {stdin[:200]!r}", stdin=stdin, expected_stdout=expected, input=stdin)


def make_check(program: str, tests, entry_point: str | None = None, setup: str = "") -> Check:
    """Build a ``Check`` from any supported test format.

    ``tests`` may be: HumanEval test code (a ``str`` defining ``check``), a list of assert snippets, a list of
    ``{"input", "output"}`` dicts, a list of ``TestCase``, or a ``Check`` (returned unchanged)."""
    if isinstance(tests, Check):
        return tests
    if isinstance(tests, str):
        he_setup, snippets = split_humaneval(tests)
        setup = "\n".join(filter(None, [setup, he_setup]))
        return Check(program, tuple(assert_case(s) for s in snippets), setup, entry_point)
    items = list(tests)
    if items and all(isinstance(t, Mapping) for t in items):
        return Check(program, tuple(stdio_case(t) for t in items), setup, entry_point, stdio=True)
    cases = tuple(t if isinstance(t, TestCase) else assert_case(str(t)) for t in items)
    return Check(program, cases, setup, entry_point, stdio=any(c.stdin is not None for c in cases))
