"""Autograd Function and public entry point of mixture-of-depths attention."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch.autograd.function import once_differentiable

from trl_mars.ops.moda.utils import MoDAInputs, check_inputs

if TYPE_CHECKING:
    from trl_mars.ops.moda.depth import DepthKVBuffer

Backend = Literal["auto", "triton", "cpu"]


def resolve_backend(backend: Backend, device: torch.device) -> tuple[Callable, Callable]:
    """(forward, backward) functions of a backend; "auto" is Triton on CUDA and the CPU path elsewhere.

    "triton" on CPU tensors needs TRITON_INTERPRET=1 set before the kernels are first imported.
    """
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu"
    if backend == "cpu":
        from trl_mars.ops.moda.cpu import cpu_moda_bwd, cpu_moda_fwd

        return cpu_moda_fwd, cpu_moda_bwd
    if backend == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise RuntimeError("the Triton MoDA backend needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        try:
            import triton  # noqa: F401
        except ImportError as err:  # ops import nothing of ours beyond ops: the extras message, inlined
            raise ImportError("the Triton MoDA backend needs triton: pip install 'trl-mars[moda]'") from err
        from trl_mars.ops.moda.parallel import parallel_moda_bwd, parallel_moda_fwd

        return parallel_moda_fwd, parallel_moda_bwd
    raise ValueError(f"unknown MoDA backend {backend!r}; expected 'auto', 'triton' or 'cpu'")


def _pad_slots(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Gradient of a whole depth buffer from the gradient of its first n_depth slots (zero elsewhere)."""
    full = torch.zeros_like(like)
    if grad is not None:
        full[:, :, : grad.shape[2]] = grad
    return full


class MoDAFunction(torch.autograd.Function):
    """o, lse = MoDA(q, k, v, depth_k[:, :, :n_depth], depth_v[:, :, :n_depth]); lse is not differentiable.

    With `grad_sink` (a DepthKVBuffer owning depth_k / depth_v) the depth gradients are accumulated into the
    buffer's gradient instead of being returned; the buffer hands them to the tensors it was filled from.
    """

    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        depth_k: torch.Tensor | None,
        depth_v: torch.Tensor | None,
        n_depth: int,
        cu_seqlens: torch.Tensor | None,
        causal: bool,
        scale: float,
        backend: Backend,
        grad_sink: DepthKVBuffer | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fwd, ctx.bwd = resolve_backend(backend, q.device)
        x = MoDAInputs(
            q.contiguous(), k.contiguous(), v.contiguous(), depth_k, depth_v, n_depth, cu_seqlens, causal, scale
        )
        o, lse = fwd(x)
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(x.q, x.k, x.v, o, lse)
        # the depth buffers are held by reference, not version-checked: a grad sink keeps writing later slots
        ctx.inputs = x._replace(q=None, k=None, v=None)
        ctx.grad_sink = grad_sink
        return o, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do: torch.Tensor, _dlse: torch.Tensor | None):
        q, k, v, o, lse = ctx.saved_tensors
        x = ctx.inputs._replace(q=q, k=k, v=v)
        dq, dk, dv, d_depth_k, d_depth_v = ctx.bwd(x, o, lse, do.contiguous())
        if ctx.grad_sink is not None:
            ctx.grad_sink.accumulate_grad(d_depth_k, d_depth_v)
            d_depth_k = d_depth_v = None
        elif x.depth_k is not None:
            d_depth_k = _pad_slots(d_depth_k, x.depth_k) if ctx.needs_input_grad[3] else None
            d_depth_v = _pad_slots(d_depth_v, x.depth_v) if ctx.needs_input_grad[4] else None
        return dq, dk, dv, d_depth_k, d_depth_v, None, None, None, None, None, None


def moda_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    depth_k: torch.Tensor | None = None,
    depth_v: torch.Tensor | None = None,
    n_depth: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mixture-of-depths attention: one softmax over the sequence keys and the token's own depth slots.

    For query head h (key/value head floor(h / G), Hugging Face GQA layout) of token t, with s the scale:

    .. math::
        o_t = \mathrm{softmax}\big([\, s\,q_t K_{\le t}^\top ;\ s\,q_t \tilde K_t^\top \,]\big)
              \,[\, V_{\le t} ;\ \tilde V_t \,],

    where K, V are the layer's sequence keys/values and K~_t = depth_k[:, t, :n_depth], V~_t = depth_v[:, t,
    :n_depth] the depth slots of token t only. With n_depth = 0 this is ordinary (GQA) attention.

    Args:
        q: [B, T, HQ, K] queries.
        k, v: [B, T, H, K] / [B, T, H, V] keys and values, HQ = G * H for any G >= 1.
        depth_k, depth_v: [B, T, Lmax, H, K] / [B, T, Lmax, H, V] token-major depth buffers (may be None when
            n_depth = 0); only the prefix of n_depth slots is read, so a preallocated buffer costs no copy.
        n_depth: depth slots to read per token; defaults to all Lmax slots.
        cu_seqlens: [N + 1] int cumulative lengths of the sequences packed along T (B = 1); masks the sequence
            part per sequence (the depth part is per token and unaffected).
        causal: causal sequence mask (keys j <= t).
        scale: logit scale, K ** -0.5 by default.
        backend: "auto" (Triton on CUDA, the CPU path elsewhere), "triton" or "cpu".

    Returns:
        o [B, T, HQ, V] in q's dtype, and the natural-log log-sum-exp [B, T, HQ] (fp32, not differentiable).
    """
    if n_depth is None:
        n_depth = 0 if depth_k is None else depth_k.shape[2]
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    check_inputs(MoDAInputs(q, k, v, depth_k, depth_v, n_depth, cu_seqlens, causal, scale))
    return MoDAFunction.apply(q, k, v, depth_k, depth_v, n_depth, cu_seqlens, causal, scale, backend, None)
