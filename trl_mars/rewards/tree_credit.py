"""MARS² credit assignment: tree-consistent reward shaping and the path-level group advantage.

Pure functions over flat node lists (one entry per non-root node), so they are testable by hand and shared by
the trainer and the benchmarks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch


def tree_consistent_rewards(
    node_ids: Sequence[int],
    parent_ids: Sequence[int],
    rewards: Sequence[float],
    gamma: float = 0.5,
    lam: float = 0.5,
    root_id: int = 0,
) -> list[float]:
    """r̂_v = r_v + gamma (r_v - b_v), computed on raw rewards, for the nodes of ONE tree.

    With S the other children of v's parent p and mu_sib their mean raw reward:
    b_v = (1 - lam) r_p + lam mu_sib; b_v = r_p when v has no sibling; b_v = mu_sib when p is the root
    (the root has no reward); and r̂_v = r_v when neither exists (v is the root's only child).
    """
    if not len(node_ids) == len(parent_ids) == len(rewards):
        raise ValueError("node_ids, parent_ids and rewards must have the same length")
    raw = dict(zip(node_ids, map(float, rewards), strict=True))
    children: dict[int, list[int]] = defaultdict(list)
    for node, parent in zip(node_ids, parent_ids, strict=True):
        children[parent].append(node)
    shaped = []
    for node, parent in zip(node_ids, parent_ids, strict=True):
        siblings = [raw[s] for s in children[parent] if s != node]
        mu_sib = sum(siblings) / len(siblings) if siblings else None
        if parent == root_id:
            baseline = mu_sib
        elif mu_sib is None:
            baseline = raw[parent]
        else:
            baseline = (1 - lam) * raw[parent] + lam * mu_sib
        r = raw[node]
        shaped.append(r if baseline is None else r + gamma * (r - baseline))
    return shaped


def overlong_penalty(lengths: Sequence[int], max_length: int, buffer: int, factor: float = 1.0) -> list[float]:
    """DAPO soft overlong penalty: -factor * min(len - L_exp, buffer) / buffer when len > L_exp = max_length - buffer."""
    if buffer <= 0 or buffer > max_length:
        raise ValueError(f"overlong buffer must be in (0, max_length={max_length}], got {buffer}")
    expected = max_length - buffer
    return [-factor * min(n - expected, buffer) / buffer if n > expected else 0.0 for n in lengths]


def tree_group_advantages(
    tree_ids: Sequence[Hashable],
    rewards: Sequence[float],
    eps: float = 1e-9,
    scale: str = "group",
    batch_rewards: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_v = (r̂_v - mean_T) / (std + eps) over ALL nodes of v's tree T (every agent, every depth).

    ``scale`` (TRL's ``scale_rewards``): ``group``: std = std_T, the std of v's tree; ``batch``: the std of every
    reward of the round (``batch_rewards``, e.g. gathered from all processes; defaults to ``rewards``); ``none``:
    A_v = r̂_v - mean_T (no division). ``std`` is unbiased (n - 1). Returns (advantages, informative) where
    ``informative`` is False for nodes of trees whose rewards are all equal (their advantage is exactly 0), for
    optional filtering.

    >>> adv, keep = tree_group_advantages(["a", "a", "b", "b"], [1.0, 0.0, 0.0, 0.0], eps=0.0)
    >>> [round(x, 4) for x in adv.tolist()], keep.tolist()
    ([0.7071, -0.7071, 0.0, 0.0], [True, True, False, False])
    >>> [round(x, 4) for x in tree_group_advantages(["a", "a", "b", "b"], [1.0, 0.0, 0.0, 0.0], 0.0, "batch")[0].tolist()]
    [1.0, -1.0, 0.0, 0.0]
    >>> tree_group_advantages(["a", "a"], [1.0, 0.0], scale="none")[0].tolist()
    [0.5, -0.5]
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    r = torch.tensor([float(x) for x in rewards], dtype=torch.float64)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, tree in enumerate(tree_ids):
        groups[tree].append(i)
    if scale == "batch":
        pool = r if batch_rewards is None else torch.tensor([float(x) for x in batch_rewards], dtype=torch.float64)
        batch_std = pool.std() if len(pool) > 1 else torch.tensor(0.0, dtype=torch.float64)
    advantages = torch.zeros_like(r)
    informative = torch.zeros(len(r), dtype=torch.bool)
    for index in groups.values():
        idx = torch.tensor(index)
        values = r[idx]
        if len(index) < 2 or bool((values == values[0]).all()):
            continue
        centred = values - values.mean()
        if scale == "group":
            centred = centred / (values.std() + eps)
        elif scale == "batch":
            centred = centred / (batch_std + eps)
        advantages[idx] = centred
        informative[idx] = True
    return advantages.float(), informative
