"""Sandbox API: test formats, per-test verdicts, failure details, feedback, batch/future/asyncio use."""

from __future__ import annotations

import asyncio
import threading

import pytest

from trl_mars.sandbox import Sandbox, Status, make_check, split_humaneval

PROGRAM = "def add(a, b):\n    return a + b if a != 2 else 0\n"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(concurrency=2, timeout_s=1.0, max_total_s=4.0) as sb:
        yield sb


def test_assert_tests_give_per_test_verdicts_and_failure_details(sandbox):
    result = sandbox.run(PROGRAM, ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(1, None) == 1"])
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.FAILED, Status.ERROR]
    failed, error = result.verdicts[1], result.verdicts[2]
    assert (failed.input, failed.expected, failed.actual) == ("2, 2", "4", "0")
    assert error.error_type == "TypeError" and "unsupported operand" in error.message
    assert result.pass_fraction == pytest.approx(1 / 3) and not result.passed
    text = result.feedback_text()
    assert "Passed 1/3 tests." in text and "expected: 4" in text and "actual: 0" in text and "TypeError" in text


def test_humaneval_check_is_split_into_asserts(sandbox):
    test = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1, 1) == 2\n    assert True\n    assert candidate(2, 5) == 7\n"
    setup, snippets = split_humaneval(test)
    assert "METADATA" in setup and snippets == ["assert candidate(1, 1) == 2", "assert candidate(2, 5) == 7"]
    result = sandbox.run(PROGRAM, test, entry_point="add")
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.FAILED]


def test_humaneval_check_loops_unroll_or_run_in_the_sandbox(sandbox):
    unrolled = "def check(candidate):\n    for i in range(3):\n        assert candidate(i, 1) == i + 1\n"
    check = make_check(PROGRAM, unrolled, entry_point="add")
    assert [t.display for t in check.tests] == [f"i = {i}\nassert candidate(i, 1) == i + 1" for i in range(3)]
    assert all(t.trusted for t in check.tests)
    result = sandbox.run(PROGRAM, unrolled, entry_point="add")
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.PASSED, Status.FAILED]
    # a loop over computed values is one test of its own, run in the sandbox; the plain assert is split
    mixed = "def check(candidate):\n    assert candidate(1, 1) == 2\n    for i in [0, 2]:\n        x = i\n        assert candidate(x, 1) == x + 1\n"
    check = make_check(PROGRAM, mixed, entry_point="add")
    assert [t.trusted for t in check.tests] == [True, False]
    result = sandbox.run(PROGRAM, mixed, entry_point="add")
    assert [(v.status, v.trusted) for v in result.verdicts] == [(Status.PASSED, True), (Status.FAILED, False)]
    assert result.trusted_share == 0.5
    # a later statement using a name the loop bound: the whole check runs as one test
    coupled = "def check(candidate):\n    for i in range(30):\n        x = i\n    assert candidate(x, 1) == 30\n"
    check = make_check(PROGRAM, coupled, entry_point="add")
    assert [t.display for t in check.tests] == ["check(candidate)"] and not check.tests[0].trusted
    assert sandbox.run(PROGRAM, coupled, entry_point="add").verdicts[0].status is Status.PASSED


def test_stdio_cases_are_judged_outside_the_sandbox(sandbox):
    program = "n = int(input())\nprint(n * 2)\n"
    cases = [{"input": "3\n", "output": "6\n"}, {"input": "4\n", "output": "9"}, {"input": "x\n", "output": "1"}]
    assert "9" not in str(make_check(program, cases).wire(100)["tests"])
    result = sandbox.run(program, cases)
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.FAILED, Status.ERROR]
    assert (result.verdicts[1].expected, result.verdicts[1].actual) == ("9", "8\n")


def test_syntax_error_and_missing_entry_point(sandbox):
    result = sandbox.run("def f(:\n", ["assert f() == 1"])
    assert result.program_status is Status.ERROR and "SyntaxError" in result.program_error
    result = sandbox.run("x = 1\n", "def check(candidate):\n    assert candidate() == 1\n", entry_point="f")
    assert result.program_status is Status.ERROR and "KeyError" in result.program_error


def test_tracebacks_show_the_code_not_the_harness(sandbox):
    program = "def f(x):\n    return g(x)\n\ndef g(x):\n    return 1 / x\n"
    result = sandbox.run(program, ["assert f(0) == 1", "assert f(1) == 2"])
    error, failed = result.verdicts
    assert error.status is Status.ERROR and failed.status is Status.FAILED
    for verdict in (error, failed):
        assert "harness" not in verdict.traceback and "trl_mars" not in verdict.traceback
    assert error.traceback.startswith("Traceback") and '"<test 0>", line 1' in error.traceback
    assert '"<program>", line 5, in g' in error.traceback and "ZeroDivisionError" in error.traceback
    stdio = sandbox.run("print(1 / int(input()))\n", [{"input": "0\n", "output": "1"}]).verdicts[0]
    assert "trl_mars" not in stdio.traceback and '"<program>", line 1' in stdio.traceback


