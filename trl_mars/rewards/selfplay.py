"""Challenger/Solver reward pieces for self-play (R-Zero, R-Diverse, WIST), as pure functions.

Notation: ``p`` is the Solver's empirical success rate on a question (fraction of K samples that match the label).

* R-Zero (paper):  r = max(0, 1 - 2|p - 1/2| - penalty);  R-Zero (code): r = min(p, 1 - p) - penalty.
* WIST (gauss):    r = exp(-(p(1 - p) - 1/4)^2 / (2 sigma^2)), sigma^2 = 0.01.
* Repetition:      cluster the batch by average linkage on a distance matrix (1 - BLEU for R-Zero, 1 - cos of skill
  embeddings for R-Diverse's SAM) at threshold 0.5; penalty(x_i) = |C(x_i)| / B.
* MAP (R-Diverse): P = g [max_m cos(e, e_m) - tau_max]_+ + (1 - g) [mean_m cos(e, e_m) - tau_mean]_+ over a memory bank.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

CHALLENGER_REWARDS = ("rzero", "rzero_code", "gauss")


def _check_rate(p: float, name: str = "p") -> None:
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"{name} must be a success rate in [0, 1], got {p!r}")


def rzero_uncertainty(p: float) -> float:
    """R-Zero paper: ``1 - 2|p - 1/2|`` (1 at p = 1/2, 0 at p in {0, 1})."""
    _check_rate(p)
    return 1.0 - 2.0 * abs(p - 0.5)


def gauss_reward(p: float, sigma2: float = 0.01) -> float:
    """WIST: ``exp(-(p(1-p) - 0.25)^2 / (2 sigma2))``; with K = 8: 0/8 -> 0.044, 2/8 -> 0.823, 4/8 -> 1."""
    _check_rate(p)
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")
    return math.exp(-((p * (1.0 - p) - 0.25) ** 2) / (2.0 * sigma2))


def challenger_reward(
    p: float, kind: str = "rzero", penalty: float = 0.0, sigma2: float = 0.01, floor: bool = True
) -> float:
    """Reward of a valid question with Solver success ``p`` minus the diversity ``penalty``.

    ``rzero``: max(0, 1 - 2|p - 1/2| - penalty) (R-Zero paper), or without the floor when ``floor`` is False
    (R-Diverse's eq. 11, R_unc - a P_rep - b P_MAP); ``rzero_code``: min(p, 1-p) - penalty (released code, no
    floor); ``gauss``: gauss_reward(p) - penalty (WIST, no floor).

    >>> challenger_reward(0.5, penalty=1.25), challenger_reward(0.5, penalty=1.25, floor=False)
    (0.0, -0.25)
    """
    if kind == "rzero":
        value = rzero_uncertainty(p) - penalty
        return max(0.0, value) if floor else value
    if kind == "rzero_code":
        _check_rate(p)
        return min(p, 1.0 - p) - penalty
    if kind == "gauss":
        return gauss_reward(p, sigma2) - penalty
    raise ValueError(f"challenger reward kind must be one of {CHALLENGER_REWARDS}, got {kind!r}")


def learnability(best_reward: float, threshold: float = 0.4) -> int | None:
    """WIST's learnability signal of a document group: 1 if the best question's reward > threshold, 0 if below,
    None (no update) when exactly equal."""
    if best_reward > threshold:
        return 1
    if best_reward < threshold:
        return 0
    return None


def band_mask(rates: Sequence[float], low: float = 0.3, high: float = 0.8) -> list[bool]:
    """R-Zero's Solver filter: keep questions with ``low <= p <= high``."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"band must satisfy 0 <= low <= high <= 1, got low={low}, high={high}")
    return [low <= p <= high for p in rates]


def majority_label(
    answers: Sequence[str | None], equal: Callable[[str, str], bool] | None = None
) -> tuple[str | None, float]:
    """Pseudo-label = most frequent non-empty answer; returns ``(label, count / len(answers))``.

    Empty/None answers are not candidates but stay in the denominator (R-Zero's challenger-side score). With an
    ``equal`` function, answers are grouped greedily into equivalence classes (first member represents the class);
    an exception raised by ``equal`` counts as "not equal". No non-empty answer gives ``(None, 0.0)``.
    """
    if not answers:
        raise ValueError("answers must be non-empty")
    reps: list[str] = []
    counts: Counter[int] = Counter()
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        for idx, rep in enumerate(reps):
            if answer == rep or (equal is not None and _safe_equal(equal, answer, rep)):
                counts[idx] += 1
                break
        else:
            reps.append(answer)
            counts[len(reps) - 1] += 1
    if not reps:
        return None, 0.0
    best = max(counts, key=lambda i: (counts[i], -i))  # ties: the answer seen first
    return reps[best], counts[best] / len(answers)


