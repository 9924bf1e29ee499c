"""Verdicts decided on the trusted side: the assert shapes the parent splits, the strict value codec, tests'
own code isolated from the program's globals, and the share of trusted tests."""

from __future__ import annotations

import doctest
import json

import pytest

from trl_mars.data.code_tasks import generate_tasks
from trl_mars.sandbox import Sandbox, Status, make_check, trusted, values, verdict
from trl_mars.sandbox.values import MAX_DEPTH, Unencodable, decode, encode

ALWAYS_EQUAL = (
    "class _A:\n    def __eq__(self, o): return True\n    def __bool__(self): return True\n"
    "    def __sub__(self, o): return 0\n    def __rsub__(self, o): return 0\n    def __abs__(self): return 0\n"
    "    def __lt__(self, o): return True\n    def __hash__(self): return 0\n    def __iter__(self): return iter(())\n"
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(concurrency=2, timeout_s=1.0, max_total_s=4.0) as sb:
        yield sb


def test_module_doctests():
    for module in (trusted, values, verdict):
        assert doctest.testmod(module).failed == 0, module.__name__


# (test, setup, right program, wrong program): every shape of the issue is split and decided in the parent
SHAPES = [
    ("assert f(2) == 4", "", "def f(x):\n    return x * 2", "def f(x):\n    return x + 3"),
    ("assert f(2)", "", "def f(x):\n    return x > 1", "def f(x):\n    return []"),
    ("assert not f(3)", "", "def f(x):\n    return x < 1", "def f(x):\n    return 'no'"),
    ("assert math.isclose(f(2), 0.3, rel_tol=1e-9)", "import math", "def f(x):\n    return 0.1 + 0.2",
     "def f(x):\n    return 0.31"),
    ("assert abs(f(2) - 1.5) < 1e-6", "", "def f(x):\n    return 1.5", "def f(x):\n    return 1.6"),
    ("assert set(f(3)) == {0, 1, 2}", "", "def f(n):\n    return [2, 1, 0]", "def f(n):\n    return [0, 1]"),
    ("assert sorted(f(3)) == [0, 1, 2]", "", "def f(n):\n    return (i for i in range(n))",
     "def f(n):\n    return iter([1])"),
    ("assert f('Ab').lower() == 'ab' and len(f('Ab')) == 2", "", "def f(s):\n    return s", "def f(s):\n    return s * 2"),
    ("xs = [3, 1]\nassert f(xs) == sorted(xs)", "", "def f(v):\n    return sorted(v)", "def f(v):\n    return v"),
    ("assert f(1) is None", "", "def f(x):\n    return None", "def f(x):\n    return 0"),
    ("assert str(f(2)) == 'P(2)'", "", "class P:\n    def __init__(s, v): s.v = v\n    def __str__(s): return f'P({s.v})'\n"
     "def f(x):\n    return P(x)", "def f(x):\n    return 'P(3)'"),
]  # fmt: skip


@pytest.mark.parametrize("test,setup,right,wrong", SHAPES, ids=[s[0].splitlines()[-1] for s in SHAPES])
def test_assert_shapes_are_decided_in_the_parent(sandbox, test, setup, right, wrong):
    (case,) = make_check(right, [test], setup=setup).tests
    assert case.trusted and case.holes and all("==" not in h for h in case.holes)
    hacks = [ALWAYS_EQUAL + "def f(*a):\n    return _A()", "class I(int):\n    def __eq__(s, o): return True\n"
             "    __hash__ = int.__hash__\ndef f(*a):\n    return I(0)"]  # fmt: skip
    results = sandbox.run_batch([(program, [test], None, setup) for program in [right, wrong, *hacks]])
    assert [r.verdicts[0].status for r in results[:2]] == [Status.PASSED, Status.FAILED]
    assert all(r.verdicts[0].trusted and not r.passed for r in results[1:])
    hacked = results[2].verdicts[0]  # materialised in the child (set/sorted of _A) or refused by the codec
    assert hacked.status is Status.FAILED or hacked.error_type == "TypeError"


def test_program_against_program_comparisons_run_in_the_sandbox(sandbox):
    program = "class Point:\n    def __init__(s, x): s.x = x\n    def __eq__(s, o): return s.x == o.x\ndef f(x):\n    return Point(x)\n"
    tests = ["assert f(1) == Point(1)", "assert f(1) == f(2)", "assert f(1).x == 1"]
    assert [t.trusted for t in make_check(program, tests).tests] == [False, False, True]
    result = sandbox.run(program, tests)
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.FAILED, Status.PASSED]


def test_expected_values_never_enter_the_sandbox():
    tests = [
        "assert f(1) == 987654321",
        "y = 424242\nassert f(y) == 13579",
        "z, want = 2468, 97531\nassert f(z) == want",
    ]
    check = make_check("def f(x):\n    return x", tests)
    wire = json.dumps(check.wire(1024))
    assert "987654321" not in wire and "13579" not in wire and "97531" not in wire
    assert "424242" in wire and "2468" in wire  # inputs do go in
    # test setup code that holds expected values stays out too (MBPP test_setup_code, HumanEval METADATA)
    setup = "import math\nEXPECTED = 55555\nARG = 31337\ndef make(v):\n    return [v, ARG]"
    check = make_check("def f(x):\n    return x", ["assert f(make(1)) == EXPECTED"], setup=setup)
    wire = json.dumps(check.wire(1024))
    assert check.tests[0].trusted and "55555" not in wire and "31337" in wire and "def make" in wire


