"""Generation that refills finished rows: a decode loop over ``slots`` rows sharing one left-padded KV cache.

Lockstep ``generate`` keeps every row of a batch in each forward until the longest answer ends, and takes the next
batch only then. Here a row that emits EOS (or reaches ``max_new_tokens``) leaves the batch at once (its cache
rows are dropped, and the columns no remaining row needs are cut), and pending prompts take the free slots: they are
prefilled together, left-padded to the cache's length (or the cache to theirs) and joined to the batch. Each row
sees exactly its own tokens at its own positions (position = number of real tokens before it, as ``generate``
computes from the attention mask), so with greedy decoding a row's answer is the one ``generate`` gives it.

Sampling is ``backends.warp_scores`` (repetition penalty, temperature, top-k, top-p, min-p) then a draw from the
softmax (``torch.multinomial``, as ``generate`` does) or the argmax when ``temperature == 0``; EOS is masked until
``min_new_tokens``. The log-prob recorded for a token is under that same warped distribution.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from trl_mars.search.backends import SamplingConfig, warp_scores


@dataclass
class _Row:
    request: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class RefillDecoder:
    """Decode ``prompts`` (token ids) as ``sampling`` says with at most ``slots`` rows in flight;
    ``on_done(i, ids, logprobs)`` is called as soon as request ``i`` ends (``ids`` end with EOS unless the answer
    ran out of tokens)."""

    def __init__(self, model: Any, sampling: SamplingConfig, eos_id: int, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model, self.sampling, self.eos_id, self.slots = model, sampling, eos_id, slots
        self.forwards = 0  # model calls made (prefills and decode steps), for benchmarks

    @torch.no_grad()
    def run(self, prompts: Sequence[list[int]], on_done: Callable[[int, list[int], list[float]], None]) -> None:
        device = next(self.model.parameters()).device
        pending = deque(range(len(prompts)))
        rows: list[_Row] = []
        ids = torch.zeros(0, 0, dtype=torch.long, device=device)  # prompt + answer tokens per row, left-padded
        mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        cache: DynamicCache | None = None
        logits = torch.zeros(0, 0, device=device)
        while rows or pending:
            if pending and len(rows) < self.slots:
                take = [pending.popleft() for _ in range(min(self.slots - len(rows), len(pending)))]
                new_ids, new_mask = _left_pad([prompts[i] for i in take], device)
                out = self.model(
                    input_ids=new_ids, attention_mask=new_mask, position_ids=_positions(new_mask), use_cache=True,
                    logits_to_keep=1,
                )  # fmt: skip
                self.forwards += 1
                _check_cache(out.cache)
                rows += [_Row(i) for i in take]
                ids, mask, cache = _join(ids, mask, cache, new_ids, new_mask, out.cache)
                logits = (
                    torch.cat([logits, out.logits[:, -1].float()]) if logits.numel() else out.logits[:, -1].float()
                )
            chosen, logprobs = self._sample(logits, ids, mask, rows)
            done = []
            for r, (row, token, logprob) in enumerate(zip(rows, chosen.tolist(), logprobs.tolist())):
                row.tokens.append(token)
                row.logprobs.append(logprob)
                if token == self.eos_id or len(row.tokens) >= self.sampling.max_new_tokens:
                    done.append(r)
                    on_done(row.request, row.tokens, row.logprobs)
            keep = [r for r in range(len(rows)) if r not in set(done)]
            ids = torch.cat([ids, chosen[:, None]], 1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
            if not keep:
                rows, cache, ids, mask, logits = [], None, ids[:0, :0], mask[:0, :0], logits[:0]
                continue
            if done:
                rows = [rows[r] for r in keep]
                ids, mask, cache, chosen = _select(ids, mask, cache, chosen, keep)
            out = self.model(
                input_ids=chosen[:, None], attention_mask=mask, position_ids=_positions(mask)[:, -1:],
                cache=cache, use_cache=True,
            )  # fmt: skip
            self.forwards += 1
            cache, logits = out.cache, out.logits[:, -1].float()

    def _sample(self, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, rows: list[_Row]):
        s = self.sampling
        seen = (
            torch.zeros_like(logits).scatter_add_(1, ids, mask.to(logits.dtype)) > 0
            if s.repetition_penalty != 1
            else None
        )
        if s.min_new_tokens:
            early = torch.tensor([len(r.tokens) < s.min_new_tokens for r in rows], device=logits.device)
            logits = logits.clone()
            logits[early, self.eos_id] = float("-inf")
        scores = warp_scores(s, logits, seen)
        if s.temperature == 0:
            chosen = scores.argmax(-1)
        else:
            chosen = torch.multinomial(scores.softmax(-1), 1).squeeze(1)
        return chosen, F.log_softmax(scores, -1).gather(-1, chosen[:, None]).squeeze(-1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position: the number of real tokens before it (0 on padding), as ``generate`` computes it."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _left_pad(prompts: Sequence[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p) :] = 1
    return ids, mask


class RefillUnsupported(ValueError):
    """The model's cache is not one whose rows can be dropped and joined (raised at the first prefill, before any
    token is sampled)."""


def _check_cache(cache: Any) -> None:
    if type(cache) is not DynamicCache or not all(type(layer) is DynamicLayer for layer in cache.layers):
        raise RefillUnsupported(
            f"refill generation needs a plain DynamicCache of DynamicLayers, the model made a {type(cache).__name__} "
            "(sliding-window, recurrent or custom layers); use batching='lockstep' for this model"
        )


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)


def _join(ids, mask, cache, new_ids, new_mask, new_cache):
    """The running batch with the prefilled rows appended below it, both left-padded to the longer of the two."""
    if cache is None or not ids.numel():
        return new_ids, new_mask, new_cache
    width = max(ids.shape[1], new_ids.shape[1])
    ids = torch.cat([_pad_left(ids, width, 1), _pad_left(new_ids, width, 1)])
    mask = torch.cat([_pad_left(mask, width, 1), _pad_left(new_mask, width, 1)])
    for layer, new in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([_pad_left(layer.keys, width, 2), _pad_left(new.keys, width, 2)])
        layer.values = torch.cat([_pad_left(layer.values, width, 2), _pad_left(new.values, width, 2)])
    return ids, mask, cache


def _select(ids, mask, cache, chosen, keep: list[int]):
    """The rows ``keep`` of the batch, without the leading columns that are padding in all of them."""
    index = torch.tensor(keep, dtype=torch.long, device=ids.device)
    ids, mask, chosen = ids[index], mask[index], chosen[index]
    start = int((mask.cumsum(1) == 0).sum(1).min())  # padding columns every kept row has on its left
    ids, mask = ids[:, start:], mask[:, start:]
    for layer in cache.layers:
        # the cache lacks the column of the token just chosen (it enters with the next forward)
        layer.keys = layer.keys[index, :, start:]
        layer.values = layer.values[index, :, start:]
    return ids, mask, cache, chosen
