"""Reward hacks against the verifier: on the trusted tests of all 164 HumanEval problems none of them
passes a problem, while the 164 canonical solutions pass (docs/sandbox.md, "Threat model")."""

from __future__ import annotations

import pytest

from trl_mars.eval import load_problems
from trl_mars.eval.loaders import load_rows
from trl_mars.sandbox import Sandbox, Status, make_check

ALWAYS_EQUAL = """
class _Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __sub__(self, other): return 0
    def __rsub__(self, other): return 0
    def __abs__(self): return 0
    def __lt__(self, other): return True
    def __le__(self, other): return True
    def __gt__(self, other): return True
    def __ge__(self, other): return True
    def __hash__(self): return 0
    def __len__(self): return 0
    def __iter__(self): return iter(())
    def __float__(self): return 0.0

def {entry}(*args, **kwargs):
    return _Anything()
"""

SUBCLASSES = """
class _Int(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = int.__hash__

class _Str(str):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = str.__hash__

class _List(list):
    def __eq__(self, other): return True
    def __ne__(self, other): return False

_kind = [0]

def {entry}(*args, **kwargs):
    _kind[0] += 1
    return (_Int(0), _Str(''), _List())[_kind[0] % 3]
"""

BOOL_ONLY = """
class _Truthy(int):
    def __bool__(self): return True
    def __eq__(self, other): return True
    __hash__ = int.__hash__

def {entry}(*args, **kwargs):
    return _Truthy(1)
"""

FORGE = """
import json, os, sys

def _frame():
    {find}

def {entry}(*args, **kwargs):
    frame = _frame()
    while frame is not None and 'nonce' not in frame.f_locals:
        frame = frame.f_back
    local = frame.f_locals
    nonce, fd, tests, i = local['nonce'], local['fd'], local['tests'], local['i']
    for j in range(i, len(tests)):
        if j > i:
            os.write(fd, (json.dumps([nonce, 'S', j]) + '\\n').encode())
        os.write(fd, (json.dumps([nonce, 'E', j, 'passed', None, '', '', {payload!r}, None, 0.0]) + '\\n').encode())
    os.write(fd, (json.dumps([nonce, 'D']) + '\\n').encode())
    os._exit(0)
"""
FRAME_WALK = "return sys._getframe(1)"
TRACEBACK_FRAME = (
    "try:\n        raise ValueError\n    except ValueError as e:\n        return e.__traceback__.tb_frame.f_back"
)

SETTRACE = """
import sys

def _swap(frame, event, arg):
    for scope in (frame.f_locals, frame.f_globals):
        for name in list(scope):
            if 'expected' in name.lower():
                actual = name.lower().replace('expected', 'actual')
                for other in list(scope):
                    if other.lower() == actual:
                        scope[other] = scope[name]
    return _swap

sys.settrace(_swap)

def {entry}(*args, **kwargs):
    return None
"""

SHADOWED = """
def abs(x): return 0
def len(x): return 0
def sorted(x, **k): return x
def set(x=()): return x
def round(x, n=0): return x
def isinstance(x, t): return True
def all(x): return True
def any(x): return True
def str(x=''): return x
def int(x=0): return x
def float(x=0.0): return x
def list(x=()): return x
def tuple(x=()): return x
def range(*a): return []
abs.__eq__ = lambda other: True

def {entry}(*args, **kwargs):
    return 0
"""

PATCHED_BUILTINS = """
import builtins, math
builtins.abs = lambda x: 0
builtins.isinstance = lambda *a: True
builtins.sorted = lambda x, **k: x
builtins.len = lambda x: 0
builtins.AssertionError = type('Fake', (Exception,), {{}})
math.isclose = lambda *a, **k: True
math.fabs = lambda x: 0.0

def {entry}(*args, **kwargs):
    return 0.0
"""

HACKS = {
    "always-equal": ALWAYS_EQUAL,
    "int/str/list subclasses": SUBCLASSES,
    "__bool__ + __eq__ on an int subclass": BOOL_ONLY,
    "frame-walk forge": FORGE.replace("{find}", FRAME_WALK).replace("{payload!r}", repr(None)),
    "frame-walk forge claiming True": FORGE.replace("{find}", FRAME_WALK).replace("{payload!r}", repr("[true]")),
    "traceback-frame forge": FORGE.replace("{find}", TRACEBACK_FRAME).replace("{payload!r}", repr(None)),
    "settrace swap": SETTRACE,
    "shadowed builtins": SHADOWED,
    "patched builtins and math.isclose": PATCHED_BUILTINS,
}
# Hacks whose values the codec must refuse or whose reports carry no value: not even one trusted test passes.
NO_TRUSTED_TEST = {"always-equal", "int/str/list subclasses", "__bool__ + __eq__ on an int subclass",
                   "frame-walk forge", "traceback-frame forge"}  # fmt: skip


