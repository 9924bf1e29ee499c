"""TraceEmbedTrainer: config checks, training, GradCache, LoRA <|emb|> rows, checkpoints and routed inference."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from trl_mars.embed.encoder import ENCODER_CONFIG_NAME, TraceEncoder
from trl_mars.losses.trace import pool_pre_token
from trl_mars.trainers.trace_config import TraceConfig
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer


@pytest.fixture
def train_dataset(trace_task) -> Dataset:
    return Dataset.from_list(trace_task.train_rows(hard_negative=True)[:48])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lambda_gen": -1.0}, "lambda_gen and lambda_ret must be >= 0"),
        ({"lambda_gen": 0.0, "lambda_ret": 0.0}, "nothing to train"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"mini_batch_size": 0}, "mini_batch_size must be >= 1"),
        ({"max_length": 32, "max_target_length": 32}, r"max_length \(32\) must be"),
        ({"max_length": 64, "max_target_length": 8, "max_reasoning_tokens": 64}, "max_reasoning_tokens"),
        ({"max_target_length": 0}, "max_target_length must be >= 1"),
        ({"packing": True}, r"\['packing'\] are SFT options"),
        ({"emb_token": ""}, "emb_token must be a non-empty string"),
        ({"batch_sampler": "group_by_label"}, "batch_sampler must be one of"),
        ({"image_max_pixels": 700}, "image_max_pixels must be >= 784"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        TraceConfig(output_dir=str(tmp_path), report_to="none", **overrides)


def test_config_defaults_follow_the_paper(tmp_path):
    args = TraceConfig(output_dir=str(tmp_path), report_to="none")
    assert (args.learning_rate, args.lr_scheduler_type.value, args.lambda_gen, args.lambda_ret) == (
        2e-4,
        "cosine",
        1.0,
        1.0,
    )
    assert args.temperature == 0.05 and args.remove_unused_columns is False
    assert args.dataset_kwargs["skip_prepare_dataset"] is True


def test_missing_columns_fail_before_the_model_is_loaded(trace_args):
    bad = Dataset.from_list([{"query": "q", "query_target": ""}])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['positive'\]"):
        TraceEmbedTrainer("/does/not/exist", args=trace_args(), train_dataset=bad)


def test_training_adds_emb_token_and_learns(trace_model_path, trace_args, train_dataset):
    eval_dataset = train_dataset.select(range(8))
    trainer = TraceEmbedTrainer(
        trace_model_path, args=trace_args(max_steps=4), train_dataset=train_dataset, eval_dataset=eval_dataset
    )
    assert trainer.processing_class.convert_tokens_to_ids("<|emb|>") == trainer.emb_token_id
    assert trainer.model.get_input_embeddings().num_embeddings == len(trainer.processing_class)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    logs = [h for h in trainer.state.log_history if "loss_ret" in h]
    assert len(logs) == 4
    for key in ("loss_ret", "loss_gen", "routing_accuracy", "reasoning_fraction", "in_batch_accuracy"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in logs), key
    assert logs[0]["loss"] == pytest.approx(logs[0]["loss_ret"] + logs[0]["loss_gen"], rel=1e-4)
    assert trainer.counts["queries_seen"] == 4 * 8
    assert 0 < trainer.counts["reasoning_queries_seen"] < 32
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_loss_ret"] + metrics["eval_loss_gen"], rel=1e-4)
    assert trainer.counts["queries_seen"] == 4 * 8, "evaluation does not count as training"


def _grads(trainer: TraceEmbedTrainer, batch) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_grad_cache_matches_the_direct_gradient(trace_model_path, trace_args, train_dataset):
    trainer = TraceEmbedTrainer(trace_model_path, args=trace_args(), train_dataset=train_dataset)
    trainer.model.train()
    batch = trainer.data_collator([train_dataset[i] for i in range(8)])
    direct_loss, direct = _grads(trainer, batch)
    trainer.args.mini_batch_size = 3
    cached_loss, cached = _grads(trainer, batch)
    assert cached_loss == pytest.approx(direct_loss, rel=1e-5)
    assert direct.keys() == cached.keys() and len(direct) > 0
    for name in direct:
        torch.testing.assert_close(cached[name], direct[name], atol=1e-5, rtol=1e-4, msg=name)


def test_lora_trains_the_emb_rows_and_reloads(trace_model_path, trace_args, train_dataset, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = trace_args(max_steps=3, output_dir=str(tmp_path / "lora"))
    trainer = TraceEmbedTrainer(trace_model_path, args=args, train_dataset=train_dataset, peft_config=peft_config)
    emb = trainer.emb_token_id
    assert trainer.model.peft_config["default"].trainable_token_indices == {"embed_tokens": [emb]}
    embeddings = trainer.model.get_input_embeddings()
    row_before = embeddings(torch.tensor([emb])).detach().clone()
    other_before = embeddings(torch.tensor([emb - 1])).detach().clone()
    trainer.train()
    assert not torch.allclose(embeddings(torch.tensor([emb])), row_before), "<|emb|> row must be trained"
    assert torch.equal(embeddings(torch.tensor([emb - 1])), other_before), "other rows stay frozen"
    # tied lm_head: the output row of <|emb|> follows the trained input row
    head = trainer.model.get_output_embeddings()
    hidden = torch.randn(2, trainer.model.config.hidden_size)
    assert torch.allclose(head(hidden)[:, emb], hidden @ embeddings(torch.tensor([emb]))[0], atol=1e-5)

    trainer.save_model(args.output_dir)
    texts = ["movies tagged pixar", "something with plenty of laughs from the nineties, about road trip"]
    live = trainer.encoder()
    live.model.eval()
    reloaded = TraceEncoder.from_pretrained(args.output_dir)
    assert reloaded.emb_token_id == emb
    for kind in ("query", "candidate"):
        torch.testing.assert_close(
            reloaded.encode(texts, kind=kind), live.encode(texts, kind=kind), atol=1e-5, rtol=1e-4
        )


def test_checkpoint_saves_tokenizer_and_reloads_into_an_encoder(trace_model_path, trace_args, train_dataset):
    args = trace_args(max_steps=2, save_strategy="steps", save_steps=2)
    trainer = TraceEmbedTrainer(trace_model_path, args=args, train_dataset=train_dataset)
    trainer.train()
    checkpoint = Path(args.output_dir) / "checkpoint-2"
    settings = json.loads((checkpoint / ENCODER_CONFIG_NAME).read_text())
    assert settings["emb_token"] == "<|emb|>" and settings["query_instruction"] == "Query."
    assert "<|emb|>" in json.loads((checkpoint / "tokenizer.json").read_text())["added_tokens"][-1]["content"]
    state = json.loads((checkpoint / "trl_mars_state" / "rank0.json").read_text())
    assert state == {
        "emb_token": "<|emb|>",
        "emb_token_id": trainer.emb_token_id,
        "queries_seen": 16,
        **{"reasoning_queries_seen": trainer.counts["reasoning_queries_seen"]},
    }

    encoder = TraceEncoder.from_pretrained(checkpoint)
    texts = ["Toy Story (1995). Genres: Animation. Tags: pixar.", "Heat (1995). Genres: Crime. Tags: heist."]
    emb = encoder.encode(texts, kind="candidate")
    assert emb.shape == (2, 64)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    live = trainer.encoder()
    live.model.eval()
    torch.testing.assert_close(emb, live.encode(texts, kind="candidate"), atol=1e-5, rtol=1e-4)

    # resuming restores the method state (and checks that <|emb|> kept its id)
    resumed = TraceEmbedTrainer(
        trace_model_path, args=trace_args(max_steps=3, save_strategy="no"), train_dataset=train_dataset
    )
    resumed.args.output_dir = args.output_dir
    resumed.train(resume_from_checkpoint=True)
    assert resumed.counts["queries_seen"] == 16 + 8


def test_model_card_names_trace(trace_model_path, trace_args, train_dataset, tmp_path):
    trainer = TraceEmbedTrainer(
        trace_model_path, args=trace_args(output_dir=str(tmp_path / "card")), train_dataset=train_dataset
    )
    trainer.create_model_card(model_name="trace-tiny")
    card = (tmp_path / "card" / "README.md").read_text()
    assert "trl-mars" in card and "trace" in card and "2603.02929" in card


def test_routed_inference_is_direct_or_cot_per_query(trace_model_path, trace_args, train_dataset, trace_task):
    trainer = TraceEmbedTrainer(trace_model_path, args=trace_args(max_steps=2), train_dataset=train_dataset)
    trainer.train()
    encoder = trainer.encoder()
    encoder.model.eval()
    texts = [q.text for q in trace_task.eval[:12]]
    direct = encoder.encode_with_details(texts, mode="direct", batch_size=5)
    cot = encoder.encode_with_details(texts, mode="cot", batch_size=5)
    routed = encoder.encode_with_details(texts, mode="routed", batch_size=5)
    assert direct.reasoned == [False] * 12 and cot.reasoned == [True] * 12
    assert all(r for r, text in zip(cot.reasoning, texts))
    for i, reasoned in enumerate(routed.reasoned):
        expected = cot if reasoned else direct
        torch.testing.assert_close(routed.embeddings[i], expected.embeddings[i], atol=1e-5, rtol=1e-4)
        assert routed.reasoning[i] == (cot.reasoning[i] if reasoned else "")
    # direct mode is the training-time pre-<|emb|> pooling of [prompt; <|emb|>]
    batch = trainer.data_collator([{"query": t, "query_target": "", "positive": "x"} for t in texts[:3]])
    with torch.no_grad():
        out = encoder.model(
            batch["query_input_ids"], attention_mask=batch["query_attention_mask"], output_hidden_states=True
        )
    pooled = pool_pre_token(out.hidden_states[-1], batch["query_input_ids"], trainer.emb_token_id)
    torch.testing.assert_close(pooled, direct.embeddings[:3], atol=1e-5, rtol=1e-4)


def _load_worker():
    spec = importlib.util.spec_from_file_location(
        "trace_ddp_worker", Path(__file__).with_name("ddp_trainer_worker.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.distributed
def test_ddp_step_equals_the_single_process_step(trace_model_path, tmp_path):
    """torchrun, 2 ranks x 4 rows (GradCache chunks of 2) == 1 process x 8 rows: same loss, same SGD update."""
    (tmp_path / "single").mkdir()
    single = _load_worker().run_one_step(trace_model_path, tmp_path / "single", 0)
    script = Path(__file__).with_name("ddp_trainer_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*cmd, trace_model_path, str(tmp_path), "2"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ddp = torch.load(tmp_path / "result.pt")
    assert (single["world"], ddp["world"]) == (1, 2)
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert single["delta"].keys() == ddp["delta"].keys()
    assert sum(bool(d.abs().max() > 0) for d in single["delta"].values()) > 10
    for name, delta in single["delta"].items():
        torch.testing.assert_close(ddp["delta"][name], delta, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.distributed
@pytest.mark.parametrize("tied", [False, True], ids=["untied_lm_head", "tied_lm_head"])
def test_ddp_grad_cache_with_gradient_checkpointing_and_l_gen(tiny_cache, tmp_path, tied):
    """torchrun, 2 ranks: GradCache + gradient checkpointing (DDP without unused-parameter detection) + L_gen.

    With an untied lm_head this raised "Expected to have finished reduction" at step 2: the synchronised replay
    chunk was a candidate chunk, which never reaches lm_head. Both ranks must end with the same parameters.
    """
    from safetensors.torch import load_file

    from trl_mars.embed.tiny import tiny_movielens_model_path

    model_path = tiny_movielens_model_path(cache_dir=tiny_cache, **({} if tied else {"tie_word_embeddings": False}))
    script = Path(__file__).with_name("ddp_checkpointing_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([*cmd, model_path, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]["losses"]) == 2 and ranks[0]["losses"] == ranks[1]["losses"]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    initial = load_file(Path(model_path) / "model.safetensors")[head]
    trained = ranks[0]["params"][head][: initial.shape[0]]
    assert not torch.equal(trained, initial)  # the output head was trained (through L_gen when untied)


@pytest.mark.parametrize("sampler", ["no_duplicates", "random"])
def test_no_duplicates_batch_sampler_is_the_default(trace_model_path, trace_args, trace_task, sampler):
    """Each movie has a simple and a complex query, so every positive occurs twice: with random batches two rows
    of a batch share a positive (one query's positive is then another's in-batch negative); by default never."""
    rows = trace_task.train_rows(hard_negative=True)
    overrides = {} if sampler == "no_duplicates" else {"batch_sampler": "random"}
    args = trace_args(per_device_train_batch_size=16, **overrides)
    assert TraceConfig(output_dir=args.output_dir).batch_sampler == "no_duplicates"
    trainer = TraceEmbedTrainer(trace_model_path, args=args, train_dataset=Dataset.from_list(rows))
    loader = trainer.get_train_dataloader()
    batches = [b["candidate_input_ids"] for b in loader]
    assert sum(len(b) for b in batches) == len(rows)
    shared = sum(len({tuple(r.tolist()) for r in b}) < len(b) for b in batches)
    if sampler == "no_duplicates":
        assert shared == 0
        keys = [frozenset((r["positive"], r["negative"])) for r in rows]
        for batch in loader.batch_sampler:  # positives and hard negatives: no text twice in a batch
            texts = [t for i in batch for t in keys[i]]
            assert len(texts) == len(set(texts))
    else:
        assert shared > 0


def test_no_duplicates_sampler_splits_global_batches_across_processes():
    from trl_mars.embed.sampler import NoDuplicatesBatchSampler

    keys = [{f"movie {i // 2}"} for i in range(40)]  # 20 positives, each shared by two rows
    one = NoDuplicatesBatchSampler(keys, batch_size=8, seed=3)
    two = NoDuplicatesBatchSampler(keys, batch_size=4, num_processes=2, seed=3)
    assert list(one) == [a + b for a, b in zip(list(two)[::2], list(two)[1::2])]
    assert all(len({next(iter(keys[i])) for i in batch}) == len(batch) for batch in one)
    assert one.global_batches(0) != one.global_batches(1)  # reshuffled every epoch
