"""The fast paths of a check: the child's JSON records (parsed strictly by the zygote, read once the child
exits), the test split memoized on the test source (a changed source is split again), and the zygote's lean
imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_mars.sandbox import Sandbox, Status, cases, make_check, trusted
from trl_mars.sandbox.zygote import POLL_S, CheckRun

NONCE = "0123456789abcdef0123456789abcdef"


def record(*fields) -> bytes:
    return json.dumps([NONCE, *fields]).encode()


def test_records_parse_into_plain_fields():
    assert CheckRun.parse(record("S", 3), NONCE) == ("S", 3)
    assert CheckRun.parse(record("D"), NONCE) == ("D",)
    end = ("E", 0, "failed", "AssertionError", "m\udc80é", "tb", None, "[1]", 0.25)
    assert CheckRun.parse(record(*end), NONCE) == end


def test_records_that_are_not_plain_are_refused():
    refused = [
        record("S", True),  # a bool is not an int here
        record("E", 0, "passed", None, "", "", ["nested"], None, 0.0),
        record("E", 0, "passed", None, "", "", {"d": 1}, None, 0.0),
        json.dumps(["another nonce", "S", 0]).encode(),
        json.dumps([NONCE]).encode(),  # no kind
        json.dumps({"nonce": NONCE, "kind": "D"}).encode(),
        repr((NONCE, "S", 0)).encode(),  # the old repr format
        b'["' + NONCE.encode() + b'", "S", ' + b"1" * 5000 + b"]",  # an int past the digit limit
        b"[" * 100_000 + b"]" * 100_000,  # too deep
        b'["' + NONCE.encode() + b'", "\xff"]',  # not UTF-8
        b"",
    ]
    assert [CheckRun.parse(line, NONCE) for line in refused] == [None] * len(refused)


def test_long_record_fields_are_capped():
    (kind, message) = CheckRun.parse(record("X", "m" * 10**6), NONCE)
    assert kind == "X" and len(message) == 80_000


def test_humaneval_split_is_memoized_on_the_test_source():
    test = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 6\n"
    first = make_check("def f(x):\n    return 2 * x\n", test, "f")
    again = make_check("def g(x):\n    return x + x\n", test, "f")
    assert again.tests is first.tests  # the same tests for another program: not parsed again
    changed = make_check("def f(x):\n    return 2 * x\n", test.replace("== 6", "== 7"), "f")
    assert changed.tests is not first.tests
    assert [t.judge.expr for t in changed.tests] == ["__hole_0__ == 4", "__hole_0__ == 7"]
    assert [t.judge.expr for t in first.tests] == ["__hole_0__ == 4", "__hole_0__ == 6"]


def test_changed_setup_is_evaluated_again_in_the_parent():
    # the parent's test values (trusted._namespace) are computed once per setup source
    for expected in (4, 5):
        check = make_check("def f(x):\n    return 4\n", ["assert f(1) == WANT"], setup=f"WANT = {expected}")
        (test,) = check.tests
        assert trusted.decide(test.judge, [4]).passed is (expected == 4)
    assert cases.assert_case.cache_info().hits > 0


def test_the_zygote_imports_neither_the_pool_nor_the_test_splitter():
    # every module the zygote holds is memory each check's fork maps and each check's exit unmaps
    code = (
        "import sys, trl_mars.sandbox.zygote\n"
        "print(sorted(m for m in ('threading', 'subprocess', 'concurrent.futures', 'trl_mars.sandbox.pool',"
        " 'trl_mars.sandbox.cases', 'trl_mars.sandbox.trusted', 'trl_mars.sandbox.config', 'dataclasses',"
        " 'inspect') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_costly_rarely_imported_modules_are_not_preloaded_and_import_in_the_check():
    # each module the zygote holds makes every fork and exit dearer (its pages and mappings); these would cost
    # every check about 0.05 ms together, and a check importing one pays 2.5 to 5.5 ms once
    costly = ("hashlib", "_hashlib", "datetime", "_datetime", "decimal", "_decimal", "fractions", "random")
    held = f"import sys\nHELD = sorted(m for m in {costly!r} if m in sys.modules)\ndef f():\n    return HELD\n"
    used = (
        "import hashlib, decimal\n"
        "def f(s):\n    return hashlib.md5(s.encode()).hexdigest(), str(decimal.Decimal(1) / 8)\n"
    )
    with Sandbox(concurrency=1) as sb:
        assert sb.run(held, ["assert f() == []"]).passed
        assert sb.run(used, ["assert f('a') == ('0cc175b9c0f1b6a831c399e269772661', '0.125')"]).passed


FIRST_COMPILE = """
import os, sys
from trl_mars.sandbox import zygote

