"""R-Diverse's memory bank: every question admitted to a Solver set, with its skill embedding and pseudo-label.

The bank persists across iterations (no eviction, as in the paper), feeds the MAP penalty with the embeddings of
earlier iterations, and replays stored (question, label) pairs into later Solver batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class MemoryEntry:
    question: str
    embedding: list[float]
    label: str
    iteration: int


class MemoryBank:
    """Append-only list of ``MemoryEntry``; JSON-serialisable via ``to_dict``/``from_dict``."""

    def __init__(self, entries: list[MemoryEntry] | None = None):
        self.entries: list[MemoryEntry] = list(entries or [])

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, question: str, embedding: np.ndarray | list[float], label: str, iteration: int) -> None:
        self.entries.append(MemoryEntry(question, [float(x) for x in embedding], label, int(iteration)))

    def embeddings(self, before_iteration: int | None = None) -> np.ndarray:
        """Stacked embeddings of entries from iterations ``< before_iteration`` (all when None); shape (n, dim)."""
        rows = [e.embedding for e in self.entries if before_iteration is None or e.iteration < before_iteration]
        return np.asarray(rows, dtype=np.float64) if rows else np.zeros((0, 0))

    def sample(self, n: int, rng: np.random.Generator) -> list[MemoryEntry]:
        """``n`` entries drawn uniformly with replacement (empty list for an empty bank)."""
        if not self.entries or n <= 0:
            return []
        return [self.entries[i] for i in rng.integers(0, len(self.entries), size=n)]

    def to_dict(self) -> dict:
        return {"entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, state: dict) -> MemoryBank:
        return cls([MemoryEntry(**e) for e in state["entries"]])
