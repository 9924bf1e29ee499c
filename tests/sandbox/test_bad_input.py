"""Bad tests fail fast naming the row and column, wherever datasets enter; feedback text is always printable
UTF-8, whatever a program prints or raises."""

from __future__ import annotations

import pytest

from trl_mars.eval.loaders import to_problems
from trl_mars.rewards.code import check_tests_column, make_code_reward
from trl_mars.sandbox import Sandbox
from trl_mars.sandbox.cases import validate_tests
from trl_mars.search.problems import from_row
from trl_mars.search.verify import verdict_of

BAD = [
    (["add(1, 2) == 3"], r"test 0: 'add\(1, 2\) == 3' has no assert, so any program would pass it"),
    (["assert add(1, 2) == 3", "x = add(1, 2)"], r"test 1: 'x = add\(1, 2\)' has no assert"),
    (["assert add(1, 2) == 3", 7], r"test 1: a test must be a string or an input/output dict, got int"),
    ("assert add(1, 2) == 3", "a single assert given as one string"),
    ('["assert add(1, 2) == 3"]', "tests are a JSON-encoded list"),
    (42, "expected a list of tests, got int"),
    ([{"stdin": "1\n", "stdout": "2\n"}], r"test 0: a test case needs the keys 'input' and 'output'"),
    ([{"input": 1, "output": 2}], "stdin/stdout 'input' and 'output' must be strings"),
    (["assert add(1, 2) == 3", "assert add(1,\n  2 == 3"], r"test 1 \(line 1, column \d+\): the test does not parse"),
    ([], "no tests"),
    (["assert f(1) == 1", {"input": "1", "output": "1"}], "mixes assert strings and input/output cases"),
    ([{"input": "[1, 2\n3", "output": "3", "fn_name": "f"}], "input line 1 is not JSON"),
    ([{"input": "1", "output": "1", "fn_name": "f"}, {"input": "1", "output": "1"}], "mixes call-based"),
    ("def helper():\n    return 1\n", r"must define check\(candidate\)"),
]
GOOD = [
    ["assert add(1, 2) == 3", "x = 1\nassert add(x, 1) == 2"],
    ["check(candidate)"],
    "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    [{"input": "1\n", "output": "2\n"}],
    [{"input": "[1, 2]\n3", "output": "[1]", "fn_name": "f", "testtype": "functional"}],
]


@pytest.mark.parametrize("tests,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_tests_are_rejected_naming_the_place(tests, message):
    with pytest.raises(ValueError, match=r"^row 3, column 'tests'.*" + message):
        validate_tests(tests, "row 3, column 'tests'")
    rows = [{"prompt": "p", "tests": ["assert add(1, 2) == 3"]}, {"prompt": "q", "tests": tests}]
    with pytest.raises(ValueError, match=r"^train row 1, column 'tests'"):
        check_tests_column(rows, "tests", "train")
    with pytest.raises(ValueError, match=r"^row 1, column 'tests'"):
        from_row(rows[1], 1)
    with pytest.raises(ValueError, match=r"^dataset row 1, column 'tests'"):
        make_code_reward("binary", sandbox=object(), dataset=rows)


@pytest.mark.parametrize("tests", GOOD)
def test_good_tests_are_accepted(tests):
    validate_tests(tests, "row 0, column 'tests'")
    check_tests_column([{"tests": tests}])


def test_reward_function_checks_each_batch_before_running():
    reward = make_code_reward("binary", sandbox=object())  # never reached: the batch is refused first
    with pytest.raises(ValueError, match=r"batch row 1, column 'tests', test 0: 'f\(1\) == 1' has no assert"):
        reward(
            ["p", "q"], ["```python\ndef f(x):\n    return x\n```"] * 2, tests=[["assert f(1) == 1"], ["f(1) == 1"]]
        )


def test_loaders_name_the_row_and_column():
    mbpp = {"task_id": 1, "text": "t", "code": "def f():\n    return 1", "test_list": ["f() == 1"]}
    with pytest.raises(ValueError, match=r"mbpp\.jsonl row 1, column 'test_list', test 0: 'f\(\) == 1' has no assert"):
        to_problems([{**mbpp, "test_list": ["assert f() == 1"]}, mbpp], name="mbpp.jsonl")
    with pytest.raises(ValueError, match=r"row 0, column 'test_imports': expected a list of import lines"):
        to_problems([{**mbpp, "test_list": ["assert f() == 1"], "test_imports": "import math"}])
    stdio = {"task_id": "s", "prompt": "p", "tests": [{"in": "1", "out": "1"}]}
    with pytest.raises(ValueError, match=r"row 0: malformed field 'tests': expected a list of \{input, output\}"):
        to_problems([stdio], fmt="stdio")
    lcb = {"question_id": "q", "question_content": "c", "public_test_cases": "[{'input': 1}]", "metadata": "{}"}
    with pytest.raises(ValueError, match=r"row 0, column 'public_test_cases': not valid JSON"):
        to_problems([lcb])
    he = {"task_id": "h", "prompt": "def f():\n", "entry_point": "f", "test": "assert f() == 1"}
    with pytest.raises(ValueError, match=r"row 0, column 'test': a single assert given as one string"):
        to_problems([he])
    deep = {"problem": "p", "tests": "42", "metadata": "{}"}
    with pytest.raises(ValueError, match=r"row 0, column 'tests': expected a list of test cases"):
        to_problems([deep])


HOSTILE_OUTPUT = (
    "import sys\n"
    "print('\\x1b[2J\\x1b[31mred\\u202egnp.exe\\x07')\n"
    "sys.stderr.write('\\x1b]0;title\\x07\\u2066x\\r\\n')\n"
    "def f(x):\n"
    "    raise ValueError('\\udc80 bad \\x1b[0m \\u202e')\n"
)


def test_feedback_is_printable_utf8_through_a_tokenizer(tiny_tokenizer):
    with Sandbox(concurrency=1, timeout_s=2.0) as sandbox:
        result = sandbox.run(HOSTILE_OUTPUT, ["assert f(1) == 1", "assert f(2) == 2"])
    assert "\udc80" in result.verdicts[0].message  # the raw verdict keeps what the program raised
    feedback = verdict_of(result).feedback
    texts = [result.feedback_text(), feedback["summary"], feedback["detailed"]]
    texts += [v for record in feedback["failures"] for v in record.values() if isinstance(v, str)]
    for text in texts:
        text.encode("utf-8")  # strict: lone surrogates would raise
        assert not any(c in text for c in "\x1b\x07\r\u202e\u2066\udc80")
        assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) is not None
    assert "\\udc80 bad \\x1b[0m \\u202e" in result.feedback_text()
    with pytest.raises(TypeError):
        tiny_tokenizer(result.verdicts[0].message)  # what crashed T+ search and training before
