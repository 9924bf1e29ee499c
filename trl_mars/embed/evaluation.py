"""Retrieval evaluation of a ``TraceEncoder``: quality, reasoning rate and speed per inference mode.

For each mode (``direct``, ``cot``, ``routed``): Recall/MRR/NDCG@K of the queries against the corpus, the share of
queries that reasoned (overall, and for complex vs simple queries when flags are given), and queries per second
(query encoding only; the corpus is encoded once, candidates never reason). This is the paper's efficiency table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from trl_mars.embed.encoder import Mode, TraceEncoder
from trl_mars.embed.metrics import retrieval_metrics


def _rate(flags: Sequence[bool], mask: Sequence[bool]) -> float:
    selected = [f for f, m in zip(flags, mask) if m]
    return sum(selected) / len(selected) if selected else float("nan")


def evaluate_retrieval(
    encoder: TraceEncoder,
    queries: Sequence[str],
    corpus: Sequence[str],
    relevant: Sequence[set[int]],
    modes: Sequence[Mode] = ("direct", "cot", "routed"),
    ks: Sequence[int] = (1, 5, 10),
    is_complex: Sequence[bool] | None = None,
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """``{mode: {"recall@K": .., "mrr@K": .., "ndcg@K": .., "reasoning_rate": .., "queries_per_second": ..}}``.

    With ``is_complex``, also ``reasoning_rate_complex`` and ``reasoning_rate_simple``.
    """
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        corpus_emb = encoder.encode(list(corpus), kind="candidate", batch_size=batch_size)
        results = {}
        for mode in modes:
            start = time.perf_counter()
            encoded = encoder.encode_with_details(list(queries), kind="query", mode=mode, batch_size=batch_size)
            elapsed = time.perf_counter() - start
            row = retrieval_metrics(encoded.embeddings @ corpus_emb.T, relevant, ks)
            row["reasoning_rate"] = encoded.reasoning_rate
            row["queries_per_second"] = len(queries) / elapsed
            if is_complex is not None:
                row["reasoning_rate_complex"] = _rate(encoded.reasoned, is_complex)
                row["reasoning_rate_simple"] = _rate(encoded.reasoned, [not c for c in is_complex])
            results[mode] = row
        return results
    finally:
        encoder.model.train(was_training)


def format_table(results: dict[str, dict[str, float]], keys: Sequence[str]) -> str:
    """A plain-text table: one row per mode, one column per key."""
    header = f"{'mode':<8}" + "".join(f"{k:>24}" for k in keys)
    rows = [
        f"{mode:<8}" + "".join(f"{values.get(k, float('nan')):>24.4f}" for k in keys)
        for mode, values in results.items()
    ]
    return "\n".join([header, *rows])
