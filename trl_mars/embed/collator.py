"""Batches for TRACE training from sentence-transformers-style rows.

Columns: ``query`` (str), ``query_target`` (CoT text, empty for a simple query; optional, default empty),
``positive`` (str) and optional hard negatives ``negative`` / ``negative_1`` ... ``negative_n``.
Queries become ``[prompt; CoT; <|emb|>]`` with labels on ``CoT; <|emb|>``; candidates ``[prompt; <|emb|>]``.

Images (vision-language models): optional ``query_image``, ``positive_image`` and ``<negative column>_image``
(e.g. ``negative_1_image``), each a PIL image, an image path or None per row. A row's item is text, image, or
text and image; an empty text with an image is an image-only item. Each group (``query``, ``candidate``,
``negative``) with images gets ``{group}_pixel_values``, the model family's per-image tensors (Qwen2-VL:
``{group}_image_grid_thw``, ``{group}_mm_token_type_ids``) and ``{group}_num_patches`` (rows of ``pixel_values``
per item; see ``trl_mars.embed.vision``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from trl_mars.embed.prompts import PromptParts, prompt_ids
from trl_mars.embed.vision import ImageBatch, VisionSpec, batch_vision_inputs, check_image_tokens
from trl_mars.losses.trace import target_labels

REQUIRED_COLUMNS = ("query", "positive")
IMAGE_SUFFIX = "_image"
SFT_IMAGE_COLUMNS = ("image", "images")


def negative_columns(columns: Iterable[str]) -> list[str]:
    """Hard-negative text columns in sentence-transformers naming: ``negative`` and ``negative_<suffix>`` (not the
    ``*_image`` columns), sorted."""
    return sorted(
        c for c in columns if (c == "negative" or c.startswith("negative_")) and not c.endswith(IMAGE_SUFFIX)
    )


def image_columns(columns: Iterable[str]) -> list[str]:
    """The image columns present: ``query_image``, ``positive_image`` and ``<negative column>_image``."""
    columns = list(columns)
    texts = ["query", "positive", *negative_columns(columns)]
    return [c + IMAGE_SUFFIX for c in texts if c + IMAGE_SUFFIX in columns]


def check_columns(columns: Sequence[str], split: str = "train") -> None:
    """Raise a clear error for a dataset the trainer cannot use (before any compute is spent)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"the {split} dataset lacks column(s) {missing}; TRACE expects 'query', 'positive', optional "
            f"'query_target' (CoT, empty for simple queries) and 'negative'/'negative_*' (got {list(columns)})"
        )
    sft = [c for c in SFT_IMAGE_COLUMNS if c in columns]
    if sft:
        raise ValueError(
            f"the {split} dataset has column(s) {sft}; TRACE reads images from 'query_image', 'positive_image' "
            "and '<negative column>_image' (a PIL image, a path or None per row)"
        )
    known = set(image_columns(columns))
    orphans = [c for c in columns if c.endswith(IMAGE_SUFFIX) and c not in known]
    if orphans:
        raise ValueError(
            f"the {split} dataset has image column(s) {orphans} without their text column "
            f"({[c[: -len(IMAGE_SUFFIX)] for c in orphans]}); use an empty text for an image-only item"
        )


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
    vision: VisionSpec | None = None

    def target_ids(self, cot: str) -> list[int]:
        """``CoT`` tokens (truncated to ``max_target_length - 1``) followed by ``<|emb|>``."""
        cot_ids = self.tokenizer(cot, add_special_tokens=False)["input_ids"] if cot else []
        return [*cot_ids[: self.max_target_length - 1], self.emb_token_id]

    def images(self, images: list, where: str) -> ImageBatch:
        """Process one group's images (None: no image); an image without a vision model is an error."""
        if self.vision is None:
            if any(img is not None for img in images):
                raise ValueError(f"{where}: the batch has images but the model has no vision tower / image processor")
            return ImageBatch({}, [0] * len(images), [0] * len(images))
        return self.vision.process(images, where)

    def placeholder(self, images: ImageBatch, i: int) -> str:
        return self.vision.placeholder(images.num_tokens[i]) if self.vision is not None else ""

    def candidate_ids(self, text: str, image: str = "") -> list[int]:
        prompt = prompt_ids(self.tokenizer, self.candidate_parts, text, self.max_length - 1, image)
        return [*prompt, self.emb_token_id]

    def _check(self, rows: list[list[int]], images: ImageBatch, where: str) -> None:
        if images.pixel_values is not None:
            for i, ids in enumerate(rows):
                check_image_tokens(ids, self.vision.image_token_id, images.num_tokens[i], f"{where} row {i}")

    def _candidates(self, texts: list[str], images: list, prefix: str, where: str) -> dict[str, torch.Tensor]:
        batch_images = self.images(images, where)
        rows = [self.candidate_ids(text, self.placeholder(batch_images, i)) for i, text in enumerate(texts)]
        self._check(rows, batch_images, prefix)
        ids, mask = left_pad(rows, self.tokenizer.pad_token_id)
        out = {f"{prefix}_input_ids": ids, f"{prefix}_attention_mask": mask}
        if self.vision is not None:
            out.update(batch_vision_inputs(prefix, batch_images, ids, self.vision.image_token_id))
        return out

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        q_images = self.images([ex.get("query_image") for ex in examples], "query_image")
        queries, target_lengths = [], []
        for i, ex in enumerate(examples):
            target = self.target_ids(ex.get("query_target") or "")
            budget = self.max_length - len(target)
            prompt = prompt_ids(self.tokenizer, self.query_parts, ex["query"], budget, self.placeholder(q_images, i))
            queries.append([*prompt, *target])
            target_lengths.append(len(target))
        self._check(queries, q_images, "query")
        q_ids, q_mask = left_pad(queries, self.tokenizer.pad_token_id)
        batch = {
            "query_input_ids": q_ids,
            "query_attention_mask": q_mask,
            "query_labels": target_labels(q_ids, torch.tensor(target_lengths)),
            "query_reasons": torch.tensor([length > 1 for length in target_lengths]),
        }
        if self.vision is not None:
            batch.update(batch_vision_inputs("query", q_images, q_ids, self.vision.image_token_id))
        positives = [ex.get("positive_image") for ex in examples]
        batch.update(self._candidates([ex["positive"] for ex in examples], positives, "candidate", "positive_image"))
        columns = [(ex, c) for ex in examples for c in negative_columns(ex)]
        if columns:
            texts = [ex[c] for ex, c in columns]
            images = [ex.get(c + IMAGE_SUFFIX) for ex, c in columns]
            where = "negative images (row-major over the negative columns)"
            batch.update(self._candidates(texts, images, "negative", where))
        return batch
