"""MARS²-T+ reward-model guidance: the reward model picks the submitted node among those with the best public
score (not only a last tie-break after the pass fraction), from a callable or a sequence-classification model."""

import pytest
import torch

from trl_mars.search import SequenceClassifierRewardModel, resolve_reward_model
from trl_mars.search.metrics import select_final, tree_metrics
from trl_mars.search.tree import ROOT, SearchTree

QUESTION = "Write a Python function `add_3` that returns x plus 3."


def unsolved_tree() -> SearchTree:
    """No node passes every public test; pass fractions differ, so the old key (score, pass fraction, RM) never
    let the reward model choose."""
    tree = SearchTree("t", "p")
    tree.add(ROOT, "qwen", 0, score=0.0, pass_fraction=0.5, code="a", completion="```python\na\n```")  # node 1
    tree.add(ROOT, "llama", 0, score=0.0, pass_fraction=0.25, code="b", completion="```python\nb\n```")  # node 2
    tree.add(1, "llama", 1, score=0.0, pass_fraction=0.0, code="c", completion="```python\nc\n```")  # node 3
    for node, private in zip(tree.solutions, (0.0, 1.0, 0.0), strict=True):
        node.private_score = private
    return tree


def test_reward_model_selects_among_the_best_public_score():
    tree = unsolved_tree()
    assert select_final(tree).node_id == 1  # no reward model: highest pass fraction
    prefers_b = {1: 0.1, 2: 0.9, 3: 0.5}
    assert select_final(tree, reward_model=lambda q, n: prefers_b[n.node_id]).node_id == 2
    m = tree_metrics(tree, reward_model=lambda q, n: prefers_b[n.node_id])
    assert m["pass@1(mcts)"] == 1.0 and tree_metrics(tree)["pass@1(mcts)"] == 0.0
    # equal reward-model scores fall to the tie-break
    assert select_final(tree, "earliest", reward_model=lambda q, n: 0.0).node_id == 1
    assert select_final(tree, "latest", reward_model=lambda q, n: 0.0).node_id == 3


def test_only_nodes_with_the_best_public_score_are_candidates():
    tree = unsolved_tree()
    tree.add(ROOT, "qwen", 2, score=1.0, pass_fraction=1.0, code="d")  # node 4
    tree.add(ROOT, "qwen", 3, score=1.0, pass_fraction=1.0, code="e")  # node 5
    asked = []

    def rm(question, node):
        asked.append((question, node.node_id))
        return -node.node_id  # prefers the earliest, and would prefer node 1 above all

    assert select_final(tree, reward_model=rm, question=QUESTION).node_id == 4
    assert asked == [(QUESTION, 4), (QUESTION, 5)]


def test_sequence_classifier_reward_model_scores_and_selects(tmp_path):
    from trl_mars.testing import tiny_model_path

    path = tiny_model_path("qwen2", cache_dir=tmp_path, head="reward")
    rm = resolve_reward_model(path)
    assert isinstance(rm, SequenceClassifierRewardModel)
    tree = unsolved_tree()
    for node in tree.solutions:
        node.score = 1.0
    # the logit of a forward pass on the chat [question, answer], computed here independently
    expected = {}
    for node in tree.solutions:
        chat = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": node.completion}]
        ids = rm.tokenizer(rm.tokenizer.apply_chat_template(chat, tokenize=False), return_tensors="pt").input_ids
        with torch.no_grad():
            expected[node.node_id] = float(rm.model(ids).logits[0, 0])
        assert rm(QUESTION, node) == pytest.approx(expected[node.node_id], abs=1e-6)
    assert len(set(expected.values())) == 3
    assert select_final(tree, reward_model=rm, question=QUESTION).node_id == max(expected, key=expected.get)


def test_reward_model_needs_one_output(tmp_path):
    from trl_mars.testing import tiny_model_path

    path = tiny_model_path("qwen2", cache_dir=tmp_path, head="reward", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=1"):
        resolve_reward_model(path)
    with pytest.raises(TypeError, match="reward_model"):
        resolve_reward_model(3)
