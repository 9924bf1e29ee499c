"""Readable PyTorch reference for mixture-of-depths attention: the correctness oracle of every backend."""

from __future__ import annotations

import torch

from trl_mars.ops.moda.utils import MoDAInputs, check_inputs, sequence_ids


def sequence_visibility(
    T: int, causal: bool, cu_seqlens: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean [T, T] map of which key j query t may see in the sequence part (None: everything).

    Visible iff j and t belong to the same packed sequence and, when causal, j <= t.
    """
    visible = torch.ones(T, T, dtype=torch.bool, device=device).tril() if causal else None
    if cu_seqlens is not None:
        ids = sequence_ids(cu_seqlens)
        same = ids[:, None] == ids[None, :]
        visible = same if visible is None else visible & same
    return visible


def naive_moda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    depth_k: torch.Tensor | None,
    depth_v: torch.Tensor | None,
    n_depth: int,
    cu_seqlens: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    depth_gain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""MoDA in O(T^2) memory, computed in fp32 (fp64 for fp64 inputs).

    With query head h reading key/value head floor(h / G) (Hugging Face GQA layout), s the scale and
    L = n_depth depth slots per token:

    .. math::
        z_{t,j} = s\, q_t \cdot k_j \ (j \le t),\qquad \tilde z_{t,i} = s\, q_t \cdot \tilde k_{t,i} \ (i < L),

        o_t = \frac{\sum_j e^{z_{t,j}} v_j + \sum_i e^{\tilde z_{t,i}} \tilde v_{t,i}}
                   {\sum_j e^{z_{t,j}} + \sum_i e^{\tilde z_{t,i}}},\qquad
        \mathrm{lse}_t = \log\Big(\sum_j e^{z_{t,j}} + \sum_i e^{\tilde z_{t,i}}\Big).

    With a depth gain lambda_h >= 0 per query head, every depth term e^{z~} above becomes lambda_h e^{z~} (a depth
    logit bias log lambda_h; lambda = 1 is the paper's MoDA, lambda = 0 plain attention, with a finite gradient).
    Token t only sees its own depth slots; the sequence part is causal (or not) within each packed sequence.

    Args:
        q: [B, T, HQ, K] queries.
        k, v: [B, T, H, K] / [B, T, H, V] sequence keys and values, HQ = G * H.
        depth_k, depth_v: [B, T, Lmax, H, K] / [B, T, Lmax, H, V] depth buffers; slots [0, n_depth) are read.
        n_depth: number of depth slots per token.
        cu_seqlens: [N + 1] cumulative lengths of packed sequences (B must be 1).
        causal: causal mask in the sequence part.
        scale: logit scale, K ** -0.5 by default.
        depth_gain: [HQ] gains lambda_h >= 0 of the depth terms (None: all 1).

    Returns:
        o [B, T, HQ, V] in q's dtype and the natural-log lse [B, T, HQ] (fp32, fp64 for fp64 inputs).
    """
    B, T, HQ, K = q.shape
    H = k.shape[2]
    scale = K**-0.5 if scale is None else scale
    check_inputs(MoDAInputs(q, k, v, depth_k, depth_v, n_depth, cu_seqlens, causal, scale, depth_gain))
    f = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    qf = q.to(f).view(B, T, H, HQ // H, K)
    s = torch.einsum("bthgk,bshk->bhgts", qf, k.to(f)) * scale
    visible = sequence_visibility(T, causal, cu_seqlens, q.device)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    weight = torch.ones_like(s)
    if n_depth > 0:
        s_depth = torch.einsum("bthgk,btlhk->bhgtl", qf, depth_k[:, :, :n_depth].to(f)) * scale
        gain = torch.ones(HQ, dtype=f, device=q.device) if depth_gain is None else depth_gain.to(f)
        weight = torch.cat([weight, gain.view(1, H, HQ // H, 1, 1).expand_as(s_depth)], -1)
        s = torch.cat([s, s_depth], -1)
    # softmax with weights: p = w e^s / sum(w e^s), written so that w = 0 has a finite gradient
    m = s.amax(-1, keepdim=True).detach()
    e = weight * torch.exp(s - m)
    normaliser = e.sum(-1, keepdim=True)
    p = e / normaliser
    o = torch.einsum("bhgts,bshv->bthgv", p[..., :T], v.to(f))
    if n_depth > 0:
        o = o + torch.einsum("bhgtl,btlhv->bthgv", p[..., T:], depth_v[:, :, :n_depth].to(f))
    lse = (m + normaliser.log()).squeeze(-1).permute(0, 3, 1, 2).reshape(B, T, HQ)
    return o.reshape(B, T, HQ, -1).to(q.dtype), lse
