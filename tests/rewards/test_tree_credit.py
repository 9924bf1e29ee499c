"""Tree-consistent shaping and the path-level group advantage on hand-built trees."""

import pytest
import torch

from trl_mars.rewards.tree_credit import overlong_penalty, tree_consistent_rewards, tree_group_advantages


def test_root_children_use_the_leave_one_out_sibling_mean():
    # root -> 1 (r=1), 2 (r=0), 3 (r=0)
    shaped = tree_consistent_rewards([1, 2, 3], [0, 0, 0], [1.0, 0.0, 0.0], gamma=0.5, lam=0.5)
    # node 1: b = mean(0, 0) = 0 -> 1 + 0.5 * 1 = 1.5; node 2: b = mean(1, 0) = 0.5 -> 0 - 0.25
    assert shaped == pytest.approx([1.5, -0.25, -0.25])


def test_only_child_of_the_root_is_not_shaped():
    assert tree_consistent_rewards([1], [0], [1.0]) == [1.0]


def test_refinements_mix_parent_and_siblings():
    # root -> 1 (r=0) -> {2 (r=1), 3 (r=0)};  1 -> ... ; and 2 -> 4 (r=1) as an only child
    nodes, parents, rewards = [1, 2, 3, 4], [0, 1, 1, 2], [0.0, 1.0, 0.0, 1.0]
    shaped = tree_consistent_rewards(nodes, parents, rewards, gamma=0.5, lam=0.5)
    # node 1: only child of the root -> 0
    # node 2: b = 0.5 * r1 + 0.5 * r3 = 0 -> 1 + 0.5 * 1 = 1.5
    # node 3: b = 0.5 * 0 + 0.5 * 1 = 0.5 -> 0 - 0.25 = -0.25
    # node 4: only child -> b = r2 = 1 -> 1 + 0 = 1 (computed on RAW parent reward, not shaped 1.5)
    assert shaped == pytest.approx([0.0, 1.5, -0.25, 1.0])
    lam0 = tree_consistent_rewards(nodes, parents, rewards, gamma=1.0, lam=0.0)
    assert lam0 == pytest.approx([0.0, 2.0, 0.0, 1.0])  # b = parent reward only
    with pytest.raises(ValueError, match="same length"):
        tree_consistent_rewards([1], [0, 0], [1.0])


def test_overlong_penalty():
    assert overlong_penalty([10, 90, 95, 120], max_length=100, buffer=20, factor=1.0) == pytest.approx(
        [0.0, -0.5, -0.75, -1.0]
    )
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty([1], max_length=10, buffer=0)


def test_group_advantage_normalises_over_whole_trees_with_unbiased_std():
    trees = ["a", "a", "a", "b", "b", "c", "c"]
    rewards = [1.5, -0.25, 0.0, 1.0, 1.0, 0.0, 1.0]
    adv, informative = tree_group_advantages(trees, rewards, eps=0.0)
    a = torch.tensor([1.5, -0.25, 0.0])
    expected_a = (a - a.mean()) / a.std(unbiased=True)
    assert torch.allclose(adv[:3], expected_a.float())
    assert adv[3:5].tolist() == [0.0, 0.0]  # all-equal tree: zero advantage ...
    assert informative.tolist() == [True, True, True, False, False, True, True]  # ... and flagged
    c = 1 / (torch.tensor([0.0, 1.0]).std())
    assert adv[5:].tolist() == pytest.approx([-0.5 * c.item(), 0.5 * c.item()])
    single, flag = tree_group_advantages(["x"], [1.0])
    assert single.tolist() == [0.0] and flag.tolist() == [False]


def test_grouping_is_by_tree_id_not_order():
    shuffled, _ = tree_group_advantages(["a", "b", "a", "b"], [1.0, 0.0, 0.0, 1.0])
    assert shuffled[0] > 0 > shuffled[2] and shuffled[3] > 0 > shuffled[1]
