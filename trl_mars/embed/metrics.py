"""Retrieval metrics with binary relevance, from a query x corpus score matrix.

For a query with relevant set G and ranked list r_1, r_2, ... (best first):

- ``Recall@K = |G ∩ {r_1..r_K}| / |G|``
- ``Hit@K = 1 if G ∩ {r_1..r_K} is non-empty else 0``: what M-BEIR/UniIR report as "Recall@K"
  (``compute_recall_at_k`` in ``TIGER-AI-Lab/UniIR:src/common/mbeir_retriever.py``: any positive in the top K);
  equal to Recall@K when each query has one relevant item
- ``MRR@K = 1 / rank of the first relevant item within the top K`` (0 when none)
- ``NDCG@K = DCG@K / IDCG@K`` with ``DCG@K = sum_{i<=K, r_i in G} 1 / log2(i + 1)`` and IDCG@K the DCG of the
  ideal ranking (``min(|G|, K)`` relevant items first).

Each metric is averaged over queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def top_k_ranking(scores: torch.Tensor, k: int) -> list[list[int]]:
    """Per query, the corpus indices of its ``k`` best-scored items, best first; items scored ``-inf`` (outside the
    query's candidate pool) are left out."""
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return [
        [doc for doc, value in zip(docs, values) if value != -math.inf]
        for docs, values in zip(top.indices.tolist(), top.values.tolist())
    ]


def ranking_metrics(
    ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """``recall@k``, ``hit@k``, ``mrr@k`` and ``ndcg@k`` for each k in ``ks`` from each query's ranking (at least
    ``max(ks)`` long unless the pool is smaller); ``relevant[i]`` are query i's corpus indices."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} score rows but {len(relevant)} relevance sets")
    if any(not rel for rel in relevant):
        raise ValueError("every query needs at least one relevant corpus item")
    out: dict[str, float] = {}
    for k in ks:
        recall = hit = mrr = ndcg = 0.0
        for ranking, rel in zip(ranked, relevant):
            hits = [i for i, doc in enumerate(ranking[:k]) if doc in rel]
            recall += len(hits) / len(rel)
            hit += 1.0 if hits else 0.0
            mrr += 1.0 / (hits[0] + 1) if hits else 0.0
            dcg = sum(1.0 / math.log2(i + 2) for i in hits)
            idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
            ndcg += dcg / idcg
        n = len(relevant)
        out.update({f"recall@{k}": recall / n, f"hit@{k}": hit / n, f"mrr@{k}": mrr / n, f"ndcg@{k}": ndcg / n})
    return out


def retrieval_metrics(
    scores: torch.Tensor, relevant: Sequence[set[int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """``ranking_metrics`` of a query x corpus score matrix (``-inf``: outside the query's pool, never retrieved)."""
    if scores.shape[0] != len(relevant):
        raise ValueError(f"{scores.shape[0]} score rows but {len(relevant)} relevance sets")
    return ranking_metrics(top_k_ranking(scores, max(ks)), relevant, ks)
