"""Weight and activation quantizers (quiktool.algo.quant) checked against the formulas of REFERENCE.md section 1."""
from __future__ import annotations

import pytest
import torch

from quiktool.algo.quant import (
    act_shift,
    dequantize_activations,
    qrange,
    quantize_activations,
    quantize_weight,
    search_clip,
    weight_scales,
)

SHAPES = [(1, 172), (3, 64), (118, 171), (7, 1)]
EPS32 = torch.finfo(torch.float32).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_qrange():
    assert qrange(4) == (-8, 7)
    assert qrange(8) == (-128, 127)
    assert act_shift(4) == 8 and act_shift(8) == 128


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_weight_quantizer_matches_formula_and_range(bits, shape):
    g = _gen(10 + bits)
    w = torch.randn(*shape, generator=g) * 0.05 + 0.01
    s = weight_scales(w, bits)
    hi = 2 ** (bits - 1) - 1
    # scale = max|w| / (2^(b-1) - 1), computed here in fp64 independently
    ref_s = w.double().abs().amax(1) / hi
    torch.testing.assert_close(s.double(), ref_s, rtol=2 * EPS32, atol=0)
    q = quantize_weight(w, s, bits)
    assert q.dtype == torch.int8 and q.shape == w.shape
    lo, hi_ = qrange(bits)
    assert int(q.min()) >= lo and int(q.max()) <= hi_
    # the largest |w| of each row maps onto +-(2^(b-1)-1): the range is used in full
    assert torch.equal(q.abs().amax(1).long(), torch.full((shape[0],), hi, dtype=torch.long))
    # round to nearest: |w - q s| <= s / 2 (up to fp32 rounding of w / s)
    err = (w - q.float() * s[:, None]).abs()
    assert bool((err <= s[:, None] * (0.5 + 4 * EPS32)).all())


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_quantizer_clamps_with_shrunk_scale(bits):
    g = _gen(3)
    w = torch.randn(5, 172, generator=g)
    s = weight_scales(w, bits, clip=0.5)
    torch.testing.assert_close(s, w.abs().amax(1) * 0.5 / qrange(bits)[1])
    q = quantize_weight(w, s, bits)
    lo, hi = qrange(bits)
    assert int(q.min()) == lo and int(q.max()) == hi  # clipped on both sides
    # per-row clip tensor
    clip = torch.linspace(0.6, 1.0, 5)
    s2 = weight_scales(w, bits, clip)
    torch.testing.assert_close(s2, w.abs().amax(1) * clip / qrange(bits)[1])


def test_weight_quantizer_accepts_column_scale():
    g = _gen(4)
    w = torch.randn(3, 64, generator=g)
    s = weight_scales(w, 4)
    assert torch.equal(quantize_weight(w, s, 4), quantize_weight(w, s[:, None], 4))


@pytest.mark.parametrize("bits", [4, 8])
def test_zero_and_constant_weight_rows(bits):
    g = _gen(5)
    w = torch.randn(4, 171, generator=g)
    w[1] = 0.0
    w[2] = -0.3
    s = weight_scales(w, bits)
    assert bool(torch.isfinite(s).all()) and bool((s > 0).all())
    assert s[1].item() == 1.0
    q = quantize_weight(w, s, bits)
    assert bool((q[1] == 0).all())
    hi = qrange(bits)[1]
    assert bool((q[2] == -hi).all())
    torch.testing.assert_close(q[2].float() * s[2], w[2])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", [(1, 172), (118, 64), (3, 171)])
