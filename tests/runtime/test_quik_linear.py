"""QuikLinear on the torch backend against F.linear with the dequantized weight (and dequantized activations)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quiktool.algo.gptq import gptq_quantize
from quiktool.algo.outliers import keep_columns
from quiktool.format.layout import PackedLinear
from quiktool.runtime.quik_linear import QuikLinear


def _layer(N, K, n_out, w_bits, a_bits, has_bias, seed, group_size=-1):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) * 0.1
    idx = torch.sort(torch.randperm(K, generator=g)[:n_out]).values
    bias = torch.randn(N, generator=g) if has_bias else None
    qw = gptq_quantize(W, None, w_bits, idx, group_size=group_size)
    p = PackedLinear.from_quantized(qw, bias, a_bits)
    return p, g


def _fake_quant_acts(x, keep, bits):
    """x with its non-outlier columns replaced by their per-token asymmetric dequantization (fp32 formula)."""
    xk = x[:, keep]
    mn, mx = xk.amin(1), xk.amax(1)
    s = (mx - mn) / (2 ** bits - 1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.round((xk - mn[:, None]) / s[:, None]), 0, 2 ** bits - 1)
    xd = x.clone().double()
    xd[:, keep] = q.double() * s.double()[:, None] + mn.double()[:, None]
    return xd


def _bias64(p):
    return None if p.bias is None else p.bias.double()


LAYERS = [  # N, K, n_out, w_bits, has_bias
    (118, 172, 11, 4, True),
    (3, 64, 0, 4, False),
    (1, 171, 5, 8, False),
    (3, 172, 0, 8, True),
    (118, 64, 4, 4, False),
]


@pytest.mark.parametrize("lead", [(1,), (3,), (118,), (2, 3), (3, 1, 5)])
@pytest.mark.parametrize("a_bits", [4, 8])
@pytest.mark.parametrize("N,K,n_out,w_bits,has_bias", LAYERS)
def test_forward_equals_linear_on_dequantized_operands(N, K, n_out, w_bits, has_bias, a_bits, lead):
    p, g = _layer(N, K, n_out, w_bits, a_bits, has_bias, seed=N + K + n_out + w_bits)
    layer = QuikLinear(p, dtype=torch.float32, backend="torch")
    x = torch.randn(*lead, K, generator=g) + 0.2
    x[..., p.outlier_idx.long()] *= 30.0
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (*lead, N) and y.dtype == torch.float32
    x2 = x.reshape(-1, K)
    keep = keep_columns(K, p.outlier_idx.long())
    ref = F.linear(_fake_quant_acts(x2, keep, a_bits), p.dequantize().double(), _bias64(p)).reshape(*lead, N)
    rel = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("lead", [(1,), (118,), (2, 3)])
@pytest.mark.parametrize("group_size", [-1, 16])
@pytest.mark.parametrize("N,K,n_out,w_bits,has_bias", LAYERS)
def test_a16_equals_linear_with_dequantized_weight(N, K, n_out, w_bits, has_bias, group_size, lead):
    p, g = _layer(N, K, n_out, w_bits, 16, has_bias, seed=N * K + w_bits, group_size=group_size)
    layer = QuikLinear(p, dtype=torch.float32, backend="torch")
    x = torch.randn(*lead, K, generator=g)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (*lead, N)
    ref = F.linear(x.double(), p.dequantize().double(), _bias64(p))
    rel = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-5, rel


def test_activation_quantization_is_per_token_and_matters():
    """A4 output differs from A16 by the activation error only, and each token is quantized alone."""
    p4, g = _layer(118, 172, 11, 4, 4, True, seed=1)
    p16, _ = _layer(118, 172, 11, 4, 16, True, seed=1)
    l4, l16 = QuikLinear(p4), QuikLinear(p16)
    x = torch.randn(5, 172, generator=g)
    with torch.no_grad():
        y4, y16 = l4(x), l16(x)
        assert not torch.allclose(y4, y16, rtol=1e-4, atol=1e-4)
        assert (y4 - y16).norm() < 0.2 * y16.norm()
        x2 = x.clone()
        x2[0] *= 10
        assert torch.equal(l4(x2)[1:], y4[1:])


def test_outlier_columns_bypass_quantization():
    """Outlier input channels reach the output through the fp path: changing one moves y by w_out * dx exactly."""
    p, g = _layer(3, 64, 4, 4, 4, False, seed=2)
    layer = QuikLinear(p)
    x = torch.randn(1, 64, generator=g)
    j = int(p.outlier_idx[1])
    x2 = x.clone()
    x2[0, j] += 2.0
    with torch.no_grad():
        d = (layer(x2) - layer(x))[0]
    torch.testing.assert_close(d, 2.0 * p.outlier_weight[:, 1].float(), rtol=1e-5, atol=1e-5)


def test_input_dtype_is_cast_and_buffers_not_persistent():
    p, g = _layer(3, 64, 4, 4, 8, True, seed=3)
    layer = QuikLinear(p)
    x = torch.randn(3, 64, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        assert y.dtype == torch.float32
        assert torch.equal(y, layer(x.float()))
    assert layer.state_dict() == {}
    assert "W4A8" in repr(layer)


def test_group_scales_need_a16():
    p, _ = _layer(3, 64, 0, 4, 4, False, seed=4, group_size=16)
    with pytest.raises(ValueError, match="act_bits=16"):
        QuikLinear(p)
