"""MoDA kernels (Triton, run by the interpreter on CPU) and the CPU path against the naive reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trl_mars.ops.moda import DepthKVBuffer, masked_moda_attention, moda_attention, naive_moda
from trl_mars.ops.moda.utils import random_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LMAX = 6  # depth buffer slots; n_depth reads a prefix

# (B, T, H, G, D, n_depth, causal, cu_seqlens): every value of each axis, not the cartesian product
CASES = [
    (1, 1, 1, 1, 16, 0, True, None),
    (1, 1, 2, 3, 32, 5, True, None),
    (2, 17, 1, 2, 16, 1, True, None),
    (1, 17, 2, 3, 64, 5, False, None),
    (2, 63, 1, 4, 32, 5, True, None),
    (1, 63, 2, 1, 16, 1, False, None),
    (1, 63, 1, 2, 32, 0, True, None),
    (1, 111, 1, 3, 16, 5, True, None),
    (1, 111, 1, 1, 64, 0, False, None),
    (1, 111, 2, 4, 16, 1, True, None),
    (1, 111, 1, 3, 32, 5, True, [0, 1, 17, 80, 111]),
    (1, 63, 2, 2, 16, 1, False, [0, 30, 63]),
    (1, 17, 1, 4, 64, 0, True, [0, 5, 17]),
    (1, 111, 1, 1, 16, 5, False, [0, 63, 64, 111]),
]
CASE_IDS = [
    f"B{b}-T{t}-H{h}-G{g}-D{d}-L{n}-{'causal' if c else 'full'}{'-varlen' if cu else ''}"
    for b, t, h, g, d, n, c, cu in CASES
]


def make_inputs(B, T, H, G, D, dtype, seed=0):
    return random_inputs(B, T, H * G, H, D, LMAX, torch.Generator().manual_seed(seed), device=DEVICE, dtype=dtype)


def forward_backward(fn, inputs, do, **kwargs):
    """(o, lse, [dq, dk, dv, d depth_k, d depth_v]) of fn on fresh leaf copies of `inputs`."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    o, lse = fn(*leaves, **kwargs)
    o.backward(do.to(o.dtype))
    return o, lse, [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]


def reference(inputs, do, **kwargs):
    """The naive oracle in fp32 on fp32 copies of the inputs."""
    return forward_backward(naive_moda, [x.float() for x in inputs], do, **kwargs)


def assert_close(name, ref, out, dtype):
    """fp32: max|diff| <= 1e-4 max|ref|; fp16 / bf16: RMS(diff) / RMS(ref) <= 5e-3 / 1e-2 (the fla criterion).

    An exactly-zero reference (e.g. dq when each query sees a single key) only bounds the absolute error.
    """
    ref, out = ref.float(), out.float()
    assert not out.isnan().any(), f"{name}: NaN (unwritten output?)"
    if ref.abs().max() == 0:
        err, tol = out.abs().max().item(), {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    elif dtype == torch.float32:
        err, tol = (out - ref).abs().max().item(), 1e-4 * ref.abs().max().item()
    else:
        ratio = 5e-3 if dtype == torch.float16 else 1e-2
        err, tol = (out - ref).pow(2).mean().sqrt().item(), ratio * ref.pow(2).mean().sqrt().item()
    assert err <= tol, f"{name}: error {err:.3e} > {tol:.3e}"


def check_against_reference(backend, case, dtype):
    B, T, H, G, D, n_depth, causal, cu = case
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    inputs = make_inputs(B, T, H, G, D, dtype)
    do = torch.randn(B, T, H * G, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    kwargs = {"n_depth": n_depth, "cu_seqlens": cu_seqlens, "causal": causal}
    o_ref, lse_ref, grads_ref = reference(inputs, do, **kwargs)
    o, lse, grads = forward_backward(moda_attention, inputs, do, backend=backend, **kwargs)
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert_close("o", o_ref, o, dtype)
    assert_close("lse", lse_ref, lse, torch.float32)
    for name, g_ref, g in zip(["dq", "dk", "dv", "d_depth_k", "d_depth_v"], grads_ref, grads):
        assert_close(name, g_ref, g, dtype)


BF16_ON_GPU = pytest.mark.skipif(DEVICE == "cpu", reason="the Triton interpreter's bf16 dot is broken (triton#11584)")


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=BF16_ON_GPU)],
    ids=["fp32", "fp16", "bf16"],
)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_triton_matches_reference(case, dtype):
    check_against_reference("triton", case, dtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_path_matches_reference(case):
    if DEVICE != "cpu":
        pytest.skip("the CPU path runs on CPU tensors")
    check_against_reference("cpu", case, torch.float32)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_no_depth_equals_sdpa(backend, causal):
    if backend == "cpu" and DEVICE != "cpu":
        pytest.skip("the CPU path runs on CPU tensors")
    q, k, v, _, _ = make_inputs(2, 63, 2, 3, 32, torch.float32)
    o, _ = moda_attention(q, k, v, causal=causal, backend=backend)
    sdpa = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=True
    ).transpose(1, 2)
    assert_close("o", sdpa, o, torch.float32)


