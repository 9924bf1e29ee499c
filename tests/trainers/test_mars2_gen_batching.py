"""GEN-only search with one agent (the degenerate, GRPO-like MARS²) generates each round in ONE batched call."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.search import TransformersBackend
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import tiny_mars2_config  # noqa: E402


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tiny_qwen2_path):
    train, _ = code_task_splits(3, 0, seed=0)
    trainer = MultiAgentTreeTrainer(
        args=tiny_mars2_config(
            tmp_path_factory.mktemp("batching"),
            [{"name": "solo", "model": tiny_qwen2_path}],
            max_nodes=3,
            max_depth=1,
            reward_shaping="none",
            trees_per_step=3,
            max_completion_length=8,
        ),
        train_dataset=train,
    )
    yield trainer
    trainer.sandbox.close()


@pytest.fixture
def batch_sizes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    generate = TransformersBackend.generate

    def recording(self, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(TransformersBackend, "generate", recording)
    return sizes


def test_gen_only_single_agent_is_one_call(trainer, batch_sizes):
    problems = trainer.problems(list(trainer.train_dataset))
    trees = trainer.run_search(problems)
    assert batch_sizes == [3 * 3]
    assert [len(t) for t in trees] == [3, 3, 3]
    assert all(n.parent_id == 0 and n.agent == "solo" and n.completion_ids for t in trees for n in t.solutions)
    assert len({t.tree_id for t in trees}) == 3
    samples = trainer.credit(trees)
    assert len(samples) == 9


def test_node_reward_pass_or_pass_fraction(trainer, monkeypatch):
    """The raw reward of each node (before tree-consistent shaping, here off) is its pass (1 iff every public test
    passes) or its share of passed tests; advantages normalise it over the tree."""
    problems = trainer.problems(list(trainer.train_dataset))[:1]
    (tree,) = trainer.run_search(problems)
    for node, (score, fraction) in zip(tree.solutions, [(1.0, 1.0), (0.0, 0.5), (0.0, 0.0)]):
        node.score, node.pass_fraction = score, fraction
    for mode, rewards, advantages in [
        ("pass", [1.0, 0.0, 0.0], [2 / 3**0.5, -1 / 3**0.5, -1 / 3**0.5]),  # mean 1/3, unbiased std 1/sqrt(3)
        ("pass_fraction", [1.0, 0.5, 0.0], [1.0, 0.0, -1.0]),  # mean 0.5, unbiased std 0.5
    ]:
        monkeypatch.setattr(trainer.args, "node_reward", mode)
        samples = trainer.credit([tree])
        assert [s["reward"] for s in samples] == rewards
        assert [s["advantage"] for s in samples] == pytest.approx(advantages, abs=1e-3)


def test_deeper_search_stays_lockstep(trainer, batch_sizes):
    problems = trainer.problems(list(trainer.train_dataset))
    trees = trainer.run_search(problems, trainer.search_config(max_depth=None))
    assert batch_sizes == [3, 3, 3]  # one node per tree per step: later expansions depend on earlier scores
    assert [len(t) for t in trees] == [3, 3, 3]


def test_policy_updates_only_when_every_rank_holds_a_batch(trainer, monkeypatch):
    """The decision is the MINIMUM buffer size over ranks (a sum would let a rank with no nodes update)."""
    policy = trainer.policies[0]
    policy.buffer = [{}] * 4
    monkeypatch.setattr(trainer.accelerator, "gather", lambda t: torch.tensor([4, 1]))  # another rank holds 1
    assert not trainer._ready(policy, batch=4)
    monkeypatch.setattr(trainer.accelerator, "gather", lambda t: torch.tensor([4, 6]))
    assert trainer._ready(policy, batch=4)
    monkeypatch.undo()
    assert trainer._ready(policy, batch=4) and not trainer._ready(policy, batch=5)
    policy.buffer = []
