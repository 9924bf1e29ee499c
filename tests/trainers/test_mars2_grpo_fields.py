"""GRPOConfig fields on a MARS² tree: each one either does what it says (gradient_accumulation_steps as set,
scale_rewards for the tree-group advantage, mask_truncated_completions, delta, pad_to_multiple_of, the sampling
fields) or is rejected in the config, naming it, before any model loads. Frozen agents fill no buffer."""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments
from trl import GRPOConfig

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.search.verify import Verdict
from trl_mars.trainers.mars2_config import REJECTED_GRPO_FIELDS, SUPPORTED_GRPO_FIELDS, MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import tiny_mars2_config  # noqa: E402

NON_DEFAULT = {  # a value other than the default, for the fields whose default is None
    "generation_batch_size": 4,
    "steps_per_generation": 1,
    "cache_implementation": "static",
    "transformers_continuous_batching_config": {"max_batch_tokens": 64},
    "vllm_max_model_length": 128,
    "vllm_server_base_url": "http://localhost:8000",
    "vllm_structured_outputs_regex": ".*",
    "vllm_importance_sampling_clip_min": 0.1,
    "vllm_importance_sampling_cap": 2.0,
    "off_policy_mask_threshold": 0.5,
    "reward_weights": [1.0],
    "max_tool_calling_iterations": 2,
    "num_completions_to_print": 2,
    "log_completions_hub_repo": "org/completions",
    "router_aux_loss_coef": 0.01,
    "liger_kernel_config": {"rope": True},
    "neftune_noise_alpha": 5.0,
}


def other_value(name: str):
    default = {f.name: f.default for f in dataclasses.fields(MultiAgentTreeConfig)}[name]
    if name in NON_DEFAULT:
        return NON_DEFAULT[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 0.5 if isinstance(default, float) else default + 1
    return f"not-{default}"


def config(tmp_path, **kw) -> MultiAgentTreeConfig:
    return MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **kw)


def test_every_grpo_field_is_supported_or_rejected():
    """The audit: every field GRPOConfig adds to TrainingArguments has a meaning on a tree, or is refused."""
    own = {f.name for f in dataclasses.fields(GRPOConfig)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    assert not set(SUPPORTED_GRPO_FIELDS) & set(REJECTED_GRPO_FIELDS)
    assert own <= set(SUPPORTED_GRPO_FIELDS) | set(REJECTED_GRPO_FIELDS), sorted(
        own - set(SUPPORTED_GRPO_FIELDS) - set(REJECTED_GRPO_FIELDS)
    )


@pytest.mark.parametrize("name", sorted(REJECTED_GRPO_FIELDS))
def test_rejected_field_names_itself(tmp_path, name):
    with pytest.raises(ValueError, match=rf"MultiAgentTreeConfig\.{name}=.* is not supported by MARS²"):
        config(tmp_path, **{name: other_value(name)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"importance_sampling_level": "seq"}, "importance_sampling_level must be"),
        ({"loss_type": "sapo"}, "loss_type must be one of"),
        ({"delta": 1.1}, r"delta must be > 1 \+ epsilon_high"),
        ({"epsilon": -0.1}, "epsilon must be >= 0"),
        ({"num_iterations": 0}, "num_iterations"),
        ({"scale_rewards": "tree"}, "scale_rewards"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"min_p": 2.0}, "min_p"),
        ({"generation_kwargs": {"top_p": 0.5}}, r"generation_kwargs\['top_p'\] is not allowed \(set .*top_p\)"),
        ({"generation_kwargs": {"num_beams": 4}}, r"generation_kwargs\['num_beams'\].*log-probs would be wrong"),
    ],
)
def test_loss_and_sampling_fields_are_validated_in_the_config(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **kwargs)


