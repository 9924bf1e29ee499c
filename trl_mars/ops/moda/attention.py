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


class MoDAFunction(torch.autograd.Function):
    """o, lse = MoDA(q, k, v, depth_k[:, :, :n_depth], depth_v[:, :, :n_depth], depth_gain); lse not differentiable.

    With `grad_sink` (a DepthKVBuffer owning depth_k / depth_v) the backends write the depth gradients straight
    into the buffer's gradient (accumulating over the slots an earlier reader already filled) instead of
    returning them; the buffer hands them to the tensors it was filled from.
    """

    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        depth_k: torch.Tensor | None,
        depth_v: torch.Tensor | None,
        depth_gain: torch.Tensor | None,
        n_depth: int,
        cu_seqlens: torch.Tensor | None,
        causal: bool,
        scale: float,
        backend: Backend,
        grad_sink: DepthKVBuffer | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fwd, ctx.bwd = resolve_backend(backend, q.device)
        gain = None if depth_gain is None else depth_gain.detach().float().contiguous()
        x = MoDAInputs(
            q.contiguous(), k.contiguous(), v.contiguous(), depth_k, depth_v, n_depth, cu_seqlens, causal, scale, gain
        )
        o, lse = fwd(x)
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(x.q, x.k, x.v, o, lse)
        # the depth buffers are held by reference, not version-checked: a grad sink keeps writing later slots
        ctx.inputs = x._replace(q=None, k=None, v=None)
        ctx.grad_sink = grad_sink
        ctx.gain_dtype = None if depth_gain is None else depth_gain.dtype
        return o, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do: torch.Tensor, _dlse: torch.Tensor | None):
        q, k, v, o, lse = ctx.saved_tensors
        x = ctx.inputs._replace(q=q, k=k, v=v)
        n, sink = x.n_depth, ctx.grad_sink
        grad_k = grad_v = None
        n_init = 0
        if n > 0 and sink is not None:
            grad_k, grad_v, n_init = sink.grad_target(n)
        elif n > 0 and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4]):
            grad_k, grad_v = torch.empty_like(x.depth_k), torch.empty_like(x.depth_v)
            grad_k[:, :, n:] = 0  # only the unread slots are zero-filled; the backend writes [0, n)
            grad_v[:, :, n:] = 0
        dq, dk, dv, d_gain = ctx.bwd(x, o, lse, do.contiguous(), grad_k, grad_v, n_init)
        if sink is not None:
            grad_k = grad_v = None
        if d_gain is not None:
            d_gain = d_gain.to(ctx.gain_dtype)
        return dq, dk, dv, grad_k, grad_v, d_gain, None, None, None, None, None, None


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
    depth_gain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mixture-of-depths attention: one softmax over the sequence keys and the token's own depth slots.

    For query head h (key/value head floor(h / G), Hugging Face GQA layout) of token t, with s the scale:

    .. math::
        o_t = \mathrm{softmax}\big([\, s\,q_t K_{\le t}^\top ;\ s\,q_t \tilde K_t^\top \,]\big)
              \,[\, V_{\le t} ;\ \tilde V_t \,],

    where K, V are the layer's sequence keys/values and K~_t = depth_k[:, t, :n_depth], V~_t = depth_v[:, t,
    :n_depth] the depth slots of token t only. With n_depth = 0 this is ordinary (GQA) attention. A depth gain
    lambda_h >= 0 scales head h's depth terms e^{z~} in the softmax (a depth logit bias log lambda_h).

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
        depth_gain: [HQ] gains lambda_h >= 0 of the depth terms (None: all 1, the paper's MoDA); differentiable,
            with a finite gradient at lambda = 0.

    Returns:
        o [B, T, HQ, V] in q's dtype, and the natural-log log-sum-exp [B, T, HQ] (fp32, not differentiable).
    """
    if n_depth is None:
        n_depth = 0 if depth_k is None else depth_k.shape[2]
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    check_inputs(MoDAInputs(q, k, v, depth_k, depth_v, n_depth, cu_seqlens, causal, scale, depth_gain))
    return MoDAFunction.apply(q, k, v, depth_k, depth_v, depth_gain, n_depth, cu_seqlens, causal, scale, backend, None)
