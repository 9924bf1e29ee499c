"""MoDA for short query blocks against a KV cache (decoding): SDPA over the cache, depth merged by the lse."""

from __future__ import annotations

import torch
from torch import Tensor

from trl_mars.ops.moda.cpu import merge_depth

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def sequence_attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, visible: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Attention of q [B, Tq, HQ, K] over k, v [B, Tk, H, *] (GQA) under visible [B, Tq, Tk]: (o, lse fp32).

    On CPU this is SDPA's flash kernel (GQA-aware, reads the cache in place, returns its log-sum-exp); elsewhere
    a folded matmul, the G query heads of a KV head stacked as rows, so the cache is read once and never copied.
    """
    B, Tq, HQ, K = q.shape
    H = k.shape[2]
    bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill(~visible, float("-inf"))
    if q.device.type == "cpu":
        qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
        o, lse = _flash_cpu(qh, kh, vh, 0.0, False, attn_mask=bias[:, None], scale=scale)
        return o.transpose(1, 2), lse.transpose(1, 2).float()
    G = HQ // H
    qf = q.view(B, Tq, H, G, K).permute(0, 2, 1, 3, 4).reshape(B, H, Tq * G, K)
    s = (qf @ k.permute(0, 2, 3, 1)).float() * scale + bias.repeat_interleave(G, 1)[:, None].float()
    lse = s.logsumexp(-1)
    o = (torch.exp(s - lse[..., None]).to(v.dtype) @ v.transpose(1, 2)).view(B, H, Tq, G, -1)
    return o.permute(0, 2, 1, 3, 4).reshape(B, Tq, HQ, -1), lse.view(B, H, Tq, G).permute(0, 2, 1, 3).reshape(
        B, Tq, HQ
    )


def masked_moda_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    depth_k: Tensor | None,
    depth_v: Tensor | None,
    n_depth: int,
    visible: Tensor,
    scale: float | None = None,
    depth_gain: Tensor | None = None,
) -> Tensor:
    """MoDA for Tq queries against Tk cached keys: the sequence part over the cache, the depth part merged exactly.

    The sequence part is one attention call over the cache as it is (`sequence_attention_with_lse`), giving o_s
    and lse_s; the query tokens' own depth slots are merged through the log-sum-exp as in the training path
    (`merge_depth`). Memory is O(Tq Tk) for the mask only; the cache is never copied.

    Args:
        q: [B, Tq, HQ, K] queries.
        k, v: [B, Tk, H, K] / [B, Tk, H, V] sequence keys and values (cache included; views are fine).
        depth_k, depth_v: [B, Tq, Lmax, H, K] / [B, Tq, Lmax, H, V] depth buffers of the query tokens.
        n_depth: depth slots per token.
        visible: [B, Tq, Tk] bool, True where query i may attend to key j (each row sees at least one key).
        scale: logit scale, K ** -0.5 by default.
        depth_gain: [HQ] gains of the depth terms (None: all 1).

    Returns:
        o [B, Tq, HQ, V] in q's dtype.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, lse = sequence_attention_with_lse(q, k, v, visible, scale)
    if n_depth == 0:
        return o
    return merge_depth(q, o, lse, depth_k, depth_v, n_depth, scale, depth_gain)[0]
