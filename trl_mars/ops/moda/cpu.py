"""Fast CPU backend: fused flash attention for the sequence part, merged with the depth part through the lse.

The sequence part runs ATen's CPU flash-attention kernels (GQA-aware, O(T) memory) per packed sequence and
returns its own log-sum-exp lse_s. The depth part of token t only involves its own L slots, so its logits
z~ [B, T, HQ, L] are cheap; the joint softmax is recovered exactly by

    lse = logaddexp(lse_s, logsumexp(z~)),   o = exp(lse_s - lse) * o_s + sum_i exp(z~_i - lse) * v~_i.

The backward pass feeds the joint o and lse to the flash backward kernel, whose recomputed probabilities
exp(s q.k - lse) and delta = rowsum(dO * O) are then exactly the sequence block of the joint softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trl_mars.ops.moda.utils import MoDAInputs

_flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _segments(T: int, cu_seqlens: Tensor | None) -> list[tuple[int, int]]:
    """Token ranges [bos, eos) of the packed sequences (the whole axis when not packed)."""
    if cu_seqlens is None:
        return [(0, T)]
    bounds = cu_seqlens.tolist()
    return [(bos, eos) for bos, eos in zip(bounds[:-1], bounds[1:]) if eos > bos]


def _heads_first(*xs: Tensor) -> list[Tensor]:
    """[B, T, H, d] -> [B, H, T, d] views, the layout of the ATen kernels."""
    return [x.transpose(1, 2) for x in xs]


def _sequence_fwd(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """Sequence-only attention: o_s [B, T, HQ, V] and its natural-log lse_s [B, T, HQ] (fp32)."""
    B, T, HQ, _ = q.shape
    o = q.new_empty(B, T, HQ, v.shape[-1])
    lse = q.new_empty(B, T, HQ, dtype=torch.float32)
    for bos, eos in _segments(T, cu_seqlens):
        o_seg, lse_seg = _flash_fwd(
            *_heads_first(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos]), 0.0, causal, scale=scale
        )
        o[:, bos:eos] = o_seg.transpose(1, 2)
        lse[:, bos:eos] = lse_seg.transpose(1, 2)
    return o, lse


def _sequence_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    do: Tensor,
    cu_seqlens: Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the sequence block of the joint softmax whose output and lse are o, lse."""
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for bos, eos in _segments(q.shape[1], cu_seqlens):
        seg = slice(bos, eos)
        grads = _flash_bwd(
            *_heads_first(do[:, seg], q[:, seg], k[:, seg], v[:, seg], o[:, seg], lse[:, seg]),
            0.0,
            causal,
            scale=scale,
        )
        for out, grad in zip((dq, dk, dv), grads):
            out[:, seg] = grad.transpose(1, 2)
    return dq, dk, dv


def _depth_logits(q: Tensor, depth_k: Tensor, n_depth: int, scale: float) -> Tensor:
    """z~[b, t, h, g, i] = s * q[b, t, h * G + g] . depth_k[b, t, i, h] in fp32: [B, T, H, G, n_depth]."""
    B, T, HQ, K = q.shape
    H = depth_k.shape[3]
    qg = q.float().view(B, T, H, HQ // H, K)
    return torch.einsum("bthgk,btlhk->bthgl", qg, depth_k[:, :, :n_depth].float()) * scale


def cpu_moda_fwd(x: MoDAInputs) -> tuple[Tensor, Tensor]:
    """Forward pass: (o [B, T, HQ, V] in q's dtype, natural-log lse [B, T, HQ] in fp32)."""
    o_seq, lse_seq = _sequence_fwd(x.q, x.k, x.v, x.cu_seqlens, x.causal, x.scale)
    if x.n_depth == 0:
        return o_seq, lse_seq
    B, T, HQ, V = o_seq.shape
    z = _depth_logits(x.q, x.depth_k, x.n_depth, x.scale)
    lse = torch.logaddexp(lse_seq, z.logsumexp(-1).view(B, T, HQ))
    p = torch.exp(z - lse.view(*z.shape[:-1], 1))
    o_depth = torch.einsum("bthgl,btlhv->bthgv", p, x.depth_v[:, :, : x.n_depth].float()).reshape(B, T, HQ, V)
    o = o_seq.float() * torch.exp(lse_seq - lse)[..., None] + o_depth
    return o.to(x.q.dtype), lse


def cpu_moda_bwd(
    x: MoDAInputs, o: Tensor, lse: Tensor, do: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Backward pass: (dq, dk, dv, d depth_k, d depth_v), the depth gradients [B, T, n_depth, H, d] or None.

    With P the joint probabilities and delta_t = do_t . o_t: dS = P * (dO V^T - delta); the depth block gives
    dq += s dS~ K~, dK~ = s dS~^T q, dV~ = P~^T dO, each token touching only its own slots.
    """
    q, n = x.q, x.n_depth
    dq, dk, dv = _sequence_bwd(q, x.k, x.v, o, lse, do, x.cu_seqlens, x.causal, x.scale)
    if n == 0:
        return dq, dk, dv, None, None
    B, T, HQ, K = q.shape
    z = _depth_logits(q, x.depth_k, n, x.scale)
    p = torch.exp(z - lse.view(*z.shape[:-1], 1))
    do_g = do.float().view(*z.shape[:-1], -1)
    delta = (do_g * o.float().view_as(do_g)).sum(-1, keepdim=True)
    dp = torch.einsum("bthgv,btlhv->bthgl", do_g, x.depth_v[:, :, :n].float())
    ds = p * (dp - delta) * x.scale
    dq_depth = torch.einsum("bthgl,btlhk->bthgk", ds, x.depth_k[:, :, :n].float()).reshape(B, T, HQ, K)
    d_depth_k = torch.einsum("bthgl,bthgk->btlhk", ds, q.float().view(*z.shape[:-1], K))
    d_depth_v = torch.einsum("bthgl,bthgv->btlhv", p, do_g)
    return (dq.float() + dq_depth).to(q.dtype), dk, dv, d_depth_k.to(x.depth_k.dtype), d_depth_v.to(x.depth_v.dtype)
