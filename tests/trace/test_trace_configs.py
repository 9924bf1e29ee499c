"""The shipped real-scale TRACE configs run end to end through recipes/trace.py with tiny stand-ins for their hub
ids (one training step on CPU in fp32; every TRACE / LoRA / data setting of the config kept)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "configs"
MBEIR_FIXTURES = ROOT / "tests" / "fixtures" / "mbeir"
HUB_SUBSTITUTES = {
    "Qwen/Qwen2-VL-2B-Instruct": "tiny-vlm",
    "Qwen/Qwen2.5-1.5B-Instruct": "tiny-movielens",
}
"""Tiny stand-ins for the hub ids of the shipped configs; a config naming another id fails until it is added."""
CPU = ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--max_steps", "1", "--report_to", "none"]
CPU += ["--save_strategy", "no", "--logging_steps", "1"]


def recipe_module():
    spec = importlib.util.spec_from_file_location("recipe_trace_configs", ROOT / "recipes" / "trace.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_real_scale_trace_config_has_a_stand_in():
    for path in CONFIGS.glob("trace*.yaml"):
        model = yaml.safe_load(path.read_text())["model_name_or_path"]
        assert model.startswith("trl-mars/") or model in HUB_SUBSTITUTES, f"{path.name}: add a stand-in for {model}"


def test_mbeir_qwen2vl_config_trains_and_evaluates_on_mbeir_files(tmp_path, trace_vlm_path):
    """trace_mbeir_qwen2vl.yaml on the M-BEIR fixture folder: LoRA on the language model only (frozen vision
    encoder), GradCache, gradient checkpointing, capped image size, local-pool evaluation before and after."""
    from peft import PeftConfig

    from trl_mars.embed.encoder import TraceEncoder
    from trl_mars.utils.recipes import parse_recipe_args

    recipe = recipe_module()
    config = CONFIGS / "trace_mbeir_qwen2vl.yaml"
    assert yaml.safe_load(config.read_text())["model_name_or_path"] in HUB_SUBSTITUTES
    out = tmp_path / "out"
    argv = ["--config", str(config), "--model_name_or_path", trace_vlm_path, "--output_dir", str(out), *CPU]
    argv += ["--mbeir_root", str(MBEIR_FIXTURES), "--mbeir_eval_sets", "cirr_task7", "mscoco_task0"]
    script_args, training_args, model_args = parse_recipe_args(
        (recipe.TraceScriptArguments, recipe.TraceConfig, recipe.ModelConfig), recipe.DEFAULT_CONFIG, argv
    )
    assert (training_args.lambda_gen, training_args.learning_rate, model_args.lora_r, model_args.lora_alpha) == (
        1.0,
        2e-4,
        128,
        256,
    )
    assert training_args.freeze_vision_tower and training_args.mini_batch_size == 16
    recipe.run(script_args, training_args, model_args)

    report = json.loads((out / "retrieval_eval.json").read_text())
    for stage in ("before", "after"):
        routed = report[stage]["routed"]
        assert {"local/hit@5/cirr_task7", "local/hit@5/mscoco_task0", "reasoning_rate/cirr_task7"} <= set(routed)
    adapter = PeftConfig.from_pretrained(out)
    assert "visual" in adapter.exclude_modules  # no LoRA on the vision encoder
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"]["longest_edge"] == 200704
    encoder = TraceEncoder.from_pretrained(out)
    image = MBEIR_FIXTURES / "mbeir_images" / "cirr_images" / "red.png"
    assert encoder.encode(["", "make it red"], [str(image), str(image)], kind="query").shape == (2, 64)


@pytest.mark.parametrize("config", ["trace_qwen2.5_1.5b.yaml"])
def test_text_config_trains_on_movielens(config, tmp_path, trace_model_path, shared_data):
    recipe = recipe_module()
    from trl_mars.utils.recipes import parse_recipe_args

    out = tmp_path / "out"
    argv = ["--config", str(CONFIGS / config), "--model_name_or_path", trace_model_path, "--output_dir", str(out)]
    argv += [*CPU, "--movielens_path", str(shared_data / "movielens"), "--num_movies", "40"]
    argv += ["--eval_batch_size", "16"]
    parsed = parse_recipe_args(
        (recipe.TraceScriptArguments, recipe.TraceConfig, recipe.ModelConfig), recipe.DEFAULT_CONFIG, argv
    )
    recipe.run(*parsed)
    report = json.loads((out / "retrieval_eval.json").read_text())
    assert {"recall@10", "reasoning_rate"} <= set(report["after"]["routed"])
