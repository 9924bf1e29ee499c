"""ReRec's online curriculum: drop mastered queries, order the rest easy to hard, every epoch.

Difficulty of query q from the previous epoch's rollouts: d_q = mean_i (1 - NDCG@K_i) (NDCG of a completion
without a box counts as 0). Queries with d_q < tau are mastered and removed for good; the others are sorted
by ascending d_q (queries not seen yet count as d = 1 and keep their relative order). If fewer than
``min_queries`` remain, the epoch falls back to the full set, also sorted by difficulty.

An epoch has a fixed length (a whole number of generation batches), so it can end before its order is walked
through: the queries of the order it did not reach come first in the next epoch's order (before the easy-to-hard
rest), so every query is visited within its epoch or the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class OnlineCurriculum:
    """Per-query difficulty bookkeeping and the query order of the current epoch (checkpointable)."""

    def __init__(
        self, num_queries: int, tau: float = 0.1, min_queries: int = 1, shuffle_first: bool = True, seed: int = 0
    ):
        if num_queries < 1:
            raise ValueError("the curriculum needs at least one query (train_dataset is empty)")
        self.num_queries, self.tau, self.min_queries = num_queries, tau, min_queries
        if shuffle_first:
            self.order = torch.randperm(num_queries, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            self.order = list(range(num_queries))
        self.difficulty: dict[int, float] = {}
        self.mastered: set[int] = set()
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self._sums: dict[int, list[float]] = {}

    def record(self, query_indices: Sequence[int], ndcg: Sequence[float]) -> None:
        """Add this epoch's rollouts: one (query index, NDCG@K of one completion) pair per completion."""
        for q, value in zip(query_indices, ndcg, strict=True):
            total = self._sums.setdefault(int(q), [0.0, 0.0])
            total[0] += 1.0 - max(float(value), 0.0)
            total[1] += 1.0

    def end_epoch(self) -> None:
        """Turn this epoch's rollouts into difficulties, drop the mastered queries and re-order the rest; appends
        the epoch's summary (queries seen, their mean difficulty, mastered counts, next order size) to ``history``."""
        mastered_before = len(self.mastered)
        for q, (total, count) in self._sums.items():
            self.difficulty[q] = total / count
            if self.difficulty[q] < self.tau:
                self.mastered.add(q)
        carried = [q for q in self.order if q not in self._sums and q not in self.mastered]
        seen = [self.difficulty[q] for q in self._sums]
        self._sums = {}
        active = [q for q in self.order if q not in self.mastered]
        if len(active) < self.min_queries:
            active = list(range(self.num_queries))
        rest = sorted((q for q in active if q not in set(carried)), key=lambda q: self.difficulty.get(q, 1.0))
        self.order = carried + rest
        self.epoch += 1
        self.history.append(
            {
                "epoch": self.epoch,
                "queries_seen": len(seen),
                "mean_difficulty": sum(seen) / len(seen) if seen else float("nan"),
                "mastered_this_epoch": len(self.mastered) - mastered_before,
                "mastered_total": len(self.mastered),
                "next_epoch_queries": len(self.order),
            }
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_queries": self.num_queries,
            "order": list(self.order),
            "difficulty": {str(q): d for q, d in self.difficulty.items()},
            "mastered": sorted(self.mastered),
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
            "pending": {str(q): v for q, v in self._sums.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_queries"] != self.num_queries:
            raise ValueError(
                f"curriculum state is for {state['num_queries']} queries but train_dataset has {self.num_queries}"
            )
        self.order = [int(q) for q in state["order"]]
        self.difficulty = {int(q): float(d) for q, d in state["difficulty"].items()}
        self.mastered = {int(q) for q in state["mastered"]}
        self.epoch = int(state["epoch"])
        self.history = [dict(h) for h in state.get("history", [])]
        self._sums = {int(q): [float(x) for x in v] for q, v in state["pending"].items()}
