"""ReasoningRecTrainer: config validation, early errors, RAAE advantages in training, resume, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_mars.rewards.rerec import (
    ndcg_score,
    penalised_spans,
    raae_advantages,
    raae_token_rewards,
    token_pieces,
    wrong_titles,
)
from trl_mars.testing.distributed import free_port
from trl_mars.trainers.rerec_config import ReRecConfig
from trl_mars.trainers.rerec_trainer import ReasoningRecTrainer

sys.path.insert(0, str(Path(__file__).parent))
from rerec_scripted import (  # noqa: E402
    scripted_config,
    scripted_text,
    scripted_trainer,
    synthetic_dataset,
    synthetic_graph,
)

HERE = Path(__file__).parent


def config(tmp_path, **kw) -> ReRecConfig:
    return scripted_config(str(tmp_path / "out"), **{"per_device_train_batch_size": 8, **kw})


@pytest.mark.parametrize(
    "field,value",
    [
        ("ndcg_k", 0),
        ("raae_penalty", 1.0),
        ("raae_segment", "word"),
        ("qas_weight", -1.0),
        ("curriculum_tau", 2.0),
        ("scale_rewards", "max"),
        ("multi_objective_aggregation", "normalize_then_sum"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        ReRecConfig(str(tmp_path), **{field: value})


def test_config_defaults_follow_the_authors():
    args = ReRecConfig("out")
    assert (args.num_generations, args.learning_rate, args.beta, args.epsilon) == (5, 5e-6, 0.01, 0.2)
    assert args.loss_type == "dapo" and args.ndcg_k == 1 and args.raae_penalty == 0.3
    assert args.scale_rewards == "group" and args.raae_zero_all_wrong is False  # the paper's normalisation


def test_bad_input_fails_before_the_model_is_loaded(tmp_path):
    missing = str(tmp_path / "no-model")  # loading it would raise a different error
    data = synthetic_dataset()
    with pytest.raises(ValueError, match="missing column"):
        ReasoningRecTrainer(missing, args=config(tmp_path), train_dataset=data.remove_columns("ground_truth"))
    with pytest.raises(ValueError, match="candidates"):
        bad = data.map(lambda r: {"candidates": r["candidates"][:0] + ["Other (2000)"]})
        ReasoningRecTrainer(missing, args=config(tmp_path), train_dataset=bad, item_graph=synthetic_graph())
    with pytest.raises(ValueError, match="item_graph is required"):
        ReasoningRecTrainer(missing, args=config(tmp_path), train_dataset=data)
    with pytest.raises(ValueError, match="item_embeddings is required"):
        ReasoningRecTrainer(
            missing, args=config(tmp_path, pas_weight=0.01), train_dataset=data, item_graph=synthetic_graph()
        )
    with pytest.raises(TypeError, match="ReRecConfig"):
        from trl import GRPOConfig

        ReasoningRecTrainer(missing, args=GRPOConfig(str(tmp_path)), train_dataset=data)


@pytest.mark.parametrize(
    "options", [{}, {"scale_rewards": "batch", "raae_zero_all_wrong": True}], ids=["paper", "batch_scaled"]
)
def test_training_feeds_token_level_raae_advantages(tmp_path, tiny_qwen2_path, options):
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=8, num_generations=4, **options)
    trainer, seen = scripted_trainer(tiny_qwen2_path, args)
    assert args.reward_weights == [0.1, 1.0, 0.01]
    trainer.train()
    tok, data, batch = trainer.processing_class, trainer.train_dataset, seen[1]  # step 1: queries order[2:4]
    order = trainer.curriculum.order  # the epoch-0 order (the epoch is not over after 2 steps)
    # rebuild the first batch's token rewards by hand, then normalise per group of 4
    T = max(len(ids) for ids in batch["completion_ids"])
    token_rewards, mask, penalised = torch.zeros(8, T), torch.zeros(8, T), []
    for i, ids in enumerate(batch["completion_ids"]):
        row = data[order[2 + i // 4]]
        text = tok.decode(ids, skip_special_tokens=True)
        assert text == scripted_text(row["prompt"], i + 1)  # scripted row = index + global_step
        gt = row["ground_truth"]
        r = sum(
            w * f(completions=[text], ground_truth=[gt])[0] for f, w in zip(trainer.reward_funcs, args.reward_weights)
        )
        pieces = token_pieces(ids, lambda x: tok.decode(x, skip_special_tokens=True))
        spans = penalised_spans("".join(pieces), wrong_titles(text, gt))
        token_rewards[i, : len(ids)] = torch.tensor(raae_token_rewards(r, pieces, spans, 0.3))
        mask[i, : len(ids)] = 1
        penalised.append(bool(spans))
    assert any(penalised) and not all(penalised)
    scale = options.get("scale_rewards", "group")
    correct = torch.tensor(
        [
            ndcg_score(
                scripted_text(data[order[2 + i // 4]]["prompt"], i + 1), data[order[2 + i // 4]]["ground_truth"], 1
            )
            > 0
            for i in range(8)
        ]
    )
    expected = raae_advantages(token_rewards, mask, 4, scale=scale, correct=correct if options else None)
    if options:  # batch scaling changes the advantages the trainer uses (scale_rewards is not ignored)
        assert not torch.allclose(expected, raae_advantages(token_rewards, mask, 4), atol=1e-3)
    for i, adv in enumerate(batch["advantages"]):
        assert len(adv) == len(batch["completion_ids"][i])  # one advantage per completion token
        torch.testing.assert_close(torch.tensor(adv), expected[i, : len(adv)], atol=1e-5, rtol=1e-5)
    assert len({round(a, 4) for a in batch["advantages"][penalised.index(True)]}) == 2  # penalised + plain tokens
    logged = [h for h in trainer.state.log_history if "raae/penalised_frac" in h]
    assert any(0 < h["raae/penalised_frac"] < 1 for h in logged)


def run_scripted(tmp_path, model, name: str, max_steps: int, resume=None, save_steps=None, **overrides):
    kw = dict(max_steps=max_steps, per_device_train_batch_size=4, num_generations=4, **overrides)
    if save_steps:
        kw.update(save_strategy="steps", save_steps=save_steps)
    args = config(tmp_path / name, **kw)
    trainer, seen = scripted_trainer(model, args)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, seen


def test_curriculum_and_advantages_survive_save_and_resume(tmp_path, tiny_qwen2_path):
    # 8 queries, 1 query per step: 8 steps per epoch; 12 steps cross an epoch boundary (curriculum update)
    full, full_seen = run_scripted(tmp_path, tiny_qwen2_path, "full", max_steps=12)
    assert full.curriculum.epoch == 1 and full.curriculum.mastered == {0, 4}  # always answered right
    first, _ = run_scripted(tmp_path, tiny_qwen2_path, "resumed", max_steps=12, save_steps=10)
    ckpt = tmp_path / "resumed" / "out" / "checkpoint-10"
    saved = json.loads((ckpt / "trl_mars_state" / "rank0.json").read_text())["curriculum"]
    assert saved["epoch"] == 1 and saved["mastered"] == [0, 4] and saved["pending"]
    # a fresh trainer resumes from checkpoint-10 (as after a crash): same curriculum, batches and advantages
    resumed, resumed_seen = run_scripted(tmp_path, tiny_qwen2_path, "resumed", max_steps=12, resume=str(ckpt))
    assert resumed.curriculum.state_dict() == full.curriculum.state_dict()
    assert len(resumed_seen) == 2
    for got, want in zip(resumed_seen, full_seen[10:]):
        assert got["completion_ids"] == want["completion_ids"]
        for a, b in zip(got["advantages"], want["advantages"]):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b))


def test_resume_inside_a_generation_buffer_is_bit_identical(tmp_path, tiny_qwen2_path):
    # steps_per_generation=2: one generation (2 queries x 4 completions) feeds 2 optimizer steps; 8 steps per epoch.
    # checkpoint-3 falls between the two steps of the generation made at step 3; the run crosses the epoch end at 8.
    kw = dict(steps_per_generation=2, gradient_accumulation_steps=1)
    full, full_seen = run_scripted(tmp_path, tiny_qwen2_path, "full", max_steps=10, **kw)
    run_scripted(tmp_path, tiny_qwen2_path, "resumed", max_steps=10, save_steps=3, **kw)
    ckpt = tmp_path / "resumed" / "out" / "checkpoint-3"
    resumed, resumed_seen = run_scripted(tmp_path, tiny_qwen2_path, "resumed", max_steps=10, resume=str(ckpt), **kw)
    # no regeneration at the resumed step: the buffered second half is used, rollouts are counted once
    assert len(full_seen) == 5 and len(resumed_seen) == 3  # generations at steps 5, 7, 9 after the resume
    for got, want in zip(resumed_seen, full_seen[2:]):
        assert got["completion_ids"] == want["completion_ids"]
    assert resumed.curriculum.state_dict() == full.curriculum.state_dict()
    assert full.curriculum.epoch == 1  # and each pending count is 4 completions per visit, not 8
    full_params = dict(full.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, full_params[name]), name
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h][-7:] for t in (full, resumed)]
    assert losses[0] == losses[1]


def test_best_model_selection_on_held_out_ndcg(tmp_path, tiny_qwen2_path):
    """The 7B config's selection settings, end to end: eval every 2 steps on held-out queries, at most 2 checkpoints,
    the best one on eval NDCG@1 loaded at the end."""
    from rerec_scripted import record_batches, scripted_rollout

    args = config(
        tmp_path,
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        num_generations=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_rewards/rerec_ndcg@1/mean",
        greater_is_better=True,
    )
    trainer = ReasoningRecTrainer(
        tiny_qwen2_path,
        args=args,
        train_dataset=synthetic_dataset(),
        eval_dataset=synthetic_dataset(3),
        item_graph=synthetic_graph(),
        rollout_func=scripted_rollout,
    )
    record_batches(trainer)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_rewards/rerec_ndcg@1/mean" in h]
    assert [h["step"] for h in evals] == [2, 4, 6]
    best = max(evals, key=lambda h: h["eval_rewards/rerec_ndcg@1/mean"])
    assert trainer.state.best_metric == best["eval_rewards/rerec_ndcg@1/mean"]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    assert len(list((tmp_path / "out").glob("checkpoint-*"))) <= 2


@pytest.mark.distributed
def test_two_processes_give_the_same_advantages_as_one(tmp_path, tiny_qwen2_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    script = str(HERE / "rerec_scripted.py")
    single, double = tmp_path / "one", tmp_path / "two"
    single.mkdir(), double.mkdir()
    subprocess.run([sys.executable, script, tiny_qwen2_path, str(single)], check=True, env=env, timeout=300)
    port = str(free_port())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    subprocess.run([*torchrun, script, tiny_qwen2_path, str(double)], check=True, env=env, timeout=300)
    one = json.loads((single / "rank0.json").read_text())[0]
    ranks = [json.loads((double / f"rank{r}.json").read_text())[0] for r in range(2)]
    # 12 rows = 3 groups of 4; rank 0 holds rows 0-5 and rank 1 rows 6-11, so group 2 is split across ranks
    assert [len(r["completion_ids"]) for r in ranks] == [6, 6]
    assert ranks[0]["completion_ids"] + ranks[1]["completion_ids"] == one["completion_ids"]
    for got, want in zip(ranks[0]["advantages"] + ranks[1]["advantages"], one["advantages"]):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-6, rtol=1e-6)
    assert any(abs(a) > 0.1 for adv in one["advantages"] for a in adv)


def test_evaluate_recommender_greedy_and_sampled(tiny_qwen2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_mars.rec.evaluation import evaluate_recommender

    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(tiny_qwen2_path),
        AutoTokenizer.from_pretrained(tiny_qwen2_path),
    )
    data = synthetic_dataset(5)
    greedy = evaluate_recommender(model, tokenizer, data, max_new_tokens=4, batch_size=2)
    assert greedy.num_queries == 5 and greedy == evaluate_recommender(model, tokenizer, data, max_new_tokens=4)
    sampled = evaluate_recommender(model, tokenizer, data, max_new_tokens=4, temperature=1.0, num_samples=3)
    assert sampled.num_queries == 15  # every sample scored against its own query's ground truth
    with pytest.raises(ValueError, match="num_samples"):
        evaluate_recommender(model, tokenizer, data, num_samples=3)
