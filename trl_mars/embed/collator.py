"""Batches for TRACE training from sentence-transformers-style rows.

Columns: ``query`` (str), ``query_target`` (CoT text, empty for a simple query; optional, default empty),
``positive`` (str) and optional hard negatives ``negative`` / ``negative_1`` ... ``negative_n``.
Queries become ``[prompt; CoT; <|emb|>]`` with labels on ``CoT; <|emb|>``; candidates ``[prompt; <|emb|>]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from trl_mars.embed.prompts import PromptParts, prompt_ids
from trl_mars.losses.trace import target_labels

REQUIRED_COLUMNS = ("query", "positive")
IMAGE_COLUMNS = ("image", "images", "query_image", "positive_image")


def negative_columns(columns: Iterable[str]) -> list[str]:
    """Hard-negative columns in sentence-transformers naming: ``negative`` and ``negative_<suffix>``, sorted."""
    return sorted(c for c in columns if c == "negative" or c.startswith("negative_"))


def check_columns(columns: Sequence[str], split: str = "train") -> None:
    """Raise a clear error for a dataset the trainer cannot use (before any compute is spent)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"the {split} dataset lacks column(s) {missing}; TRACE expects 'query', 'positive', optional "
            f"'query_target' (CoT, empty for simple queries) and 'negative'/'negative_*' (got {list(columns)})"
        )
    images = [c for c in IMAGE_COLUMNS if c in columns]
    if images:
        raise NotImplementedError(f"image columns {images} are not supported yet: TRACE here is text-only")


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask


@dataclass
class TraceCollator:
    tokenizer: PreTrainedTokenizerBase
    emb_token_id: int
    query_parts: PromptParts
    candidate_parts: PromptParts
    max_length: int
    max_target_length: int

    def target_ids(self, cot: str) -> list[int]:
        """``CoT`` tokens (truncated to ``max_target_length - 1``) followed by ``<|emb|>``."""
        cot_ids = self.tokenizer(cot, add_special_tokens=False)["input_ids"] if cot else []
        return [*cot_ids[: self.max_target_length - 1], self.emb_token_id]

    def candidate_ids(self, text: str) -> list[int]:
        return [*prompt_ids(self.tokenizer, self.candidate_parts, text, self.max_length - 1), self.emb_token_id]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        queries, target_lengths = [], []
        for ex in examples:
            target = self.target_ids(ex.get("query_target") or "")
            queries.append(
                [*prompt_ids(self.tokenizer, self.query_parts, ex["query"], self.max_length - len(target)), *target]
            )
            target_lengths.append(len(target))
        q_ids, q_mask = left_pad(queries, pad)
        c_ids, c_mask = left_pad([self.candidate_ids(ex["positive"]) for ex in examples], pad)
        batch = {
            "query_input_ids": q_ids,
            "query_attention_mask": q_mask,
            "query_labels": target_labels(q_ids, torch.tensor(target_lengths)),
            "query_reasons": torch.tensor([length > 1 for length in target_lengths]),
            "candidate_input_ids": c_ids,
            "candidate_attention_mask": c_mask,
        }
        negatives = [ex[c] for ex in examples for c in negative_columns(ex)]
        if negatives:
            batch["negative_input_ids"], batch["negative_attention_mask"] = left_pad(
                [self.candidate_ids(text) for text in negatives], pad
            )
        return batch
