"""Triton kernels of mixture-of-depths attention (forward and backward), FlashAttention-2 style.

Tiling. A program owns BT consecutive tokens of one sequence and one key/value head h; its query tile holds
the G query heads h * G + g of those tokens in the Hugging Face layout, padded to GP = next_pow2(G) group
slots, so row r is token t0 + r // GP, head h * G + r % GP (rows with r % GP >= G are masked). Any G works,
q is read in place, and every token's query rows live in exactly one program.

Forward. One online softmax (running max m, normaliser acc, output o, base-2 logits pre-scaled by
s * log2(e)) runs over the causal key blocks of the sequence and then continues over the token's own depth
slots i < n_depth, read from the token-major buffer depth_k[b, t, i, h] (a prefix of [B, T, Lmax, H, d]).
Depth logits are row-wise dot products q_r . kd[t(r), i], so only the tile's own depth rows are read.

Backward. The dq kernel recomputes P = exp2(s log2e q k - lse log2e), dS = P (dO V^T - delta) with
delta = rowsum(dO * O), over the sequence and then the depth slots; since the program owns all query rows of
its tokens, it also writes d depth_k = s sum_g dS~ q and d depth_v = sum_g P~ dO directly (no atomics).
A key-parallel kernel accumulates the sequence dK, dV over query tiles, summing the G heads inside the tile.

Accumulation is fp32 throughout; fully masked (padding) rows are guarded against -inf - -inf = NaN.
Set TRITON_INTERPRET=1 before importing this module to run the kernels on CPU tensors (fp32 / fp16 only:
the interpreter's bf16 dot is broken).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from trl_mars.ops.moda.utils import MoDAInputs, prepare_chunk_indices

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Query rows (tokens x padded group slots) per program; the interpreter prefers few large programs.
TILE_ROWS = 64


def _autotune(key: list[str]):
    """Autotune warps / stages on a GPU; the interpreter ignores both, so it runs each kernel once."""
    if INTERPRET:
        return lambda fn: fn
    configs = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3)]
    return triton.autotune(configs=configs, key=key)


@triton.jit
def _locate(i_t, i_b, T, cu_seqlens, chunk_indices, IS_VARLEN: tl.constexpr):
    """(tile index inside its sequence, offset of the sequence's first token, sequence length)."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_t * 2).to(tl.int32)
        i_t = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = (i_b * T).to(tl.int64)
    return i_t, bos, T


@triton.jit
def _program(T, cu_seqlens, chunk_indices, H: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(tile index in its sequence, key/value head, first-token offset, sequence length) of this program."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _locate(i_t, i_bh // H, T, cu_seqlens, chunk_indices, IS_VARLEN)
    return i_t, i_bh % H, bos, T


@triton.jit
def _query_rows(i_t, i_h, bos, T, H: tl.constexpr, G: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr):
    """Token index, validity and [B*T*HQ] row index of the BT * GP query rows of tile i_t (head h * G + g)."""
    o_r = tl.arange(0, BT * GP)
    o_q = i_t * BT + o_r // GP
    o_g = o_r % GP
    return o_q, (o_q < T) & (o_g < G), (bos + o_q) * (H * G) + i_h * G + o_g


@triton.jit
def _load_rows(ptr, rows, m_rows, cols, D: tl.constexpr):
    """[len(rows), len(cols)] tile of a row-major [*, D] tensor, zero outside the mask."""
    return tl.load(ptr + rows[:, None] * D + cols[None, :], mask=m_rows[:, None] & (cols < D)[None, :], other=0)


@triton.jit
def _load_cols(ptr, rows, m_rows, cols, D: tl.constexpr):
    """Transposed tile [len(cols), len(rows)] of a row-major [*, D] tensor."""
    return tl.load(ptr + rows[None, :] * D + cols[:, None], mask=m_rows[None, :] & (cols < D)[:, None], other=0)


@triton.jit
def _store_rows(ptr, rows, m_rows, cols, D: tl.constexpr, value):
    tl.store(
        ptr + rows[:, None] * D + cols[None, :],
        value.to(ptr.dtype.element_ty),
        mask=m_rows[:, None] & (cols < D)[None, :],
    )


@triton.jit
def _depth_slot(depth_k, depth_v, r_d, i_d, m_r, o_k, o_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr):
    """fp32 depth key and value [rows, BK] / [rows, BV] of slot i_d for each row's own token."""
    r = r_d + i_d * H
    return _load_rows(depth_k, r, m_r, o_k, K).to(tl.float32), _load_rows(depth_v, r, m_r, o_v, V).to(tl.float32)


@triton.jit
def _key_end(i_t, T, BT: tl.constexpr, CAUSAL: tl.constexpr):
    """End of the keys visible to tile i_t."""
    if CAUSAL:
        return tl.minimum((i_t + 1) * BT, T)
    return T


@triton.jit
def _sequence_mask(o_q, o_s, m_s, CAUSAL: tl.constexpr):
    """[rows, BS] visibility of keys o_s (in bounds: m_s) to query tokens o_q."""
    if CAUSAL:
        return m_s[None, :] & (o_q[:, None] >= o_s[None, :])
    return m_s[None, :] & (o_q[:, None] >= 0)


@triton.jit
def _online_max(b_m, b_new):
    """New running max, a finite pivot for it (0 on rows with nothing visible yet) and the rescale factor."""
    b_m_new = tl.maximum(b_m, b_new)
    b_pivot = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
    return b_m_new, b_pivot, tl.exp2(b_m - b_pivot)


@_autotune(key=["H", "G", "K", "V", "CAUSAL"])
@triton.jit(do_not_specialize=["T", "n_depth", "LMAX"])
def moda_fwd_kernel(
    q,
    k,
    v,
    depth_k,
    depth_v,
    o,
    lse,
    cu_seqlens,
    chunk_indices,
    scale,
    T,
    n_depth,
    LMAX,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    GP: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    RCP_LN2: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453
    i_t, i_h, bos, T = _program(T, cu_seqlens, chunk_indices, H, IS_VARLEN)
    o_q, m_r, r_q = _query_rows(i_t, i_h, bos, T, H, G, BT, GP)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    qk_scale = scale * RCP_LN2

    b_q = _load_rows(q, r_q, m_r, o_k, K)
    b_m = tl.full([BT * GP], float("-inf"), dtype=tl.float32)
    b_acc = tl.zeros([BT * GP], dtype=tl.float32)
    b_o = tl.zeros([BT * GP, BV], dtype=tl.float32)

    for i_s in range(0, _key_end(i_t, T, BT, CAUSAL), BS):
        o_s = i_s + tl.arange(0, BS)
        m_s = o_s < T
        b_k = _load_cols(k, (bos + o_s) * H + i_h, m_s, o_k, K)
        b_v = _load_rows(v, (bos + o_s) * H + i_h, m_s, o_v, V)
        b_s = tl.where(_sequence_mask(o_q, o_s, m_s, CAUSAL), tl.dot(b_q, b_k) * qk_scale, float("-inf"))
        b_m, b_pivot, b_r = _online_max(b_m, tl.max(b_s, 1))
        b_p = tl.exp2(b_s - b_pivot[:, None])
        b_acc = b_acc * b_r + tl.sum(b_p, 1)
        b_o = b_o * b_r[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)

    # the depth slots of each row's own token continue the same online softmax
    b_qf = b_q.to(tl.float32)
    r_d = (bos + o_q) * LMAX * H + i_h
    for i_d in range(0, n_depth):
        b_kd, b_vd = _depth_slot(depth_k, depth_v, r_d, i_d, m_r, o_k, o_v, H, K, V)
        b_s = tl.where(m_r, tl.sum(b_qf * b_kd, 1) * qk_scale, float("-inf"))
        b_m, b_pivot, b_r = _online_max(b_m, b_s)
        b_p = tl.exp2(b_s - b_pivot)
        b_acc = b_acc * b_r + b_p
        b_o = b_o * b_r[:, None] + b_p[:, None] * b_vd

    b_acc = tl.where(b_acc > 0, b_acc, 1.0)
    _store_rows(o, r_q, m_r, o_v, V, b_o / b_acc[:, None])
    tl.store(lse + r_q, (b_m + tl.log2(b_acc)) * LN2, mask=m_r)


@_autotune(key=["H", "G", "K", "V", "CAUSAL"])
@triton.jit(do_not_specialize=["T", "n_depth", "LMAX"])
def moda_bwd_dq_kernel(
    q,
    k,
    v,
    depth_k,
    depth_v,
    o,
    lse,
    do,
    delta,
    dq,
    d_depth_k,
    d_depth_v,
    cu_seqlens,
    chunk_indices,
    scale,
    T,
    n_depth,
    LMAX,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    GP: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    RCP_LN2: tl.constexpr = 1.4426950408889634
    i_t, i_h, bos, T = _program(T, cu_seqlens, chunk_indices, H, IS_VARLEN)
    o_q, m_r, r_q = _query_rows(i_t, i_h, bos, T, H, G, BT, GP)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    qk_scale = scale * RCP_LN2

    b_q = _load_rows(q, r_q, m_r, o_k, K)
    b_do = _load_rows(do, r_q, m_r, o_v, V)
    b_dof = b_do.to(tl.float32)
    b_delta = tl.sum(_load_rows(o, r_q, m_r, o_v, V).to(tl.float32) * b_dof, 1)
    tl.store(delta + r_q, b_delta, mask=m_r)
    b_lse = tl.load(lse + r_q, mask=m_r, other=0) * RCP_LN2
    b_dq = tl.zeros([BT * GP, BK], dtype=tl.float32)

    for i_s in range(0, _key_end(i_t, T, BT, CAUSAL), BS):
        o_s = i_s + tl.arange(0, BS)
        m_s = o_s < T
        b_k = _load_cols(k, (bos + o_s) * H + i_h, m_s, o_k, K)
        b_v = _load_cols(v, (bos + o_s) * H + i_h, m_s, o_v, V)
        b_p = tl.where(
            _sequence_mask(o_q, o_s, m_s, CAUSAL), tl.exp2(tl.dot(b_q, b_k) * qk_scale - b_lse[:, None]), 0.0
        )
        b_ds = b_p * (tl.dot(b_do, b_v) - b_delta[:, None])
        b_dq += tl.dot(b_ds.to(b_k.dtype), tl.trans(b_k))

    # depth slots: this program owns every query row of its tokens, so it writes their depth gradients
    b_qf = b_q.to(tl.float32)
    r_d = (bos + o_q) * LMAX * H + i_h
    o_tok = i_t * BT + tl.arange(0, BT)
    r_dd = (bos + o_tok) * n_depth * H + i_h
    for i_d in range(0, n_depth):
        b_kd, b_vd = _depth_slot(depth_k, depth_v, r_d, i_d, m_r, o_k, o_v, H, K, V)
        b_p = tl.where(m_r, tl.exp2(tl.sum(b_qf * b_kd, 1) * qk_scale - b_lse), 0.0)
        b_ds = b_p * (tl.sum(b_dof * b_vd, 1) - b_delta)
        b_dq += b_ds[:, None] * b_kd
        # sum the G query heads of each token: [BT * GP, d] -> [BT, GP, d] -> [BT, d]
        b_dkd = tl.sum(tl.reshape(b_ds[:, None] * b_qf, (BT, GP, BK)), 1) * scale
        b_dvd = tl.sum(tl.reshape(b_p[:, None] * b_dof, (BT, GP, BV)), 1)
        _store_rows(d_depth_k, r_dd + i_d * H, o_tok < T, o_k, K, b_dkd)
        _store_rows(d_depth_v, r_dd + i_d * H, o_tok < T, o_v, V, b_dvd)

    _store_rows(dq, r_q, m_r, o_k, K, b_dq * scale)


@_autotune(key=["H", "G", "K", "V", "CAUSAL"])
@triton.jit(do_not_specialize=["T"])
def moda_bwd_dkv_kernel(
    q,
    k,
    v,
    lse,
    delta,
    do,
    dk,
    dv,
    cu_seqlens,
    chunk_indices,
    scale,
    T,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    GP: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    RCP_LN2: tl.constexpr = 1.4426950408889634
    i_s, i_h, bos, T = _program(T, cu_seqlens, chunk_indices, H, IS_VARLEN)
    o_s = i_s * BS + tl.arange(0, BS)
    m_s = o_s < T
    r_s = (bos + o_s) * H + i_h
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    qk_scale = scale * RCP_LN2

    b_k = _load_rows(k, r_s, m_s, o_k, K)
    b_v = _load_rows(v, r_s, m_s, o_v, V)
    b_dk = tl.zeros([BS, BK], dtype=tl.float32)
    b_dv = tl.zeros([BS, BV], dtype=tl.float32)

    t_start = 0
    if CAUSAL:
        t_start = (i_s * BS) // BT
    for i_t in range(t_start, tl.cdiv(T, BT)):
        o_q, m_r, r_q = _query_rows(i_t, i_h, bos, T, H, G, BT, GP)
        b_q = _load_rows(q, r_q, m_r, o_k, K)
        b_do = _load_rows(do, r_q, m_r, o_v, V)
        b_lse = tl.load(lse + r_q, mask=m_r, other=0) * RCP_LN2
        b_delta = tl.load(delta + r_q, mask=m_r, other=0)
        # [BS, rows]: the transpose of the dq kernel's score tile
        m_sq = tl.trans(_sequence_mask(o_q, o_s, m_s, CAUSAL)) & m_r[None, :]
        b_p = tl.where(m_sq, tl.exp2(tl.dot(b_k, tl.trans(b_q)) * qk_scale - b_lse[None, :]), 0.0)
        b_dv += tl.dot(b_p.to(b_do.dtype), b_do)
        b_ds = b_p * (tl.dot(b_v, tl.trans(b_do)) - b_delta[None, :])
        b_dk += tl.dot(b_ds.to(b_q.dtype), b_q)

    _store_rows(dk, r_s, m_s, o_k, K, b_dk * scale)
    _store_rows(dv, r_s, m_s, o_v, V, b_dv)


def _block_sizes(G: int, K: int, V: int) -> dict[str, int]:
    """Tile shape: BT tokens x GP padded group slots of queries, BS keys, head dims padded to powers of two."""
    GP = triton.next_power_of_2(G)
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    if BK > 256 or BV > 256:
        raise ValueError(f"head dims up to 256 are supported, got K={K}, V={V}")
    BS = 64 if max(BK, BV) <= 128 else 32
    return {"BT": max(1, TILE_ROWS // GP), "GP": GP, "BS": BS, "BK": BK, "BV": BV}


def _grid_tiles(T: int, size: int, cu_seqlens: Tensor | None) -> tuple[int, Tensor | None]:
    """Number of tiles of `size` tokens over all sequences, and their (sequence, tile) index when packed."""
    if cu_seqlens is None:
        return triton.cdiv(T, size), None
    chunk_indices = prepare_chunk_indices(cu_seqlens, size)
    return len(chunk_indices), chunk_indices


def _launch_meta(x: MoDAInputs) -> tuple[dict, int, int, Tensor, Tensor]:
    """Kernel constants, B, T and the depth buffers (q stands in as an unread pointer when n_depth = 0)."""
    B, T, HQ, K = x.q.shape
    H, V = x.k.shape[2], x.v.shape[-1]
    meta = {"H": H, "G": HQ // H, "K": K, "V": V, "CAUSAL": x.causal, "IS_VARLEN": x.cu_seqlens is not None}
    meta |= _block_sizes(HQ // H, K, V)
    if x.n_depth == 0:
        return meta, B, T, x.q, x.q
    return meta, B, T, x.depth_k.contiguous(), x.depth_v.contiguous()


def parallel_moda_fwd(x: MoDAInputs) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel: (o [B, T, HQ, V] in q's dtype, natural-log lse [B, T, HQ] in fp32)."""
    meta, B, T, depth_k, depth_v = _launch_meta(x)
    NT, chunk_indices = _grid_tiles(T, meta["BT"], x.cu_seqlens)
    o = x.q.new_empty(*x.q.shape[:3], meta["V"])
    lse = x.q.new_empty(x.q.shape[:3], dtype=torch.float32)
    moda_fwd_kernel[(NT, B * meta["H"])](
        x.q, x.k, x.v, depth_k, depth_v, o, lse, x.cu_seqlens, chunk_indices, x.scale, T, x.n_depth,
        depth_k.shape[2], **meta,
    )  # fmt: skip
    return o, lse


def parallel_moda_bwd(
    x: MoDAInputs, o: Tensor, lse: Tensor, do: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Launch the backward kernels: (dq, dk, dv, d depth_k, d depth_v), depth grads [B, T, n_depth, H, d]."""
    meta, B, T, depth_k, depth_v = _launch_meta(x)
    H, n = meta["H"], x.n_depth
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(x.q), torch.empty_like(x.k), torch.empty_like(x.v)
    d_depth_k = x.q.new_empty(B, T, n, H, meta["K"], dtype=depth_k.dtype)
    d_depth_v = x.q.new_empty(B, T, n, H, meta["V"], dtype=depth_v.dtype)
    NT, chunk_indices = _grid_tiles(T, meta["BT"], x.cu_seqlens)
    moda_bwd_dq_kernel[(NT, B * H)](
        x.q, x.k, x.v, depth_k, depth_v, o, lse, do, delta, dq, d_depth_k, d_depth_v, x.cu_seqlens,
        chunk_indices, x.scale, T, n, depth_k.shape[2], **meta,
    )  # fmt: skip
    NS, chunk_indices = _grid_tiles(T, meta["BS"], x.cu_seqlens)
    moda_bwd_dkv_kernel[(NS, B * H)](
        x.q, x.k, x.v, lse, delta, do, dk, dv, x.cu_seqlens, chunk_indices, x.scale, T, **meta,
    )  # fmt: skip
    if n == 0:
        return dq, dk, dv, None, None
    return dq, dk, dv, d_depth_k, d_depth_v
