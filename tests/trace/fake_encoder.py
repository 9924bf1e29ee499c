"""A fake ``TraceEncoder`` with the agreed multimodal signature, for evaluation tests that need exact embeddings.

``encode(texts, images=None, kind=..., mode=..., batch_size=...)``: each item's embedding is looked up by its kind
and content, ``(text, image_key(image))`` in ``queries`` or ``candidates``; a query that reasons (all in ``cot`` mode, those in ``routed`` in ``cot``
mode; none in ``direct``) takes its ``reasoned`` vector when one is given. Every call is recorded.
"""

from __future__ import annotations

import torch

from trl_mars.embed.encoder import Encoded
from trl_mars.embed.evaluation import image_key


class FakeEncoder:
    def __init__(self, queries: dict, candidates: dict, reasoned: dict | None = None, routed: set | None = None):
        self.vectors = {"query": queries, "candidate": candidates}  # kind -> {(text, image key): list[float]}
        self.reasoned = reasoned or {}  # (text, image key) -> list[float] once it reasoned
        self.routed = routed or set()  # (text, image key) of the queries that reason in routed mode
        self.model = torch.nn.Linear(1, 1)
        self.calls: list[dict] = []

    def encode(self, texts, images=None, kind="query", mode="routed", batch_size=32) -> torch.Tensor:
        return self.encode_with_details(texts, images=images, kind=kind, mode=mode, batch_size=batch_size).embeddings

    def encode_with_details(self, texts, images=None, kind="query", mode="routed", batch_size=32) -> Encoded:
        assert not self.model.training, "evaluation must run the model in eval mode"
        self.calls.append({"texts": list(texts), "images": images, "kind": kind, "mode": mode, "batch": batch_size})
        keys = [(t, image_key(i)) for t, i in zip(texts, images or [None] * len(texts))]
        reason = [kind == "query" and (mode == "cot" or (mode == "routed" and k in self.routed)) for k in keys]
        return Encoded(self._rows(keys, reason, kind), reason, ["cot" if r else "" for r in reason])

    def encode_with_reasoning(self, texts, reasoning, images=None, batch_size=32) -> Encoded:
        self.calls.append({"texts": list(texts), "images": images, "kind": "gold", "reasoning": list(reasoning)})
        keys = [(t, image_key(i)) for t, i in zip(texts, images or [None] * len(texts))]
        reason = [bool(r) for r in reasoning]
        return Encoded(self._rows(keys, reason, "query"), reason, list(reasoning))

    def _rows(self, keys, reason, kind) -> torch.Tensor:
        table = self.vectors[kind]
        rows = [self.reasoned.get(k, table[k]) if r else table[k] for k, r in zip(keys, reason)]
        return torch.tensor(rows, dtype=torch.float32)
