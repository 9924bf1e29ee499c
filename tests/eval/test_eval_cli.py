"""``trl-mars eval evaluate`` as the README runs it, and its one-line errors for bad inputs."""

from __future__ import annotations

import gzip
import json

import pytest

from trl_mars.eval.cli import build_parser, main


@pytest.fixture
def humaneval(shared_data):
    return shared_data / "humaneval" / "HumanEval.jsonl.gz"


@pytest.fixture
def samples(tmp_path, humaneval):
    """10 samples for HumanEval/0 (all its reference) and 10 for HumanEval/1 (3 right, 7 empty bodies)."""
    with gzip.open(humaneval, "rt") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(2))]
    lines = [{"task_id": rows[0]["task_id"], "completion": rows[0]["canonical_solution"]} for _ in range(10)]
    lines += [{"task_id": rows[1]["task_id"], "completion": rows[1]["canonical_solution"]} for _ in range(3)]
    lines += [{"task_id": rows[1]["task_id"], "completion": "    pass\n"} for _ in range(7)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.mark.parametrize("k", [["1", "10"], ["1,10"]])
def test_readme_command_with_k_1_10(humaneval, samples, capsys, k):
    argv = ["evaluate", "--problems", str(humaneval), "--samples", str(samples), "--k", *k, "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # pass@1 = mean(10/10, 3/10); pass@10 = mean(1, 1 - C(7,10)/C(10,10)) = 1
    assert summary["problems"] == 2 and summary["samples"] == 20
    assert summary["pass@1"] == pytest.approx(0.65) and summary["pass@10"] == pytest.approx(1.0)


def test_progress_bar_per_batch(humaneval, samples, capsys):
    assert main(["evaluate", "--problems", str(humaneval), "--samples", str(samples), "--k", "1"]) == 0
    err = capsys.readouterr().err
    assert "2/2" in err and "pass@1=0.65" in err and "samples=20" in err


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"task_id": "HumanEval/0"}\n', "samples.jsonl:1: missing field 'completion'"),
        (
            '{"task_id": "HumanEval/0", "completion": "x"}\n\n{"completion": "x"}\n',
            "samples.jsonl:3: missing field 'task_id'",
        ),
        ('{"task_id": "HumanEval/0", "completion": 1}\n', "samples.jsonl:1: malformed field 'completion'"),
        ('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": \n', "samples.jsonl:2: not valid JSON"),
        ("", "samples.jsonl: no rows"),
        ('{"task_id": "other/0", "completion": "x"}\n', "none of the 1 task ids in"),
    ],
)
def test_bad_samples_exit_non_zero_with_one_line(tmp_path, humaneval, content, message):
    path = tmp_path / "samples.jsonl"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--problems", str(humaneval), "--samples", str(path), "--quiet"])
    text = str(exit_info.value.code)
    assert text.startswith("trl-mars eval: error: ") and message in text and "\n" not in text


def test_problems_without_reference_solutions_and_no_samples(tmp_path):
    path = tmp_path / "stdio.jsonl"
    path.write_text(json.dumps({"task_id": "a", "question": "echo", "tests": [{"input": "1", "output": "1"}]}) + "\n")
    with pytest.raises(SystemExit, match="no problem has a reference solution"):
        main(["evaluate", "--problems", str(path), "--quiet"])


@pytest.mark.parametrize(
    "bad", [["--limit", "-1"], ["--limit", "0"], ["--k", "0"], ["--k", "1,x"], ["--timeout", "-2"]]
)
def test_bad_arguments_are_rejected(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *bad])
    assert exit_info.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_every_option_has_help_and_shows_its_default():
    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    for action in evaluate._actions:
        if action.dest != "help":
            assert action.help, action.dest
            if action.default is not None and action.default is not False:
                assert "default" in evaluate.formatter_class("x")._get_help_string(action), action.dest
