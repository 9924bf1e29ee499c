"""Retrieval evaluation of a ``TraceEncoder``: quality, reasoning rate and speed per inference mode.

For each mode (``direct``, ``cot``, ``routed``): Recall/Hit/MRR/NDCG@K of the queries against the corpus, the share
of queries that reasoned (overall, and for complex vs simple queries when flags are given), and queries per second
(query encoding only; the corpus is encoded once, candidates never reason). This is the paper's efficiency table.
With ``gold_reasoning``, a ``gold`` row embeds each query with its reference reasoning fed in (teacher-forced, as
in training): what the method gives when the reasoning is right, next to what the model's own reasoning gives.

**Mixed modalities.** Queries and candidates may carry an image each (``query_images`` / ``corpus_images``: a PIL
image, a path, or None per item; an empty text with an image is an image-only item); they go to the encoder as
``encode(texts, images=..., kind=..., mode=...)``. Without any image the encoder is called exactly as before
(text only). The candidates are encoded once per evaluation, in batches, each distinct (text, image) once.

**Tasks and pools** (M-BEIR's evaluation): with ``tasks`` (a label per query, e.g. ``"mscoco_task0"``) every metric
and the reasoning rate are also reported per task (``hit@5/mscoco_task0``, ``reasoning_rate/mscoco_task0``).
``pools`` picks the candidate pools: ``"global"`` ranks the whole corpus (M-BEIR's union pool; plain keys),
``"local"`` ranks, for each query, only the corpus indices ``local_pools[task]`` of its task (M-BEIR's per-dataset
pool; keys prefixed ``local/``). ``hit@K`` is M-BEIR's "Recall@K" (any positive in the top K).

Any dataset with ``query`` and ``positive`` columns (optional ``query_target``: the gold reasoning, non-empty for
complex queries; optional ``query_image``/``positive_image``) and a corpus of candidates becomes a ``RetrievalSet``
(``RetrievalSet.from_dataset``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset

from trl_mars.embed.encoder import Mode, TraceEncoder
from trl_mars.embed.metrics import ranking_metrics, top_k_ranking
from trl_mars.embed.vision import ImageLike

POOLS = ("global", "local")


@dataclass
class RetrievalSet:
    """Queries, a corpus, each query's relevant corpus indices and, optionally: complexity flags, gold CoTs, an
    image per query and per candidate (None: text only), a task label per query and each task's local pool (corpus
    indices)."""

    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]
    is_complex: list[bool] | None = None
    gold_reasoning: list[str] | None = None
    query_images: list[ImageLike] | None = None
    corpus_images: list[ImageLike] | None = None
    tasks: list[str] | None = None
    local_pools: dict[str, list[int]] | None = None

    def __post_init__(self):
        check_retrieval_inputs(**vars(self))  # the fields, by name

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        corpus: Sequence[str] | None = None,
        name: str = "eval",
        corpus_images: Sequence[ImageLike] | None = None,
    ) -> RetrievalSet:
        """Rows ``query``/``positive`` (+ optional ``query_target``, ``query_image``, ``positive_image``) against
        ``corpus`` (+ ``corpus_images``; default: the distinct positives, in order of first appearance); each
        query's relevant item is its positive (same text and same image)."""
        missing = [c for c in ("query", "positive") if c not in dataset.column_names]
        if missing:
            raise ValueError(f"the {name} dataset lacks column(s) {missing} (got {dataset.column_names})")
        if corpus is None and corpus_images is not None:
            raise ValueError("corpus_images needs corpus (the candidates' texts, '' for image-only ones)")
        positives = dataset["positive"]
        has_images = "positive_image" in dataset.column_names or corpus_images is not None
        positive_images = (
            dataset["positive_image"] if "positive_image" in dataset.column_names else [None] * len(positives)
        )
        keys = [(p, image_key(i)) for p, i in zip(positives, positive_images)]
        if corpus is None:
            first = _first_positions(keys)
            items, images = [positives[i] for i in first], [positive_images[i] for i in first]
        else:
            items = list(corpus)
            images = list(corpus_images) if corpus_images is not None else [None] * len(items)
        index = {(text, image_key(image)): i for i, (text, image) in enumerate(zip(items, images))}
        absent = [i for i, key in enumerate(keys) if key not in index]
        if absent:
            raise ValueError(
                f"{name} rows {absent[:10]} have a 'positive' that is not in the corpus ({len(items)} items)"
            )
        targets = dataset["query_target"] if "query_target" in dataset.column_names else None
        query_images = dataset["query_image"] if "query_image" in dataset.column_names else None
        return cls(
            queries=list(dataset["query"]),
            corpus=items,
            relevant=[{index[key]} for key in keys],
            is_complex=None if targets is None else [bool(t) for t in targets],
            gold_reasoning=None if targets is None else [t or "" for t in targets],
            query_images=None if query_images is None else list(query_images),
            corpus_images=images if has_images else None,
        )


