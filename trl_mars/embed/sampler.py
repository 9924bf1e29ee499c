"""Batches without in-batch false negatives for TRACE training (sentence-transformers' ``NoDuplicatesBatchSampler``).

In-batch InfoNCE scores every other row's candidates as negatives of a query. When two rows share a candidate text
(the same positive, or one row's hard negative being another row's positive), a query's own positive is also
scored as one of its negatives. ``NoDuplicatesBatchSampler`` builds each *global* batch (``batch_size`` rows on
each of ``num_processes`` processes, the batch InfoNCE sees after gathering) from a seeded shuffle, deferring a row
whose candidate texts already occur in the batch to a later batch. It yields the per-process batches in order,
which is how ``accelerate`` hands them out (process ``i`` takes batch ``i`` of every ``num_processes``). A global
batch that cannot be filled (too few distinct candidates left) is split as evenly as possible; one with fewer rows
than processes is dropped (those rows come back in the next epoch's shuffle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

BATCH_SAMPLERS = ("no_duplicates", "random")


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Per-process batches of ``batch_size`` rows; within a global batch no two rows share a key.

    ``keys[i]`` is the set of candidate texts of row ``i``. The shuffle depends on ``seed`` and the epoch
    (``epoch_fn()``, read when an epoch's iteration starts), so every process builds the same batches.

    >>> sampler = NoDuplicatesBatchSampler([{"a"}, {"a"}, {"b"}, {"c"}], batch_size=2)
    >>> batches = list(sampler)
    >>> [b for b in batches if {0, 1} <= set(b)]  # rows 0 and 1 share "a": never in one batch
    []
    >>> sorted(i for b in batches for i in b)
    [0, 1, 2, 3]
    """

    def __init__(
        self,
        keys: Sequence[frozenset[str] | set[str]],
        batch_size: int,
        num_processes: int = 1,
        drop_last: bool = False,
        seed: int = 0,
        epoch_fn: Callable[[], int] | None = None,
    ):
        if batch_size < 1 or num_processes < 1:
            raise ValueError(f"batch_size and num_processes must be >= 1, got {batch_size} and {num_processes}")
        self.keys = [frozenset(k) for k in keys]
        # not named ``batch_size``: accelerate then treats the batches as variable-length (no re-padding)
        self.rows_per_process, self.num_processes = batch_size, num_processes
        self.drop_last, self.seed = drop_last, seed
        self.epoch_fn = epoch_fn or (lambda: 0)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches (``batch_size * num_processes`` rows, the last one possibly shorter)."""
        size = self.rows_per_process * self.num_processes
        generator = torch.Generator().manual_seed(self.seed + epoch)
        remaining = torch.randperm(len(self.keys), generator=generator).tolist()
        batches = []
        while remaining:
            batch, seen, deferred = [], set(), []
            for position, row in enumerate(remaining):
                if len(batch) == size:
                    deferred += remaining[position:]
                    break
                if seen & self.keys[row]:
                    deferred.append(row)
                    continue
                batch.append(row)
                seen |= self.keys[row]
            if len(batch) < size and self.drop_last:
                break
            batches.append(batch)
            remaining = deferred
        return batches

    def _epoch_batches(self) -> list[list[int]]:
        out = []
        for batch in self.global_batches(self.epoch_fn()):
            if len(batch) >= self.num_processes:
                out += [chunk.tolist() for chunk in torch.tensor(batch).tensor_split(self.num_processes)]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._epoch_batches()

    def __len__(self) -> int:
        return len(self._epoch_batches())