def _safe_equal(equal: Callable[[str, str], bool], a: str, b: str) -> bool:
    try:
        return bool(equal(a, b))
    except Exception:  # a grader failure must never crash training; it counts as a mismatch
        return False


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: Sequence[str], reference: Sequence[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU-4 with uniform weights and smoothing ``method1``, as NLTK's ``sentence_bleu`` computes it.

    p_n = clipped n-gram matches / max(1, hypothesis n-grams); a zero p_n becomes ``epsilon`` / its denominator
    (also for orders longer than a short hypothesis: 0/1 -> epsilon); no matching unigram scores 0.
    BLEU = BP * exp(sum_n log(p_n) / max_n), BP = exp(1 - r/c) if c < r else 1 (c, r: hypothesis/reference
    lengths; c = 0 scores 0).

    >>> round(sentence_bleu("what is two".split(), "what is three".split()), 6)  # NLTK: 0.24028114141347542
    0.240281
    """
    c, r = len(hypothesis), len(reference)
    if c == 0 or r == 0:
        return 0.0
    log_precisions = []
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        total = max(1, sum(hyp.values()))
        ref = _ngrams(reference, n)
        matches = sum(min(count, ref[gram]) for gram, count in hyp.items())
        if n == 1 and matches == 0:
            return 0.0
        log_precisions.append(math.log((matches if matches > 0 else epsilon) / total))
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(math.fsum(lp / max_n for lp in log_precisions))


def bleu_distance_matrix(texts: Sequence[str]) -> np.ndarray:
    """R-Zero's pairwise distance ``d_ij = 1 - BLEU(hyp=x_i, ref=x_j)`` for i < j (whitespace tokens), mirrored."""
    tokens = [t.split() for t in texts]
    n = len(texts)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = 1.0 - sentence_bleu(tokens[i], tokens[j])
    return dist


def cosine_distance_matrix(embeddings: np.ndarray) -> np.ndarray:
    """``1 - cos(e_i, e_j)`` for the rows of ``embeddings`` (rows are normalised here)."""
    emb = _normalise(np.asarray(embeddings, dtype=np.float64))
    return np.clip(1.0 - emb @ emb.T, 0.0, 2.0)


def _normalise(emb: np.ndarray) -> np.ndarray:
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n, dim), got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def average_linkage_clusters(dist: np.ndarray, threshold: float = 0.5) -> list[int]:
    """Agglomerative clustering with average linkage; merges while the closest pair of clusters has mean pairwise
    distance ``< threshold`` (sklearn's ``distance_threshold`` semantics). Returns a cluster label per item."""
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    if dist.shape != (n, n):
        raise ValueError(f"dist must be a square matrix, got shape {dist.shape}")
    members = {i: [i] for i in range(n)}
    link = dist.copy()
    np.fill_diagonal(link, np.inf)
    active = np.ones(n, dtype=bool)
    while active.sum() > 1:
        masked = np.where(active[:, None] & active[None, :], link, np.inf)
        a, b = np.unravel_index(np.argmin(masked), masked.shape)
        if masked[a, b] >= threshold:
            break
        a, b = min(a, b), max(a, b)
        na, nb = len(members[a]), len(members[b])
        # Lance-Williams update for average linkage: d(a+b, k) = (na d(a,k) + nb d(b,k)) / (na + nb)
        link[a, :] = link[:, a] = (na * link[a, :] + nb * link[b, :]) / (na + nb)
        link[a, a] = np.inf
        members[a] += members.pop(b)
        active[b] = False
    labels = [0] * n
    for label, items in enumerate(sorted(members.values())):
        for i in items:
            labels[i] = label
    return labels


def cluster_share_penalty(labels: Sequence[int], scale: float = 1.0) -> list[float]:
    """``scale * |C(x_i)| / B`` for each item, from cluster ``labels`` of a batch of size B."""
    counts = Counter(labels)
    return [scale * counts[label] / len(labels) for label in labels]


def bleu_repetition_penalty(texts: Sequence[str], threshold: float = 0.5) -> list[float]:
    """R-Zero's repetition penalty: BLEU-distance average-linkage clusters, penalty = cluster share."""
    if not texts:
        return []
    return cluster_share_penalty(average_linkage_clusters(bleu_distance_matrix(texts), threshold))


def skill_repetition_penalty(embeddings: np.ndarray, threshold: float = 0.5) -> list[float]:
    """R-Diverse's SAM penalty: the same cluster share, on ``1 - cos`` of skill embeddings."""
    if len(embeddings) == 0:
        return []
    return cluster_share_penalty(average_linkage_clusters(cosine_distance_matrix(embeddings), threshold))


def map_penalty(
    embeddings: np.ndarray,
    memory: np.ndarray | None,
    gamma: float = 0.5,
    tau_max: float = 0.5,
    tau_mean: float = 0.25,
) -> list[float]:
    """R-Diverse's memory-augmented penalty per question; all zeros when the memory is empty.

    P(q) = gamma [max_m cos(e_q, e_m) - tau_max]_+ + (1 - gamma) [(1/|M|) sum_m cos(e_q, e_m) - tau_mean]_+.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    n = len(embeddings)
    if memory is None or len(memory) == 0 or n == 0:
        return [0.0] * n
    cos = _normalise(np.asarray(embeddings, dtype=np.float64)) @ _normalise(np.asarray(memory, dtype=np.float64)).T
    max_term = np.maximum(cos.max(axis=1) - tau_max, 0.0)
    mean_term = np.maximum(cos.mean(axis=1) - tau_mean, 0.0)
    return (gamma * max_term + (1.0 - gamma) * mean_term).tolist()
