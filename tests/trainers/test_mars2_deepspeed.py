"""DeepSpeed with several trained agents is refused before any model loads, naming the setting that asked for it:
the ``deepspeed`` field, or ``ACCELERATE_USE_DEEPSPEED`` (what ``accelerate launch`` sets with a DeepSpeed config).
deepspeed is not installed here, so a refused config proves the check runs before TrainingArguments imports it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.trainers.mars2_config import AgentSpec, MultiAgentTreeConfig, check_deepspeed_agents
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

TWO = [{"name": "qwen", "model": "trl-mars/tiny-qwen2"}, {"name": "llama", "model": "trl-mars/tiny-llama"}]


def config(tmp_path, **kw) -> MultiAgentTreeConfig:
    return MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **kw)


def test_accelerate_deepspeed_env_with_two_trained_agents_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match=r"DeepSpeed \(ACCELERATE_USE_DEEPSPEED=true\) with 2 trained agents "):
        config(tmp_path, agents=TWO)


def test_deepspeed_field_with_two_trained_agents_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"DeepSpeed \(deepspeed='ds_zero2\.json'\) .*\(qwen, llama\).*Use FSDP2"):
        config(tmp_path, agents=TWO, deepspeed="ds_zero2.json")


@pytest.mark.parametrize(
    ("mode", "specs"),
    [
        ("homogeneous", [AgentSpec("a", "m"), AgentSpec("b")]),  # one set of weights
        ("heterogeneous", [AgentSpec("a", "m"), AgentSpec("b", "n", trainable=False)]),  # one trained agent
    ],
)
def test_one_trained_set_of_weights_passes(mode, specs, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    check_deepspeed_agents(SimpleNamespace(agent_mode=mode, deepspeed=None), specs)


def test_agents_passed_as_models_are_counted_by_the_trainer(tmp_path, tiny_qwen2_path, tiny_llama_path, monkeypatch):
    """With ``model=[...]`` the config cannot count the agents; the trainer refuses before loading anything more."""
    args = config(tmp_path, max_steps=1)
    models = [AutoModelForCausalLM.from_pretrained(p) for p in (tiny_qwen2_path, tiny_llama_path)]
    tokenizers = [AutoTokenizer.from_pretrained(p) for p in (tiny_qwen2_path, tiny_llama_path)]
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match=r"with 2 trained agents \(agent0, agent1\) is not supported"):
        MultiAgentTreeTrainer(model=models, args=args, processing_class=tokenizers)
