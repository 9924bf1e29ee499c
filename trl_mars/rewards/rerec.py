"""ReRec rewards and reasoning-aware advantages (RAAE) as pure functions.

Total reward of one completion (dual-graph enhanced reward, weights as in the authors' code)::

    r = w_f * format + NDCG@K + w_qas * QAS + w_pas * PAS
    format = +0.5 if a \\boxed{...} answer exists else -0.5
    NDCG@K = DCG@K / IDCG@K of the boxed titles against the ground truth (-0.5 when there is no box)
    QAS    = |A(p) & A*| / |A*|,  A* = intersection of the attribute sets of the ground-truth items
    PAS    = max_g cos(M(p), M(g)) over ground-truth items g (M: LightGCN item embeddings)

RAAE: an answer is wrong when none of its first K boxed titles is a ground-truth title (NDCG@K = 0); then every
segment (line or paragraph, except the one holding the box) that mentions one of its wrong boxed titles gets
``r - w_penalty * |r|`` (= ``(1 - w_penalty) * r`` for r >= 0), other tokens keep ``r``. A right answer that
also boxes an extra title is not penalised. Token advantages are normalised over all valid tokens of the G
completions of a prompt: ``A_{i,t} = (r_{i,t} - mean_g) / (std + eps)``, with ``std`` the group's (paper,
``scale="group"``), the whole batch's (``"batch"``) or 1 (``"none"``, no eps). All-wrong groups: their boxed wrong
answers still get a positive advantage against the unboxed ones (faithful to the paper); ``correct=`` zeroes them.

Title matching (``same_title``): case-folded, MovieLens trailing articles moved to the front, year suffix
optional ("toy story" == "Toy Story (1995)"), but two different years never match (remakes stay distinct).
Mentions in reasoning (``mentions``) are case-sensitive whole titles (as written, without the year, or
article-first), word-bounded, and not part of a longer title that is also mentioned ("Up" is not "pick up";
"Toy Story" inside "Toy Story 2" is not a mention of "Toy Story" when "Toy Story 2" is a known title).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch

from trl_mars.data.movielens import normalize_title, short_title, split_year

BOXED_RE = re.compile(r"\\boxed\{([^}]+)\}")
FORMAT_OK, FORMAT_BAD = 0.5, -0.5
NO_BOX_NDCG = -0.5
SEGMENT_MODES = ("line", "paragraph")


def extract_boxed(text: str) -> list[str] | None:
    """Titles in the first ``\\boxed{...}`` (split on ``;``, stripped, empties dropped); None without a box."""
    match = BOXED_RE.search(text)
    if match is None:
        return None
    return [t.strip() for t in match.group(1).split(";") if t.strip()]


def format_score(text: str) -> float:
    """+0.5 if the completion holds a non-empty ``\\boxed{}`` answer, else -0.5."""
    return FORMAT_OK if BOXED_RE.search(text) else FORMAT_BAD


def parse_ground_truth(value: str | Sequence[str]) -> list[str]:
    """Ground truth as a list of titles; a string is split on ``;`` (the verl/RecBench+ convention)."""
    titles = value.split(";") if isinstance(value, str) else list(value)
    return [t.strip() for t in titles if t and t.strip()]


def same_title(a: str, b: str) -> bool:
    """Whether two titles name the same item: normalised names equal and years equal when both are given."""
    (_, year_a), (_, year_b) = split_year(a), split_year(b)
    if year_a is not None and year_b is not None and year_a != year_b:
        return False
    return normalize_title(a) == normalize_title(b)


def dedupe_titles(titles: Sequence[str]) -> list[str]:
    """Titles in order, dropping any that names the same item as an earlier one."""
    out: list[str] = []
    for title in titles:
        if not any(same_title(title, kept) for kept in out):
            out.append(title)
    return out


def ndcg_at_k(predicted: Sequence[str], ground_truth: Sequence[str], k: int) -> float:
    """NDCG@k with binary relevance: sum_{i<k} rel_i / log2(i + 2), over IDCG = sum_{i<min(k,|gt|)} 1/log2(i + 2).

    Duplicate predictions count once; each ground-truth item can be hit once.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not ground_truth:
        raise ValueError("ground_truth is empty: NDCG needs at least one relevant title")
    unmatched = list(ground_truth)
    dcg = 0.0
    for rank, title in enumerate(dedupe_titles(predicted)[:k]):
        hit = next((g for g in unmatched if same_title(title, g)), None)
        if hit is not None:
            unmatched.remove(hit)
            dcg += 1.0 / math.log2(rank + 2)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(ground_truth))))
    return dcg / idcg


