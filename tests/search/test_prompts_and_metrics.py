"""Prompt construction, final-answer selection with its tie-breaks, and the tree metrics."""

import pytest

from trl_mars.search.metrics import agent_shares, select_final, tree_metrics
from trl_mars.search.prompts import NO_CODE_FEEDBACK, PromptConfig, first_prompt, refinement_prompt
from trl_mars.search.tree import ROOT, Node, SearchTree

QUESTION = "Write a Python function `add_3` that returns x plus 3."
FEEDBACK = {"summary": "1 of 2 tests passed.", "detailed": "Test `assert add_3(1) == 4` failed: got 5."}


def parent(code="def add_3(x):\n    return x + 4\n") -> Node:
    return Node(node_id=1, parent_id=ROOT, depth=1, agent="a", code=code, feedback=FEEDBACK)


def test_first_prompt_sees_only_the_problem():
    assert first_prompt(QUESTION, PromptConfig()) == [{"role": "user", "content": QUESTION}]
    with_system = first_prompt(QUESTION, PromptConfig(system_prompt="Be brief."))
    assert with_system[0] == {"role": "system", "content": "Be brief."} and with_system[1]["content"] == QUESTION


def test_refinement_prompt_has_problem_code_and_feedback():
    text = refinement_prompt(QUESTION, parent(), PromptConfig())[0]["content"]
    assert text.startswith(QUESTION)
    assert "```python\ndef add_3(x):\n    return x + 4\n```" in text
    assert FEEDBACK["summary"] in text and FEEDBACK["detailed"] not in text
    detailed = refinement_prompt(QUESTION, parent(), PromptConfig(feedback="detailed"))[0]["content"]
    assert FEEDBACK["detailed"] in detailed
    authors = refinement_prompt(QUESTION, parent(), PromptConfig(include_problem=False))[0]["content"]
    assert QUESTION not in authors and "return x + 4" in authors


def test_refinement_of_an_answer_without_code():
    text = refinement_prompt(QUESTION, parent(code=None), PromptConfig())[0]["content"]
    assert NO_CODE_FEEDBACK in text and "Your previous code" not in text


def test_feedback_is_truncated():
    long = parent()
    long.feedback = {"summary": "x" * 500}
    text = refinement_prompt(QUESTION, long, PromptConfig(max_feedback_chars=100))[0]["content"]
    assert "x" * 85 in text and "x" * 86 not in text and "(truncated)" in text


def graded_tree() -> SearchTree:
    tree = SearchTree("t", "p")
    a = tree.add(ROOT, "qwen", 0, score=0.0, pass_fraction=0.5, code="a")  # node 1
    tree.add(ROOT, "llama", 0, score=1.0, pass_fraction=1.0, code="b")  # node 2: passes public
    tree.add(a.node_id, "llama", 1, score=1.0, pass_fraction=1.0, code="c")  # node 3: refinement, passes public
    tree.add(ROOT, "qwen", 2, score=0.0, pass_fraction=0.0, code="d")  # node 4
    for node, private in zip(tree.solutions, (0.0, 0.0, 1.0, 1.0), strict=True):
        node.private_score = private
    return tree


def test_select_final_tie_breaks():
    tree = graded_tree()
    assert select_final(tree).node_id == 3  # latest expanded among the best public score (authors' code)
    assert select_final(tree, "earliest").node_id == 2
    assert select_final(tree, "shallowest").node_id == 2
    rm = {2: 0.9, 3: 0.1}
    assert select_final(tree, reward_model=lambda q, n: rm.get(n.node_id, 0.0)).node_id == 2
    with pytest.raises(ValueError, match="tie_break"):
        select_final(tree, "random")


def test_tree_metrics():
    m = tree_metrics(graded_tree())
    assert m["pass@1"] == pytest.approx(1 / 3)  # root children 1, 2, 4 have private 0, 0, 1
    assert m["pass@1(mcts)"] == 1.0 and m["pass@n"] == 1.0
    assert m["depth"] == 2.0 and m["width"] == 3.0
    assert m["refinement_success"] == 1.0  # node 3 passes where its parent failed
    earliest = tree_metrics(graded_tree(), tie_break="earliest")
    assert earliest["pass@1(mcts)"] == 0.0  # node 2 passes public tests but fails the private ones
    assert agent_shares([graded_tree()]) == {"llama": 0.5, "qwen": 0.5}
    ungraded = graded_tree()
    ungraded.nodes[1].private_score = None
    with pytest.raises(ValueError, match="graded"):
        tree_metrics(ungraded)
