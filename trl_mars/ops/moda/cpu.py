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


def _gain(depth_gain: Tensor | None, shape: torch.Size) -> Tensor | float:
    """Depth gains lambda broadcastable to the depth logits [B, T, H, G, L] (1.0 when there are none)."""
    if depth_gain is None:
        return 1.0
    return depth_gain.float().view(1, 1, shape[2], shape[3], 1)


def merge_depth(
    q: Tensor,
    o_seq: Tensor,
    lse_seq: Tensor,
    depth_k: Tensor,
    depth_v: Tensor,
    n_depth: int,
    scale: float,
    depth_gain: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Joint (o in q's dtype, lse fp32) from the sequence part's o_seq [B, T, HQ, V], lse_seq [B, T, HQ] and the
    depth slots: lse = logaddexp(lse_seq, logsumexp(z~) + log lambda), o = e^(lse_seq - lse) o_seq + sum_i
    lambda e^(z~_i - lse) v~_i."""
    B, T, HQ, V = o_seq.shape
    z = _depth_logits(q, depth_k, n_depth, scale)
    gain = _gain(depth_gain, z.shape)
    lse_depth = z.logsumexp(-1, keepdim=True)
    if depth_gain is not None:
        lse_depth = lse_depth + torch.log(gain)  # -inf for lambda = 0
    lse = torch.logaddexp(lse_seq, lse_depth.view(B, T, HQ))
    p = torch.exp(z - lse.view(*z.shape[:-1], 1)) * gain
    o_depth = torch.einsum("bthgl,btlhv->bthgv", p, depth_v[:, :, :n_depth].float()).reshape(B, T, HQ, V)
    o = o_seq.float() * torch.exp(lse_seq - lse)[..., None] + o_depth
    return o.to(q.dtype), lse


def cpu_moda_fwd(x: MoDAInputs) -> tuple[Tensor, Tensor]:
    """Forward pass: (o [B, T, HQ, V] in q's dtype, natural-log lse [B, T, HQ] in fp32)."""
    o_seq, lse_seq = _sequence_fwd(x.q, x.k, x.v, x.cu_seqlens, x.causal, x.scale)
    if x.n_depth == 0:
        return o_seq, lse_seq
    return merge_depth(x.q, o_seq, lse_seq, x.depth_k, x.depth_v, x.n_depth, x.scale, x.depth_gain)


def write_depth_grad(grad: Tensor, d: Tensor, n_init: int) -> None:
    """Slots [0, n_init) of `grad` [B, T, Lmax, H, d] accumulate d [B, T, n, H, d]; slots [n_init, n) take it."""
    n = d.shape[2]
    if n_init > 0:
        grad[:, :, : min(n_init, n)] += d[:, :, :n_init]
    if n > n_init:
        grad[:, :, n_init:n] = d[:, :, n_init:]


def cpu_moda_bwd(
    x: MoDAInputs, o: Tensor, lse: Tensor, do: Tensor, grad_k: Tensor | None, grad_v: Tensor | None, n_init: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backward pass: (dq, dk, dv, d depth_gain); the depth gradients go into grad_k / grad_v (`write_depth_grad`).

    With P the joint probabilities and delta_t = do_t . o_t: dS = P * (dO V^T - delta); the depth block gives
    dq += s dS~ K~, dK~ = s dS~^T q, dV~ = P~^T dO, each token touching only its own slots, and with
    P~ = lambda e^{z~ - lse}: d lambda_h = sum_{t, i} e^{z~ - lse} (dP~ - delta), finite at lambda = 0.
    grad_k / grad_v are [B, T, Lmax, H, d] (None: depth gradients not needed).
    """
    q, n = x.q, x.n_depth
    dq, dk, dv = _sequence_bwd(q, x.k, x.v, o, lse, do, x.cu_seqlens, x.causal, x.scale)
    if n == 0:
        return dq, dk, dv, None if x.depth_gain is None else torch.zeros_like(x.depth_gain)
    B, T, HQ, K = q.shape
    z = _depth_logits(q, x.depth_k, n, x.scale)
    gain = _gain(x.depth_gain, z.shape)
    p_unit = torch.exp(z - lse.view(*z.shape[:-1], 1))
    p = p_unit * gain
    do_g = do.float().view(*z.shape[:-1], -1)
    delta = (do_g * o.float().view_as(do_g)).sum(-1, keepdim=True)
    dp = torch.einsum("bthgv,btlhv->bthgl", do_g, x.depth_v[:, :, :n].float())
    ds_unit = p_unit * (dp - delta)
    d_gain = None if x.depth_gain is None else ds_unit.sum((0, 1, 4)).reshape(HQ).to(x.depth_gain.dtype)
    ds = ds_unit * gain * x.scale
    dq_depth = torch.einsum("bthgl,btlhk->bthgk", ds, x.depth_k[:, :, :n].float()).reshape(B, T, HQ, K)
    if grad_k is not None:
        write_depth_grad(grad_k, torch.einsum("bthgl,bthgk->btlhk", ds, q.float().view(*z.shape[:-1], K)), n_init)
        write_depth_grad(grad_v, torch.einsum("bthgl,bthgv->btlhv", p, do_g), n_init)
    return (dq.float() + dq_depth).to(q.dtype), dk, dv, d_gain