def test_humaneval_and_mbpp_shapes(sandbox):
    he = (
        "METADATA = {'author': 'x'}\n\ndef check(candidate):\n"
        "    assert candidate([1, 2]) == 3, 'sum of two'\n    assert abs(candidate([0.5]) - 0.5) < 1e-6\n"
        "    assert True\n"
    )
    check = make_check("", he, entry_point="total")
    assert [t.trusted for t in check.tests] == [True, True]
    result = sandbox.run("def total(xs):\n    return sum(xs) if len(xs) > 1 else 0\n", he, entry_point="total")
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.FAILED]
    assert (result.verdicts[1].actual, result.verdicts[1].input) == ("0", "[0.5]")
    failed = sandbox.run("def total(xs):\n    return 4\n", he, entry_point="total").verdicts[0]
    assert (failed.expected, failed.actual, failed.message) == ("3", "4", "sum of two")
    # MBPP: the function is called by name; `math` used without an import is the test's own math
    mbpp = ["assert area(2) == 4", "assert math.isclose(area(0.5), 0.25)"]
    program = "import math\nmath.isclose = lambda *a, **k: True\ndef area(s):\n    return s * s if s > 1 else 0\n"
    result = sandbox.run(program, mbpp)
    assert [(v.status, v.trusted) for v in result.verdicts] == [(Status.PASSED, True), (Status.FAILED, True)]


def test_tests_own_code_runs_with_pristine_builtins_outside_the_program_globals(sandbox):
    program = (
        "import builtins\nbuiltins.sorted = lambda *a, **k: [0]\n"
        "def abs(x):\n    return 0\ndef len(x):\n    return 0\nLIMIT = 1\ndef f(x):\n    return -x\n"
    )
    tests = [
        "assert abs(f(3)) == 3",  # split: abs is the parent's
        "def h(v):\n    return abs(v) + len([v])\nassert h(f(2)) == 3",  # a test helper: runs in the sandbox
        "for v in [5]:\n    assert sorted([f(v), 0]) == [-5, 0]",  # a loop: runs in the sandbox
        "assert 'LIMIT' not in dir()",  # the tests do not see the program's globals
    ]
    result = sandbox.run(program, tests)
    assert [(v.status, v.trusted) for v in result.verdicts] == [
        (Status.PASSED, True), (Status.PASSED, False), (Status.PASSED, False), (Status.PASSED, False),
    ]  # fmt: skip
    assert result.trusted_share == 0.25
    # HumanEval helpers the tests call are the program's (check bodies use the prompt's functions)
    he = "def check(candidate):\n    for s in ['ab']:\n        assert decode(candidate(s)) == s\n"
    program = "def encode(s):\n    return s[::-1]\ndef decode(s):\n    return s[::-1]\n"
    assert sandbox.run(program, he, entry_point="encode").passed


def test_codec_round_trips_exact_builtins_and_rejects_the_rest():
    value = [None, True, -3, 2**100, -(2**63), 2**63 - 1, 1.5, float("inf"), -0.0, 2j, "é\udc80", b"\x00\xff", (1, (2,)), {1: [2]},
             {"a", "b"}, frozenset({3})]  # fmt: skip
    assert decode(encode(value)) == value and repr(decode(encode([-0.0]))) == "[-0.0]"
    for bad in ([object()], [type("S", (str,), {})("x")], [True.__class__], [[1, object()]]):
        with pytest.raises(Unencodable):
            encode(bad)
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(Unencodable):
        encode([deep])
    loop: list = []
    loop.append(loop)
    with pytest.raises(Unencodable):
        encode([loop])
    with pytest.raises(Unencodable):
        encode(["x" * 100_000])
    forged = [
        '{"t": 1}',
        '[{"z": []}]',
        '[{"i": "1_0"}]',
        '[{"i": 5}]',
        "[" * 5000,
        '{"a": 1}',
        '[{"s": [[1]]}]',
        "1e999999",
        None,
        "nan",
    ]
    for text in forged:
        with pytest.raises(ValueError):
            decode(text)


def test_huge_ints_cross_and_are_shown(sandbox):
    tests = ["assert f(2000) == math.factorial(2000)", "assert f(1999) == 0"]
    result = sandbox.run("import math\ndef f(n):\n    return math.factorial(n)\n", tests)
    assert [(v.status, v.trusted) for v in result.verdicts] == [(Status.PASSED, True), (Status.FAILED, True)]
    assert result.verdicts[1].actual == f"<an int of {__import__('math').factorial(1999).bit_length()} bits>"


def test_forged_value_records_are_refused(sandbox):
    # a program that writes its own record for the trusted test: only a well-formed value can come through
    program = (
        "import json, os, sys\ndef f(x):\n    fr = sys._getframe()\n    while 'nonce' not in fr.f_locals:\n"
        "        fr = fr.f_back\n    n, fd = fr.f_locals['nonce'], fr.f_locals['fd']\n"
        "    os.write(fd, (json.dumps([n, 'E', 0, 'passed', None, '', '', 'passed', None, 0.0]) + '\\n').encode())\n"
        "    os.write(fd, (json.dumps([n, 'D']) + '\\n').encode())\n    os._exit(0)\n"
    )
    (v,) = sandbox.run(program, ["assert f(1) == 2"]).verdicts
    assert v.status is Status.FAILED and v.trusted and "no valid value" in v.message


def test_trusted_share_of_the_embedded_task():
    tasks = generate_tasks(60, seed=0)
    for tests in ([t.tests for t in tasks], [t.test for t in tasks]):
        checks = [make_check(t.canonical_solution, ts, t.entry_point) for t, ts in zip(tasks, tests)]
        assert all(c.trusted_share == 1.0 for c in checks)