def first_compile_blocks():
    # memory blocks a forked child allocates on its first compile (the AST types, when they are not built yet)
    read, write = os.pipe()
    if os.fork() == 0:
        before = sys.getallocatedblocks()
        compile("x = 1", "<t>", "exec")
        os.write(write, str(sys.getallocatedblocks() - before).encode())
        os._exit(0)
    os.wait()
    return int(os.read(read, 64))

cold = first_compile_blocks()
zygote.warm_up(())
print(cold, first_compile_blocks())
"""


def test_the_zygote_builds_the_ast_types_so_no_check_process_does():
    # The first run caches the bytecode; in the second every module comes from it (as in an installed wheel), so
    # nothing compiled source before the measurement: the first child builds the AST types itself, the second
    # inherits them from the warm-up.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import trl_mars.sandbox.zygote"], env=env, check=True)
    done = subprocess.run([sys.executable, "-c", FIRST_COMPILE], env=env, capture_output=True, text=True, check=True)
    cold, warm = map(int, done.stdout.split())
    if cold < 1000:
        pytest.skip(f"bytecode is not cached here, so importing compiled source first (cold child: {cold} blocks)")
    assert warm < 50, (cold, warm)


def _constants(code) -> list:
    found = list(code.co_consts)
    for const in code.co_consts:
        if hasattr(const, "co_consts"):
            found += _constants(const)
    return found


def test_the_tests_are_compiled_on_the_trusted_side_without_their_expected_values():
    import marshal

    from trl_mars.sandbox.harness import _compiled, compiled_tests

    check = make_check("def f(x):\n    return x\n", ["assert f(K) == 424242", "assert f(4)"], setup="K = 7\n")
    wire = check.wire(1024)
    codes, prelude, setup = marshal.loads(compiled_tests(wire))
    (prefix0, holes0), (prefix1, holes1) = codes
    assert [h.co_names for h in holes0] == [("f", "K")] and 424242 not in _constants(holes0[0])  # only the call
    assert 7 in _constants(setup) and prelude.co_code is not None
    hits = _compiled.cache_info().hits
    assert compiled_tests(check.wire(1024)) == compiled_tests(wire) and _compiled.cache_info().hits == hits + 2


def test_a_test_that_does_not_compile_is_compiled_by_the_check_process_and_fails_alone():
    from trl_mars.sandbox.harness import compiled_tests

    tests = ["assert f() == 1", "assert f() ==", "assert f() == 2"]
    assert compiled_tests(make_check("def f():\n    return 1\n", tests).wire(1024)) is None
    with Sandbox(concurrency=1) as sb:
        result = sb.run("def f():\n    return 1\n", tests)
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.ERROR, Status.FAILED]
    assert result.verdicts[1].error_type == "SyntaxError"


WARM_HARNESS = """
import dis
from trl_mars.sandbox import harness, zygote

def specialized(code):
    return {i.opname for i in dis.get_instructions(code, adaptive=True)} - {i.opname for i in dis.get_instructions(code)}

