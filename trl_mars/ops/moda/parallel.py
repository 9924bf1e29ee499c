"""Triton kernels of mixture-of-depths attention (forward and backward), FlashAttention-2 style.

Tiling. A program owns BT consecutive tokens of one sequence and one key/value head h; its query tile holds
the G query heads h * G + g of those tokens in the Hugging Face layout, padded to GP = next_pow2(G) group
slots, so row r is token t0 + r // GP, head h * G + r % GP (rows with r % GP >= G are masked). Any G works,
q is read in place, and every token's query rows live in exactly one program.

Forward. One online softmax (running max m, normaliser acc, output o, base-2 logits pre-scaled by
s * log2(e)) runs over the causal key blocks of the sequence and then continues over the tile's depth
columns: column c is slot c % n_depth of token t0 + c // n_depth, read from the token-major buffer
depth_k[b, t, i, h] (a prefix of [B, T, Lmax, H, d]). Blocks of BC columns are scored with one tensor-core
`tl.dot` each, masked to the row's own token (the authors' "group-aware" depth pass), so a tile reads only its
own tokens' depth rows. A per-query-head gain lambda adds log2(lambda) to the depth logits.

Backward. The dq kernel recomputes P = exp2(s log2e q k - lse log2e), dS = P (dO V^T - delta) with
delta = rowsum(dO * O), over the sequence and then the depth column blocks; since the program owns all
query rows of its tokens, each depth column has one writer, and the kernel writes d depth_k = s dS~^T q and
d depth_v = P~^T dO (two more `tl.dot`s, the sum over the G heads included) straight into the caller's
full-size gradient buffers, adding to slots [0, n_init) that an earlier reader filled and storing the others:
no atomics, no zero-fill, no copy. It also stores the per-row gain gradient sum_i e^{z~ - lse} (dP~ - delta).
A key-parallel kernel accumulates the sequence dK, dV over query tiles, summing the G heads inside the tile.

Autotuning (GPU only) is keyed on the head shape and the power-of-two bucket of T, over warps, stages and
the block sizes that do not change the grid: BS (key block) and BC (depth columns) in the forward and dq
kernels, the query step in the dkv kernel. The interpreter runs one fixed configuration.

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
# Query rows (tokens x padded group slots) per forward / dq program (the paper's C = 64); fixed, as it sets the grid.
TILE_ROWS = 64
# Block sizes that do not change the grid: autotuned on a GPU, these fixed values under the interpreter.
FWD_CONFIGS = [{"BS": bs, "BC": bc} for bs in (32, 64, 128) for bc in (32, 64)]
FWD_DEFAULTS = {"BS": 64, "BC": 64}
DKV_CONFIGS = [{"BTQ": n} for n in (16, 32, 64)]
DKV_DEFAULTS = {"BTQ": 64}


def _autotune(configs: list[dict], restore_value: tuple[str, ...] = ()):
    """Autotune block sizes, warps and stages on a GPU, per head shape and power-of-two bucket of T.

    Under the interpreter the kernel is returned as is and the launcher passes the fixed defaults.
    `restore_value` names outputs a kernel accumulates into (restored between benchmark runs).
    """
    if INTERPRET:
        return lambda fn: fn
    tuned = [triton.Config(c, num_warps=w, num_stages=st) for c in configs for w in (4, 8) for st in (2, 3)]
    key = ["H", "G", "K", "V", "CAUSAL", "T_BUCKET"]
    return triton.autotune(configs=tuned, key=key, restore_value=list(restore_value))


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
def _row_gain(depth_gain, i_h, G: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr, HAS_GAIN: tl.constexpr):
    """Depth gain lambda of each query row's head (1 without gains)."""
    o_g = tl.arange(0, BT * GP) % GP
    if HAS_GAIN:
        return tl.load(depth_gain + i_h * G + o_g, mask=o_g < G, other=1.0).to(tl.float32)
    return tl.full([BT * GP], 1.0, dtype=tl.float32)


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
def _depth_columns(c0, i_t, bos, T, n_depth, LMAX, i_h, H: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """Depth columns c0 .. c0 + BC of tile i_t: (local token, slot, validity, [B*T*LMAX*H] row of the buffer).

    Column c is slot c % n_depth of token i_t * BT + c // n_depth; the tile has min(BT, T - i_t * BT) tokens.
    """
    o_c = c0 + tl.arange(0, BC)
    tok = o_c // n_depth
    slot = o_c % n_depth
    m_c = o_c < tl.minimum(BT, T - i_t * BT) * n_depth
    return tok, slot, m_c, ((bos + i_t * BT + tok) * LMAX + slot) * H + i_h


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


@_autotune(FWD_CONFIGS)
@triton.jit(do_not_specialize=["T", "n_depth", "LMAX", "T_BUCKET"])
def moda_fwd_kernel(
    q,
    k,
    v,
    depth_k,
    depth_v,
    depth_gain,
    o,
    lse,
    cu_seqlens,
    chunk_indices,
    scale,
    T,
    n_depth,
    LMAX,
    T_BUCKET,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    GP: tl.constexpr,
    BS: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_GAIN: tl.constexpr,
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

    # the depth columns of the tile's tokens continue the same online softmax, one masked dot per block
    b_log_gain = tl.log2(_row_gain(depth_gain, i_h, G, BT, GP, HAS_GAIN))
    o_tok = o_q - i_t * BT
    for c0 in range(0, tl.minimum(BT, T - i_t * BT) * n_depth, BC):
        tok, slot, m_c, r_c = _depth_columns(c0, i_t, bos, T, n_depth, LMAX, i_h, H, BT, BC)
        b_kd = _load_cols(depth_k, r_c, m_c, o_k, K)
        b_vd = _load_rows(depth_v, r_c, m_c, o_v, V)
        m_d = m_r[:, None] & m_c[None, :] & (o_tok[:, None] == tok[None, :])
        b_s = tl.where(m_d, tl.dot(b_q, b_kd) * qk_scale + b_log_gain[:, None], float("-inf"))
        b_m, b_pivot, b_r = _online_max(b_m, tl.max(b_s, 1))
        b_p = tl.exp2(b_s - b_pivot[:, None])
        b_acc = b_acc * b_r + tl.sum(b_p, 1)
        b_o = b_o * b_r[:, None] + tl.dot(b_p.to(b_vd.dtype), b_vd)

    b_acc = tl.where(b_acc > 0, b_acc, 1.0)
    _store_rows(o, r_q, m_r, o_v, V, b_o / b_acc[:, None])
    tl.store(lse + r_q, (b_m + tl.log2(b_acc)) * LN2, mask=m_r)


@_autotune(FWD_CONFIGS, restore_value=("d_depth_k", "d_depth_v"))
@triton.jit(do_not_specialize=["T", "n_depth", "n_init", "LMAX", "T_BUCKET"])
def moda_bwd_dq_kernel(
    q,
    k,
    v,
    depth_k,
    depth_v,
    depth_gain,
    o,
    lse,
    do,
    delta,
    dq,
    d_depth_k,
    d_depth_v,
    d_gain,
    cu_seqlens,
    chunk_indices,
    scale,
    T,
    n_depth,
    n_init,
    LMAX,
    T_BUCKET,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    GP: tl.constexpr,
    BS: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    HAS_GAIN: tl.constexpr,
    DEPTH_GRAD: tl.constexpr,
):
    RCP_LN2: tl.constexpr = 1.4426950408889634
    i_t, i_h, bos, T = _program(T, cu_seqlens, chunk_indices, H, IS_VARLEN)
    o_q, m_r, r_q = _query_rows(i_t, i_h, bos, T, H, G, BT, GP)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    qk_scale = scale * RCP_LN2

    b_q = _load_rows(q, r_q, m_r, o_k, K)
    b_do = _load_rows(do, r_q, m_r, o_v, V)
    b_delta = tl.sum(_load_rows(o, r_q, m_r, o_v, V).to(tl.float32) * b_do.to(tl.float32), 1)
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

    # depth columns: this program owns every query row of its tokens, so each column has exactly one writer
    b_gain = _row_gain(depth_gain, i_h, G, BT, GP, HAS_GAIN)
    b_dgain = tl.zeros([BT * GP], dtype=tl.float32)
    o_tok = o_q - i_t * BT
    for c0 in range(0, tl.minimum(BT, T - i_t * BT) * n_depth, BC):
        tok, slot, m_c, r_c = _depth_columns(c0, i_t, bos, T, n_depth, LMAX, i_h, H, BT, BC)
        b_kd = _load_cols(depth_k, r_c, m_c, o_k, K)
        b_vd = _load_cols(depth_v, r_c, m_c, o_v, V)
        m_d = m_r[:, None] & m_c[None, :] & (o_tok[:, None] == tok[None, :])
        # e^{z~ - lse} without the gain: P~ = lambda * b_pu, and d lambda = sum b_pu (dP~ - delta)
        b_pu = tl.where(m_d, tl.exp2(tl.dot(b_q, b_kd) * qk_scale - b_lse[:, None]), 0.0)
        b_dsu = b_pu * (tl.dot(b_do, b_vd) - b_delta[:, None])
        b_dgain += tl.sum(b_dsu, 1)
        b_ds = b_dsu * b_gain[:, None]
        b_dq += tl.dot(b_ds.to(b_kd.dtype), tl.trans(b_kd))
        if DEPTH_GRAD:
            # [BC, rows] @ [rows, d]: the sum over the G heads of each column's token is inside the dot
            b_dkd = tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q) * scale
            b_dvd = tl.dot(tl.trans(b_pu * b_gain[:, None]).to(b_do.dtype), b_do)
            m_acc = m_c & (slot < n_init)
            b_dkd += _load_rows(d_depth_k, r_c, m_acc, o_k, K).to(tl.float32)
            b_dvd += _load_rows(d_depth_v, r_c, m_acc, o_v, V).to(tl.float32)
            _store_rows(d_depth_k, r_c, m_c, o_k, K, b_dkd)
            _store_rows(d_depth_v, r_c, m_c, o_v, V, b_dvd)

    _store_rows(dq, r_q, m_r, o_k, K, b_dq * scale)
    if HAS_GAIN:
        tl.store(d_gain + r_q, b_dgain, mask=m_r)


@_autotune(DKV_CONFIGS)
@triton.jit(do_not_specialize=["T", "T_BUCKET"])
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
    T_BUCKET,
    H: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BTQ: tl.constexpr,
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
        t_start = (i_s * BS) // BTQ
    for i_t in range(t_start, tl.cdiv(T, BTQ)):
        o_q, m_r, r_q = _query_rows(i_t, i_h, bos, T, H, G, BTQ, GP)
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
    """Grid-setting tile shape: BT tokens x GP padded group slots of queries (forward / dq), BS keys (dkv)."""
    GP = triton.next_power_of_2(G)
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    if BK > 256 or BV > 256:
        raise ValueError(f"head dims up to 256 are supported, got K={K}, V={V}")
    return {"BT": max(1, TILE_ROWS // GP), "GP": GP, "BK": BK, "BV": BV}


DKV_BS = 64  # keys per dkv program (sets its grid)


def _grid_tiles(T: int, size: int, cu_seqlens: Tensor | None) -> tuple[int, Tensor | None]:
    """Number of tiles of `size` tokens over all sequences, and their (sequence, tile) index when packed."""
    if cu_seqlens is None:
        return triton.cdiv(T, size), None
    chunk_indices = prepare_chunk_indices(cu_seqlens, size)
    return len(chunk_indices), chunk_indices


def _launch_meta(x: MoDAInputs) -> tuple[dict, int, int, Tensor, Tensor, Tensor]:
    """Kernel constants, B, T, the depth buffers and gains (q stands in as an unread pointer where absent)."""
    B, T, HQ, K = x.q.shape
    H, V = x.k.shape[2], x.v.shape[-1]
    meta = {"H": H, "G": HQ // H, "K": K, "V": V, "CAUSAL": x.causal, "IS_VARLEN": x.cu_seqlens is not None}
    meta |= _block_sizes(HQ // H, K, V)
    gain = x.q if x.depth_gain is None else x.depth_gain
    if x.n_depth == 0:
        return meta, B, T, x.q, x.q, gain
    return meta, B, T, x.depth_k.contiguous(), x.depth_v.contiguous(), gain


def _tuned(defaults: dict) -> dict:
    """Block sizes the launcher passes: the fixed defaults under the interpreter, none when autotuned."""
    return defaults if INTERPRET else {}


def parallel_moda_fwd(x: MoDAInputs) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel: (o [B, T, HQ, V] in q's dtype, natural-log lse [B, T, HQ] in fp32)."""
    meta, B, T, depth_k, depth_v, gain = _launch_meta(x)
    NT, chunk_indices = _grid_tiles(T, meta["BT"], x.cu_seqlens)
    o = x.q.new_empty(*x.q.shape[:3], meta["V"])
    lse = x.q.new_empty(x.q.shape[:3], dtype=torch.float32)
    moda_fwd_kernel[(NT, B * meta["H"])](
        x.q, x.k, x.v, depth_k, depth_v, gain, o, lse, x.cu_seqlens, chunk_indices, x.scale, T, x.n_depth,
        depth_k.shape[2], triton.next_power_of_2(T), HAS_GAIN=x.depth_gain is not None, **meta,
        **_tuned(FWD_DEFAULTS),
    )  # fmt: skip
    return o, lse


def parallel_moda_bwd(
    x: MoDAInputs,
    o: Tensor,
    lse: Tensor,
    do: Tensor,
    grad_k: Tensor | None,
    grad_v: Tensor | None,
    n_init: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward kernels: (dq, dk, dv, d depth_gain).

    The depth gradients go straight into grad_k / grad_v ([B, T, Lmax, H, d], like depth_k / depth_v, or None
    when not needed): slots [0, n_init) are accumulated into, slots [n_init, n_depth) overwritten.
    """
    meta, B, T, depth_k, depth_v, gain = _launch_meta(x)
    H, n = meta["H"], x.n_depth
    has_gain = x.depth_gain is not None
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(x.q), torch.empty_like(x.k), torch.empty_like(x.v)
    d_gain_rows = torch.empty_like(lse) if has_gain else lse
    depth_grad = n > 0 and grad_k is not None
    grad_k, grad_v = (grad_k, grad_v) if depth_grad else (x.q, x.q)
    NT, chunk_indices = _grid_tiles(T, meta["BT"], x.cu_seqlens)
    t_bucket = triton.next_power_of_2(T)
    moda_bwd_dq_kernel[(NT, B * H)](
        x.q, x.k, x.v, depth_k, depth_v, gain, o, lse, do, delta, dq, grad_k, grad_v, d_gain_rows, x.cu_seqlens,
        chunk_indices, x.scale, T, n, n_init, depth_k.shape[2], t_bucket, HAS_GAIN=has_gain, DEPTH_GRAD=depth_grad,
        **meta, **_tuned(FWD_DEFAULTS),
    )  # fmt: skip
    NS, chunk_indices = _grid_tiles(T, DKV_BS, x.cu_seqlens)
    dkv_meta = {name: value for name, value in meta.items() if name != "BT"}
    moda_bwd_dkv_kernel[(NS, B * H)](
        x.q, x.k, x.v, lse, delta, do, dk, dv, x.cu_seqlens, chunk_indices, x.scale, T, t_bucket, BS=DKV_BS,
        **dkv_meta, **_tuned(DKV_DEFAULTS),
    )  # fmt: skip
    d_gain = d_gain_rows.reshape(-1, x.q.shape[2]).sum(0) if has_gain else None
    return dq, dk, dv, d_gain