GAINS = [0.0, 0.3, 1.0, 2.5, 0.0, 1.7]  # per query head (H * G = 6 heads in the gain cases); lambda = 0 included


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[10]], ids=[CASE_IDS[1], CASE_IDS[3], CASE_IDS[10]])
def test_depth_gain_matches_reference(backend, case):
    """o, lse and every gradient, d depth_gain included, with per-head gains (some 0) against the oracle."""
    if backend == "cpu" and DEVICE != "cpu":
        pytest.skip("the CPU path runs on CPU tensors")
    B, T, H, G, D, n_depth, causal, cu = case
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    inputs = make_inputs(B, T, H, G, D, torch.float32) + [torch.tensor(GAINS[: H * G], device=DEVICE)]
    do = torch.randn(B, T, H * G, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    kwargs = {"n_depth": n_depth, "cu_seqlens": cu_seqlens, "causal": causal}

    def naive(q, k, v, dk, dv, gain, **kw):
        return naive_moda(q, k, v, dk, dv, depth_gain=gain, **kw)

    def fused(q, k, v, dk, dv, gain, **kw):
        return moda_attention(q, k, v, dk, dv, depth_gain=gain, backend=backend, **kw)

    o_ref, lse_ref, grads_ref = forward_backward(naive, inputs, do, **kwargs)
    o, lse, grads = forward_backward(fused, inputs, do, **kwargs)
    assert_close("o", o_ref, o, torch.float32)
    assert_close("lse", lse_ref, lse, torch.float32)
    for name, g_ref, g in zip(["dq", "dk", "dv", "d_depth_k", "d_depth_v", "d_gain"], grads_ref, grads):
        assert_close(name, g_ref, g, torch.float32)
    assert grads_ref[5][0].abs() > 1e-3  # the gradient at lambda = 0 is not zero: training can open the gate


def test_naive_depth_gain_limits_and_gradient_at_zero():
    """lambda = 1 is MoDA, lambda = 0 is plain attention, and d/d lambda at 0 is the one-sided difference."""
    q, k, v, depth_k, depth_v = (x.double() for x in make_inputs(1, 17, 2, 3, 16, torch.float32))
    ones, zeros = torch.ones(6, dtype=torch.double), torch.zeros(6, dtype=torch.double)
    torch.testing.assert_close(naive_moda(q, k, v, depth_k, depth_v, 5, depth_gain=ones)[0],
                               naive_moda(q, k, v, depth_k, depth_v, 5)[0])  # fmt: skip
    torch.testing.assert_close(naive_moda(q, k, v, depth_k, depth_v, 5, depth_gain=zeros)[0],
                               naive_moda(q, k, v, None, None, 0)[0])  # fmt: skip
    gain = zeros.clone().requires_grad_()
    weights = torch.randn(q.shape[:3], dtype=torch.double, generator=torch.Generator().manual_seed(2))
    (naive_moda(q, k, v, depth_k, depth_v, 5, depth_gain=gain)[0].sum(-1) * weights).sum().backward()
    eps = 1e-7
    for h in (0, 4):
        bumped = zeros.clone()
        bumped[h] = eps
        diff = naive_moda(q, k, v, depth_k, depth_v, 5, depth_gain=bumped)[0] - naive_moda(q, k, v, None, None, 0)[0]
        torch.testing.assert_close(gain.grad[h], (diff.sum(-1) * weights).sum() / eps, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("gain", [None, GAINS], ids=["no-gain", "gain"])
def test_masked_path_matches_reference(gain):
    """The decode path (SDPA over the cache, depth merged through the lse) is the same softmax, padding included."""
    q, k, v, depth_k, depth_v = make_inputs(2, 17, 2, 3, 16, torch.float32)
    gain = None if gain is None else torch.tensor(gain, device=DEVICE)
    visible = torch.ones(17, 17, dtype=torch.bool, device=DEVICE).tril().expand(2, -1, -1)
    o = masked_moda_attention(q, k, v, depth_k, depth_v, 5, visible, depth_gain=gain)
    o_ref, _ = naive_moda(q, k, v, depth_k, depth_v, 5, depth_gain=gain)
    assert_close("o", o_ref, o, torch.float32)
    # the last 3 query tokens against the whole cache with the first 4 keys of row 1 padded out
    visible = visible[:, 14:].clone()
    visible[1, :, :4] = False
    o = masked_moda_attention(q[:, 14:], k, v, depth_k[:, 14:], depth_v[:, 14:], 5, visible, depth_gain=gain)
    o_ref, _ = naive_moda(q[1:, 4:], k[1:, 4:], v[1:, 4:], depth_k[1:, 4:], depth_v[1:, 4:], 5, depth_gain=gain)
    assert_close("o padded", o_ref[:, -3:], o[1:], torch.float32)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("order", ["1-then-2", "2-then-1"])
def test_depth_buffer_routes_gradients(backend, order):
    """Slots written into a DepthKVBuffer get the gradient of every later reader, as with explicit tensors.

    Backward runs the later reader first: "1-then-2" fills both slots and then accumulates into slot 0;
    "2-then-1" fills slot 0 first, then accumulates into it and writes slot 1 (no zero-filled gradient).
    """
    if backend == "cpu" and DEVICE != "cpu":
        pytest.skip("the CPU path runs on CPU tensors")
    B, T, H, G, D = 1, 17, 1, 2, 16
    q, k, v, depth_k, depth_v = make_inputs(B, T, H, G, D, torch.float32)
    dk0, dv0, dk1, dv1 = (x.clone().requires_grad_() for x in (depth_k[:, :, 0], depth_v[:, :, 0], k, v))
    carrier = torch.zeros((), requires_grad=True)

    buffer = DepthKVBuffer(B, T, 2, H, D, torch.float32, torch.device(DEVICE))
    carrier_1 = buffer.write(carrier, 0, dk0, dv0)
    if order == "1-then-2":
        o1 = buffer.attend(q * (1 + carrier_1), k, v, 1, backend=backend)
    carrier_2 = buffer.write(carrier_1, 1, dk1, dv1)
    o2 = buffer.attend(q * (1 + carrier_2), k, v, 2, backend=backend)
    if order == "2-then-1":
        o1 = buffer.attend(q * (1 + carrier_2), k, v, 1, backend=backend)
    (o1.sum() + o2.square().sum()).backward()

    leaves = [x.detach().clone().requires_grad_() for x in (dk0, dv0, dk1, dv1)]
    o1_ref, _ = naive_moda(q, k, v, leaves[0][:, :, None], leaves[1][:, :, None], 1)
    o2_ref, _ = naive_moda(q, k, v, torch.stack(leaves[::2], 2), torch.stack(leaves[1::2], 2), 2)
    (o1_ref.sum() + o2_ref.square().sum()).backward()
    for name, x, ref in zip(["dk0", "dv0", "dk1", "dv1"], (dk0, dv0, dk1, dv1), leaves):
        assert_close(name, ref.grad, x.grad, torch.float32)
