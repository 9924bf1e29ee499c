"""`recipes/mars2.py` end to end on a shrunken tiny config: warm-up, MARS² training, before/after evaluation."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mars2.py"


@pytest.mark.slow
def test_mars2_recipe_runs_and_reports(tmp_path, tiny_cache):
    out = tmp_path / "run"
    overrides = {
        "num_train_problems": 16,
        "num_eval_problems": 4,
        "warmup_steps_sft": 8,
        "max_steps": 2,
        "trees_per_step": 2,
        "max_nodes": 3,
        "eval_max_nodes": 2,
        "eval_repeats": 2,
        "per_device_train_batch_size": 2,
        "max_completion_length": 16,
        "save_steps": 2,
        "logging_steps": 1,
        "tiny_hidden_size": 32,
        "eval_benchmark": "humaneval",
        "eval_benchmark_limit": 2,
        "output_dir": out,
    }
    argv = [arg for k, v in overrides.items() for arg in (f"--{k}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRL_MARS_CACHE": str(tiny_cache)}
    done = subprocess.run([sys.executable, str(RECIPE), *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    number = r"([\d.]+)"
    row = rf"^(pass@1\(mcts\)|pass@1|pass@n)\s+{number}\s+{number}\s+{number}-{number}\s+{number}-{number}$"
    held_out, humaneval = done.stdout.split("\nhumaneval problems: 2, search budget 2 nodes, system trees, ")
    assert "Held-out problems: 4, search budget 2 nodes, system trees, mean (min-max) of 2 searches" in held_out
    assert humaneval.startswith("mean (min-max) of 2 searches")  # --eval_benchmark: its own table
    for part in (held_out, humaneval):
        table = {m[0]: [float(x) for x in m[1:]] for m in re.findall(row, part, re.MULTILINE)}
        assert set(table) == {"pass@1", "pass@1(mcts)", "pass@n"}, done.stdout[-2000:]
        for before, after, low_before, high_before, low_after, high_after in table.values():
            assert 0 <= low_before <= before <= high_before <= 1 and 0 <= low_after <= after <= high_after <= 1
    printing = re.findall(
        r"^(qwen|llama): first answers that print instead of return ([\d.]+) -> ([\d.]+)$", done.stdout, re.M
    )
    assert [p[0] for p in printing] == ["qwen", "llama"] and all(0 <= float(x) <= 1 for p in printing for x in p[1:])
    assert re.search(r"training reward by logging window: [\d.]+ -> [\d.]+\n", done.stdout)
    for agent in ("qwen", "llama"):
        folder = out / "agents" / agent
        assert (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists()
        card = (folder / "README.md").read_text()
        assert "base_model:" in card and "mars2" in card and "2604.14564" in card  # our model card
        assert (out / "warmup" / agent / "config.json").exists()  # the SFT warm-up ran and fed the agents
    assert (out / "checkpoint-2" / "trl_mars_state" / "complete.json").exists()