def ndcg_score(text: str, ground_truth: Sequence[str], k: int) -> float:
    """The NDCG@k reward term of a completion: NDCG of its boxed titles, or -0.5 without a box."""
    boxed = extract_boxed(text)
    return NO_BOX_NDCG if boxed is None else ndcg_at_k(boxed, ground_truth, k)


def qas(
    predicted_attributes: frozenset[str] | None, ground_truth_attributes: Sequence[frozenset[str] | None]
) -> float:
    """Query alignment: |A(p) & A*| / |A*| with A* the intersection over the known ground-truth items.

    0 when the prediction is unknown (None), no ground-truth item is known, or A* is empty.
    """
    known = [a for a in ground_truth_attributes if a is not None]
    if predicted_attributes is None or not known:
        return 0.0
    target = frozenset.intersection(*known)
    return len(predicted_attributes & target) / len(target) if target else 0.0


def pas(predicted_embedding: torch.Tensor | None, ground_truth_embeddings: Sequence[torch.Tensor | None]) -> float:
    """Preference alignment: max over known ground-truth items g of cos(M(p), M(g)); 0 if nothing is known."""
    known = [e for e in ground_truth_embeddings if e is not None]
    if predicted_embedding is None or not known:
        return 0.0
    sims = torch.nn.functional.cosine_similarity(predicted_embedding.unsqueeze(0), torch.stack(known), dim=-1)
    return float(sims.max())


def wrong_titles(text: str, ground_truth: Sequence[str], k: int = 1) -> list[str]:
    """Boxed titles matching no ground-truth title, when the answer is wrong: none of its first ``k`` boxed titles
    is right (NDCG@k = 0). Empty when there is no box or the answer is right (extra boxed titles included)."""
    boxed = dedupe_titles(extract_boxed(text) or [])
    if not boxed or ndcg_at_k(boxed, ground_truth, k) > 0:
        return []
    return [t for t in boxed if not any(same_title(t, g) for g in ground_truth)]


def _title_pattern(title: str) -> re.Pattern:
    """Word-bounded, case-sensitive pattern for a title as written, without its year, or article-first."""
    name, _ = split_year(title)
    forms = {title.strip(), name, short_title(title)}
    alternatives = "|".join(r"\s+".join(map(re.escape, f.split())) for f in sorted(forms, key=len, reverse=True) if f)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def mention_spans(text: str, title: str) -> list[tuple[int, int]]:
    """Character spans of the whole-title mentions of ``title`` in ``text`` (see ``_title_pattern``)."""
    return [m.span() for m in _title_pattern(title).finditer(text)]


def mentions(text: str, title: str, others: Sequence[str] = ()) -> bool:
    """Whether ``text`` mentions ``title`` as a whole title: a mention lying inside a longer mention of one of
    ``others`` (e.g. the candidates: "Toy Story" inside "Toy Story 2") does not count."""
    longer = [span for other in others if not same_title(other, title) for span in mention_spans(text, other)]
    return any(not any(c <= a and b <= d and d - c > b - a for c, d in longer) for a, b in mention_spans(text, title))


def segment_spans(text: str, mode: str = "line") -> list[tuple[int, int]]:
    """Character spans of the segments of ``text``: lines (split on newline) or paragraphs (blank-line separated)."""
    if mode not in SEGMENT_MODES:
        raise ValueError(f"segment mode must be one of {SEGMENT_MODES}, got {mode!r}")
    separator = re.compile(r"\n" if mode == "line" else r"\n[ \t]*\n")
    spans, start = [], 0
    for match in separator.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return spans


def penalised_spans(
    text: str, wrong: Sequence[str], mode: str = "line", others: Sequence[str] = ()
) -> list[tuple[int, int]]:
    """Spans of non-empty segments that mention a wrong title and do not hold the ``\\boxed`` answer
    (``others``: further known titles, e.g. the candidates, see ``mentions``)."""
    out = []
    for a, b in segment_spans(text, mode):
        segment = text[a:b]
        if segment.strip() and "\\boxed" not in segment and any(mentions(segment, t, others) for t in wrong):
            out.append((a, b))
    return out


