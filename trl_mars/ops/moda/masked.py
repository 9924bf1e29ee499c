"""MoDA with an arbitrary sequence mask, for decoding against a KV cache (short query blocks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_moda_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    depth_k: torch.Tensor | None,
    depth_v: torch.Tensor | None,
    n_depth: int,
    visible: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """MoDA for Tq queries against Tk cached keys, as one SDPA call over the keys [K ; K~].

    The depth slots of the Tq query tokens are appended as Tq * n_depth extra keys, each visible only to its own
    token, so the single softmax of SDPA is exactly MoDA's joint softmax. Memory is O(Tq (Tk + Tq n_depth)),
    meant for decoding (Tq = 1), where the depth KV is the current token's and never cached.

    Args:
        q: [B, Tq, HQ, K] queries.
        k, v: [B, Tk, H, K] / [B, Tk, H, V] sequence keys and values (cache included).
        depth_k, depth_v: [B, Tq, Lmax, H, K] / [B, Tq, Lmax, H, V] depth buffers of the query tokens.
        n_depth: depth slots per token.
        visible: [B, Tq, Tk] bool, True where query i may attend to key j.
        scale: logit scale, K ** -0.5 by default.

    Returns:
        o [B, Tq, HQ, V] in q's dtype.
    """
    B, Tq, _, _ = q.shape
    if n_depth > 0:
        H = k.shape[2]
        k = torch.cat([k, depth_k[:, :, :n_depth].reshape(B, Tq * n_depth, H, -1)], 1)
        v = torch.cat([v, depth_v[:, :, :n_depth].reshape(B, Tq * n_depth, H, -1)], 1)
        own = torch.eye(Tq, dtype=torch.bool, device=q.device).repeat_interleave(n_depth, 1)
        visible = torch.cat([visible, own.expand(B, -1, -1)], -1)
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=visible[:, None],
        scale=scale,
        enable_gqa=True,
    )
    return o.transpose(1, 2)
