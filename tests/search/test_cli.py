"""``trl-mars search`` / ``python -m trl_mars.search`` end to end, in-process, with the offline tiny models."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trl_mars import cli
from trl_mars.data.code_tasks import generate_tasks
from trl_mars.search import ScriptedBackend, SearchTree, mean_metrics, tree_metrics
from trl_mars.search import cli as search_cli

MODELS = ["--model", "qwen=trl-mars/tiny-qwen2", "--model", "trl-mars/tiny-llama"]
FAST = ["--max-new-tokens", "12", "--concurrency", "2", "--timeout", "20", "--seed", "0"]
METRICS = ("pass@1", "pass@1(mcts)", "pass@n", "public_pass@n")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a loaded 2-core machine run about twice as fast on one thread as on two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(tmp_path, capsys, *args: str) -> tuple[list[dict], list[SearchTree], dict, str]:
    out = tmp_path / "out"
    assert search_cli.main([*args, "--output", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    trees = [SearchTree.from_dict(t) for t in json.loads((out / "trees.json").read_text())]
    summary = json.loads((out / "summary.json").read_text())
    html = (out / "trees.html").read_text()
    assert html.count("<circle ") == sum(map(len, trees))  # the viewer shows every node of every tree
    return records, trees, summary, capsys.readouterr().out


def check_consistent(records, trees, summary):
    """results.jsonl agrees with the saved trees and summary.json agrees with results.jsonl."""
    by_id = {t.tree_id: t for t in trees}
    assert [r["tree_id"] for r in records] == [t.tree_id for t in trees]
    for record in records:
        tree = by_id[record["tree_id"]]
        assert record["nodes"] == len(tree) and record["task_id"] == tree.problem_id
        assert {k: record[k] for k in tree_metrics(tree)} == tree_metrics(tree)
        assert record["selected_code"] == tree.nodes[record["selected_node"]].code
        assert record["pass@n"] >= record["pass@1(mcts)"] and sum(record["agent_shares"].values()) == pytest.approx(1)
    for label, run in summary["runs"].items():
        mine = [r for r in records if (r["mode"] if r["agent"] is None else f"agent:{r['agent']}") == label]
        assert run["trees"] == len(mine) and run["nodes"] == sum(r["nodes"] for r in mine)
        assert run["metrics"] == pytest.approx(mean_metrics([{k: r[k] for k in run["metrics"]} for r in mine]))


def test_search_cli_two_tiny_models_on_humaneval_both_modes(tmp_path, capsys, shared_data):
    benchmark = str(shared_data / "humaneval" / "HumanEval.jsonl.gz")
    args = [*MODELS, *FAST, "--benchmark", benchmark, "--limit", "2", "--mode", "both", "--max-nodes", "3"]
    records, trees, summary, printed = run_cli(tmp_path, capsys, *args, "--public", "1")
    assert list(summary["runs"]) == ["system", "agent:qwen", "agent:tiny-llama"]
    assert summary["models"] == {"qwen": "trl-mars/tiny-qwen2", "tiny-llama": "trl-mars/tiny-llama"}
    assert [(r["task_id"], r["mode"], r["agent"]) for r in records] == [
        (task, mode, agent)
        for mode, agent in (("system", None), ("agent", "qwen"), ("agent", "tiny-llama"))
        for task in ("HumanEval/0", "HumanEval/1")
    ]
    assert all(len(t) == 3 for t in trees) and all(n.private_score is not None for t in trees for n in t.solutions)
    assert {n.agent for t in trees[2:4] for n in t.solutions} == {"qwen"}
    assert {n.agent for t in trees[4:] for n in t.solutions} == {"tiny-llama"}
    assert all(len(n.logprobs) == len(n.completion_ids) <= 12 for t in trees for n in t.solutions)
    check_consistent(records, trees, summary)
    assert "Pass@1(MCTS)" in printed and "agent:tiny-llama" in printed


def test_search_cli_embedded_task_system_mode_tplus(tmp_path, capsys):
    args = [*MODELS, *FAST, "--benchmark", "embedded", "--num-problems", "2", "--max-nodes", "2"]
    records, trees, summary, _ = run_cli(tmp_path, capsys, *args, "--tplus", "--posterior", "gaussian")
    assert [r["task_id"] for r in records] == [t.task_id for t in generate_tasks(2, seed=0)]
    assert list(summary["runs"]) == ["system"] and all(t.dist == "gaussian" and len(t) == 2 for t in trees)
    check_consistent(records, trees, summary)


def test_search_cli_numbers_with_a_right_and_a_wrong_agent(tmp_path, capsys, monkeypatch):
    tasks = generate_tasks(3, seed=5)

    def right(messages):
        return next(t.completion for t in tasks if t.question in messages[-1]["content"])

    scripted = {"right": ScriptedBackend(right), "wrong": ScriptedBackend(lambda m: "```python\nx = 1\n```")}
    monkeypatch.setattr(search_cli, "load_backends", lambda models, *a: {n: scripted[n] for n in models})
    args = ["--model", "right=r", "--model", "wrong=w", "--benchmark", "embedded", "--num-problems", "3"]
    args += ["--seed", "5", "--mode", "both", "--max-nodes", "3", "--public", "0.5", "--concurrency", "2"]
    records, trees, summary, printed = run_cli(tmp_path, capsys, *args)
    check_consistent(records, trees, summary)
    runs = summary["runs"]
    assert {k: runs["agent:right"]["metrics"][k] for k in METRICS} == dict.fromkeys(METRICS, 1.0)
    assert {k: runs["agent:wrong"]["metrics"][k] for k in METRICS} == dict.fromkeys(METRICS, 0.0)
    system = [r for r in records if r["mode"] == "system"]
    assert all(r["pass@1(mcts)"] == r["pass@n"] == r["public_pass@n"] for r in system)
    solved = [r for r in system if r["pass@n"]]
    assert solved and all(r["selected_agent"] == "right" for r in solved)
    assert [r["selected_code"] for r in records if r["agent"] == "right"] == [t.canonical_solution for t in tasks]
    assert "agent:right" in printed and "1.0000" in printed


def test_search_cli_reward_model_picks_among_passing_nodes(tmp_path, capsys, monkeypatch):
    """``--reward-model``: among the nodes that pass the public tests, the one the sequence-classification model
    scores highest is submitted (and Pass@1(MCTS) is graded on it)."""
    from trl_mars.search import SequenceClassifierRewardModel
    from trl_mars.testing import tiny_model_path

    tasks = generate_tasks(2, seed=4)

    def right(messages, comment=""):
        return next(t.completion for t in tasks if t.question in messages[-1]["content"]).replace(
            "```python\n", f"```python\n{comment}"
        )

    scripted = {
        "plain": ScriptedBackend(right),
        "commented": ScriptedBackend(lambda m: right(m, "# checked twice\n")),
    }
    monkeypatch.setattr(search_cli, "load_backends", lambda models, *a: {n: scripted[n] for n in models})
    rm_path = tiny_model_path("qwen2", cache_dir=tmp_path / "rm", head="reward")
    args = ["--model", "plain=p", "--model", "commented=c", "--benchmark", "embedded", "--num-problems", "2"]
    args += ["--seed", "4", "--max-nodes", "4", "--concurrency", "2", "--reward-model", rm_path]
    records, trees, summary, _ = run_cli(tmp_path, capsys, *args)
    rm = SequenceClassifierRewardModel.from_pretrained(rm_path)
    problems = search_cli.load_search_problems(search_cli.build_parser().parse_args([*args, "--output", "x"]))
    for record, tree, problem in zip(records, trees, problems, strict=True):
        best = max(n.score for n in tree.solutions)
        scores = {n.node_id: rm(problem.question, n) for n in tree.solutions if n.score == best}
        assert record["selected_node"] == max(scores, key=lambda i: (scores[i], i))
        assert record["pass@1(mcts)"] == tree.nodes[record["selected_node"]].private_score
    assert {n.agent for t in trees for n in t.solutions} == {"plain", "commented"}
    # the reward model changed the choice: without it the latest passing node is submitted
    assert any(r["selected_node"] != max(n.node_id for n in t.solutions) for r, t in zip(records, trees))
    with pytest.raises(ValueError, match="--reward-model: unknown model"):
        search_cli.main([*args[:-1], "no such model", "--output", str(tmp_path / "bad")])


def test_search_cli_chat_template_kwargs_reach_every_prompt(tmp_path, capsys, tiny_qwen2_path):
    """``--chat-template-kwargs '{"enable_thinking": false}'``: Qwen3's no-think switch reaches the prompts (a tiny
    model with Qwen3's template branch: an empty think block after the generation prompt when it is off)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "qwen3_like"
    shutil.copytree(tiny_qwen2_path, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = tok.chat_template.replace(
        "{{- '<|im_start|>assistant\\n' -}}",
        "{{- '<|im_start|>assistant\\n' -}}{%- if enable_thinking is defined and not enable_thinking -%}"
        "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}",
    )
    assert "enable_thinking" in tok.chat_template
    tok.save_pretrained(folder)
    args = ["--model", f"q={folder}", *FAST, "--benchmark", "embedded", "--num-problems", "2", "--max-nodes", "2"]
    for kwargs, think_block in (("{}", False), ('{"enable_thinking": false}', True)):
        _, trees, _, _ = run_cli(tmp_path / kwargs, capsys, *args, "--chat-template-kwargs", kwargs)
        prompts = [tok.decode(n.prompt_ids) for t in trees for n in t.solutions]
        assert prompts and all(p.endswith("<think>\n\n</think>\n\n") == think_block for p in prompts)
    with pytest.raises(SystemExit, match="must be a JSON object"):
        search_cli.main([*args, "--chat-template-kwargs", "[1]", "--output", str(tmp_path / "bad")])


def test_search_cli_scores_humaneval_code_with_the_prompts_imports(tmp_path, capsys, monkeypatch, shared_data):
    """The model's function alone (no ``from typing import List``) is checked with the prompt's imports and the
    test's setup, in the search (public score) as in grading (private score)."""
    benchmark = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    with gzip.open(benchmark, "rt") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(2))]
    bodies = {r["entry_point"]: r["prompt"][r["prompt"].index("def ") :] + r["canonical_solution"] for r in rows}

    def reference(messages):
        return next(
            f"```python\n{code}```" for name, code in bodies.items() if f"def {name}(" in messages[-1]["content"]
        )

    assert "import" not in bodies["has_close_elements"] and "List[float]" in bodies["has_close_elements"]
    monkeypatch.setattr(
        search_cli, "load_backends", lambda models, *a: {n: ScriptedBackend(reference) for n in models}
    )
    args = ["--model", "ref=x", "--benchmark", str(benchmark), "--limit", "2", "--max-nodes", "1", "--mode", "agent"]
    records, _, _, _ = run_cli(tmp_path, capsys, *args, "--public", "2")
    assert [(r["public_pass@n"], r["pass@1(mcts)"]) for r in records] == [(1.0, 1.0), (1.0, 1.0)]


def test_help_of_module_and_console_script(capsys):
    trl_mars = str(Path(sys.executable).with_name("trl-mars"))
    for command, words in (
        ([sys.executable, "-m", "trl_mars.search", "--help"], ("--model", "--benchmark", "--mode", "--public")),
        ([trl_mars, "--help"], ("eval", "search", "view")),
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and all(w in result.stdout for w in words), result.stderr
    with pytest.raises(SystemExit) as exit_info:  # the console script dispatches to the search CLI
        cli.main(["search", "--help"])
    assert exit_info.value.code == 0 and "--max-nodes" in capsys.readouterr().out
