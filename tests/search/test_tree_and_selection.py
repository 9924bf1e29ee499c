"""Tree back-propagation, AB-MCTS-A selection on hand-built trees, and the T+ depth weights."""

import json

import numpy as np
import pytest

from trl_mars.search.selection import DepthSchedule, draw_agent, draw_parent, select_expansion, weighted
from trl_mars.search.tree import ROOT, SearchTree


def chain_tree() -> SearchTree:
    tree = SearchTree("t", "p")
    a = tree.add(ROOT, "qwen", step=0, score=0.0)
    tree.add(a.node_id, "llama", step=1, score=1.0)
    return tree


def test_backpropagation_updates_the_right_arms():
    tree = chain_tree()
    root, a = tree.stats[0], tree.stats[1]
    assert (root.gen.n, root.gen.a) == (1, 0.5)  # A's score 0 at the root's GEN arm
    assert (root.cont.n, root.cont.a) == (1, 1.5)  # B's score 1 reached the root through CONT
    assert (a.gen.n, a.gen.a) == (1, 1.5)  # B generated from A
    assert (a.as_child.n, a.as_child.a) == (2, 1.5)  # seeded with A's 0, then B's 1 back-propagated
    assert a.gen_by_agent["llama"].n == 1 and "qwen" not in a.gen_by_agent
    assert tree.agent_scores == {"qwen": [0.0], "llama": [1.0]}
    assert tree.gen_count_by_depth == {0: 1, 1: 1}
    assert tree.path(2) == [0, 1, 2] and tree.nodes[2].is_refinement and not tree.nodes[1].is_refinement


def test_tree_roundtrips_json_exactly():
    tree = chain_tree()
    data = json.loads(json.dumps(tree.to_dict()))
    again = SearchTree.from_dict(data)
    assert again.to_dict() == tree.to_dict()
    rngs = np.random.default_rng(5), np.random.default_rng(5)
    assert select_expansion(again, ["qwen", "llama"], rngs[0]) == select_expansion(tree, ["qwen", "llama"], rngs[1])


def test_empty_tree_expands_the_root():
    assert draw_parent(SearchTree("t", "p"), np.random.default_rng(0)) == ROOT


def skewed_tree(children_good: bool) -> SearchTree:
    """Root with a failing child A and a passing child B; many back-propagated scores make the arms sharp."""
    tree = SearchTree("t", "p")
    a = tree.add(ROOT, "x", 0, score=0.0)
    b = tree.add(ROOT, "x", 0, score=1.0)
    for _ in range(30):
        tree.stats[ROOT].gen.update(0.0 if children_good else 1.0)
        tree.stats[ROOT].cont.update(1.0 if children_good else 0.0)
        tree.stats[a.node_id].as_child.update(0.0)
        tree.stats[b.node_id].as_child.update(1.0)
    return tree


def test_cont_descends_into_the_best_child_and_gen_widens():
    deep = skewed_tree(children_good=True)
    assert {draw_parent(deep, np.random.default_rng(s)) for s in range(50)} == {2}
    wide = skewed_tree(children_good=False)
    assert {draw_parent(wide, np.random.default_rng(s)) for s in range(50)} == {ROOT}


def test_agent_draw_follows_tree_wide_scores():
    tree = SearchTree("t", "p")
    for i in range(12):
        tree.add(ROOT, "good" if i % 2 else "bad", i, score=float(i % 2))
    picks = [draw_agent(tree, ["bad", "good"], np.random.default_rng(s)) for s in range(100)]
    assert picks.count("good") >= 95
    fresh = [draw_agent(SearchTree("t", "p"), ["a", "b"], np.random.default_rng(s)) for s in range(400)]
    assert 150 < fresh.count("a") < 250  # equal priors: a fair draw


def test_agent_then_node_uses_the_agents_own_gen_arm():
    tree = skewed_tree(children_good=True)  # shared GEN arm says: don't widen
    for _ in range(60):
        tree.stats[ROOT].gen_by_agent.setdefault("w", type(tree.stats[ROOT].gen)()).update(1.0)
    own = [draw_parent(tree, np.random.default_rng(s), agent="w") for s in range(200)]
    shared = [draw_parent(tree, np.random.default_rng(s)) for s in range(200)]
    assert shared.count(ROOT) == 0 and own.count(ROOT) > 60
    unseen = [draw_parent(tree, np.random.default_rng(s), agent="new") for s in range(200)]
    assert 0 < unseen.count(ROOT) < own.count(ROOT)  # an agent without history widens from the prior
    with pytest.raises(ValueError, match="order"):
        select_expansion(tree, ["w"], np.random.default_rng(0), order="random")


def test_max_depth_one_is_gen_only():
    tree = skewed_tree(children_good=True)
    assert {draw_parent(tree, np.random.default_rng(s), max_depth=1) for s in range(20)} == {ROOT}


def test_depth_schedule_weights():
    s = DepthSchedule(gamma0=0.98, decay=0.02, gamma_min=0.9)
    assert s.gamma(0) == 0.98 and s.gamma(2) == pytest.approx(0.94) and s.gamma(10) == 0.9
    assert s.weight(2, 3) == pytest.approx(0.94**3) and s.weight(1, 0) == 1.0
    assert weighted(0.5, 0.5) == 0.25 and weighted(-0.5, 0.5) == -1.0


def test_tplus_schedule_shifts_choices_deeper():
    tree = SearchTree("t", "p")
    first = tree.add(ROOT, "x", 0, score=0.0)
    for i in range(6):
        tree.add(ROOT, "x", i, score=0.0)
    tree.add(first.node_id, "x", 7, score=0.0)
    strong = DepthSchedule(gamma0=0.7, decay=0.0, gamma_min=0.7)
    plain = [draw_parent(tree, np.random.default_rng(s)) == ROOT for s in range(300)]
    tplus = [draw_parent(tree, np.random.default_rng(s), depth_schedule=strong) == ROOT for s in range(300)]
    assert sum(tplus) < sum(plain) - 30
