"""End-to-end: recipes/trace.py trains the tiny model on the MovieLens retrieval task (slow, still run in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "trace.py"


@pytest.mark.slow
def test_recipe_improves_retrieval_and_routes_complex_queries(tmp_path, tiny_cache):
    env = {**os.environ, "TRL_MARS_CACHE": str(tiny_cache), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "trace-tiny"
    cmd = [sys.executable, str(RECIPE), "--output_dir", str(out), "--num_movies", "200", "--num_train_epochs", "6"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[trace eval] after training" in result.stdout

    report = json.loads((out / "retrieval_eval.json").read_text())
    before, after = report["before"], report["after"]
    for mode in ("direct", "routed"):
        assert after[mode]["recall@10"] > before[mode]["recall@10"] + 0.1, (mode, before[mode], after[mode])
        assert after[mode]["ndcg@10"] > before[mode]["ndcg@10"], mode
    routed = after["routed"]
    assert routed["reasoning_rate_complex"] > routed["reasoning_rate_simple"], routed
    # the gold row: complex queries with their reference reasoning fed in beat the tiny model's own reasoning
    assert after["gold"]["recall@10_complex"] > routed["recall@10_complex"] + 0.2, (after["gold"], routed)
    assert after["direct"]["reasoning_rate"] == 0.0 and after["cot"]["reasoning_rate"] == 1.0

    # the saved model is a working encoder: tokenizer with <|emb|>, settings, weights
    from trl_mars.embed.encoder import TraceEncoder

    encoder = TraceEncoder.from_pretrained(out)
    assert encoder.tokenizer.convert_tokens_to_ids("<|emb|>") == encoder.emb_token_id
    assert encoder.encode(["movies tagged pixar"]).shape[0] == 1
    assert "trl-mars" in (out / "README.md").read_text()


MULTIMODAL_CONFIG = RECIPE.parent / "configs" / "trace_multimodal.yaml"


@pytest.mark.slow
def test_multimodal_recipe_learns_retrieval_and_routing_against_a_no_update_run(tmp_path, tiny_cache):
    """recipes/trace.py --config trace_multimodal.yaml (fewer scenes) vs the same run at learning rate 0."""
    env = {**os.environ, "TRL_MARS_CACHE": str(tiny_cache), "OMP_NUM_THREADS": "1"}
    reports = {}
    for name, extra in (("trained", []), ("no_update", ["--learning_rate", "0", "--max_steps", "2"])):
        out = tmp_path / name
        cmd = [sys.executable, str(RECIPE), "--config", str(MULTIMODAL_CONFIG), "--output_dir", str(out)]
        cmd += ["--num_scenes", "160", *extra]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "hit@10/task7" in result.stdout and "reasoning_rate/task3" in result.stdout
        reports[name] = json.loads((out / "retrieval_eval.json").read_text())
    before, after = reports["trained"]["before"], reports["trained"]["after"]
    assert reports["no_update"]["after"]["routed"]["hit@10"] == reports["no_update"]["before"]["routed"]["hit@10"]
    assert reports["no_update"]["before"]["routed"]["hit@10"] == before["routed"]["hit@10"]
    assert after["routed"]["hit@10"] > before["routed"]["hit@10"] + 0.15, (before["routed"], after["routed"])
    # routing is learned: complex queries (t->i complex, image+edit->image) reason, simple ones do not
    routed = after["routed"]
    assert routed["reasoning_rate_complex"] > routed["reasoning_rate_simple"] + 0.5, routed
    assert routed["reasoning_rate/task3"] < 0.2 and before["routed"]["reasoning_rate/task3"] == 1.0, routed

    from trl_mars.embed.encoder import TraceEncoder
    from trl_mars.embed.shapes_task import build_shapes_retrieval_task

    encoder = TraceEncoder.from_pretrained(tmp_path / "trained")
    task = build_shapes_retrieval_task(num_scenes=20)
    scene = task.eval_scenes[0]
    emb = encoder.encode(["", scene.caption], [task.image(scene), None], kind="candidate")
    assert emb.shape == (2, 64)
