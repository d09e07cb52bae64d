"""The exact torch reference kernels (runtime/reference.py): integer GEMM, activation split, dequant epilogue."""
from __future__ import annotations

import struct

import pytest
import torch

from quiktool.algo.outliers import keep_columns
from quiktool.format.packing import pack_int4, unpack_int4
from quiktool.runtime.reference import (
    K_ALIGN,
    concat_weights,
    int_gemm,
    padded_k,
    prepare_weight,
    quantize_activations,
    outlier_base,
    outlier_sum,
    quik_gemm,
    quik_gemm_outliers,
    quik_linear,
    quantize_split,
    tile_w4,
)


def _codes(shape, bits, g):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)


def test_padded_k():
    assert K_ALIGN == 64
    assert [padded_k(k) for k in (1, 63, 64, 65, 167, 172, 4096)] == [64, 64, 64, 128, 192, 192, 4096]


@pytest.mark.parametrize("w_bits", [4, 8])
@pytest.mark.parametrize("N,Kq", [(1, 172), (3, 64), (118, 171), (5, 1)])
def test_prepare_weight_layout(w_bits, N, Kq):
    g = torch.Generator().manual_seed(N + Kq + w_bits)
    codes = _codes((N, Kq), w_bits, g)
    w = prepare_weight(codes, w_bits)
    kp = padded_k(Kq)
    if w_bits == 4:
        assert w.dtype == torch.uint8 and w.shape == (N, kp // 2)
        full = unpack_int4(tile_w4(w, inverse=True), kp)
    else:
        assert w.dtype == torch.int8 and w.shape == (N, kp)
        full = w
    assert torch.equal(full[:, :Kq], codes) and bool((full[:, Kq:] == 0).all())


def _w4_offset(n: int, b: int, N: int, rb: int) -> int:
    """kernels/quik_ptx.cuh, w4_off, written out: byte b of row n in the 4-bit runtime layout."""
    g0 = n - n % 8
    gs, s = min(8, N - g0), b // 64
    return g0 * rb + s * gs * 64 + (n % 8) * min(64, rb - 64 * s) + b % 64


@pytest.mark.parametrize("N", [1, 5, 8, 13, 24, 118])
@pytest.mark.parametrize("rb", [32, 64, 96, 160])
def test_tile_w4_is_the_kernels_layout(N, rb):
    """Every byte lands where the kernels' address function says (whole and partial 8-row groups, a 32-byte
    last step or none), the inverse restores the rows, and the packed codes of prepare_weight are tiled."""
    g = torch.Generator().manual_seed(N * 1000 + rb)
    w = torch.randint(0, 256, (N, rb), generator=g, dtype=torch.uint8)
    t = tile_w4(w)
    assert t.shape == w.shape and t.dtype == torch.uint8
    flat = t.reshape(-1)
    idx = torch.tensor([_w4_offset(n, b, N, rb) for n in range(N) for b in range(rb)])
    assert torch.equal(flat[idx], w.reshape(-1))
    assert torch.equal(tile_w4(t, inverse=True), w)
    codes = _codes((N, 2 * rb), 4, g)
    assert torch.equal(prepare_weight(codes, 4), tile_w4(pack_int4(codes)))


def test_tile_w4_rejects_rows_off_the_grid():
    with pytest.raises(ValueError, match="rows of 48 bytes; Kp / 2 is a multiple of 32"):
        tile_w4(torch.zeros(8, 48, dtype=torch.uint8))


@pytest.mark.parametrize("bits", [4, 8])
def test_concat_weights_keeps_each_row(bits):
    """A fused group's runtime weight is that of the members' rows stacked, whatever their N % 8."""
    g = torch.Generator().manual_seed(bits)
    members = [_codes((n, 100), bits, g) for n in (13, 8, 3)]
    got = concat_weights([prepare_weight(c, bits) for c in members], bits)
    assert torch.equal(got, prepare_weight(torch.cat(members, 0), bits))


@pytest.mark.parametrize("a_bits", [4, 8])
@pytest.mark.parametrize("w_bits", [4, 8])
@pytest.mark.parametrize("M,N,kp", [(1, 3, 64), (3, 118, 192), (118, 1, 128), (7, 5, 1024), (2, 3, 4096)])
def test_int_gemm_exact(a_bits, w_bits, M, N, kp):
    g = torch.Generator().manual_seed(M * N + kp + a_bits * 10 + w_bits)
    a = _codes((M, kp), a_bits, g)
    wc = _codes((N, kp), w_bits, g)
    acc = int_gemm(a, prepare_weight(wc, w_bits), w_bits)
    assert acc.dtype == torch.int32 and acc.shape == (M, N)
    assert torch.equal(acc.long(), a.long() @ wc.long().T)


def _extreme_8x8(kp, g, M=3, N=5):
    """Codes whose sums leave fp32's exact range: mostly -128 against weights near 127, a few small odd codes."""
    a = torch.full((M, kp), -128, dtype=torch.int8)
    small = torch.rand(M, kp, generator=g) < 0.3
    a[small] = torch.randint(-8, 8, (int(small.sum()),), generator=g, dtype=torch.int8)
    wc = torch.randint(100, 128, (N, kp), generator=g, dtype=torch.int8)
    return a, wc


@pytest.mark.parametrize("kp", [1024, 4096])
def test_int_gemm_exact_beyond_fp32_range(kp):
    g = torch.Generator().manual_seed(kp)
    a, wc = _extreme_8x8(kp, g)
    ref = a.long() @ wc.long().T
    if kp == 4096:  # the sums leave fp32's exact range and a plain fp32 product is wrong: fp64 is needed
        assert int(ref.abs().max()) > 2 ** 24
        assert not torch.equal((a.float() @ wc.float().T).long(), ref)
    assert torch.equal(int_gemm(a, prepare_weight(wc, 8), 8).long(), ref)


def test_int_gemm_exact_with_full_range_8bit_codes():
    g = torch.Generator().manual_seed(5)
    kp = 2048
    a = torch.randint(-128, 128, (4, kp), generator=g, dtype=torch.int8)
    a[:, ::2] = -128
    wc = torch.randint(-128, 128, (6, kp), generator=g, dtype=torch.int8)
    wc[:, ::2] = -128
    assert torch.equal(int_gemm(a, prepare_weight(wc, 8), 8).long(), a.long() @ wc.long().T)


def _indep_act_quant(x: torch.Tensor, bits: int):
    """The documented per-token asymmetric quantizer, written out again here (fp32, round half to even)."""
    mn, mx = x.amin(1), x.amax(1)
    s = (mx - mn) / (2 ** bits - 1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.round((x - mn[:, None]) / s[:, None]), 0, 2 ** bits - 1)
    return (q - 2 ** (bits - 1)).to(torch.int8), s, mn


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("M,K,n_out", [(1, 172, 11), (3, 64, 0), (118, 171, 5), (3, 65, 1)])
def test_quantize_activations_split_and_padding(bits, M, K, n_out):
    g = torch.Generator().manual_seed(M + K + n_out + bits)
    x = torch.randn(M, K, generator=g)
    idx = torch.sort(torch.randperm(K, generator=g)[:n_out]).values
    x[:, idx] *= 50.0  # outlier channels: must not influence the scales of the others
    keep = keep_columns(K, idx)
    a = quantize_activations(x, keep.to(torch.int32), idx.to(torch.int32), bits)
    Kq = K - n_out
    kp = padded_k(Kq)
    assert a.codes.dtype == torch.int8 and a.codes.shape == (M, kp) and kp % K_ALIGN == 0
    assert bool((a.codes[:, Kq:] == 0).all())
    assert torch.equal(a.x_outlier, x[:, idx]) and a.x_outlier.shape == (M, n_out)
    codes, s, z = _indep_act_quant(x[:, keep], bits)
    assert torch.equal(a.codes[:, :Kq], codes)
    assert torch.equal(a.scale, s) and torch.equal(a.zero, z)
    assert a.scale.dtype == a.zero.dtype == torch.float32


def _float_ref(x, keep, idx, codes_w, w_scale, w_out, bias, bits):
    """dequant(x) @ dequant(W)^T + x_out @ W_out^T + bias, in fp64."""
    c, s, z = _indep_act_quant(x[:, keep], bits)
    xd = (c.double() + 2 ** (bits - 1)) * s.double()[:, None] + z.double()[:, None]
    wd = codes_w.double() * w_scale.double()[:, None]
    y = xd @ wd.T + x[:, idx].double() @ w_out.double().T
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("a_bits,w_bits", [(4, 4), (8, 4), (8, 8), (4, 8)])
@pytest.mark.parametrize("M,N,K,n_out,has_bias", [(1, 118, 172, 11, True), (3, 3, 64, 0, False),
                                                  (118, 1, 171, 5, False), (3, 118, 64, 0, True)])
def test_quik_gemm_matches_float_computation(a_bits, w_bits, M, N, K, n_out, has_bias):
    g = torch.Generator().manual_seed(M * 3 + N + K + a_bits + w_bits)
    x = torch.randn(M, K, generator=g) + 0.3
    idx = torch.sort(torch.randperm(K, generator=g)[:n_out]).values
    x[:, idx] *= 20.0
    keep = keep_columns(K, idx)
    Kq = K - n_out
    codes_w = _codes((N, Kq), w_bits, g)
    w_scale = torch.rand(N, generator=g) * 0.02 + 0.001
    w_out = torch.randn(N, n_out, generator=g) * 0.1
    bias = torch.randn(N, generator=g) if has_bias else None
    wsum = (codes_w.double() * w_scale.double()[:, None]).sum(1).float()

    a = quantize_activations(x, keep.to(torch.int32), idx.to(torch.int32), a_bits)
    y_base = None
    if n_out:
        y_base = x[:, idx] @ w_out.T + (0 if bias is None else bias)
    elif bias is not None:
        y_base = bias.expand(M, -1)
    w = prepare_weight(codes_w, w_bits)
    y = quik_gemm(a.codes, w, w_bits, a.scale, a.zero, 1 << (a_bits - 1), w_scale, wsum, y_base, torch.float32)
    assert y.dtype == torch.float32 and y.shape == (M, N)
    ref = _float_ref(x, keep, idx, codes_w, w_scale, w_out, bias, a_bits)
    rel = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-5, rel
    y16 = quik_gemm(a.codes, w, w_bits, a.scale, a.zero, 1 << (a_bits - 1), w_scale, wsum, y_base, torch.float16)
    assert y16.dtype == torch.float16 and torch.equal(y16, y.half())


def test_quik_gemm_epilogue_terms():
    """Each term of the documented epilogue, on a hand-sized example."""
    a = torch.zeros(1, 64, dtype=torch.int8)
    a[0, :3] = torch.tensor([1, -2, 3], dtype=torch.int8)
    wc = torch.zeros(2, 64, dtype=torch.int8)
    wc[:, :3] = torch.tensor([[2, 1, -1], [0, 4, 5]], dtype=torch.int8)
    acc = int_gemm(a, prepare_weight(wc, 4), 4)
    assert acc.tolist() == [[-3, 7]]
    a_scale, a_zero = torch.tensor([0.5]), torch.tensor([-1.0])
    w_scale, wsum = torch.tensor([2.0, 0.25]), torch.tensor([3.0, -4.0])
    y_base = torch.tensor([[10.0, 20.0]])
    y = quik_gemm(a, prepare_weight(wc, 4), 4, a_scale, a_zero, 8, w_scale, wsum, y_base, torch.float32)
    # acc * s_a * s_w + (z + 8 s_a) * wsum + y_base
    assert y.tolist() == [[-3 * 0.5 * 2.0 + 3.0 * 3.0 + 10.0, 7 * 0.5 * 0.25 + 3.0 * -4.0 + 20.0]]


@pytest.mark.parametrize("a_bits,w_bits", [(4, 4), (8, 4), (8, 8)])
@pytest.mark.parametrize("M,N,K,n_out,has_bias", [(1, 118, 172, 11, True), (3, 3, 64, 0, False),
                                                  (16, 172, 171, 5, False), (118, 1, 64, 0, True)])
def test_quik_linear_matches_float_computation(a_bits, w_bits, M, N, K, n_out, has_bias):
    """The whole layer (what QuikLinear.forward runs) against the float computation on dequantized
    operands."""
    g = torch.Generator().manual_seed(7 * M + N + K + a_bits + w_bits)
    x = torch.randn(M, K, generator=g) + 0.3
    idx = torch.sort(torch.randperm(K, generator=g)[:n_out]).values
    x[:, idx] *= 20.0
    keep = keep_columns(K, idx)
    codes_w = _codes((N, K - n_out), w_bits, g)
    w_scale = torch.rand(N, generator=g) * 0.02 + 0.001
    w_out = torch.randn(N, n_out, generator=g) * 0.1
    bias = torch.randn(N, generator=g) if has_bias else None
    wsum = (codes_w.double() * w_scale.double()[:, None]).sum(1).float()
    w = prepare_weight(codes_w, w_bits)
    y = quik_linear(x, keep.to(torch.int32), idx.to(torch.int32), a_bits, w, w_bits, w_scale, wsum, w_out, bias)
    assert y.dtype == torch.float32 and y.shape == (M, N)
    ref = _float_ref(x, keep, idx, codes_w, w_scale, w_out, bias, a_bits)
    rel = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("K,n_out", [(64, 0), (172, 11), (300, 64)])
def test_quantize_split_is_quantize_activations_on_the_complement(K, n_out):
    g = torch.Generator().manual_seed(K + n_out)
    x = torch.randn(5, K, generator=g)
    idx = torch.randperm(K, generator=g)[:n_out]          # any order: the split keeps the rest ascending
    got = quantize_split(x, idx.to(torch.int32), 4)
    want = quantize_activations(x, keep_columns(K, idx), idx, 4)
    for field in got._fields:
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_outlier_base_terms():
    x_out, w_out, bias = torch.randn(3, 2), torch.randn(5, 2), torch.randn(5)
    torch.testing.assert_close(outlier_base(x_out, w_out, bias, 3), x_out @ w_out.T + bias)
    assert torch.equal(outlier_base(x_out[:, :0], w_out[:, :0], bias, 3), bias.expand(3, 5))
    assert outlier_base(None, w_out, None, 3) is None
    assert outlier_base(x_out[:, :0], w_out[:, :0], None, 3) is None


def _f32(v: float) -> float:
    """Round a Python float (double) to the nearest fp32 value."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _outlier_sum_scalar(x_out, w_out, bias):
    """outlier_sum's contract written independently, in Python floats: each fp32 operation computed in double
    and rounded to fp32, which is the correctly rounded fp32 result (53 >= 2 * 24 + 2 bits)."""
    M, N = x_out.shape[0], w_out.shape[0]
    xs, ws = x_out.float().tolist(), w_out.float().tolist()
    out = torch.empty(M, N, dtype=torch.float32)
    for m in range(M):
        for n in range(N):
            lanes = [0.0] * 4                                    # column j into lane j % 4, in order
            for j in range(x_out.shape[1]):
                lanes[j % 4] = _f32(lanes[j % 4] + _f32(xs[m][j] * ws[n][j]))
            s = _f32(_f32(lanes[0] + lanes[1]) + _f32(lanes[2] + lanes[3]))
            if bias is not None:
                s = _f32(s + bias[n].float().item())
            out[m, n] = s
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("M,N,n_out,has_bias", [(1, 7, 13, True), (3, 5, 64, False), (8, 3, 1, True), (2, 4, 6, False)])
def test_outlier_sum_is_the_four_lane_fp32_sum(dtype, M, N, n_out, has_bias):
    g = torch.Generator().manual_seed(M * 100 + N * 10 + n_out)
    # magnitudes spread over many binades, so that a different summation order would change low bits
    x_out = (torch.randn(M, n_out, generator=g) * torch.exp2(torch.randint(-8, 9, (M, n_out), generator=g))).to(dtype)
    w_out = (torch.randn(N, n_out, generator=g) * 0.05).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype) if has_bias else None
    got = outlier_sum(x_out, w_out, bias)
    assert got.dtype == torch.float32 and got.shape == (M, N)
    assert torch.equal(got, _outlier_sum_scalar(x_out, w_out, bias))
    exact = x_out.double() @ w_out.double().T + (0 if bias is None else bias.double())
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)


def test_outlier_sum_order_is_visible():
    """The order is part of the contract. 1 followed by 255 terms of 2^-24: in lane 0 the 63 small terms after
    the 1 each round away (ties to even), lanes 1-3 sum their 64 small terms exactly (2^-18 each), so the result
    is (1 + 2^-18) + 2^-17 = 1 + 3 * 2^-18 exactly; one left-to-right chain gives exactly 1, and the reverse
    order (the 1 last, in lane 3) gives 1 + 2^-16."""
    x_out = torch.tensor([[1.0] + [2.0 ** -24] * 255] * 2)
    w_out = torch.ones(16, 256)
    assert torch.equal(outlier_sum(x_out, w_out, None), torch.full((2, 16), 1.0 + 3 * 2.0 ** -18))
    chain = torch.zeros(2, 16)
    for j in range(256):
        chain = chain + x_out[:, j, None] * w_out[:, j][None, :]
    assert torch.equal(chain, torch.ones(2, 16))
    assert torch.equal(outlier_sum(x_out.flip(1), w_out.flip(1), None), torch.full((2, 16), 1.0 + 2.0 ** -16))


@pytest.mark.parametrize("M", [1, 16, 17])
def test_quik_linear_outlier_product_definition_by_token_count(M):
    """Up to FUSED_OUTLIER_MAX_M tokens the layer adds outlier_sum (fp32), above it F.linear's product."""
    from quiktool.runtime import reference

    g = torch.Generator().manual_seed(M)
    K, N, n_out = 172, 24, 11
    x = (torch.randn(M, K, generator=g) * 3).to(torch.float16)
    idx = torch.randperm(K, generator=g)[:n_out].to(torch.int32)
    keep = keep_columns(K, idx.long()).to(torch.int32)
    codes_w = _codes((N, K - n_out), 4, g)
    w = prepare_weight(codes_w, 4)
    w_scale, wsum = torch.rand(N, generator=g) * 0.02, torch.randn(N, generator=g)
    w_out, bias = (torch.randn(N, n_out, generator=g) * 0.1).to(torch.float16), torch.randn(N, generator=g).half()
    y = quik_linear(x, keep, idx, 4, w, 4, w_scale, wsum, w_out, bias)
    a = quantize_activations(x, keep, idx, 4)
    fused = quik_gemm_outliers(a.codes, w, 4, a.scale, a.zero, 8, w_scale, wsum, a.x_outlier, w_out, bias, x.dtype)
    plain = quik_gemm(a.codes, w, 4, a.scale, a.zero, 8, w_scale, wsum, outlier_base(a.x_outlier, w_out, bias, M),
                      x.dtype)
    assert torch.equal(y, fused if M <= reference.FUSED_OUTLIER_MAX_M else plain)
    assert reference.FUSED_OUTLIER_MAX_M == 16
