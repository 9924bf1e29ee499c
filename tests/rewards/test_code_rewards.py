"""Code extraction and the TRL code reward functions."""

from __future__ import annotations

import pytest

from trl_mars.rewards import extract_code, make_code_reward
from trl_mars.sandbox import Sandbox

GOOD = "Here you go:\n```python\ndef sq(x):\n    return x * x\n```\n"
HALF = "```python\ndef sq(x):\n    return 9\n```"


def test_extract_code_takes_the_last_parsing_python_block():
    text = (
        "```python\ndef a():\n    return 1\n```\ntext\n```python\ndef b():\n    return 2\n```\n```python\ndef c(:\n```"
    )
    assert extract_code(text) == "def b():\n    return 2\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("just words") is None and extract_code("") is None


EXAMPLE_AFTER = "```python\ndef sq(x):\n    return x * x\n```\nTry it:\n```python\nprint(sq(3))\n```\n"
"""SmolLM2's habit on HumanEval (7 of 320 GEN-only nodes of the scaling run): the function, then a usage block."""


def test_extract_code_prefers_the_block_defining_the_entry_point():
    assert extract_code(EXAMPLE_AFTER) == "print(sq(3))\n"  # without an entry point: the last block, as before
    assert extract_code(EXAMPLE_AFTER, "sq") == "def sq(x):\n    return x * x\n"
    assert extract_code(EXAMPLE_AFTER, "cube") == "print(sq(3))\n"  # no block defines it: the usual rule
    method = "```python\nclass Solution:\n    def twoSum(self, a):\n        return a\n```\n```python\nx = 1\n```"
    assert extract_code(method, "twoSum").startswith("class Solution:")  # LiveCodeBench functional problems
    untagged = "```python\nprint(sq(2))\n```\n```\ndef sq(x):\n    return x * x\n```"
    assert extract_code(untagged, "sq") == "def sq(x):\n    return x * x\n"  # defining beats tagged


def test_reward_and_search_score_the_function_not_the_usage_example(sandbox):
    from trl_mars.search.engine import SearchProblem, TreeSearch
    from trl_mars.search.verify import SandboxVerifier

    binary = make_code_reward("binary", sandbox=sandbox)
    tests = [["assert candidate(3) == 9"]]
    assert binary(["p"], [EXAMPLE_AFTER], tests=tests, entry_point=["sq"]) == [1.0]
    problem = SearchProblem("p", "square", ["assert candidate(3) == 9"], entry_point="sq")
    search = TreeSearch({"a": object()}, SandboxVerifier(sandbox))  # scoring needs no generation
    code, verdict = search.score(problem, EXAMPLE_AFTER)
    assert code == "def sq(x):\n    return x * x\n" and verdict.result().score == 1.0


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(concurrency=2, timeout_s=1.0) as sb:
        yield sb


def test_binary_and_fraction_rewards(sandbox):
    tests = [["assert sq(3) == 9", "assert sq(2) == 4"]] * 3
    completions = [GOOD, [{"role": "assistant", "content": HALF}], "no code"]
    binary = make_code_reward("binary", sandbox=sandbox)
    fraction = make_code_reward("fraction", sandbox=sandbox, tests_column="unit_tests")
    assert binary(["p"] * 3, completions, tests=tests) == [1.0, 0.0, 0.0]
    assert fraction(["p"] * 3, completions, unit_tests=tests) == [1.0, 0.5, 0.0]
    assert binary.__name__ == "code_binary_reward"


def test_humaneval_column_with_entry_point(sandbox):
    reward = make_code_reward("fraction", sandbox=sandbox)
    check = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(2) == 4\n"
    assert reward(["p"], [HALF], tests=[check], entry_point=["sq"]) == [0.5]
    with pytest.raises(KeyError):
        reward(["p"], [HALF])
