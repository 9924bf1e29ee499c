"""``trl-mars search`` as a user runs it: arguments checked before any model loads, one-line errors for bad
benchmark files, results written as each group of problems finishes, ``--resume``, the progress bar."""

from __future__ import annotations

import gzip
import json

import pytest

from trl_mars.data.code_tasks import generate_tasks
from trl_mars.search import ScriptedBackend
from trl_mars.search import cli as search_cli
from trl_mars.search.run_output import RunOutput

TASKS = generate_tasks(5, seed=3)


def right_and_wrong(prompts_seen: list[str]) -> dict:
    """``right`` answers every task with its reference, ``wrong`` never does: which agent the Thompson draws pick
    at each expansion decides the trees, so the search's randomness shows in the results."""

    def right(messages):
        prompts_seen.append(messages[-1]["content"])
        return next(t.completion for t in TASKS if t.question in messages[-1]["content"])

    def wrong(messages):
        prompts_seen.append(messages[-1]["content"])
        return "```python\nx = 1\n```"

    return {"right": ScriptedBackend(right), "wrong": ScriptedBackend(wrong)}


ARGS = ["--model", "right=r", "--model", "wrong=w", "--benchmark", "embedded", "--num-problems", "5", "--seed", "3"]
ARGS += ["--max-nodes", "4", "--group-size", "2", "--concurrency", "2", "--quiet"]


