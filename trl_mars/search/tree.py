"""The search tree of one problem: nodes (one agent's code solution each) and AB-MCTS-A statistics.

Node 0 is the root (the problem itself, no score). Every other node is either a first answer (parent is the
root) or a refinement of its parent. Trees and their posteriors serialise to JSON and restore exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from trl_mars.search.posteriors import BetaPosterior, GaussianPosterior, make_posterior, posterior_from_dict

ROOT = 0


@dataclass
class Node:
    """One expansion: who wrote what from which prompt, and how the verifier judged it.

    ``score`` is 1.0 iff every test the search sees (the public tests) passes; ``pass_fraction`` is the share
    of them that pass; ``private_score`` is filled in by evaluation on held-back tests.
    """

    node_id: int
    parent_id: int | None
    depth: int
    agent: str | None = None
    prompt: list[dict[str, str]] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    completion: str = ""
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    code: str | None = None
    score: float = 0.0
    pass_fraction: float = 0.0
    feedback: dict[str, Any] = field(default_factory=dict)
    private_score: float | None = None
    step: int = -1
    children: list[int] = field(default_factory=list)

    @property
    def is_refinement(self) -> bool:
        return self.parent_id not in (None, ROOT)


@dataclass
class NodeStats:
    """AB-MCTS-A arms at one node: GEN (new child here), CONT (descend), and this node's value as a child."""

    gen: BetaPosterior | GaussianPosterior
    cont: BetaPosterior | GaussianPosterior
    as_child: BetaPosterior | GaussianPosterior
    gen_by_agent: dict[str, BetaPosterior | GaussianPosterior] = field(default_factory=dict)

    @classmethod
    def fresh(cls, dist: str) -> NodeStats:
        return cls(make_posterior(dist), make_posterior(dist), make_posterior(dist))

    def to_dict(self) -> dict:
        return {
            "gen": self.gen.to_dict(),
            "cont": self.cont.to_dict(),
            "as_child": self.as_child.to_dict(),
            "gen_by_agent": {a: p.to_dict() for a, p in self.gen_by_agent.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> NodeStats:
        return cls(
            posterior_from_dict(data["gen"]),
            posterior_from_dict(data["cont"]),
            posterior_from_dict(data["as_child"]),
            {a: posterior_from_dict(p) for a, p in data["gen_by_agent"].items()},
        )


@dataclass
class SearchTree:
    """All nodes of one problem's tree plus the posterior state the selector needs to continue it."""

    tree_id: str
    problem_id: str
    dist: str = "beta"
    nodes: list[Node] = field(default_factory=list)
    stats: dict[int, NodeStats] = field(default_factory=dict)
    agent_scores: dict[str, list[float]] = field(default_factory=dict)
    gen_count_by_depth: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes.append(Node(node_id=ROOT, parent_id=None, depth=0))
            self.stats[ROOT] = NodeStats.fresh(self.dist)

    @property
    def root(self) -> Node:
        return self.nodes[ROOT]

    @property
    def solutions(self) -> list[Node]:
        """Every node but the root, in creation order."""
        return self.nodes[1:]

    def __len__(self) -> int:
        return len(self.nodes) - 1

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root down to ``node_id``."""
        out = [node_id]
        while (parent := self.nodes[out[-1]].parent_id) is not None:
            out.append(parent)
        return out[::-1]

    def add(self, parent_id: int, agent: str, step: int, **fields: Any) -> Node:
        """Append a child of ``parent_id`` written by ``agent`` and back-propagate its score.

        GEN at the parent and the agent's arm there see the score; every ancestor above the parent updates
        CONT, and the child arm on the path, with it; the agent's tree-wide record gets it too.
        """
        parent = self.nodes[parent_id]
        node = Node(
            node_id=len(self.nodes), parent_id=parent_id, depth=parent.depth + 1, agent=agent, step=step, **fields
        )
        self.nodes.append(node)
        parent.children.append(node.node_id)
        self.stats[node.node_id] = NodeStats.fresh(self.dist)
        self.stats[node.node_id].as_child.update(node.score)
        self.backpropagate(parent_id, agent, node.score)
        return node

    def backpropagate(self, parent_id: int, agent: str, score: float) -> None:
        """Record ``score`` of a new child of ``parent_id`` by ``agent`` everywhere but in the child's own arms:
        GEN and the agent's GEN arm at the parent, the GEN count at the parent's depth, the agent's tree-wide
        record, and CONT plus the child arm of every node on the path above the parent."""
        parent = self.nodes[parent_id]
        parent_stats = self.stats[parent_id]
        parent_stats.gen.update(score)
        parent_stats.gen_by_agent.setdefault(agent, make_posterior(self.dist)).update(score)
        self.gen_count_by_depth[parent.depth] = self.gen_count_by_depth.get(parent.depth, 0) + 1
        self.agent_scores.setdefault(agent, []).append(score)
        current = parent
        while current.parent_id is not None:
            self.stats[current.parent_id].cont.update(score)
            self.stats[current.node_id].as_child.update(score)
            current = self.nodes[current.parent_id]

    def to_dict(self) -> dict:
        return {
            "tree_id": self.tree_id,
            "problem_id": self.problem_id,
            "dist": self.dist,
            "nodes": [asdict(n) for n in self.nodes],
            "stats": {str(k): s.to_dict() for k, s in self.stats.items()},
            "agent_scores": self.agent_scores,
            "gen_count_by_depth": {str(k): v for k, v in self.gen_count_by_depth.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> SearchTree:
        return cls(
            tree_id=data["tree_id"],
            problem_id=data["problem_id"],
            dist=data["dist"],
            nodes=[Node(**n) for n in data["nodes"]],
            stats={int(k): NodeStats.from_dict(s) for k, s in data["stats"].items()},
            agent_scores={a: list(v) for a, v in data["agent_scores"].items()},
            gen_count_by_depth={int(k): v for k, v in data["gen_count_by_depth"].items()},
        )