def image_key(image: ImageLike) -> str | None:
    """A key equal for equal images: the path for a path, a digest of mode, size and pixels for a PIL image."""
    if image is None:
        return None
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    digest = hashlib.sha1(image.tobytes()).hexdigest()
    return f"pil:{image.mode}:{image.size}:{digest}"


def check_retrieval_inputs(
    queries: Sequence[str],
    corpus: Sequence[str],
    relevant: Sequence[set[int]],
    *,
    is_complex: Sequence[bool] | None = None,
    gold_reasoning: Sequence[str] | None = None,
    query_images: Sequence[ImageLike] | None = None,
    corpus_images: Sequence[ImageLike] | None = None,
    tasks: Sequence[str] | None = None,
    local_pools: dict[str, Sequence[int]] | None = None,
    pools: Sequence[str] = ("global",),
) -> None:
    """Lengths, indices, tasks and pools consistent, or a ``ValueError`` naming the field (and the query)."""
    for field, values, n in (
        ("relevant", relevant, len(queries)),
        ("is_complex", is_complex, len(queries)),
        ("gold_reasoning", gold_reasoning, len(queries)),
        ("query_images", query_images, len(queries)),
        ("tasks", tasks, len(queries)),
        ("corpus_images", corpus_images, len(corpus)),
    ):
        if values is not None and len(values) != n:
            raise ValueError(
                f"{field} has {len(values)} entries for {n} {'candidates' if 'corpus' in field else 'queries'}"
            )
    for i, rel in enumerate(relevant):
        bad = [j for j in rel if not 0 <= j < len(corpus)]
        if not rel or bad:
            raise ValueError(
                f"query {i}: relevant {sorted(rel)} must be non-empty indices into the corpus of {len(corpus)}"
            )
    unknown = [p for p in pools if p not in POOLS]
    if unknown or not pools:
        raise ValueError(f"pools must be a non-empty subset of {POOLS}, got {list(pools)}")
    if local_pools is not None:
        for task, members in local_pools.items():
            bad = [j for j in members if not 0 <= j < len(corpus)]
            if bad:
                raise ValueError(f"local pool {task!r} has indices {bad[:5]} outside the corpus of {len(corpus)}")
    if "local" in pools or local_pools is not None:
        if "local" in pools and (tasks is None or local_pools is None):
            raise ValueError("pools='local' needs a task per query (tasks) and local_pools {task: corpus indices}")
        if tasks is not None and local_pools is not None:
            members = {task: set(m) for task, m in local_pools.items()}
            for i, (task, rel) in enumerate(zip(tasks, relevant)):
                if task not in members:
                    raise ValueError(f"query {i}: task {task!r} has no local pool (pools: {sorted(members)})")
                if not rel <= members[task]:
                    raise ValueError(
                        f"query {i}: relevant items {sorted(rel - members[task])} are not in the local pool of {task!r}"
                    )


def _first_positions(keys: Sequence) -> list[int]:
    """Position of each distinct key's first occurrence, in order."""
    seen: dict = {}
    for i, key in enumerate(keys):
        seen.setdefault(key, i)
    return list(seen.values())


def _has_images(images: Sequence[ImageLike] | None) -> bool:
    return images is not None and any(image is not None for image in images)


def encode_corpus(
    encoder: TraceEncoder, corpus: Sequence[str], images: Sequence[ImageLike] | None = None, batch_size: int = 32
) -> torch.Tensor:
    """Candidate embeddings ``(len(corpus), H)``: each distinct (text, image) encoded once, in batches of
    ``batch_size``; the encoder gets ``images`` only when some candidate has one."""
    images = list(images) if images is not None else [None] * len(corpus)
    keys = [(text, image_key(image)) for text, image in zip(corpus, images)]
    first = _first_positions(keys)
    slot = {keys[i]: n for n, i in enumerate(first)}
    texts = [corpus[i] for i in first]
    kwargs = {"images": [images[i] for i in first]} if _has_images(images) else {}
    embeddings = encoder.encode(texts, kind="candidate", batch_size=batch_size, **kwargs)
    return embeddings[[slot[key] for key in keys]]


def _rate(flags: Sequence[bool], mask: Sequence[bool]) -> float:
    selected = [f for f, m in zip(flags, mask) if m]
    return sum(selected) / len(selected) if selected else float("nan")


def _grouped_metrics(ranked, relevant, ks, groups: Sequence, name) -> dict[str, float]:
    """Metrics of each group of queries (``groups[i]``: query i's group), keys suffixed by ``name(group)``."""
    out = {}
    for group in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == group]
        metrics = ranking_metrics([ranked[i] for i in rows], [relevant[i] for i in rows], ks)
        out.update({f"{key}{name(group)}": value for key, value in metrics.items()})
    return out


