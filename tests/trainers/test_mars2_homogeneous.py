"""Homo-MARS² (``agent_mode: homogeneous``): agents after the first name no model and share its weights and
tokenizer; each keeps its own system prompt and its share of the tree."""

import sys
from pathlib import Path

import pytest

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import force_advantages, tiny_mars2_config  # noqa: E402

PROMPTS = {"solver": "You are a careful programmer.", "debugger": "You are an expert debugger."}


def test_homogeneous_agents_without_a_model_share_the_first_weights(tmp_path, tiny_qwen2_path):
    """The documented form (recipes/configs/mars2_qwen3_8b_homo.yaml): only agents[0] names a model. Before the
    fix, __init__ loaded a tokenizer for every agent and crashed on the second one's missing model."""
    agents = [
        {"name": "solver", "model": tiny_qwen2_path, "system_prompt": PROMPTS["solver"]},
        {"name": "debugger", "system_prompt": PROMPTS["debugger"]},
    ]
    args = tiny_mars2_config(tmp_path, agents, agent_mode="homogeneous", max_nodes=6, per_device_train_batch_size=2)
    train, _ = code_task_splits(4, 0, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    assert len(trainer.policies) == 1
    (policy,) = trainer.policies
    assert policy.agents == ["solver", "debugger"]
    assert trainer.policy_of["solver"] is trainer.policy_of["debugger"] is policy
    force_advantages(trainer, lambda i: 1.0 if i % 2 else -1.0)
    before = {k: v.detach().clone() for k, v in policy.model.named_parameters()}
    trainer.train()
    nodes = [n for t in trainer.last_trees for n in t.solutions]
    assert {n.agent for n in nodes} == {"solver", "debugger"}  # both agents wrote nodes of the shared tree
    for node in nodes:  # each with its own system prompt
        assert node.prompt[0] == {"role": "system", "content": PROMPTS[node.agent]}
    assert policy.updates == len(nodes) // 2  # every node, whoever wrote it, trains the shared weights
    after = dict(trainer.accelerator.unwrap_model(policy.model).named_parameters())
    assert any(not after[k].detach().equal(v) for k, v in before.items())
    trainer.sandbox.close()


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"name": "b", "learning_rate": 1e-3}, r"agents\[1\].learning_rate: in homogeneous mode"),
        ({"name": "b", "lora": {"r": 4}}, r"agents\[1\].lora: in homogeneous mode"),
        ({"name": "b", "trainable": False}, r"agents\[1\].trainable: in homogeneous mode"),
        ({"name": "b", "model": "trl-mars/tiny-llama"}, r"agents\[1\].model='trl-mars/tiny-llama': homogeneous"),
    ],
)
def test_homogeneous_agents_reject_per_agent_weight_settings(tmp_path, second, message):
    """Settings of the shared weights on a later agent would be ignored: rejected, naming the field."""
    agents = [{"name": "a", "model": "trl-mars/tiny-qwen2"}, second]
    with pytest.raises(ValueError, match=message):
        MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", agents=agents, agent_mode="homogeneous")


def test_homogeneous_mode_takes_one_model_instance_list(tmp_path, tiny_qwen2_path, tiny_llama_path):
    args = MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", agent_mode="homogeneous")
    train, _ = code_task_splits(2, 0, seed=0)
    with pytest.raises(ValueError, match="homogeneous.*pass one model, not 2"):
        MultiAgentTreeTrainer(model=[tiny_qwen2_path, tiny_llama_path], args=args, train_dataset=train)