before = specialized(harness.run_tests.__code__)
zygote.warm_up(())
print(len(before), len(specialized(harness.run_tests.__code__)))
"""


def test_the_warm_up_check_has_the_wire_format_of_a_real_check():
    # written out by hand (the zygote does not import the test splitter): it must stay what ``Check.wire`` makes
    from trl_mars.sandbox.zygote import WARM_UP_CHECK

    wire = make_check("def f(x):\n    return x\n", ["assert f(1) == 1", "x = f(2)\nassert x == 2 or x"]).wire(1024)
    assert WARM_UP_CHECK.keys() == wire.keys()
    assert all(test.keys() == wire["tests"][0].keys() for test in WARM_UP_CHECK["tests"])
    assert {bool(t["holes"]) for t in WARM_UP_CHECK["tests"]} == {bool(t["holes"]) for t in wire["tests"]}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="specializing interpreter: CPython 3.11+")
def test_the_zygote_runs_the_harness_warm_so_check_processes_inherit_it_quickened():
    # a check process that inherits quickened, specialized harness code does not write (copy) those pages itself
    done = subprocess.run([sys.executable, "-c", WARM_HARNESS], capture_output=True, text=True, check=True)
    before, after = map(int, done.stdout.split())
    assert before == 0 and after >= 10, (before, after)


def _switches(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_the_zygote_wakes_once_per_check_not_once_per_test():
    # the records of a check shorter than a poll are read when its process exits: 20 tests of 2 ms each
    # woke the zygote 21 times per check when it read a pipe record by record, now about twice
    tests = [f"assert f({i}) == {2 * i}" for i in range(20)]
    program = "import time\ndef f(x):\n    time.sleep(0.002)\n    return 2 * x\n"
    with Sandbox(concurrency=1) as sb:
        sb.start()
        outer = sb._workers[0].proc.pid
        zygote = int(Path(f"/proc/{outer}/task/{outer}/children").read_text().split()[0])
        assert sb.run(program, tests).passed
        before = _switches(zygote)
        for _ in range(10):
            assert sb.run(program, tests).passed
        assert (_switches(zygote) - before) / 10 < 8


def test_a_hanging_test_is_stopped_within_one_poll_interval():
    tests = ["assert f(0) == 0", "assert f(60) == 60", "assert f(0) == 0"]
    with Sandbox(concurrency=1, timeout_s=0.5, max_total_s=10.0) as sb:
        result = sb.run("import time\ndef f(x):\n    time.sleep(x)\n    return x\n", tests)
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.TIMEOUT, Status.PASSED]
    assert result.duration_s < 0.5 + POLL_S + 1.0  # the hanging test's budget, one poll, a fresh child


def test_a_record_longer_than_the_cap_is_a_protocol_break():
    # a program that finds the record fd and writes 5 MB without a newline: crashed, not a hang or a pass
    program = (
        "import os, sys\ndef f(x):\n    fr = sys._getframe()\n    while 'nonce' not in fr.f_locals:\n"
        "        fr = fr.f_back\n    os.write(fr.f_locals['fd'], b'[' * (5 << 20))\n    return x\n"
    )
    with Sandbox(concurrency=1, timeout_s=5.0) as sb:
        (verdict,) = sb.run(program, ["assert f(1) == 1"]).verdicts
    assert verdict.status is Status.CRASHED and "malformed or forged" in verdict.message


def test_checks_import_random_themselves_and_each_gets_a_fresh_seed():
    # the zygote does not preload random: once imported it would reseed itself in every forked check (an
    # at-fork hook, page faults each check paid); a check that imports it gets its own seed from the OS
    program = (
        "import sys\nPRELOADED = 'random' in sys.modules\nimport random\n"
        "def f():\n    return [PRELOADED, random.random()]\n"
    )
    with Sandbox(concurrency=1) as sb:
        first, second = (sb.run(program, ["assert f() == 0"]).verdicts[0].actual for _ in range(2))
    assert first.startswith("[False, 0.") and second.startswith("[False, 0.")
    assert first != second
