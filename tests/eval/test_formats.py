"""Every benchmark and training format, from small fixture files in each documented format
(tests/fixtures/code_formats): HumanEval, MBPP full and sanitized, LiveCodeBench code_generation_lite
(compressed private tests, release versions, contest dates, functional problems) and DeepCoder rows."""

from __future__ import annotations

import base64
import doctest
import json
import os
import pickle
import zlib
from pathlib import Path

import pytest

from trl_mars.eval import load_problems, loaders
from trl_mars.eval.cli import main
from trl_mars.eval.loaders import decode_lcb_tests, to_problems
from trl_mars.sandbox import Sandbox, Status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "code_formats"

LCB_SOLUTIONS = {
    "abc900_a": "print(2 * int(input()))\n",
    "9001": "class Solution:\n    def maxSum(self, nums: List[int], k: int) -> int:\n"
    "        return sum(sorted(nums)[-k:])\n",
    "9002": "class Solution:\n    def pairs(self, nums: List[int]) -> List[List[int]]:\n"
    "        return [(a, b) for a, b in zip(nums, nums[1:])]\n",  # tuples compare as lists
}
DEEPCODER_SOLUTIONS = {
    "lcbv5-1": "class Solution:\n    def evenSum(self, nums):\n        return sum(n for n in nums if n % 2 == 0)\n",
    "cf-1": "a, b = map(int, input().split())\nprint(a + b)\n",
    "pi-1": "print(input()[::-1])\n",
    "pi-2": "def is_even(n):\n    return n % 2 == 0\n",
    "taco-1": "def add(a, b):\n    return a + b\n",
    "taco-2": "n = int(input())\nprint(max(map(int, input().split())))\n",
}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(concurrency=2, timeout_s=2.0, max_total_s=10.0) as sb:
        yield sb


def test_loader_doctests():
    assert doctest.testmod(loaders).failed == 0


def run_all(sandbox, problems, solutions):
    return sandbox.run_batch([p.check(solutions[p.task_id]) for p in problems])


def test_humaneval_and_mbpp_fixtures(sandbox):
    he = load_problems(FIXTURES / "humaneval.jsonl")
    assert [len(p.tests) for p in he] == [3, 4]  # `assert True` dropped; the range loop unrolled
    full = load_problems(FIXTURES / "mbpp_full.jsonl")
    assert full[1].setup == "WORDS = ['Apple', 'sky']" and len(full[1].tests) == 3  # + challenge tests
    sanitized = load_problems(FIXTURES / "mbpp_sanitized.jsonl")
    assert sanitized[0].setup == "import math"  # test_imports are honoured
    problems = he + full + sanitized
    results = sandbox.run_batch([p.check(p.reference_solution) for p in problems])
    assert [r.passed for r in results] == [True] * 5
    assert all(r.trusted_share == 1.0 for r in results)
    wrong = sandbox.run_batch([p.check(p.reference_solution.replace("return ", "return 0 * ")) for p in problems[2:]])
    assert [r.passed for r in wrong] == [False] * 3


def test_mbpp_test_imports_are_what_the_tests_need(sandbox):
    row = json.loads((FIXTURES / "mbpp_sanitized.jsonl").read_text().splitlines()[0])
    row["test_imports"] = ["from math import isclose"]
    row["test_list"] = [t.replace("math.isclose", "isclose") for t in row["test_list"]]
    (problem,) = to_problems([row])
    result = sandbox.run(problem.reference_solution, problem.tests, setup=problem.setup)
    assert result.passed and result.trusted_share == 1.0
    row["test_imports"] = []
    (bare,) = to_problems([row])
    assert sandbox.run(bare.reference_solution, bare.tests).verdicts[0].error_type == "NameError"


def test_lcb_private_tests_are_decompressed_with_a_restricted_unpickler():
    raw = json.loads((FIXTURES / "lcb" / "test.jsonl").read_text().splitlines()[0])
    assert decode_lcb_tests(raw["private_test_cases"])[1] == {"input": "-7\n", "output": "-14\n", "testtype": "stdin"}
    marker = Path(os.environ.get("TMPDIR", "/tmp")) / f"pwned-{os.getpid()}"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(ValueError, match=r"row 0, column 'private_test_cases'.*refusing to load"):
        to_problems([{**raw, "private_test_cases": blob}], name="lcb")
    assert not marker.exists()
    not_a_string = base64.b64encode(zlib.compress(pickle.dumps([1, 2]))).decode()
    with pytest.raises(ValueError, match="not a JSON string"):
        decode_lcb_tests(not_a_string)


