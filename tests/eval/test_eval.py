"""pass@k, loaders for the three formats, the evaluator and its CLI."""

from __future__ import annotations

import json
from math import comb

import pytest

from trl_mars.eval import build_program, evaluate, load_problems, mean_pass_at_k, pass_at_k
from trl_mars.eval.cli import main
from trl_mars.sandbox import Sandbox


@pytest.mark.parametrize("n,c,k", [(10, 0, 1), (10, 3, 1), (10, 3, 5), (200, 17, 100), (5, 5, 5), (7, 1, 7)])
def test_pass_at_k_matches_the_combinatorial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_rejects_bad_arguments_and_averages():
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    assert mean_pass_at_k([(4, 2), (4, 0)], [1, 8]) == {"pass@1": 0.25}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mbpp_and_stdio_loaders(tmp_path):
    mbpp = write_jsonl(tmp_path / "mbpp.jsonl", [{
        "task_id": 2, "text": "Add two numbers.", "code": "def add(a, b):\n    return a + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "",
    }])  # fmt: skip
    (problem,) = load_problems(mbpp)
    assert (problem.task_id, problem.entry_point, len(problem.tests)) == ("2", "add", 2)
    lcb = write_jsonl(tmp_path / "lcb.jsonl", [{
        "question_id": "q1", "question_content": "Double n.",
        "public_test_cases": json.dumps([{"input": "2\n", "output": "4\n", "testtype": "stdin"}]),
        "private_test_cases": json.dumps([{"input": "5\n", "output": "10\n", "testtype": "stdin"}]),
    }])  # fmt: skip
    (stdio,) = load_problems(lcb)
    public, private = stdio.split()
    assert public == [{"input": "2\n", "output": "4\n"}] and private == [{"input": "5\n", "output": "10\n"}]
    assert problem.split(0.5) == (problem.tests[:1], problem.tests[1:])


def test_evaluate_writes_records_and_pass_at_k(tmp_path):
    path = write_jsonl(tmp_path / "he.jsonl", [{
        "task_id": "t/0", "prompt": "def inc(x):\n", "entry_point": "inc", "canonical_solution": "    return x + 1\n",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n",
    }])  # fmt: skip
    (problem,) = load_problems(path)
    samples = {"t/0": ["    return x + 1\n", "```python\ndef inc(x):\n    return x\n```", "no code here"]}
    assert build_program(problem, samples["t/0"][1]).startswith("def inc")
    with Sandbox(concurrency=2, timeout_s=1.0) as sandbox:
        summary = evaluate([problem], samples, sandbox, ks=(1, 2), out_path=tmp_path / "out.jsonl")
    assert summary["pass@1"] == pytest.approx(1 / 3) and summary["pass@2"] == pytest.approx(2 / 3)
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert (record["n"], record["correct"]) == (3, 1)


def test_cli_help_and_reference_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    path = write_jsonl(tmp_path / "mbpp.jsonl", [{
        "task_id": 1, "text": "t", "code": "def sq(x):\n    return x * x", "test_list": ["assert sq(3) == 9"],
    }])  # fmt: skip
    assert main(["evaluate", "--problems", str(path), "--k", "1", "--concurrency", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pass@1"] == 1.0
