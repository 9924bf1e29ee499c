"""The trust region: a node that waits in a buffer (or serves several ``num_iterations``) is clipped against the
policy that wrote it, so ``epsilon`` matters; TIS sees only the sampler mismatch. Hand-computed loss cases for
the clip, two-sided clipping (``delta``) and the KL importance correction."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.losses.policy import PolicyLossConfig, policy_loss
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import force_advantages, tiny_mars2_config  # noqa: E402

ONE = torch.ones(1, 1)


def loss_and_grad(logp: float, old: float, adv: float, sampling: float | None = None, **config):
    x = torch.tensor([[logp]], requires_grad=True)
    cfg = PolicyLossConfig(importance_sampling_level="token", **config)
    sampled = None if sampling is None else torch.tensor([[sampling]])
    loss, stats = policy_loss(x, torch.tensor([adv]), ONE, cfg, torch.tensor([[old]]), None, sampled)
    loss.backward()
    return float(loss.detach()), float(x.grad), stats


def test_clip_delta_and_tis_by_hand():
    # ratio 1.5, A = +1, eps 0.2: -min(1.5, 1.2) = -1.2, clipped (no gradient)
    loss, grad, stats = loss_and_grad(math.log(1.5), 0.0, 1.0, tis_cap=None)
    assert loss == pytest.approx(-1.2) and grad == 0.0 and float(stats["clip_ratio"]) == 1.0
    # ratio 1.1 inside the region: loss -1.1, d/dlogp = -ratio
    loss, grad, stats = loss_and_grad(math.log(1.1), 0.0, 1.0, tis_cap=None)
    assert loss == pytest.approx(-1.1) and grad == pytest.approx(-1.1) and float(stats["clip_ratio"]) == 0.0
    # ratio 3, A = -1: -min(-3, -1.2) = 3 with gradient 3; two-sided clipping delta=2 caps it at 2, no gradient
    loss, grad, _ = loss_and_grad(math.log(3.0), 0.0, -1.0, tis_cap=None)
    assert loss == pytest.approx(3.0) and grad == pytest.approx(3.0)
    loss, grad, _ = loss_and_grad(math.log(3.0), 0.0, -1.0, tis_cap=None, delta=2.0)
    assert loss == pytest.approx(2.0) and grad == 0.0
    # TIS weighs the old-vs-sampler ratio only: old = log 0.5, sampler = log 0.25 -> weight 2 (cap 3); the current
    # policy (ratio 1.1 against old) does not enter the weight
    loss, _, stats = loss_and_grad(math.log(0.55), math.log(0.5), 1.0, math.log(0.25), tis_cap=3.0)
    assert float(stats["tis_weight"]) == pytest.approx(2.0) and loss == pytest.approx(-2 * 1.1)


def test_kl_importance_correction_by_hand():
    x = torch.tensor([[math.log(0.6)]], requires_grad=True)
    ref, old = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.4)]])
    k3 = 0.5 / 0.6 - math.log(0.5 / 0.6) - 1
    for corrected, expected in ((False, 0.0 + 0.1 * k3), (True, 0.1 * k3 * 1.5)):
        cfg = PolicyLossConfig(importance_sampling_level="token", beta=0.1, kl_importance_correction=corrected)
        loss, stats = policy_loss(x, torch.tensor([0.0]), ONE, cfg, old, ref)
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5) and float(stats["kl"]) == pytest.approx(
            k3, rel=1e-5
        )


def grads(trainer, policy, inputs) -> torch.Tensor:
    policy.model.zero_grad(set_to_none=True)
    loss, stats = trainer.policy_micro_loss(policy, inputs, float(inputs["completion_mask"].sum()))
    loss.backward()
    flat = torch.cat([p.grad.flatten() for p in policy.model.parameters() if p.grad is not None])
    policy.model.zero_grad(set_to_none=True)
    return flat, float(stats["clip_ratio"])


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_stale_node_is_clipped_against_its_own_policy(tmp_path, tiny_qwen2_path, level):
    """Two nodes of one round, one update on the first: the second is then stale. Its old log-probs were recorded
    before that update, so its ratio moves away from 1, and epsilon 1e-3 clips where 0.2 does not."""
    train, _ = code_task_splits(2, 0, seed=0)
    args = tiny_mars2_config(
        tmp_path, [{"name": "solo", "model": tiny_qwen2_path}], importance_sampling_level=level, beta=0.0,
        learning_rate=3e-3, lr_scheduler_type="constant", max_steps=4,
    )  # fmt: skip
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    try:
        trainer.state.max_steps = 4
        trainer.create_optimizer_and_scheduler(num_training_steps=4)
        trainer._ensure_policy_optimizers()
        (policy,) = trainer.policies
        samples = trainer.credit(trainer.run_search(trainer.problems(list(train)[:1])))
        assert len(samples) == 2
        first, stale = samples
        first["advantage"] = 1.0
        policy.buffer = [stale]
        trainer._update(policy, [first])
        assert "old_logps" in stale and "old_logps" not in first  # recorded before the update; fresh needs none
        inputs = trainer.collate(policy, [stale])
        with torch.no_grad():
            now = trainer._logps(policy.model, inputs)[0]
        log_ratio = now - torch.tensor(stale["old_logps"])
        ratio = float(log_ratio.mean().exp()) if level == "sequence" else None
        if level == "sequence":
            assert 1e-3 < abs(ratio - 1) < 0.2, ratio  # the update moved the node's probability, within 0.2
        stale["advantage"] = 1.0 if float(log_ratio.mean()) > 0 else -1.0  # the side the clip acts on
        inputs = trainer.collate(policy, [stale])
        wide, wide_clip = grads(trainer, policy, inputs)
        trainer.loss_config = dataclasses.replace(trainer.loss_config, epsilon_low=1e-3, epsilon_high=1e-3)
        narrow, narrow_clip = grads(trainer, policy, inputs)
        assert narrow_clip > wide_clip >= 0.0  # token level: a few tokens may move beyond 0.2
        assert not torch.allclose(wide, narrow)
    finally:
        trainer.sandbox.close()


def run(tmp_path, tiny_qwen2_path, **overrides) -> MultiAgentTreeTrainer:
    train, _ = code_task_splits(4, 0, seed=0)
    args = tiny_mars2_config(
        tmp_path, [{"name": "solo", "model": tiny_qwen2_path}], beta=0.0, learning_rate=3e-3, logging_steps=1,
        lr_scheduler_type="constant", max_steps=2, epsilon=1e-3, **overrides,
    )  # fmt: skip
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    force_advantages(trainer, lambda i: 1.0)  # raising a node's probability raises its ratio: the clipped side
    try:
        trainer.train()
    finally:
        trainer.sandbox.close()
    return trainer


def test_buffered_nodes_and_iterations_clip_in_training(tmp_path, tiny_qwen2_path):
    """End to end: 2 nodes per round, 1-node updates (the second node waits for the first update) or 2-node updates
    with num_iterations=3 (iterations 2 and 3 reuse the nodes): clip_ratio > 0 is logged; one update per
    round with one iteration, where every node is fresh, clips nothing."""
    waits = run(tmp_path / "waits", tiny_qwen2_path, per_device_train_batch_size=1)
    iterates = run(tmp_path / "iter", tiny_qwen2_path, per_device_train_batch_size=2, num_iterations=3)
    fresh = run(tmp_path / "fresh", tiny_qwen2_path, per_device_train_batch_size=2)
    clip = lambda t: [r["agents/solo/clip_ratio"] for r in t.state.log_history if "agents/solo/clip_ratio" in r]  # noqa: E731
    assert max(clip(waits)) > 0 and max(clip(iterates)) > 0 and clip(fresh) == [0.0, 0.0]
    assert [p.updates for p in iterates.policies] == [6]  # 2 rounds x 1 buffer x 3 iterations
    assert [p.updates for p in fresh.policies] == [2]
