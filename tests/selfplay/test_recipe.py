"""End-to-end: ``recipes/selfplay.py`` with each tiny config on CPU."""

import ast
import json
import runpy
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "selfplay.py"


def run_recipe(config: str, out: Path, extra: list[str], monkeypatch, capsys) -> tuple[str, list[dict]]:
    """Run the recipe; return its stdout and the ``step N: {...}`` self-play rows it prints from the log history."""
    argv = [str(RECIPE), "--config", str(RECIPE.parent / "configs" / f"{config}.yaml"), "--output_dir", str(out)]
    monkeypatch.setattr(sys, "argv", argv + extra)
    runpy.run_path(str(RECIPE), run_name="__main__")
    printed = capsys.readouterr().out
    rows = [ast.literal_eval(line.split(": ", 1)[1]) for line in printed.splitlines() if line.startswith("step ")]
    return printed, rows


@pytest.mark.slow
@pytest.mark.parametrize("config", ["wist", "rzero"])
def test_recipe_runs_each_config(config, tmp_path, monkeypatch, capsys):
    out = tmp_path / config
    extra = ["--max_steps", "2", "--save_steps", "2", "--max_completion_length", "8"]
    extra += ["--sft_warmup_steps", "2"]  # the warm-up path, not its effect (see below)
    extra += ["--eval_questions", "2", "--eval_corpus_questions", "2"]
    printed, _ = run_recipe(config, out, extra, monkeypatch, capsys)
    assert "step 2:" in printed and (out / "checkpoint-2" / "trl_mars_state" / "complete.json").exists()
    for name in ("held-out", "corpus"):
        assert f"{name} before: accuracy=" in printed and f"{name} after: accuracy=" in printed
    summary = json.loads(printed.split("selfplay summary: ")[1].splitlines()[0])
    assert 0.0 <= summary["challenger_valid_rate"] <= 1.0 and "invalid_questions" in summary["counters"]
    assert "selfplay" in (out / "README.md").read_text()
    if config == "wist":
        tree = json.loads((out / "domain_tree.json").read_text())
        assert tree["children"][0]["name"] == "Movies" and tree["children"][0]["children"]  # the tree grew
        assert "<svg" in (out / "domain_tree.html").read_text()
    else:
        assert (out / "challenger" / "adapter_config.json").exists() and "solver_pool_size" in printed


@pytest.mark.slow
def test_rdiverse_recipe_fills_the_memory_bank_and_applies_map(tmp_path, monkeypatch, capsys):
    """The tiny rdiverse config, shortened (100 warm-up steps, 2 iterations of 2 steps): the warmed-up Challenger
    writes parseable questions, band-passing ones enter the memory bank in iteration 1, and the MAP penalty of the
    iteration-2 Challenger questions against that bank is > 0 in the logs."""
    out = tmp_path / "rdiverse"
    extra = ["--skill_encoder", "hashing"]  # MiniLM is covered by test_components; keep CI time down
    extra += ["--sft_warmup_steps", "100", "--max_steps", "4", "--save_steps", "2"]
    printed, rows = run_recipe("rdiverse", out, extra, monkeypatch, capsys)
    assert (out / "checkpoint-4" / "trl_mars_state" / "complete.json").exists()
    assert (out / "challenger" / "adapter_config.json").exists()
    challenger = [r for r in rows if r["role_challenger"] == 1.0]
    assert challenger and all(r["challenger_valid_frac"] > 0 for r in challenger)
    first = [r for r in rows if r["iteration"] == 1.0]
    assert first[-1]["memory_size"] > 0  # the bank filled in iteration 1
    later = [r for r in challenger if r["iteration"] >= 2.0]
    assert later and all(r["map_penalty"] > 0 for r in later)
    assert all(r["map_penalty"] == 0 for r in challenger if r["iteration"] == 1.0)
