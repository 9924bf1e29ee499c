"""Loss pieces of TRACE (arXiv 2603.02929): reason, then compress the reasoning into one ``<|emb|>`` token.

For a query Q with target S = [R; ``<|emb|>``] (R = chain of thought, empty for simple queries):

- embedding: ``e = normalize(h_L[p - 1])`` where ``p`` is the position of the (last) ``<|emb|>`` token and ``h_L`` the
  last-layer hidden states, i.e. the state that *predicts* ``<|emb|>`` (the paper's "pre-token");
- ``L_gen = -(1/N) sum_t log P(y_t | y_<t, Q)`` over the N target tokens (R and ``<|emb|>``), prompt masked;
- ``L_ret = -(1/B) sum_i log softmax_j(cos(e_qi, e_cj) / tau)[i]`` over the (gathered) in-batch candidates, plus
  any hard negatives appended to the candidate pool;
- ``L = lambda_gen * L_gen + lambda_ret * L_ret``.

Only torch is imported here. The GradCache helpers (``embed_chunks`` / ``replay_chunks``) run an arbitrary
``embed_fn`` twice: once without gradients to get the embeddings, then chunk by chunk with gradients, back-propagating
the cached ``dL/de`` (Gao et al. 2021, as sentence-transformers' ``CachedMultipleNegativesRankingLoss``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100


def pre_token_positions(input_ids: torch.Tensor, emb_token_id: int) -> torch.Tensor:
    """Index of the token just before the *last* ``<|emb|>`` of each row, shape ``(B,)``.

    The last occurrence is used so that an instruction mentioning ``<|emb|>`` in the prompt does not count.
    """
    is_emb = input_ids == emb_token_id
    missing = ~is_emb.any(dim=1)
    if missing.any():
        raise ValueError(f"rows {missing.nonzero().flatten().tolist()} contain no <|emb|> token (id {emb_token_id})")
    seq_len = input_ids.shape[1]
    last = seq_len - 1 - is_emb.flip(dims=[1]).int().argmax(dim=1)
    if (last == 0).any():
        raise ValueError("<|emb|> is the first token of a row: there is no pre-token to pool")
    return last - 1


def pool_pre_token(hidden: torch.Tensor, input_ids: torch.Tensor, emb_token_id: int) -> torch.Tensor:
    """L2-normalised hidden state at the pre-``<|emb|>`` position: ``(B, T, H) -> (B, H)``."""
    positions = pre_token_positions(input_ids, emb_token_id)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]
    return F.normalize(pooled.float(), dim=-1)


def target_labels(input_ids: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Labels for left-padded rows ``[pad; prompt; target]``: the last ``target_lengths[i]`` ids, -100 elsewhere."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = positions.unsqueeze(0) >= input_ids.shape[1] - target_lengths.to(input_ids.device).unsqueeze(1)
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def generative_ce(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token CE ``-sum_t log P(labels[t] | h[t-1])`` over non-ignored labels, and their count.

    ``lm_head`` is applied only to the positions that predict a label, so the ``(B, T, V)`` logits never exist.
    """
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][selected]).float()
    loss_sum = F.cross_entropy(logits, targets[selected], reduction="sum")
    return loss_sum, selected.sum()


def info_nce(
    queries: torch.Tensor, candidates: torch.Tensor, temperature: float, negatives: torch.Tensor | None = None
) -> torch.Tensor:
    """In-batch InfoNCE query -> candidate: ``mean_i CE(cos(q_i, [c; n]) / tau, i)``.

    ``candidates[i]`` is the positive of ``queries[i]``; every other candidate and every row of ``negatives``
    (``(M, H)``, shared by all queries as in sentence-transformers) is a negative.
    """
    if queries.shape[0] != candidates.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {candidates.shape[0]} positive candidates")
    pool = candidates if negatives is None else torch.cat([candidates, negatives.reshape(-1, candidates.shape[-1])])
    logits = F.normalize(queries.float(), dim=-1) @ F.normalize(pool.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather rows of ``tensor`` from every rank (sizes may differ); this rank's rows keep their gradient.

    The other ranks' rows are constants here: their gradient is computed by the rank that owns them.
    """
    rank, world = _world()
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    parts = [g[:n] for g, n in zip(gathered, sizes)]
    parts[rank] = tensor
    return torch.cat(parts)


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in value, ``factor`` times the gradient: ``factor * x - (factor - 1) * x.detach()``."""
    return x if factor == 1 else factor * x - (factor - 1) * x.detach()


def gathered_info_nce(
    queries: torch.Tensor, candidates: torch.Tensor, temperature: float, negatives: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE over the global batch (queries, positives and negatives gathered from every rank).

    Its value is the single-process loss over the concatenated batch on every rank. Each rank only back-propagates
    into its own rows, so the gradient is scaled by the world size: after DDP averages gradients over ranks, the
    update equals the single-process one.
    """
    _, world = _world()
    gathered_negatives = None if negatives is None else gather_with_grad(negatives)
    loss = info_nce(gather_with_grad(queries), gather_with_grad(candidates), temperature, gathered_negatives)
    return scale_gradient(loss, world)


def chunk_slices(n: int, chunk_size: int | None) -> list[slice]:
    """``[0, n)`` cut into consecutive slices of at most ``chunk_size`` (one slice when ``chunk_size`` is None)."""
    step = n if not chunk_size else chunk_size
    return [slice(start, min(start + step, n)) for start in range(0, n, max(step, 1))]


@dataclass
class RandState:
    """CPU and CUDA RNG states, so that a GradCache replay sees the same dropout masks as the first pass."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor]

    @classmethod
    def capture(cls) -> RandState:
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        devices = list(range(len(self.cuda)))
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


EmbedFn = Callable[[slice], tuple[torch.Tensor, torch.Tensor]]
"""``embed_fn(rows) -> (embeddings (b, H), aux)``: embeds rows ``rows`` and returns a scalar loss term (e.g. the
summed generative CE of those rows; zero when there is none)."""


def embed_chunks(embed_fn: EmbedFn, n: int, chunk_size: int | None) -> tuple[torch.Tensor, float, list[RandState]]:
    """GradCache pass 1: embeddings of all ``n`` rows and the summed ``aux``, without gradients, chunk by chunk."""
    embeddings, aux_total, states = [], 0.0, []
    with torch.no_grad():
        for rows in chunk_slices(n, chunk_size):
            states.append(RandState.capture())
            emb, aux = embed_fn(rows)
            embeddings.append(emb.float())
            aux_total += float(aux)
    return torch.cat(embeddings), aux_total, states


def replay_chunks(
    embed_fn: EmbedFn,
    chunk_size: int | None,
    states: list[RandState],
    embedding_grad: torch.Tensor,
    aux_weight: float,
    grad_scale: torch.Tensor | float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    sync_last: bool = True,
) -> None:
    """GradCache pass 2: re-embed each chunk with gradients and back-propagate ``sum(e * dL/de) + aux_weight * aux``.

    The gradients this leaves on the parameters equal those of the un-chunked loss. ``no_sync`` (DDP's
    ``model.no_sync``) wraps every chunk except the last one when ``sync_last``.
    """
    slices = chunk_slices(embedding_grad.shape[0], chunk_size)
    for i, (rows, state) in enumerate(zip(slices, states)):
        last = sync_last and i == len(slices) - 1
        context = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
        with context, state.restored(), torch.enable_grad():  # a backward hook runs with grad mode off
            emb, aux = embed_fn(rows)
            surrogate = (emb.float() * embedding_grad[rows]).sum() + aux_weight * aux
            (surrogate * grad_scale).backward()