def test_gradient_accumulation_is_kept_and_sets_the_update_size(tmp_path, tiny_qwen2_path):
    train, _ = code_task_splits(2, 0, seed=0)
    args = tiny_mars2_config(tmp_path, [{"name": "solo", "model": tiny_qwen2_path}], max_nodes=4,
                             gradient_accumulation_steps=2, beta=0.0)  # fmt: skip
    assert args.gradient_accumulation_steps == 2 and args.to_dict()["gradient_accumulation_steps"] == 2
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    try:
        assert trainer.args.gradient_accumulation_steps == 1  # the Trainer takes one step per search round
        assert trainer.args.to_dict()["gradient_accumulation_steps"] == 2  # what the model card shows
        micro = []
        loss = trainer.policy_micro_loss
        trainer.policy_micro_loss = lambda policy, inputs, n: (
            micro.append(len(inputs["advantages"])) or loss(policy, inputs, n)
        )
        trainer.train()
    finally:
        trainer.sandbox.close()
    assert trainer.policies[0].updates == 2 and micro == [1, 1, 1, 1]  # 4 nodes: 2 updates of 2 micro-batches
    assert args.gradient_accumulation_steps == 2
    trainer.save_model(str(tmp_path / "saved"))
    saved = torch.load(tmp_path / "saved" / "training_args.bin", weights_only=False)
    assert saved.gradient_accumulation_steps == 2