def pool_rows(n_corpus: int, local_pools: dict[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Per task, an ``(N,)`` boolean row: candidate j is in the task's local pool."""
    rows = {}
    for task, members in local_pools.items():
        rows[task] = torch.zeros(n_corpus, dtype=torch.bool)
        rows[task][list(members)] = True
    return rows


def rank(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    tasks: Sequence[str] | None = None,
    pools: dict[str, torch.Tensor] | None = None,
    chunk: int = 1024,
) -> list[list[int]]:
    """Each query's top-``k`` corpus indices by inner product; with ``pools`` (``pool_rows``), only candidates of
    the pool of the query's task. ``chunk`` queries at a time: no ``(Q, N)`` score matrix or mask is held at once."""
    ranked = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ corpus.T
        if pools is not None:
            mask = torch.stack([pools[t] for t in tasks[start : start + chunk]])
            scores = scores.masked_fill(~mask, -torch.inf)
        ranked += top_k_ranking(scores, k)
    return ranked


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
    query_images: Sequence[ImageLike] | None = None,
    corpus_images: Sequence[ImageLike] | None = None,
    tasks: Sequence[str] | None = None,
    local_pools: dict[str, Sequence[int]] | None = None,
    pools: Sequence[str] = ("global",),
) -> dict[str, dict[str, float]]:
    """``{mode: {"recall@K": .., "hit@K": .., "mrr@K": .., "ndcg@K": .., "reasoning_rate": ..,
    "queries_per_second": ..}}``.

    With ``is_complex``, also ``reasoning_rate_complex``/``_simple`` and every metric on the complex and the simple
    queries (``recall@K_complex``, ...). With ``gold_reasoning`` (one string per query, empty: no reasoning), a
    ``gold`` row: queries embedded with their gold reasoning teacher-forced. With ``tasks``, every metric per task
    (``hit@K/<task>``, ``reasoning_rate/<task>``). ``pools``: ``"global"`` (plain keys) and/or ``"local"`` (each
    query ranks only ``local_pools[its task]``; keys prefixed ``local/``). The candidates are encoded once.
    """
    check_retrieval_inputs(
        queries,
        corpus,
        relevant,
        is_complex=is_complex,
        gold_reasoning=gold_reasoning,
        query_images=query_images,
        corpus_images=corpus_images,
        tasks=tasks,
        local_pools=local_pools,
        pools=pools,
    )
    model = getattr(encoder, "model", None)
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    try:
        corpus_emb = encode_corpus(encoder, corpus, corpus_images, batch_size)
        rows = pool_rows(len(corpus), local_pools) if "local" in pools else None
        image_kwargs = {"images": list(query_images)} if _has_images(query_images) else {}
        results = {}
        runs = list(modes) + (["gold"] if gold_reasoning is not None else [])
        for mode in runs:
            start = time.perf_counter()
            if mode == "gold":
                encoded = encoder.encode_with_reasoning(
                    list(queries), list(gold_reasoning), batch_size=batch_size, **image_kwargs
                )
            else:
                encoded = encoder.encode_with_details(
                    list(queries), kind="query", mode=mode, batch_size=batch_size, **image_kwargs
                )
            elapsed = time.perf_counter() - start
            row = {"reasoning_rate": encoded.reasoning_rate, "queries_per_second": len(queries) / elapsed}
            if is_complex is not None:
                row["reasoning_rate_complex"] = _rate(encoded.reasoned, is_complex)
                row["reasoning_rate_simple"] = _rate(encoded.reasoned, [not c for c in is_complex])
            for task in dict.fromkeys(tasks or ()):
                row[f"reasoning_rate/{task}"] = _rate(encoded.reasoned, [t == task for t in tasks])
            for pool in pools:
                ranked = rank(encoded.embeddings, corpus_emb, max(ks), tasks, rows if pool == "local" else None)
                metrics = ranking_metrics(ranked, relevant, ks)
                if is_complex is not None:
                    kinds = ["complex" if c else "simple" for c in is_complex]
                    metrics.update(_grouped_metrics(ranked, relevant, ks, kinds, lambda kind: f"_{kind}"))
                if tasks is not None:
                    metrics.update(_grouped_metrics(ranked, relevant, ks, tasks, lambda task: f"/{task}"))
                prefix = "" if pool == "global" else "local/"
                row.update({f"{prefix}{key}": value for key, value in metrics.items()})
            results[mode] = row
        return results
    finally:
        if model is not None:
            model.train(was_training)


def evaluate_retrieval_set(encoder: TraceEncoder, data: RetrievalSet, **kwargs) -> dict[str, dict[str, float]]:
    """``evaluate_retrieval`` on a ``RetrievalSet`` (its complexity flags, gold reasoning, images, tasks and local
    pools included)."""
    return evaluate_retrieval(encoder, **vars(data), **kwargs)


def format_table(results: dict[str, dict[str, float]], keys: Sequence[str]) -> str:
    """A plain-text table: one row per mode, one column per key (at least 24 wide, wider for a longer key)."""
    widths = [max(24, len(k) + 2) for k in keys]
    header = f"{'mode':<8}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths))
    rows = [
        f"{mode:<8}" + "".join(f"{values.get(k, float('nan')):>{w}.4f}" for k, w in zip(keys, widths))
        for mode, values in results.items()
    ]
    return "\n".join([header, *rows])