def test_lcb_releases_dates_and_functional_problems(sandbox):
    folder = FIXTURES / "lcb"
    v1, v2 = load_problems(folder, release_version="release_v1"), load_problems(folder, release_version="release_v2")
    assert [p.task_id for p in v1] == ["abc900_a", "9001"] and [p.task_id for p in v2][-1] == "9002"
    assert [p.task_id for p in load_problems(folder, release_version="v2")] == ["9002"]
    window = load_problems(folder, release_version="release_v2", start_date="2024-01-01",
                           end_date="2024-02-10")  # fmt: skip
    assert [p.task_id for p in window] == ["9001"]  # inclusive end date
    with pytest.raises(ValueError, match="unknown LiveCodeBench release"):
        load_problems(folder, release_version="v9x")
    with pytest.raises(ValueError, match="release_version 'v1': only for a LiveCodeBench folder"):
        load_problems(folder / "test.jsonl", release_version="v1")
    with pytest.raises(ValueError, match="is a folder: give release_version"):
        load_problems(folder)
    stdin, functional, pairs = v2
    assert (stdin.num_public, len(stdin.stdio), functional.num_public, len(functional.stdio)) == (1, 3, 1, 3)
    assert functional.stdio[0] == {"input": "[1, 5, 3]\n2", "output": "8", "fn_name": "maxSum"}
    assert "class Solution" in functional.prompt and functional.meta["platform"] == "leetcode"
    results = run_all(sandbox, v2, LCB_SOLUTIONS)
    assert [r.passed for r in results] == [True, True, True]
    assert all(v.trusted for r in results for v in r.verdicts)
    wrong = sandbox.run(LCB_SOLUTIONS["9001"].replace("[-k:]", "[:k]"), functional.stdio)
    assert [v.status for v in wrong.verdicts] == [Status.FAILED, Status.PASSED, Status.FAILED]
    assert (wrong.verdicts[0].expected, wrong.verdicts[0].actual) == ("8", "4")
    # the expected output never enters the sandbox; a value the codec refuses is a failure, not a pass
    hack = "class A:\n    def __eq__(self, o):\n        return True\nclass Solution:\n    def maxSum(self, *a):\n        return A()\n"
    assert sandbox.run(hack, functional.stdio).num_passed == 0


def test_deepcoder_rows(sandbox):
    problems = load_problems(FIXTURES / "deepcoder.jsonl")
    assert [p.task_id for p in problems] == list(DEEPCODER_SOLUTIONS)
    taco = problems[4]
    assert taco.stdio[0] == {"input": "1\n2", "output": "[3]", "fn_name": "add", "wrapped": True}
    assert problems[5].stdio[0] == {"input": "3\n1 5 2", "output": "5"}
    results = run_all(sandbox, problems, DEEPCODER_SOLUTIONS)
    assert [r.passed for r in results] == [True] * 6 and all(r.trusted_share == 1.0 for r in results)
    wrong = {k: v.replace("a + b", "a - b").replace("== 0", "== 1") for k, v in DEEPCODER_SOLUTIONS.items()}
    assert [r.passed for r in run_all(sandbox, problems[3:5], wrong)] == [False, False]


def test_cli_on_a_lcb_release(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": k, "completion": f"```python\n{v}```"}) + "\n"
                               for k, v in LCB_SOLUTIONS.items()))  # fmt: skip
    argv = ["evaluate", "--problems", str(FIXTURES / "lcb"), "--release-version", "release_v2", "--samples",
            str(samples), "--k", "1", "--concurrency", "1", "--start-date", "2024-01-01"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["problems"], summary["pass@1"], summary["trusted_test_share"]) == (2, 1.0, 1.0)


def test_search_problems_from_a_lcb_release():
    from trl_mars.search.cli import build_parser, load_search_problems

    argv = ["--model", "m", "--output", "out", "--benchmark", str(FIXTURES / "lcb"), "--release-version", "v1"]
    argv += ["--end-date", "2024-01-01"]
    (problem,) = load_search_problems(build_parser().parse_args(argv))
    assert problem.problem_id == "abc900_a" and problem.entry_point is None
    assert problem.public_tests == [{"input": "3\n", "output": "6\n"}] and len(problem.private_tests) == 2