class LetterShare:
    """Verifier scoring the share of the letter ``e`` in the raw completion (random tiny models pass no test)."""

    def submit(self, code, tests, entry_point=None, setup="") -> Future:
        done: Future = Future()
        share = code.count("e") / max(1, len(code))
        done.set_result(Verdict(share, share, {"summary": "", "detailed": "", "failures": []}))
        return done


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_scale_rewards_sets_the_tree_advantage(tmp_path, tiny_qwen2_path, monkeypatch, scale):
    monkeypatch.setattr("trl_mars.search.engine.extract_code", lambda text, entry_point=None: text)
    train, _ = code_task_splits(2, 0, seed=0)
    args = tiny_mars2_config(tmp_path, [{"name": "solo", "model": tiny_qwen2_path}], max_nodes=3,
                             node_reward="pass_fraction", scale_rewards=scale, advantage_epsilon=0.0)  # fmt: skip
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    trainer.search.verifier = LetterShare()
    try:
        samples = trainer.credit(trainer.run_search(trainer.problems(list(train))))
    finally:
        trainer.sandbox.close()
    everything = torch.tensor([s["shaped_reward"] for s in samples], dtype=torch.float64)
    assert everything.std() > 0
    for tree in {s["tree_id"] for s in samples}:
        rows = [s for s in samples if s["tree_id"] == tree]
        r = torch.tensor([s["shaped_reward"] for s in rows], dtype=torch.float64)
        divisor = {"group": r.std(), "batch": everything.std(), "none": 1.0}[scale]
        expected = (r - r.mean()) / divisor if bool((r != r[0]).any()) else torch.zeros_like(r)
        torch.testing.assert_close(torch.tensor([s["advantage"] for s in rows], dtype=torch.float64), expected,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_masking_padding_delta_and_sampling_reach_the_trainer(tmp_path, tiny_qwen2_path):
    train, _ = code_task_splits(2, 0, seed=0)
    args = tiny_mars2_config(
        tmp_path, [{"name": "solo", "model": tiny_qwen2_path}], mask_truncated_completions=True, pad_to_multiple_of=8,
        delta=1.5, repetition_penalty=1.1, min_p=0.05, generation_kwargs={"no_repeat_ngram_size": 3}, beta=0.0,
    )  # fmt: skip
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    try:
        (policy,) = trainer.policies
        assert trainer.loss_config.delta == 1.5
        sampling = trainer.sampling_config()
        assert (sampling.repetition_penalty, sampling.min_p) == (1.1, 0.05)
        assert sampling.generation_kwargs == {"no_repeat_ngram_size": 3}
        eos = policy.tokenizer.eos_token_id
        truncated = {"prompt_ids": [5, 6], "completion_ids": [7, 8, 9], "logprobs": [-1.0] * 3, "advantage": 1.0}
        finished = {"prompt_ids": [5], "completion_ids": [7, eos], "logprobs": [-1.0] * 2, "advantage": 1.0}
        inputs = trainer.collate(policy, [truncated, finished])
        assert inputs["completion_ids"].shape[1] == 8 and inputs["prompt_ids"].shape[1] == 8
        assert inputs["completion_mask"].tolist() == [[0] * 8, [1, 1] + [0] * 6]
        policy.model.zero_grad(set_to_none=True)
        loss, _ = trainer.policy_micro_loss(policy, trainer.collate(policy, [truncated]), 1.0)
        loss.backward()
        assert all(p.grad is None or not p.grad.any() for p in policy.model.parameters())  # no signal from it
    finally:
        trainer.sandbox.close()


def test_frozen_agent_fills_no_buffer(tmp_path, tiny_qwen2_path, tiny_llama_path):
    train, _ = code_task_splits(6, 0, seed=0)
    agents = [
        {"name": "qwen", "model": tiny_qwen2_path},
        {"name": "llama", "model": tiny_llama_path, "trainable": False},
    ]
    args = tiny_mars2_config(tmp_path, agents, max_steps=3, max_nodes=4, trees_per_step=2, beta=0.0,
                             per_device_train_batch_size=2, save_strategy="steps", save_steps=3)  # fmt: skip
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    written = []
    credit = trainer.credit
    trainer.credit = lambda trees: (lambda s: written.extend(x["agent"] for x in s) or s)(credit(trees))
    try:
        trainer.train()
    finally:
        trainer.sandbox.close()
    qwen, llama = trainer.policies
    assert written.count("llama") > 0 and written.count("qwen") > 0  # both wrote nodes
    assert llama.buffer == [] and llama.updates == 0 and qwen.updates > 0
    state = trainer.method_state()["policies"]
    assert state["llama"]["buffer"] == [] and all(s["agent"] == "qwen" for s in state["qwen"]["buffer"])
    from trl_mars.utils.checkpoint import load_method_state

    saved = load_method_state(tmp_path / "checkpoint-3")["policies"]
    assert saved["llama"]["buffer"] == []


def test_docs_list_every_field():
    """docs/mars2.md names every field MARS² adds or re-defaults, every supported and every rejected GRPOConfig
    field."""
    text = (Path(__file__).parents[2] / "docs" / "mars2.md").read_text()
    grpo = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    own = [
        f.name
        for f in dataclasses.fields(MultiAgentTreeConfig)
        if f.name not in grpo or (grpo[f.name].default, grpo[f.name].metadata) != (f.default, f.metadata)
    ]
    missing = [n for n in [*own, *SUPPORTED_GRPO_FIELDS, *REJECTED_GRPO_FIELDS] if f"`{n}`" not in text]
    assert not missing, missing


def test_vllm_group_port_is_the_first_agents_port(tmp_path, tiny_qwen2_path, tiny_llama_path, monkeypatch):
    ports = {}

    class Client:
        def __init__(self, base_url, group_port, connection_timeout):
            ports[base_url] = group_port

        def init_communicator(self, device):
            pass

    monkeypatch.setattr("trl.generation.vllm_client.VLLMClient", Client)
    agents = [
        {"name": "qwen", "model": tiny_qwen2_path, "vllm_server_base_url": "http://h:8000"},
        {"name": "llama", "model": tiny_llama_path, "vllm_server_base_url": "http://h:8001", "vllm_group_port": 60000},
        {"name": "more", "model": tiny_qwen2_path, "vllm_server_base_url": "http://h:8002"},
    ]
    args = tiny_mars2_config(tmp_path, agents, use_vllm=True, vllm_group_port=52000)
    train, _ = code_task_splits(2, 0, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    trainer.sandbox.close()
    assert ports == {"http://h:8000": 52000, "http://h:8001": 60000, "http://h:8002": 52002}
