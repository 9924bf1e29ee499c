"""AB-MCTS-A expansion choice with Thompson sampling, plus MARS²-T+ depth-guided exploration.

Walk from the root: at each node draw GEN (a new child here, wider) against CONT (descend, deeper); on CONT
draw which child from the per-child posteriors; on GEN (or at a leaf) stop. The agent is the argmax of one
Thompson draw per agent from a posterior over *all* its scores in this tree. ``order`` picks whether the
node is chosen first (authors' code) or the agent first (paper; the GEN arm is then the agent's own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from trl_mars.search.posteriors import make_posterior
from trl_mars.search.tree import SearchTree

Order = Literal["node_then_agent", "agent_then_node"]


@dataclass(frozen=True)
class DepthSchedule:
    """MARS²-T+ GEN weight w(d, c) = gamma(d)^c with gamma(d) = max(gamma_min, gamma0 - decay * d).

    ``c`` is the number of GEN expansions already made from nodes at depth ``d`` of this tree; gamma is
    about 0.98 near the root and shrinks with depth, so repeated widening is discouraged and the search
    refines deeper instead.
    """

    gamma0: float = 0.98
    decay: float = 0.02
    gamma_min: float = 0.8

    def gamma(self, depth: int) -> float:
        return max(self.gamma_min, self.gamma0 - self.decay * depth)

    def weight(self, depth: int, count: int) -> float:
        return self.gamma(depth) ** count


def weighted(value: float, weight: float) -> float:
    """Down-weight a Thompson draw: ``w * x`` for x >= 0 and ``x / w`` for x < 0 (Gaussian draws can be < 0)."""
    return value * weight if value >= 0 else value / weight


def draw_agent(tree: SearchTree, agents: Sequence[str], rng: np.random.Generator) -> str:
    """Thompson draw per agent from prior + every score it produced in this tree; the highest draw wins."""
    draws = []
    for agent in agents:
        posterior = make_posterior(tree.dist)
        for score in tree.agent_scores.get(agent, ()):
            posterior.update(score)
        draws.append(posterior.sample(rng))
    return agents[int(np.argmax(draws))]


def draw_parent(
    tree: SearchTree,
    rng: np.random.Generator,
    agent: str | None = None,
    depth_schedule: DepthSchedule | None = None,
    max_depth: int | None = None,
) -> int:
    """Walk down by GEN/CONT draws and return the node to expand (the root while it has no child).

    With ``agent`` given, GEN at each node uses that agent's own arm there (agent-then-node order).
    With ``depth_schedule``, GEN draws are down-weighted by the T+ depth weight. Nodes at depth
    ``max_depth`` get no children (``max_depth=1``: GEN at the root only, i.e. plain parallel sampling).
    """
    node = tree.root
    while node.children and (max_depth is None or node.depth + 1 < max_depth):
        stats = tree.stats[node.node_id]
        gen_arm = stats.gen if agent is None else stats.gen_by_agent.get(agent) or make_posterior(tree.dist)
        gen = gen_arm.sample(rng)
        if depth_schedule is not None:
            gen = weighted(gen, depth_schedule.weight(node.depth, tree.gen_count_by_depth.get(node.depth, 0)))
        cont = stats.cont.sample(rng)  # with no back-propagated score yet this is a draw from the prior
        if gen >= cont:
            return node.node_id
        child_draws = [tree.stats[c].as_child.sample(rng) for c in node.children]
        node = tree.nodes[node.children[int(np.argmax(child_draws))]]
    return node.node_id


def select_expansion(
    tree: SearchTree,
    agents: Sequence[str],
    rng: np.random.Generator,
    order: Order = "node_then_agent",
    depth_schedule: DepthSchedule | None = None,
    max_depth: int | None = None,
) -> tuple[int, str]:
    """(parent node id, agent) of the next expansion of ``tree``."""
    if not agents:
        raise ValueError("select_expansion needs at least one agent")
    if order == "agent_then_node":
        agent = draw_agent(tree, agents, rng)
        return draw_parent(tree, rng, agent, depth_schedule, max_depth), agent
    if order == "node_then_agent":
        return draw_parent(tree, rng, None, depth_schedule, max_depth), draw_agent(tree, agents, rng)
    raise ValueError(f"order must be 'node_then_agent' or 'agent_then_node', got {order!r}")
