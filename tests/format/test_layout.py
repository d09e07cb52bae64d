"""PackedLinear: pack an algorithm result, write it to tensors, read it back with strict checks."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from quiktool.algo.gptq import QuantizedWeight, gptq_quantize
from quiktool.algo.outliers import keep_columns
from quiktool.errors import CheckpointError
from quiktool.format.layout import FIELDS, PackedLinear

CASES = [  # N, K, n_out, weight_bits, act_bits, group_size, bias
    (118, 172, 11, 4, 4, -1, True),
    (3, 64, 0, 8, 8, -1, False),
    (1, 171, 5, 4, 8, -1, True),
    (3, 171, 0, 4, 16, 16, False),
    (118, 172, 3, 8, 16, 128, True),
    (3, 9, 1, 4, 4, -1, False),
]


def _qw(N, K, n_out, bits, gs, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) * 0.1
    X = torch.randn(200, K, generator=g)
    H = 2.0 / 200 * X.T @ X
    idx = torch.sort(torch.randperm(K, generator=g)[:n_out]).values
    bias = torch.randn(N, generator=g)
    return gptq_quantize(W, H, bits, idx, group_size=gs, block_size=32), bias


@functools.lru_cache(maxsize=None)
def _packed(case, seed=0):
    N, K, n_out, wb, ab, gs, has_bias = case
    qw, bias = _qw(N, K, n_out, wb, gs, seed + N + K)
    return qw, PackedLinear.from_quantized(qw, bias if has_bias else None, ab), bias


@pytest.mark.parametrize("case", CASES)
def test_from_quantized_fields(case):
    N, K, n_out, wb, ab, gs, has_bias = case
    qw, p, bias = _packed(case)
    Kq = K - n_out
    G = 1 if gs == -1 else math.ceil(Kq / gs)
    assert (p.in_features, p.out_features, p.weight_bits, p.act_bits, p.group_size) == (K, N, wb, ab, gs)
    assert p.n_outliers == n_out and p.kq == Kq
    if wb == 4:
        assert p.qweight.dtype == torch.uint8 and p.qweight.shape == (N, (Kq + 1) // 2)
    else:
        assert p.qweight.dtype == torch.int8 and p.qweight.shape == (N, Kq)
    assert p.scales.dtype == torch.float32 and p.scales.shape == (N, G)
    assert p.outlier_idx.dtype == torch.int32 and p.outlier_idx.tolist() == qw.outlier_idx.tolist()
    assert p.outlier_weight.dtype == torch.float16 and p.outlier_weight.shape == (N, n_out)
    assert p.wsum.dtype == torch.float32 and p.wsum.shape == (N,)
    if has_bias:
        assert p.bias.dtype == torch.float16 and torch.equal(p.bias, bias.half())
    else:
        assert p.bias is None
    assert torch.equal(p.codes(), qw.codes)
    m = p.meta()
    assert m == {"in_features": K, "out_features": N, "weight_bits": wb, "act_bits": ab, "group_size": gs,
                 "n_outliers": n_out, "bias": has_bias, "sparsity": None}


@pytest.mark.parametrize("case", CASES)
def test_dequantize_matches_quantized_weight_up_to_fp16_outliers(case):
    N, K, n_out, *_ = case
    qw, p, _ = _packed(case)
    ref = QuantizedWeight(qw.codes, qw.scales, qw.outlier_idx, qw.outlier_weight.half().float(), qw.bits,
                          qw.group_size).dequantize()
    deq = p.dequantize()
    assert deq.dtype == torch.float32 and deq.shape == (N, K)
    assert torch.equal(deq, ref)
    keep = keep_columns(K, qw.outlier_idx)
    assert torch.equal(deq[:, keep], qw.dequantize()[:, keep])
    if n_out:
        # the outlier weights differ from fp32 by no more than fp16 rounding
        d = (deq[:, qw.outlier_idx] - qw.outlier_weight).abs()
        assert bool((d <= qw.outlier_weight.abs() * 2.0 ** -11 + 2.0 ** -25).all())


@pytest.mark.parametrize("case", CASES)
def test_wsum_is_row_sum_of_dequantized_non_outliers(case):
    N, K, n_out, *_ = case
    qw, p, _ = _packed(case)
    keep = keep_columns(K, qw.outlier_idx)
    ref = p.dequantize().double()[:, keep].sum(1)
    torch.testing.assert_close(p.wsum.double(), ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


@pytest.mark.parametrize("case", CASES)
def test_tensors_roundtrip_exactly(case):
    _, p, _ = _packed(case)
    t = p.to_tensors("model.layers.0.mlp.down_proj")
    expected = {f"model.layers.0.mlp.down_proj.{f}" for f in FIELDS if f != "bias" or p.bias is not None}
    assert set(t) == expected
    q = PackedLinear.from_tensors("model.layers.0.mlp.down_proj", t, p.meta())
    for f in ("in_features", "out_features", "weight_bits", "act_bits", "group_size", "sparsity"):
        assert getattr(q, f) == getattr(p, f)
    for f in FIELDS:
        a, b = getattr(p, f), getattr(q, f)
        if a is None:
            assert b is None
        else:
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(q.dequantize(), p.dequantize())


def test_sparsity_is_kept_in_meta():
    qw, bias = _qw(3, 64, 0, 4, -1, 1)
    p = PackedLinear.from_quantized(qw, None, 4, "2:4")
    assert p.meta()["sparsity"] == "2:4"
    assert PackedLinear.from_tensors("x", p.to_tensors("x"), p.meta()).sparsity == "2:4"


# ----------------------------------------------------------------------------- rejections
@pytest.fixture
def good():
    _, p, _ = _packed((5, 172, 4, 4, 4, -1, True), seed=3)
    return p.to_tensors("L"), p.meta()


def _rejects(t, m, match=None):
    with pytest.raises(CheckpointError, match=match):
        PackedLinear.from_tensors("L", t, m)


@pytest.mark.parametrize("field", FIELDS)
def test_rejects_missing_tensor(good, field):
    t, m = good
    del t[f"L.{field}"]
    _rejects(t, m, f"L.{field}")


@pytest.mark.parametrize("field,dtype", [("qweight", torch.int8), ("scales", torch.float16),
                                         ("outlier_idx", torch.int64), ("outlier_weight", torch.float32),
                                         ("wsum", torch.float64), ("bias", torch.float32)])
def test_rejects_wrong_dtype(good, field, dtype):
    t, m = good
    t[f"L.{field}"] = t[f"L.{field}"].to(dtype)
    _rejects(t, m, f"L.{field}")


@pytest.mark.parametrize("field", FIELDS)
def test_rejects_wrong_shape(good, field):
    t, m = good
    x = t[f"L.{field}"]
    t[f"L.{field}"] = torch.cat([x, x[:1]])  # one row / entry too many
    _rejects(t, m, f"L.{field}")


def test_rejects_meta_shape_mismatch(good):
    t, m = good
    for k, v in (("in_features", 170), ("out_features", 6), ("n_outliers", 3), ("weight_bits", 8), ("group_size", 64)):
        _rejects(t, {**m, k: v})


@pytest.mark.parametrize("field", ["scales", "outlier_weight", "wsum"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rejects_non_finite(good, field, bad):
    t, m = good
    x = t[f"L.{field}"].clone()
    x.view(-1)[1] = bad
    t[f"L.{field}"] = x
    _rejects(t, m, "NaN or Inf")


@pytest.mark.parametrize("idx", [[9, 3, 50, 100], [3, 3, 50, 100], [3, 9, 50, 172], [-1, 9, 50, 100], [3, 9, 50, 1000]])
def test_rejects_bad_outlier_idx(good, idx):
    t, m = good
    t["L.outlier_idx"] = torch.tensor(idx, dtype=torch.int32)
    _rejects(t, m, "outlier_idx")


@pytest.mark.parametrize("change", [{"weight_bits": 3}, {"act_bits": 2}, {"n_outliers": 172}, {"n_outliers": -1},
                                    {"group_size": 0}, {"group_size": 64}, {"in_features": "x"}])
def test_rejects_bad_meta(good, change):
    t, m = good
    _rejects(t, {**m, **change})


def test_rejects_incomplete_meta(good):
    t, m = good
    for k in ("in_features", "out_features", "weight_bits", "act_bits", "group_size", "n_outliers", "bias"):
        _rejects(t, {kk: v for kk, v in m.items() if kk != k}, "metadata")


def test_accepts_good(good):
    t, m = good
    p = PackedLinear.from_tensors("L", t, m)
    assert p.n_outliers == 4 and p.kq == 168
