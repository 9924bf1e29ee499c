"""ReRec's four reward terms as TRL reward functions (``f(completions=..., ground_truth=..., **kwargs)``).

Each returns one float per completion; the trainer weighs them with ``reward_weights``
(``[format_weight, 1, qas_weight, pas_weight]``). QAS and PAS score the top-K boxed titles (K = ``ndcg_k``)
and average them; an unknown title scores 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trl_mars.rec.graphs import ItemAttributeGraph
from trl_mars.rec.lightgcn import ItemEmbeddings
from trl_mars.rewards.rerec import dedupe_titles, extract_boxed, format_score, ndcg_score, parse_ground_truth, pas, qas


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """Text of a completion, whether plain (str) or conversational (the last message's content)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


class _RecReward:
    """Scores each (completion, ground truth) pair with ``score(text, titles)``; named ``__name__`` in TRL logs."""

    def __init__(self, name: str, score: Callable[[str, list[str]], float]):
        self.__name__ = name
        self._score = score

    def __call__(self, completions: Sequence, ground_truth: Sequence, **kwargs) -> list[float]:
        return [self._score(completion_text(c), parse_ground_truth(g)) for c, g in zip(completions, ground_truth)]


def _top_k_mean(text: str, k: int, score: Callable[[str], float]) -> float:
    boxed = dedupe_titles(extract_boxed(text) or [])[:k]
    return sum(score(t) for t in boxed) / len(boxed) if boxed else 0.0


def _alignment_reward(name: str, k: int, lookup: Callable[[str], Any], score: Callable) -> _RecReward:
    """``score(lookup(p), [lookup(g) for g in gt])`` averaged over the top-k boxed titles p."""
    return _RecReward(name, lambda text, gt: _top_k_mean(text, k, lambda t: score(lookup(t), [lookup(g) for g in gt])))


def rerec_reward_funcs(
    k: int, item_graph: ItemAttributeGraph | None = None, item_embeddings: ItemEmbeddings | None = None
) -> list[_RecReward]:
    """[format, NDCG@k] plus QAS if ``item_graph`` and PAS if ``item_embeddings`` are given, in that order."""
    funcs = [
        _RecReward("rerec_format", lambda text, gt: format_score(text)),
        _RecReward(f"rerec_ndcg@{k}", lambda text, gt: ndcg_score(text, gt, k)),
    ]
    if item_graph is not None:
        funcs.append(_alignment_reward("rerec_qas", k, item_graph.lookup, qas))
    if item_embeddings is not None:
        funcs.append(_alignment_reward("rerec_pas", k, item_embeddings.lookup, pas))
    return funcs
