"""Retrieval evaluation of a ``TraceEncoder``: quality, reasoning rate and speed per inference mode.

For each mode (``direct``, ``cot``, ``routed``): Recall/MRR/NDCG@K of the queries against the corpus, the share of
queries that reasoned (overall, and for complex vs simple queries when flags are given), and queries per second
(query encoding only; the corpus is encoded once, candidates never reason). This is the paper's efficiency table.
With ``gold_reasoning``, a ``gold`` row embeds each query with its reference reasoning fed in (teacher-forced, as
in training): what the method gives when the reasoning is right, next to what the model's own reasoning gives.

Any dataset with ``query`` and ``positive`` columns (optional ``query_target``: the gold reasoning, non-empty for
complex queries) and a corpus of candidate texts becomes a ``RetrievalSet`` (``RetrievalSet.from_dataset``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from trl_mars.embed.encoder import Mode, TraceEncoder
from trl_mars.embed.metrics import retrieval_metrics


@dataclass
class RetrievalSet:
    """Queries, a corpus, each query's relevant corpus indices and, optionally, complexity flags and gold CoTs."""

    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]
    is_complex: list[bool] | None = None
    gold_reasoning: list[str] | None = None

    @classmethod
    def from_dataset(cls, dataset: Dataset, corpus: Sequence[str] | None = None, name: str = "eval") -> RetrievalSet:
        """Rows ``query``/``positive`` (+ optional ``query_target``) against ``corpus`` (default: the distinct
        positives, in order of first appearance); each query's relevant item is its positive."""
        missing = [c for c in ("query", "positive") if c not in dataset.column_names]
        if missing:
            raise ValueError(f"the {name} dataset lacks column(s) {missing} (got {dataset.column_names})")
        positives = dataset["positive"]
        items = list(dict.fromkeys(positives)) if corpus is None else list(corpus)
        index = {text: i for i, text in enumerate(items)}
        absent = [i for i, p in enumerate(positives) if p not in index]
        if absent:
            raise ValueError(
                f"{name} rows {absent[:10]} have a 'positive' that is not in the corpus ({len(items)} items)"
            )
        targets = dataset["query_target"] if "query_target" in dataset.column_names else None
        return cls(
            queries=list(dataset["query"]),
            corpus=items,
            relevant=[{index[p]} for p in positives],
            is_complex=None if targets is None else [bool(t) for t in targets],
            gold_reasoning=None if targets is None else [t or "" for t in targets],
        )


def _rate(flags: Sequence[bool], mask: Sequence[bool]) -> float:
    selected = [f for f, m in zip(flags, mask) if m]
    return sum(selected) / len(selected) if selected else float("nan")


def _subset_metrics(scores, relevant, ks, is_complex: Sequence[bool]) -> dict[str, float]:
    out = {}
    for suffix, keep in (("complex", True), ("simple", False)):
        rows = [i for i, c in enumerate(is_complex) if c == keep]
        if rows:
            metrics = retrieval_metrics(scores[rows], [relevant[i] for i in rows], ks)
            out.update({f"{key}_{suffix}": value for key, value in metrics.items()})
    return out


def evaluate_retrieval(
    encoder: TraceEncoder,
    queries: Sequence[str],
    corpus: Sequence[str],
    relevant: Sequence[set[int]],
    modes: Sequence[Mode] = ("direct", "cot", "routed"),
    ks: Sequence[int] = (1, 5, 10),
    is_complex: Sequence[bool] | None = None,
    batch_size: int = 32,
    gold_reasoning: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """``{mode: {"recall@K": .., "mrr@K": .., "ndcg@K": .., "reasoning_rate": .., "queries_per_second": ..}}``.

    With ``is_complex``, also ``reasoning_rate_complex``/``_simple`` and every metric on the complex and the simple
    queries (``recall@K_complex``, ...). With ``gold_reasoning`` (one string per query, empty: no reasoning), a
    ``gold`` row: queries embedded with their gold reasoning teacher-forced.
    """
    if gold_reasoning is not None and len(gold_reasoning) != len(queries):
        raise ValueError(f"gold_reasoning has {len(gold_reasoning)} entries for {len(queries)} queries")
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        corpus_emb = encoder.encode(list(corpus), kind="candidate", batch_size=batch_size)
        results = {}
        runs = list(modes) + (["gold"] if gold_reasoning is not None else [])
        for mode in runs:
            start = time.perf_counter()
            if mode == "gold":
                encoded = encoder.encode_with_reasoning(list(queries), list(gold_reasoning), batch_size=batch_size)
            else:
                encoded = encoder.encode_with_details(list(queries), kind="query", mode=mode, batch_size=batch_size)
            elapsed = time.perf_counter() - start
            scores = encoded.embeddings @ corpus_emb.T
            row = retrieval_metrics(scores, relevant, ks)
            row["reasoning_rate"] = encoded.reasoning_rate
            row["queries_per_second"] = len(queries) / elapsed
            if is_complex is not None:
                row["reasoning_rate_complex"] = _rate(encoded.reasoned, is_complex)
                row["reasoning_rate_simple"] = _rate(encoded.reasoned, [not c for c in is_complex])
                row.update(_subset_metrics(scores, relevant, ks, is_complex))
            results[mode] = row
        return results
    finally:
        encoder.model.train(was_training)


def evaluate_retrieval_set(encoder: TraceEncoder, data: RetrievalSet, **kwargs) -> dict[str, dict[str, float]]:
    """``evaluate_retrieval`` on a ``RetrievalSet`` (its complexity flags and gold reasoning included)."""
    return evaluate_retrieval(
        encoder,
        data.queries,
        data.corpus,
        data.relevant,
        is_complex=data.is_complex,
        gold_reasoning=data.gold_reasoning,
        **kwargs,
    )


def format_table(results: dict[str, dict[str, float]], keys: Sequence[str]) -> str:
    """A plain-text table: one row per mode, one column per key."""
    header = f"{'mode':<8}" + "".join(f"{k:>24}" for k in keys)
    rows = [
        f"{mode:<8}" + "".join(f"{values.get(k, float('nan')):>24.4f}" for k in keys)
        for mode, values in results.items()
    ]
    return "\n".join([header, *rows])
