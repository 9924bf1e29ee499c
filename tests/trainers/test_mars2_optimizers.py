"""Each agent's optimizer is built as ``Trainer.create_optimizer`` builds one: ``optim`` honoured, no weight decay on
biases and norms, the agent's own learning rate."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import tiny_mars2_config  # noqa: E402


def test_agents_get_the_configured_optimizer(tmp_path, tiny_qwen2_path, tiny_llama_path):
    train, _ = code_task_splits(2, 0, seed=0)
    agents = [
        {"name": "qwen", "model": tiny_qwen2_path, "learning_rate": 0.5},
        {"name": "llama", "model": tiny_llama_path},
    ]
    args = tiny_mars2_config(
        tmp_path, agents, optim="sgd", learning_rate=0.25, weight_decay=0.1, lr_scheduler_type="constant"
    )
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    try:
        trainer.state.max_steps = 10  # what train() sets before the first step
        trainer.create_optimizer_and_scheduler(num_training_steps=10)
        trainer._ensure_policy_optimizers()
        qwen, llama = trainer.policies
        for policy, lr in ((qwen, 0.5), (llama, 0.25)):
            optimizer = policy.optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps it
            assert isinstance(optimizer, torch.optim.SGD), type(optimizer)
            assert [g["lr"] for g in optimizer.param_groups] == [lr, lr]
            assert policy.scheduler.get_last_lr() == [lr, lr]
            decayed, undecayed = optimizer.param_groups
            assert (decayed["weight_decay"], undecayed["weight_decay"]) == (0.1, 0.0)
            names = {id(p): n for n, p in policy.model.named_parameters()}
            skipped = [names[id(p)] for p in undecayed["params"]]
            assert skipped and all("norm" in n or n.endswith(".bias") for n in skipped), skipped
            assert len(decayed["params"]) + len(undecayed["params"]) == len(list(policy.model.parameters()))

        # the Trainer's own optimizer holds a parameter of the first agent (FSDP2 prepares it with that model) and
        # its step, which the Trainer calls every step, changes nothing
        held = trainer.optimizer.param_groups[0]["params"]
        first = next(trainer.model.parameters())
        assert len(held) == 1 and held[0] is first
        before = first.detach().clone()
        first.grad = torch.ones_like(first)
        trainer.optimizer.step()
        assert torch.equal(first, before)
    finally:
        trainer.sandbox.close()
