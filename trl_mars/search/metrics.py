"""Final-answer selection (MARS²-T+) and the papers' metrics: Pass@1, Pass@1(MCTS), Pass@N.

- Pass@1: mean private score of the first answers (root children): one unconditioned sample.
- Pass@1(MCTS): private score of the node submitted among those with the best public score (``select_final``:
  pass fraction then a tie-break, or a reward model's choice with MARS²-T+ guidance).
- Pass@N: 1 if any node of the tree passes the private tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from trl_mars.search.reward_model import RewardModel
from trl_mars.search.tree import ROOT, Node, SearchTree

TieBreak = Literal["latest", "earliest", "shallowest"]


def select_final(
    tree: SearchTree,
    tie_break: TieBreak = "latest",
    reward_model: RewardModel | None = None,
    question: str = "",
) -> Node:
    """The answer to submit, among the nodes with the best public score (``score``). Without a reward model: the
    highest pass fraction, then ``tie_break``. With one (MARS²-T+ reward-model guidance): the highest
    ``reward_model(question, node)``, then ``tie_break``; only those candidates are scored. ``tie_break``:
    ``latest`` expanded (authors' code), ``earliest``, or ``shallowest`` (then earliest)."""
    if not tree.solutions:
        raise ValueError(f"tree {tree.tree_id} has no node to select")
    tie = {
        "latest": lambda n: n.node_id,
        "earliest": lambda n: -n.node_id,
        "shallowest": lambda n: (-n.depth, -n.node_id),
    }
    if tie_break not in tie:
        raise ValueError(f"tie_break must be one of {sorted(tie)}, got {tie_break!r}")
    best = max(n.score for n in tree.solutions)
    candidates = [n for n in tree.solutions if n.score == best]
    if reward_model is None:
        return max(candidates, key=lambda n: (n.pass_fraction, tie[tie_break](n)))
    scores = {n.node_id: float(reward_model(question, n)) for n in candidates}
    return max(candidates, key=lambda n: (scores[n.node_id], tie[tie_break](n)))


def tree_metrics(
    tree: SearchTree, tie_break: TieBreak = "latest", reward_model: RewardModel | None = None, question: str = ""
) -> dict[str, float]:
    """Pass@1, Pass@1(MCTS) (the node ``select_final`` submits, with the reward model if given), Pass@N and shape
    statistics of one graded tree."""
    nodes = tree.solutions
    if any(n.private_score is None for n in nodes):
        raise ValueError(f"tree {tree.tree_id} is not graded; call TreeSearch.grade first")
    first = [n for n in nodes if n.parent_id == ROOT]
    refinements = [n for n in nodes if n.is_refinement]
    return {
        "pass@1": sum(n.private_score for n in first) / len(first),
        "pass@1(mcts)": float(select_final(tree, tie_break, reward_model, question).private_score),
        "pass@n": float(any(n.private_score >= 1.0 for n in nodes)),
        "public_pass@n": float(any(n.score >= 1.0 for n in nodes)),
        "depth": float(max(n.depth for n in nodes)),
        "width": float(len(first)),
        "refinement_success": (
            sum(n.score >= 1.0 and tree.nodes[n.parent_id].score < 1.0 for n in refinements) / len(refinements)
            if refinements
            else 0.0
        ),
    }


def mean_metrics(per_tree: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average each metric over trees."""
    if not per_tree:
        return {}
    return {k: sum(m[k] for m in per_tree) / len(per_tree) for k in per_tree[0]}


def agent_shares(trees: Sequence[SearchTree]) -> dict[str, float]:
    """Share of all nodes written by each agent."""
    counts: dict[str, int] = {}
    for tree in trees:
        for n in tree.solutions:
            counts[n.agent] = counts.get(n.agent, 0) + 1
    total = sum(counts.values()) or 1
    return {a: c / total for a, c in sorted(counts.items())}