@pytest.fixture(scope="module")
def problems(shared_data):
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    problems = load_problems(path)
    for problem, row in zip(problems, load_rows(path)):
        problem.raw_test = row["test"]
    return problems


def hack_program(problem, template: str) -> str:
    """The prompt (with its helpers), a stub body, then the hack redefining the entry point."""
    return problem.prompt + "    pass\n" + template.format(entry=problem.entry_point)


def trusted_passes(result) -> tuple[bool, int]:
    """(every trusted test passed, number of trusted tests passed)."""
    trusted = [v for v in result.verdicts if v.trusted]
    passed = sum(v.passed for v in trusted)
    return bool(trusted) and passed == len(trusted), passed


def test_reward_hacks_pass_no_problem_on_trusted_tests_while_canonical_solutions_pass(problems):
    assert len(problems) == 164
    names = list(HACKS)
    items = [p.check(p.reference_solution) for p in problems]
    items += [p.check(hack_program(p, HACKS[name])) for name in names for p in problems]
    # control: the same hacks against the whole check(candidate) run inside the sandbox, as before
    controls = ("always-equal", "frame-walk forge")
    items += [make_check(hack_program(p, HACKS[name]), ["check(candidate)"], p.entry_point, p.raw_test)
              for name in controls for p in problems]  # fmt: skip
    with Sandbox(concurrency=2, timeout_s=3.0, max_total_s=20.0) as sandbox:
        results = sandbox.run_batch(items)
    canonical, hacked = results[:164], results[164 : 164 * (1 + len(names))]
    in_child = results[164 * (1 + len(names)) :]
    always_equal, forged = sum(r.passed for r in in_child[:164]), sum(r.passed for r in in_child[164:])
    assert not any(v.trusted for r in in_child for v in r.verdicts)
    assert always_equal >= 100 and forged == 164  # the hacks work where the child decides
    assert [p.task_id for p, r in zip(problems, canonical) if not r.passed] == []
    assert all(r.sandbox_error is None for r in results)
    share = sum(sum(v.trusted for v in r.verdicts) for r in canonical) / sum(len(r.verdicts) for r in canonical)
    assert share >= 0.95
    report = {}
    for k, name in enumerate(names):
        runs = hacked[k * 164 : (k + 1) * 164]
        counts = [trusted_passes(r) for r in runs]
        report[name] = (sum(full for full, _ in counts), sum(n for _, n in counts))
    print(f"\n{'hack':40s} problems passed (trusted tests)  trusted tests passed")
    for name, (full, tests) in report.items():
        print(f"{name:40s} {full:>3d}/164 {tests:>27d}")
    print(f"whole check in the child: always-equal {always_equal}/164, frame-walk forge {forged}/164")
    assert {name: full for name, (full, _) in report.items()} == dict.fromkeys(names, 0), report
    assert {name: report[name][1] for name in NO_TRUSTED_TEST} == dict.fromkeys(NO_TRUSTED_TEST, 0), report


def test_forged_pass_record_for_a_trusted_test_is_not_a_pass():
    program = "def f(x):\n    return 0\n" + FORGE.replace("{find}", FRAME_WALK).format(entry="g", payload="[1]")
    with Sandbox(concurrency=1, timeout_s=2.0) as sandbox:
        forged_none = sandbox.run(program, ["assert g(1) == 1", "assert f(2) == 2"])
        # the forger claims the value 1 for both tests: the parent judges the claimed values
        assert [(v.status, v.trusted) for v in forged_none.verdicts] == [(Status.PASSED, True), (Status.FAILED, True)]
        assert forged_none.verdicts[1].actual == "1" and forged_none.verdicts[1].expected == "2"


def test_settrace_swap_works_only_where_the_child_compares():
    program = "def f(x):\n    return None\n" + SETTRACE.format(entry="g")
    split = "assert f(1) == 3"
    in_child = "def h():\n    return 3\nassert f(1) == h()"  # a test helper: not split, compared in the child
    with Sandbox(concurrency=1, timeout_s=2.0) as sandbox:
        result = sandbox.run(program, [split, in_child])
    assert [(v.status, v.trusted) for v in result.verdicts] == [(Status.FAILED, True), (Status.PASSED, False)]
