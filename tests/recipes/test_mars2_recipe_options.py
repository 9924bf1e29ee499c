"""`recipes/mars2.py`: every option it advertises parses, its held-out evaluation options are config fields, and
a user dataset without reference solutions trains without the warm-up (said before any model loads)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from trl import ScriptArguments

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.utils.recipes import parse_recipe_args

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mars2.py"


def recipe_module():
    spec = importlib.util.spec_from_file_location("recipe_mars2_options", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse(module, *argv: str):
    return parse_recipe_args(
        (ScriptArguments, MultiAgentTreeConfig, module.Mars2RecipeArguments), module.DEFAULT_CONFIG, list(argv)
    )


def test_every_option_the_recipe_names_is_a_field():
    """The docstring advertised ``--tplus``, which the parser rejected."""
    module = recipe_module()
    known = {
        f.name for cls in (ScriptArguments, MultiAgentTreeConfig, module.Mars2RecipeArguments) for f in fields(cls)
    }
    named = set(re.findall(r"--(\w+)", module.__doc__)) - {
        "config",
        "config_file",
        "no",
    }  # launcher's; pip's --no-deps
    assert {"tplus", "eval_tplus", "eval_mode", "eval_reward_model", "eval_max_nodes"} <= named
    assert named <= known, named - known


def test_evaluation_options_parse_into_the_config(tmp_path):
    module = recipe_module()
    from trl_mars.testing import tiny_model_path

    rm = tiny_model_path("qwen2", cache_dir=tmp_path, head="reward")
    _, args, recipe = parse(
        module, "--max_nodes", "16", "--tplus", "--eval_tplus", "--eval_mode", "agent", "--eval_reward_model", rm,
        "--eval_tie_break", "earliest", "--eval_max_nodes", "2", "--output_dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert (args.max_nodes, args.tplus, args.eval_tplus, args.eval_mode) == (16, True, True, "agent")
    assert (args.eval_reward_model, args.eval_tie_break, args.eval_max_nodes) == (rm, "earliest", 2)
    assert module.evaluation_setting(args) == f"search budget 2 nodes, agent trees, T+, reward model {rm}"
    for bad, field in ((["--eval_mode", "both"], "eval_mode"), (["--eval_repeats", "0"], "eval_repeats")):
        with pytest.raises(ValueError, match=field):
            parse(module, *bad, "--output_dir", str(tmp_path / "o"))


def test_warmup_needs_reference_solutions():
    module = recipe_module()
    train, _ = code_task_splits(4, 0, seed=0)
    recipe = module.Mars2RecipeArguments(warmup_steps_sft=10)
    module.check_warmup_data(train, recipe)
    assert recipe.warmup_steps_sft == 10  # the embedded task has every column the warm-up reads
    user = train.select_columns(["prompt", "tests"])
    module.check_warmup_data(user, recipe)
    assert recipe.warmup_steps_sft == 0


def test_benchmark_split_is_the_search_problems_of_the_benchmark(tmp_path):
    """``--eval_benchmark``: trainer rows whose search problems are exactly what ``trl-mars search`` searches
    (question, public/private split, entry point, setup, the prompt's imports as preamble), checked before any
    model loads; a bad file or value is named."""
    from trl_mars.eval.loaders import from_humaneval
    from trl_mars.search.problems import from_code_problem, from_row

    checks = "    assert candidate(4) == 2\n    assert candidate(9) == 3\n    assert candidate(16) == 4\n"
    rows = [
        {"task_id": "T/0", "prompt": "import math\n\ndef f(x):\n    'root'\n", "entry_point": "f",
         "canonical_solution": "    return math.sqrt(x)\n", "test": f"def check(candidate):\n{checks}"},
        {"task_id": "T/1", "prompt": "def g(s):\n", "entry_point": "g", "canonical_solution": "    return s\n",
         "test": "def check(candidate):\n    assert candidate('a') == 'a'\n"},
    ]  # fmt: skip
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    module = recipe_module()
    _, _, recipe = parse(module, "--eval_benchmark", str(path), "--eval_benchmark_limit", "2", "--output_dir", "o")
    split = module.benchmark_split(recipe)
    assert split.column_names == ["task_id", "prompt", "tests", "private_tests", "entry_point", "setup", "preamble"]
    for i, (row, raw) in enumerate(zip(split, rows, strict=True)):
        assert from_row(row, i) == from_code_problem(from_humaneval(raw), 0.5)
    first, second = (from_row(r, i) for i, r in enumerate(split))
    assert first.public_tests == ["assert candidate(4) == 2", "assert candidate(9) == 3"]
    assert first.private_tests == ["assert candidate(16) == 4"] and first.preamble == "import math"
    assert second.private_tests == second.public_tests == ["assert candidate('a') == 'a'"]  # nothing left to hide
    recipe.eval_benchmark_limit = 1
    assert len(module.benchmark_split(recipe)) == 1
    assert module.benchmark_split(module.Mars2RecipeArguments()) is None
    for name, value in (("eval_benchmark_limit", "-1"), ("eval_benchmark_public", "1.0")):
        with pytest.raises(ValueError, match=name):
            parse(module, f"--{name}", value, "--output_dir", "o")
    (tmp_path / "bad.jsonl").write_text('{"task_id": "T/0", "prompt": "def f(x):\\n"}\n')
    recipe.eval_benchmark = str(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="bad.jsonl"):
        module.benchmark_split(recipe)


@pytest.mark.slow
def test_user_dataset_with_the_default_recipe(tmp_path, tiny_cache):
    """A dataset of ``prompt`` + ``tests`` with the default (tiny) config, whose warm-up needs the embedded task's
    reference solutions: before the fix, ``KeyError: 'completion'``. Now the warm-up is skipped, saying why, and
    the run trains and reports, here with the held-out evaluation in agent mode with T+ and a reward model."""
    from trl_mars.testing import tiny_model_path

    data = tmp_path / "data"
    data.mkdir()
    train, test = code_task_splits(6, 2, seed=4)
    for name, split in (("train", train), ("test", test)):
        rows = [{"prompt": row["question"], "tests": row["tests"]} for row in split]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm = tiny_model_path("qwen2", cache_dir=tmp_path / "rm", head="reward")
    out = tmp_path / "run"
    overrides = {
        "dataset_name": data,
        "max_steps": 1,
        "trees_per_step": 2,
        "max_nodes": 2,
        "eval_max_nodes": 2,
        "eval_repeats": 1,
        "eval_mode": "agent",
        "eval_reward_model": rm,
        "per_device_train_batch_size": 2,
        "max_completion_length": 8,
        "save_steps": 10,
        "tiny_hidden_size": 32,
        "output_dir": out,
    }
    argv = [arg for k, v in overrides.items() for arg in (f"--{k}", str(v))] + ["--eval_tplus"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRL_MARS_CACHE": str(tiny_cache)}
    done = subprocess.run([sys.executable, str(RECIPE), *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[mars2] SFT warm-up skipped (warmup_steps_sft=300)" in done.stdout
    assert "missing columns ['question', 'signature', 'completion', 'canonical_solution']" in done.stdout
    assert not (out / "warmup").exists()
    assert "Held-out problems: 2, search budget 2 nodes, agent trees, T+, reward model" in done.stdout
    rows = re.findall(r"^(qwen|llama)/(pass@1\(mcts\)|pass@1|pass@n)\s+([\d.]+)\s+([\d.]+)", done.stdout, re.M)
    assert len(rows) == 6 and all(0 <= float(x) <= 1 for r in rows for x in r[2:])
    assert "print instead of return" not in done.stdout  # no warm-up, no imperfect teacher to measure
    assert (out / "agents" / "qwen" / "config.json").exists()
