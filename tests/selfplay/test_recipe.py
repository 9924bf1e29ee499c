"""End-to-end: ``recipes/selfplay.py`` with each tiny config (2 steps) on CPU."""

import json
import runpy
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "selfplay.py"


@pytest.mark.slow
@pytest.mark.parametrize("config", ["wist", "rzero", "rdiverse"])
def test_recipe_runs_each_config(config, tmp_path, monkeypatch, capsys):
    out = tmp_path / config
    argv = [str(RECIPE), "--config", str(RECIPE.parent / "configs" / f"{config}.yaml"), "--output_dir", str(out)]
    argv += ["--max_steps", "2", "--save_steps", "2", "--max_completion_length", "8"]
    if config == "rdiverse":
        argv += ["--skill_encoder", "hashing"]  # MiniLM is covered by test_components; keep CI time down
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(RECIPE), run_name="__main__")
    printed = capsys.readouterr().out
    assert "step 2:" in printed and (out / "checkpoint-2" / "trl_mars_state" / "complete.json").exists()
    assert "selfplay" in (out / "README.md").read_text()
    if config == "wist":
        tree = json.loads((out / "domain_tree.json").read_text())
        assert tree["children"][0]["name"] == "Movies" and tree["children"][0]["children"]  # the tree grew
        assert "<svg" in (out / "domain_tree.html").read_text()
    else:
        assert (out / "challenger" / "adapter_config.json").exists() and "solver_pool_size" in printed
