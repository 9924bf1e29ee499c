"""Shape checks and varlen helpers shared by the MoDA backends."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class MoDAInputs(NamedTuple):
    """One MoDA call as the backends receive it (layouts as in `moda_attention`; q, k, v contiguous)."""

    q: Tensor
    k: Tensor
    v: Tensor
    depth_k: Tensor | None
    depth_v: Tensor | None
    n_depth: int
    cu_seqlens: Tensor | None
    causal: bool
    scale: float
    depth_gain: Tensor | None = None


def check_inputs(x: MoDAInputs) -> None:
    """Validate the MoDA layouts: q [B, T, HQ, K], k [B, T, H, K], v [B, T, H, V], depth [B, T, Lmax, H, K|V]."""
    B, T, HQ, K = x.q.shape
    H = x.k.shape[2]
    if x.k.shape != (B, T, H, K) or x.v.shape[:3] != (B, T, H):
        raise ValueError(f"k/v must be [B, T, H, d] matching q {tuple(x.q.shape)}; got {x.k.shape}, {x.v.shape}")
    if HQ % H != 0:
        raise ValueError(f"query heads ({HQ}) must be a multiple of key/value heads ({H})")
    if x.n_depth > 0:
        if x.depth_k is None or x.depth_v is None:
            raise ValueError("n_depth > 0 needs depth_k and depth_v")
        dk, dv = x.depth_k.shape, x.depth_v.shape
        if dk[:2] != (B, T) or dk[3:] != (H, K) or dv[:4] != dk[:4]:
            raise ValueError(f"depth_k/depth_v must be [B, T, Lmax, H, d]; got {tuple(dk)}, {tuple(dv)}")
        if x.n_depth > dk[2]:
            raise ValueError(f"n_depth ({x.n_depth}) exceeds the depth buffer's {dk[2]} slots")
    if x.depth_gain is not None and tuple(x.depth_gain.shape) != (HQ,):
        raise ValueError(
            f"depth_gain must be [HQ] = [{HQ}] (one gain per query head), got {tuple(x.depth_gain.shape)}"
        )
    if x.cu_seqlens is not None and B != 1:
        raise ValueError(f"varlen inputs (cu_seqlens) must be packed with batch size 1, got {B}")


def random_inputs(
    batch: int,
    seq_len: int,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    num_slots: int,
    generator: torch.Generator | None = None,
    **to_kwargs,
) -> list[Tensor]:
    """Standard-normal [q, k, v, depth_k, depth_v] (for tests and benchmarks); `to_kwargs` go to `Tensor.to`."""
    B, T, D = batch, seq_len, head_dim
    shapes = [(B, T, q_heads, D), (B, T, kv_heads, D), (B, T, kv_heads, D)] + [(B, T, num_slots, kv_heads, D)] * 2
    return [torch.randn(shape, generator=generator).to(**to_kwargs) for shape in shapes]


def sequence_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Index of the packed sequence each token belongs to: [T] for cu_seqlens = [0, ..., T]."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)


def prepare_chunk_indices(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Rows (sequence index, chunk index within the sequence) for every chunk of every packed sequence: [N, 2]."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    n_chunks = torch.div(lengths + chunk_size - 1, chunk_size, rounding_mode="floor")
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), n_chunks)
    first = torch.cumsum(n_chunks, 0) - n_chunks
    chunk = torch.arange(len(seq), device=cu_seqlens.device) - first[seq]
    return torch.stack([seq, chunk], 1).to(torch.int32).contiguous()
