"""Preallocated token-major depth KV buffer shared by the layers of one forward pass."""

from __future__ import annotations

import torch

from trl_mars.ops.moda.attention import Backend, MoDAFunction


class _DepthWrite(torch.autograd.Function):
    """Identity on `carrier` that stores (k, v) in one depth slot; backward hands k, v the slot's gradient.

    Every reader of the slot (a later layer's attention) lies downstream of `carrier` on the residual stream,
    so when carrier's gradient arrives all readers have accumulated into the buffer's gradient.
    """

    @staticmethod
    def forward(ctx, carrier: torch.Tensor, k: torch.Tensor, v: torch.Tensor, buffer: DepthKVBuffer, slot: int):
        buffer.k[:, :, slot] = k
        buffer.v[:, :, slot] = v
        ctx.buffer, ctx.slot = buffer, slot
        return carrier.view_as(carrier)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        d_k, d_v = ctx.buffer.slot_grad(ctx.slot)
        return grad, d_k, d_v, None, None


class DepthKVBuffer:
    """Depth keys/values [B, T, Lmax, H, d] of one forward pass, filled slot by slot as the layers run.

    Slot i of token t holds the i-th depth entry written for t (e.g. layer l's attention K/V in slot 2l and its
    FFN K/V in slot 2l + 1). A layer reading n slots reads the prefix [:, :, :n] in place, so the buffer costs
    O(B T Lmax H d) once instead of re-stacking O(L^2) per-layer copies. The buffer also owns the gradient of
    the slots: readers accumulate into it in backward, and each slot passes its total to the written tensors.
    Slot writes are idempotent, so activation checkpointing may replay a layer.
    """

    def __init__(
        self,
        batch_size: int,
        seq_len: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        value_dim: int | None = None,
    ) -> None:
        shape = (batch_size, seq_len, num_slots, num_kv_heads)
        self.k = torch.empty(*shape, head_dim, dtype=dtype, device=device)
        self.v = torch.empty(*shape, value_dim or head_dim, dtype=dtype, device=device)
        self.grad_k: torch.Tensor | None = None
        self.grad_v: torch.Tensor | None = None
        self.grad_slots = 0  # slots [0, grad_slots) of grad_k / grad_v hold a gradient; the rest is unwritten

    def write(self, carrier: torch.Tensor, slot: int, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v [B, T, H, d] in `slot`; returns `carrier` (a tensor every later reader depends on)."""
        return _DepthWrite.apply(carrier, k, v, self, slot)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        n_depth: int,
        cu_seqlens: torch.Tensor | None = None,
        causal: bool = True,
        scale: float | None = None,
        backend: Backend = "auto",
        depth_gain: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MoDA output [B, T, HQ, V] over the sequence (q, k, v) and the first n_depth slots of the buffer."""
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        args = (q, k, v, self.k, self.v, depth_gain, n_depth, cu_seqlens, causal, scale, backend, self)
        o, _ = MoDAFunction.apply(*args)
        return o

    def grad_target(self, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(grad_k, grad_v, n_init) for a reader of the first n slots: it accumulates into slots [0, n_init) and
        writes slots [n_init, n). The gradient buffers are allocated once, uninitialised (no zero-fill)."""
        if self.grad_k is None:
            self.grad_k, self.grad_v = torch.empty_like(self.k), torch.empty_like(self.v)
        n_init, self.grad_slots = self.grad_slots, max(self.grad_slots, n)
        return self.grad_k, self.grad_v, n_init

    def slot_grad(self, slot: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Total gradient of one slot, or (None, None) when no reader has propagated one."""
        if slot >= self.grad_slots:
            return None, None
        return self.grad_k[:, :, slot], self.grad_v[:, :, slot]
