"""WIST's domain tree: topic nodes with Beta posteriors over a sliding window, sampled top-down by Thompson sampling.

Levels: 0 root, 1 fixed target domains, 2..max_level-1 sub-domains, max_level leaf knowledge points. Every non-leaf
node below the root has a virtual ``unk`` child ("propose a new child here") that always draws from Beta(1, 1).
At a node, each samplable child c draws ``theta_c ~ Beta(1 + s_c, 1 + n_c - s_c)`` where s_c/n_c are the successes
and length of its last W outcomes; the argmax is taken. New children are ``pending`` until their corpus lookup
returns, then ``ready`` (has documents) or ``masked`` (none); only ready children are sampled.
A learnability outcome g in {0, 1} updates every node on a path: alpha += g, beta += 1 - g, window += [g].
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from trl_mars.selfplay.questions import parse_proposition

UNK = -1
PENDING, READY, MASKED = "pending", "ready", "masked"
LABEL_BLACKLIST = ("proposal", "proposition", "label", "unk", "no more")
_LABEL_OK_RE = re.compile(r"^[A-Za-z0-9 ,'&()/+\-:=^*<>]+$")


@dataclass
class Node:
    """A topic node. ``alpha``/``beta`` are the global Beta counts, ``window`` the last W outcomes."""

    name: str
    level: int
    parent: int | None
    children: list[int] = field(default_factory=list)
    alpha: float = 1.0
    beta: float = 1.0
    window: list[int] = field(default_factory=list)
    status: str = PENDING
    docs: list[str] = field(default_factory=list)
    cursor: int = 0
    unk_masked: bool = False


def normalize_label(label: str) -> str:
    """Lower-cased, whitespace collapsed: the key proposals are counted and de-duplicated by."""
    return " ".join(label.casefold().split())


def validate_label(label: str, max_chars: int = 100) -> bool:
    """WIST's proposal check: non-empty, <= ``max_chars``, English/math characters only (no ``.;!?[]{}``), no
    blacklisted words."""
    low = normalize_label(label)
    if not low or len(low) > max_chars or not _LABEL_OK_RE.match(label):
        return False
    return not any(bad in low for bad in LABEL_BLACKLIST)


def aggregate_proposals(
    texts: Sequence[str], existing: Sequence[str], min_count: int = 2, top_k: int = 3, max_chars: int = 100
) -> list[str]:
    """Self-consistency vote over sampled proposals: labels proposed >= ``min_count`` times (after normalisation),
    valid and not already present, the ``top_k`` most frequent (ties: first seen)."""
    taken = {normalize_label(e) for e in existing}
    labels = [parse_proposition(t) for t in texts]
    counts = Counter(normalize_label(label) for label in labels if label and validate_label(label, max_chars))
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: first seen wins ties
    return [label for label, n in ranked if n >= min_count and label not in taken][:top_k]


class DomainTree:
    """Topic tree with Beta posteriors; all state is JSON-serialisable through ``to_dict``/``from_dict``."""

    def __init__(
        self,
        domains: Sequence[str],
        max_level: int = 4,
        window: int = 5,
        expansion_caps: Sequence[int] = (4, 4, 8),
        cap_multiplier: int = 20,
    ):
        if not domains:
            raise ValueError("domains must name at least one level-1 domain")
        if max_level < 1:
            raise ValueError(f"max_level must be >= 1, got {max_level}")
        if len(expansion_caps) != max(max_level - 1, 0):
            raise ValueError(f"expansion_caps needs one cap per level 2..{max_level}, got {list(expansion_caps)}")
        self.max_level, self.window_size = max_level, window
        self.expansion_caps, self.cap_multiplier = list(expansion_caps), cap_multiplier
        self.nodes: list[Node] = [Node("root", 0, None, status=READY, unk_masked=True)]
        for domain in domains:
            self.add_child(0, domain)

    # --- structure ---------------------------------------------------------------------------------------------
    def add_child(self, parent: int, name: str) -> int:
        """Append a pending child of ``parent``; masks the parent's ``unk`` once it has cap * multiplier children."""
        node = self.nodes[parent]
        if node.level >= self.max_level:
            raise ValueError(f"node {parent} ({node.name!r}) is a leaf and cannot have children")
        self.nodes.append(Node(name, node.level + 1, parent))
        node.children.append(len(self.nodes) - 1)
        if parent != 0 and len(node.children) >= self.expansion_cap(node.level + 1) * self.cap_multiplier:
            node.unk_masked = True
        return len(self.nodes) - 1

    def expansion_cap(self, child_level: int) -> int:
        """Most children one expansion may add at ``child_level`` (WIST's ``max_nodes_nums_once``)."""
        return self.expansion_caps[child_level - 2]

    def resolve(self, node_id: int, docs: Sequence[str]) -> None:
        """A corpus lookup returned: the node becomes ready with ``docs``, or masked when there are none."""
        node = self.nodes[node_id]
        node.docs = list(docs)
        node.status = READY if docs else MASKED

    def path_names(self, node_id: int) -> list[str]:
        """Names from level 1 down to ``node_id``."""
        names = []
        while node_id:
            names.append(self.nodes[node_id].name)
            node_id = self.nodes[node_id].parent
        return names[::-1]

    def child_names(self, node_id: int) -> list[str]:
        return [self.nodes[c].name for c in self.nodes[node_id].children]

    def pending(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.status == PENDING]

    def next_document(self, node_id: int) -> str | None:
        """Round-robin over the node's documents (WIST's per-path cursor)."""
        node = self.nodes[node_id]
        if not node.docs:
            return None
        doc = node.docs[node.cursor % len(node.docs)]
        node.cursor += 1
        return doc

    # --- posteriors ----------------------------------------------------------------------------------------------
    def window_params(self, node_id: int) -> tuple[float, float]:
        """Sampling Beta parameters ``(1 + s, 1 + n - s)`` over the node's window."""
        window = self.nodes[node_id].window
        s = sum(window)
        return 1.0 + s, 1.0 + len(window) - s

    def update(self, path: Sequence[int], g: int) -> None:
        """Learnability outcome ``g`` for every node on ``path`` except the root."""
        if g not in (0, 1):
            raise ValueError(f"learnability outcome must be 0 or 1, got {g!r}")
        for node_id in path:
            if node_id == 0:
                continue
            node = self.nodes[node_id]
            node.alpha += g
            node.beta += 1 - g
            node.window = (node.window + [g])[-self.window_size :]

    def draw_child(self, node_id: int, rng: np.random.Generator, allow_unk: bool = True) -> int | None:
        """Thompson step at ``node_id``: argmax of Beta draws over ready children (+ ``unk``); None if nothing."""
        node = self.nodes[node_id]
        candidates = [c for c in node.children if self.nodes[c].status == READY]
        params = [self.window_params(c) for c in candidates]
        if allow_unk and not node.unk_masked and node.level < self.max_level:
            candidates.append(UNK)
            params.append((1.0, 1.0))
        if not candidates:
            return None
        draws = [rng.beta(a, b) for a, b in params]
        return candidates[int(np.argmax(draws))]

    def sample_path(self, rng: np.random.Generator, expand: Callable[[int], None], max_failures: int = 5) -> list[int]:
        """Descend from the root by Thompson sampling to a leaf (level ``max_level``).

        Drawing ``unk`` at a node calls ``expand(node_id)`` and resamples there (``unk`` of that node is then off
        for the rest of this call). A dead end restarts from the root; after ``max_failures`` restarts the deepest
        path reached is returned (it may end at an inner node; it always holds at least one level-1 domain if one is
        ready, else just ``[0]``).
        """
        expanded: set[int] = set()
        best: list[int] = [0]
        for _ in range(max_failures):
            path = [0]
            while self.nodes[path[-1]].level < self.max_level:
                node_id = path[-1]
                choice = self.draw_child(node_id, rng, allow_unk=node_id not in expanded)
                if choice is None:
                    break
                if choice == UNK:
                    expanded.add(node_id)
                    expand(node_id)
                    continue
                path.append(choice)
            if self.nodes[path[-1]].level == self.max_level:
                return path
            if len(path) > len(best):
                best = path
        return best

    # --- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "max_level": self.max_level,
            "window": self.window_size,
            "expansion_caps": self.expansion_caps,
            "cap_multiplier": self.cap_multiplier,
            "nodes": [asdict(n) for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, state: dict) -> DomainTree:
        tree = cls.__new__(cls)
        tree.max_level, tree.window_size = state["max_level"], state["window"]
        tree.expansion_caps, tree.cap_multiplier = list(state["expansion_caps"]), state["cap_multiplier"]
        tree.nodes = [Node(**n) for n in state["nodes"]]
        return tree