def test_search_clip_never_increases_mse(bits, shape):
    g = _gen(20 + bits)
    # heavy-tailed rows so that clipping actually helps on some of them
    w = torch.randn(*shape, generator=g) * torch.rand(shape[0], 1, generator=g)
    w = w + (torch.rand(*shape, generator=g) < 0.01) * torch.randn(*shape, generator=g) * 8
    clip = search_clip(w, bits)
    assert clip.shape == (shape[0],)
    assert bool((clip <= 1.0).all()) and bool((clip >= 0.55 - 1e-6).all())

    def mse(c):
        s = weight_scales(w, bits, c)
        return (quantize_weight(w, s, bits).float() * s[:, None] - w).pow(2).sum(1)

    assert bool((mse(clip) <= mse(1.0)).all())
    # and the chosen factor is at least as good as every point of the documented grid (21 shrink factors)
    for i in range(21):
        p = 1.0 - 0.45 * i / 20
        assert bool((mse(clip) <= mse(p) * (1 + 1e-6)).all())


def test_search_clip_helps_on_outlier_rows():
    g = _gen(6)
    w = torch.randn(16, 172, generator=g) * 0.1
    w[:, 0] = 3.0  # one huge weight per row: 4-bit RTN wastes the range on it
    s1 = weight_scales(w, 4)
    clip = search_clip(w, 4)
    assert bool((clip < 1.0).all())
    s = weight_scales(w, 4, clip)
    e = lambda sc: (quantize_weight(w, sc, 4).float() * sc[:, None] - w).pow(2).sum()  # noqa: E731
    assert e(s) < e(s1)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", [(1, 172), (3, 64), (118, 171), (5, 2)])
def test_activation_quantizer_range_and_error_bound(bits, shape):
    g = _gen(30 + bits)
    x = torch.randn(*shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 4 + 0.7
    codes, scale, zero = quantize_activations(x, bits)
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    assert scale.shape == zero.shape == (shape[0],)
    lo, hi = qrange(bits)
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    # asymmetric per token: scale = (max - min) / (2^b - 1), zero = min (checked in fp64)
    xd = x.double()
    torch.testing.assert_close(zero.double(), xd.amin(1), rtol=0, atol=0)
    torch.testing.assert_close(scale.double(), (xd.amax(1) - xd.amin(1)) / (2 ** bits - 1), rtol=4 * EPS32, atol=0)
    # the row minimum maps to the lowest code, the maximum to the highest
    am, aM = x.argmin(1), x.argmax(1)
    r = torch.arange(shape[0])
    assert bool((codes[r, am] == lo).all()) and bool((codes[r, aM] == hi).all())
    # dequantization error <= scale / 2 per element (plus fp32 rounding of the arithmetic)
    deq = dequantize_activations(codes, scale, zero, bits)
    slack = 4 * EPS32 * (x.abs() + zero.abs()[:, None] + scale[:, None] * 2 ** bits)
    assert bool(((deq - x).abs() <= scale[:, None] / 2 + slack).all())


@pytest.mark.parametrize("bits", [4, 8])
def test_activation_quantizer_constant_rows(bits):
    g = _gen(7)
    x = torch.randn(4, 172, generator=g)
    x[1] = 2.5
    x[3] = -1.25
    codes, scale, zero = quantize_activations(x, bits)
    assert bool(torch.isfinite(scale).all()) and scale[1].item() == 1.0 and scale[3].item() == 1.0
    deq = dequantize_activations(codes, scale, zero, bits)
    assert bool(torch.isfinite(deq).all())
    assert torch.equal(deq[1], x[1]) and torch.equal(deq[3], x[3])


def test_activation_quantizer_is_per_token():
    """Scaling one token must not change the codes of another."""
    g = _gen(8)
    x = torch.randn(3, 64, generator=g)
    c1, s1, z1 = quantize_activations(x, 4)
    y = x.clone()
    y[0] *= 100
    c2, s2, z2 = quantize_activations(y, 4)
    assert torch.equal(c1[1:], c2[1:]) and torch.equal(s1[1:], s2[1:]) and torch.equal(z1[1:], z2[1:])
    assert torch.allclose(s2[0], s1[0] * 100, rtol=1e-6)


def test_round_half_to_even():
    # torch.round / rintf semantics: exact halves round to the even neighbour
    w = torch.tensor([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5]])
    q = quantize_weight(w, torch.tensor([1.0]), 4)
    assert q.tolist() == [[7, 0, 2, 2, 0, -2]]