def token_pieces(ids: Sequence[int], decode: Callable[[list[int]], str], window: int = 6) -> list[str]:
    """Text contributed by each token under incremental detokenisation (as in TGI/vLLM).

    A token that ends inside a multi-byte character contributes "" and the character goes to the token that
    completes it; ``"".join(pieces)`` is the decoded text.
    """
    pieces: list[str] = []
    prefix, read = 0, 0
    for t in range(len(ids)):
        before = decode(list(ids[prefix:read]))
        after = decode(list(ids[prefix : t + 1]))
        if len(after) > len(before) and not after.endswith("\ufffd"):
            pieces.append(after[len(before) :])
            prefix, read = max(0, t + 1 - window), t + 1
        else:
            pieces.append("")
    return pieces


def raae_token_rewards(
    reward: float, pieces: Sequence[str], spans: Sequence[tuple[int, int]], penalty: float
) -> list[float]:
    """Per-token rewards: ``reward - penalty * |reward|`` for tokens whose text overlaps a penalised span."""
    penalised = reward - penalty * abs(reward)
    out, pos = [], 0
    for piece in pieces:
        start, end = pos, pos + len(piece)
        hit = any(start < b and a < max(end, start + 1) for a, b in spans)
        out.append(penalised if hit else reward)
        pos = end
    return out


SCALE_MODES = ("group", "batch", "none")


def raae_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    num_generations: int,
    eps: float = 1e-6,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    row_offset: int = 0,
    scale: str = "group",
    correct: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-level group normalisation ``A_{i,t} = (r_{i,t} - mean_g) / (std + eps)`` over valid tokens.

    ``token_rewards``/``mask`` are this process's (B, T) rows; ``gather`` concatenates per-row statistics of
    all processes (process order), and ``row_offset`` is where this process's rows start in that order, so
    groups split across processes use global statistics. ``mean_g`` is over the valid tokens of all G
    completions of a prompt; ``std`` is their (population) std for ``scale="group"`` (the paper), the std of all
    valid tokens of the gathered batch for ``"batch"``, and no scaling (``A = r - mean_g``) for ``"none"``
    (TRL's ``scale_rewards`` values). With ``correct`` (B,) bools, a group with no correct completion gets
    advantage 0. Computed in float64; invalid tokens get advantage 0.

    >>> r = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    >>> raae_advantages(r, torch.ones(2, 2), 2, scale="none").tolist()
    [[0.5, 0.5], [-0.5, -0.5]]
    >>> raae_advantages(r, torch.ones(2, 2), 2, correct=torch.tensor([False, False])).tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    if scale not in SCALE_MODES:
        raise ValueError(f"scale must be one of {SCALE_MODES}, got {scale!r}")
    m = mask.to(torch.float64)
    r = token_rewards.to(torch.float64) * m
    right = torch.ones(m.shape[0], dtype=torch.float64, device=m.device) if correct is None else correct.to(m)
    stats = torch.stack([r.sum(1), (r * r).sum(1), m.sum(1), right], dim=1)
    all_stats = gather(stats) if gather is not None else stats
    if all_stats.shape[0] % num_generations:
        raise ValueError(f"{all_stats.shape[0]} rows are not whole groups of num_generations={num_generations}")
    group = all_stats.view(-1, num_generations, 4).sum(1)

    def moments(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = sums[..., 2].clamp_min(1.0)
        mean = sums[..., 0] / count
        return mean, (sums[..., 1] / count - mean**2).clamp_min(0.0).sqrt()

    mean, std = moments(group)
    if scale == "batch":
        std = moments(all_stats.sum(0))[1].expand_as(mean)
    denominator = torch.ones_like(std) if scale == "none" else std + eps
    keep = (group[:, 3] > 0).to(torch.float64)
    rows = slice(row_offset, row_offset + token_rewards.shape[0])
    per_row = [x.repeat_interleave(num_generations)[rows].unsqueeze(1) for x in (mean, denominator, keep)]
    advantages = (token_rewards.to(torch.float64) - per_row[0]) / per_row[1]
    advantages = torch.where((per_row[2] * m) > 0, advantages, torch.zeros_like(advantages))
    return advantages.to(token_rewards.dtype)