def test_program_output_is_captured(sandbox):
    result = sandbox.run("print('hello')\nimport sys\nprint('oops', file=sys.stderr)\n", ["assert True"])
    assert result.stdout == "hello\n" and result.stderr == "oops\n" and not result.output_truncated


def test_tests_do_not_share_state_or_patched_builtins(sandbox):
    program = (
        "import builtins\nbuiltins.len = lambda x: 3\nitems = []\ndef f():\n    items.append(1)\n    return items\n"
    )
    result = sandbox.run(program, ["assert len(f()) == 1", "x = 1\nassert 'x' in dir()", "assert 'x' not in dir()"])
    assert [v.status for v in result.verdicts] == [Status.PASSED, Status.PASSED, Status.PASSED]


def test_batch_future_and_asyncio(sandbox):
    items = [(f"def f():\n    return {i}\n", ["assert f() == 2"]) for i in range(4)]
    assert [r.passed for r in sandbox.run_batch(items)] == [False, False, True, False]
    assert sandbox.submit(*items[2]).result().passed

    async def score():
        return await asyncio.gather(*(sandbox.arun(*item) for item in items))

    assert [r.passed for r in asyncio.run(score())] == [False, False, True, False]


def test_queued_checks_get_their_own_results_in_order():
    # one worker with checks queued in its pipe: each reply goes to the check that was sent in its place
    with Sandbox(concurrency=1, timeout_s=2.0) as sb:
        checks = [(f"def f():\n    return {i}\n", [f"assert f() == {i if i % 3 else -1}"]) for i in range(12)]
        results = sb.run_batch(checks)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(12)]
    assert [r.verdicts[0].actual for r in results if not r.passed] == ["0", "3", "6", "9"]


def test_an_idle_worker_takes_a_check_before_a_busy_one_queues_it(sandbox):
    slow = sandbox.submit("import time\ntime.sleep(0.8)\ndef f():\n    return 1\n", ["assert f() == 1"])
    quick = sandbox.submit("def f():\n    return 1\n", ["assert f() == 1"])
    assert quick.result().passed and not slow.done()  # it went to the other, idle worker
    assert slow.result().passed


def test_checks_larger_than_a_pipe_are_written_in_parts():
    # two 300 KB checks queued on one worker: each request is written in pieces as the zygote reads it
    with Sandbox(concurrency=1, timeout_s=2.0) as sb:
        big = [(f"def f():\n    return {i}\n" + "#" * 300_000 + "\n", [f"assert f() == {i}"]) for i in range(3)]
        assert [r.passed for r in sb.run_batch(big)] == [True, True, True]


def test_closing_from_a_result_callback_returns_and_the_sandbox_shuts_down():
    sb = Sandbox(concurrency=1, timeout_s=2.0)
    future = sb.submit("def f():\n    return 1\n", ["assert f() == 1"])
    closed = threading.Event()
    future.add_done_callback(lambda f: (sb.close(), closed.set()))
    assert closed.wait(30) and future.result().passed
    sb._dispatcher.thread.join(30)
    assert not sb._dispatcher.thread.is_alive() and all(w.proc is None for w in sb._workers)


def test_programs_and_tests_compile_with_the_plain_interpreters_semantics(sandbox):
    # not the harness's own ``from __future__ import annotations``: annotations are evaluated, as under ``python``
    program = "def g(x: int) -> list:\n    return [x]\ndef f():\n    return repr(g.__annotations__)\n"
    result = sandbox.run(program, ["assert f() == 1", "def h(y: int): pass\nassert h.__annotations__['y'] is int"])
    assert result.verdicts[0].actual == repr("{'x': <class 'int'>, 'return': <class 'list'>}")
    assert result.verdicts[1].passed


def test_isolation_is_reported(sandbox):
    isolation = sandbox.start()
    assert {"network", "filesystem", "uid", "warnings"} <= set(isolation)


def test_stdlib_imports_work_for_the_sandbox_uid(sandbox):
    program = "import textwrap, xml.dom.minidom, zlib\ndef f():\n    return textwrap.dedent('  a')\n"
    assert sandbox.run(program, ["assert f() == 'a'"]).passed