def run(monkeypatch, out, *extra: str, prompts: list | None = None) -> dict:
    monkeypatch.setattr(
        search_cli, "load_backends", lambda models, *a: right_and_wrong([] if prompts is None else prompts)
    )
    assert search_cli.main([*ARGS, *extra, "--output", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


def without_seconds(summary: dict) -> dict:
    return {**summary, "runs": {k: {**v, "seconds": 0} for k, v in summary["runs"].items()}}


def test_resume_after_an_interruption_redoes_nothing_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = run(monkeypatch, tmp_path / "full", "--mode", "both")
    full_lines = (tmp_path / "full" / "results.jsonl").read_text().splitlines()
    assert len(full_lines) == 15  # 5 problems x (system + 2 agent runs)

    write = RunOutput.write
    calls = []

    def stop_after_two_groups(self, records, trees):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill between two groups
        calls.append(len(records))
        write(self, records, trees)

    monkeypatch.setattr(RunOutput, "write", stop_after_two_groups)
    with pytest.raises(KeyboardInterrupt):
        run(monkeypatch, tmp_path / "cut", "--mode", "both")
    monkeypatch.setattr(RunOutput, "write", write)
    cut = tmp_path / "cut"
    written = [json.loads(line) for line in (cut / "results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in written] == [t.task_id for t in TASKS[:4]]  # two groups of 2, written as done
    assert all((cut / "trees" / f"system_{i}-mars_{i}.json").exists() for i in range(4))
    assert not (cut / "summary.json").exists()

    prompts: list[str] = []
    resumed = run(monkeypatch, cut, "--mode", "both", "--resume", prompts=prompts)
    # the system run generates for problem 5 only (1-4 were finished); then the agent runs do every problem
    first_agent_prompt = next(i for i, p in enumerate(prompts) if TASKS[0].question in p)
    assert first_agent_prompt > 0 and all(TASKS[4].question in p for p in prompts[:first_agent_prompt])
    assert without_seconds(resumed) == without_seconds(full)
    assert (cut / "results.jsonl").read_text().splitlines() == full_lines
    assert json.loads((cut / "trees.json").read_text()) == json.loads((tmp_path / "full" / "trees.json").read_text())


def test_resume_of_a_finished_run_generates_nothing_and_a_changed_setting_is_refused(tmp_path, monkeypatch):
    first = run(monkeypatch, tmp_path / "o")
    prompts: list[str] = []
    again = run(monkeypatch, tmp_path / "o", "--resume", prompts=prompts)
    assert prompts == [] and without_seconds(again) == without_seconds(first)
    monkeypatch.setattr(search_cli, "load_backends", lambda *a: pytest.fail("models loaded"))
    with pytest.raises(SystemExit, match=r"--max-nodes 4.*now 5"):
        search_cli.main([*ARGS, "--max-nodes", "5", "--output", str(tmp_path / "o"), "--resume"])
    # refill and lockstep generation sample different answers from one seed: a run is resumed as it was made
    other = "lockstep" if search_cli.DEFAULT_BATCHING == "refill" else "refill"
    with pytest.raises(SystemExit, match=rf"--batching '{search_cli.DEFAULT_BATCHING}', now '{other}'"):
        search_cli.main([*ARGS, "--batching", other, "--output", str(tmp_path / "o"), "--resume"])


def test_a_torn_last_line_is_dropped_and_its_problem_searched_again(tmp_path, monkeypatch):
    full = run(monkeypatch, tmp_path / "o")
    results = tmp_path / "o" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # killed while appending the last line
    prompts: list[str] = []
    again = run(monkeypatch, tmp_path / "o", "--resume", prompts=prompts)
    assert prompts and all(TASKS[4].question in p for p in prompts)
    assert results.read_text().splitlines() == lines and without_seconds(again) == without_seconds(full)


def test_without_resume_an_earlier_run_in_the_folder_is_replaced(tmp_path, monkeypatch):
    run(monkeypatch, tmp_path / "o", "--mode", "both")
    run(monkeypatch, tmp_path / "o", "--limit", "2")
    assert len((tmp_path / "o" / "results.jsonl").read_text().splitlines()) == 2
    assert len(list((tmp_path / "o" / "trees").iterdir())) == 2


def test_progress_bar_shows_problems_nodes_and_pass_rate(tmp_path, monkeypatch, capsys):
    args = [a for a in ARGS if a != "--quiet"]
    monkeypatch.setattr(search_cli, "load_backends", lambda models, *a: right_and_wrong([]))
    assert search_cli.main([*args, "--output", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "system" in err and "20/20" in err and "node" in err  # 5 problems x 4 nodes
    assert "problems 5/5" in err and "pass@1 " in err
    run(monkeypatch, tmp_path / "q")
    assert capsys.readouterr().err == ""  # --quiet


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--max-nodes", "0"], "--max-nodes: expected an integer >= 1, got 0"),
        (["--limit", "-1"], "--limit: expected an integer >= 1, got -1"),
        (["--group-size", "0"], "--group-size: expected an integer >= 1"),
        (["--top-p", "1.5"], "--top-p: expected a number in (0, 1]"),
        (["--temperature", "-1"], "--temperature: expected a number >= 0"),
        (["--timeout", "0"], "--timeout: expected a number > 0"),
        (["--public", "0"], "--public takes a count"),
    ],
)
def test_bad_arguments_are_rejected_before_any_model_loads(tmp_path, monkeypatch, capsys, bad, message):
    monkeypatch.setattr(search_cli, "load_backends", lambda *a: pytest.fail("models loaded"))
    with pytest.raises(SystemExit) as exit_info:
        search_cli.main(["--model", "m", "--benchmark", "embedded", "--output", str(tmp_path), *bad])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def humaneval_rows(shared_data, n=3) -> list[dict]:
    with gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            lambda rows: rows[:1] + [{k: v for k, v in rows[1].items() if k != "entry_point"}],
            ":2: missing field 'entry_point'",
        ),
        (lambda rows: rows[:2] + [{**rows[2], "test": 7}], ":3: malformed field 'test': expected a string, got int"),
        (lambda rows: "{not json", ":1: not valid JSON"),
        (lambda rows: "", ": no rows"),
        (lambda rows: [[1, 2]], ":1: expected a JSON object, got list"),
    ],
)
def test_bad_benchmark_files_give_one_line_naming_file_row_and_field(
    tmp_path, monkeypatch, shared_data, content, message
):
    monkeypatch.setattr(search_cli, "load_backends", lambda *a: pytest.fail("models loaded"))
    data = content(humaneval_rows(shared_data))
    path = tmp_path / "bench.jsonl"
    path.write_text(data if isinstance(data, str) else "".join(json.dumps(r) + "\n" for r in data))
    with pytest.raises(SystemExit) as exit_info:
        search_cli.main(["--model", "m", "--benchmark", str(path), "--output", str(tmp_path / "o")])
    text = str(exit_info.value.code)
    assert text.startswith("trl-mars search: error: ") and f"{path}{message}" in text and "\n" not in text


def test_missing_benchmark_file_and_unreachable_hub_id(tmp_path, monkeypatch):
    monkeypatch.setattr(search_cli, "load_backends", lambda *a: pytest.fail("models loaded"))
    with pytest.raises(SystemExit, match=r"nope\.jsonl\.gz: no such file"):
        search_cli.main(["--model", "m", "--benchmark", str(tmp_path / "nope.jsonl.gz"), "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:  # offline (conftest): one line, not a datasets traceback
        search_cli.main(["--model", "m", "--benchmark", "someone/no-such-dataset", "--output", str(tmp_path)])
    text = str(exit_info.value.code)
    assert "someone/no-such-dataset: no such local file, and loading it as a hub dataset failed" in text
    assert "\n" not in text


def test_default_benchmark_is_humaneval_from_the_wheel_when_no_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("TRL_MARS_DATA", raising=False)
    seen = []

    def respond(messages):
        seen.append(messages[-1]["content"])
        return "```python\nx = 1\n```"

    monkeypatch.setattr(search_cli, "load_backends", lambda models, *a: {n: ScriptedBackend(respond) for n in models})
    argv = ["--model", "m", "--limit", "1", "--max-nodes", "1", "--quiet", "--output", str(tmp_path)]
    assert search_cli.main(argv) == 0
    assert "def has_close_elements" in seen[0]  # HumanEval/0


def test_every_option_has_help_and_shows_its_default():
    for parser in (search_cli.build_parser(),):
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help, action.dest
            text = parser.formatter_class("x")._get_help_string(action)
            if action.default is not None and action.default is not False:
                assert "default" in text, action.dest


def test_resume_with_sampling_tiny_models_equals_an_uninterrupted_run(
    tmp_path, monkeypatch, tiny_qwen2_path, tiny_llama_path
):
    """Each group is seeded from --seed, the run label and the group index, so even sampled generations (token ids,
    log-probs) of a resumed run are those of the uninterrupted one."""
    argv = ["--model", f"qwen={tiny_qwen2_path}", "--model", f"llama={tiny_llama_path}", "--benchmark", "embedded"]
    argv += ["--num-problems", "3", "--max-nodes", "3", "--max-new-tokens", "12", "--group-size", "1", "--quiet"]
    assert search_cli.main([*argv, "--output", str(tmp_path / "full")]) == 0
    write = RunOutput.write

    def stop_after_one_group(self, records, trees):
        if self.records:
            raise KeyboardInterrupt
        write(self, records, trees)

    monkeypatch.setattr(RunOutput, "write", stop_after_one_group)
    with pytest.raises(KeyboardInterrupt):
        search_cli.main([*argv, "--output", str(tmp_path / "cut")])
    monkeypatch.setattr(RunOutput, "write", write)
    assert len((tmp_path / "cut" / "results.jsonl").read_text().splitlines()) == 1
    assert search_cli.main([*argv, "--output", str(tmp_path / "cut"), "--resume"]) == 0
    for name in ("results.jsonl", "trees.json"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "full" / name).read_text()
    trees = json.loads((tmp_path / "full" / "trees.json").read_text())
    assert len(trees) == 3 and all(n["completion_ids"] for t in trees for n in t["nodes"][1:])  # sampled, not empty
