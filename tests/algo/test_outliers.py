"""Outlier channel selection, and the effect of outlier channels on quantization error."""
from __future__ import annotations

import pytest
import torch

from quiktool.algo.gptq import gptq_quantize
from quiktool.algo.outliers import keep_columns, select_outliers
from quiktool.algo.stats import ChannelStats, HessianAccumulator
from quiktool.format.layout import PackedLinear
from quiktool.runtime.quik_linear import QuikLinear


def _planted(n: int, K: int, planted: list[int], seed: int, factor: float = 50.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, K, generator=g) @ (torch.eye(K) + 0.3 * torch.randn(K, K, generator=g) / K ** 0.5)
    X[:, planted] *= factor
    return X, g


def test_select_outliers_topk_sorted_and_ties():
    stat = torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1, 2.0])
    assert select_outliers(stat, 2).tolist() == [1, 3]
    assert select_outliers(stat, 3).tolist() == [1, 3, 5]
    assert select_outliers(stat, 0).numel() == 0
    assert select_outliers(stat, 0).dtype == torch.int64
    # ties break by the lower index
    assert select_outliers(torch.tensor([1.0, 2.0, 2.0, 2.0]), 2).tolist() == [1, 2]
    for bad in (-1, 6, 7):
        with pytest.raises(ValueError):
            select_outliers(stat, bad)


def test_keep_columns_complement():
    idx = torch.tensor([0, 5, 171])
    keep = keep_columns(172, idx)
    assert keep.dtype == torch.int64 and keep.numel() == 169
    assert bool((keep[1:] > keep[:-1]).all())
    assert set(keep.tolist()) | set(idx.tolist()) == set(range(172))
    assert keep_columns(3, torch.empty(0, dtype=torch.int64)).tolist() == [0, 1, 2]


@pytest.mark.parametrize("stat", ["max_abs", "mean_sq"])
@pytest.mark.parametrize("K,planted", [(172, [3, 77, 150, 171]), (64, [0, 31]), (171, [100])])
def test_select_outliers_finds_planted_channels(stat, K, planted):
    X, _ = _planted(300, K, planted, seed=K)
    cs = ChannelStats(K)
    for c in torch.split(X, [10, 90, 200]):
        cs.add(c)
    got = select_outliers(getattr(cs, stat), len(planted))
    assert got.tolist() == sorted(planted)


def _layer_err(X, W, qw, act_bits):
    """||X W^T - Q(X) Wq^T|| of a QuikLinear built from ``qw`` (activations quantized unless act_bits=16)."""
    ql = QuikLinear(PackedLinear.from_quantized(qw, None, act_bits))
    with torch.no_grad():
        return (X @ W.T - ql(X)).norm().item()


@pytest.mark.parametrize("act_bits", [4, 8, 16])
@pytest.mark.parametrize("N,K", [(118, 172), (3, 64)])
def test_outliers_reduce_output_error(act_bits, N, K):
    planted = [5, 40, 63] if K == 64 else [5, 40, 63, 120, 171]
    X, g = _planted(256, K, planted, seed=7 + K)
    W = torch.randn(N, K, generator=g) / K ** 0.5
    acc = HessianAccumulator(K)
    acc.add(X)
    cs = ChannelStats(K)
    cs.add(X)
    idx = select_outliers(cs.max_abs, len(planted))
    for H in (None, acc.H):
        with_out = _layer_err(X, W, gptq_quantize(W, H, 4, idx), act_bits)
        without = _layer_err(X, W, gptq_quantize(W, H, 4), act_bits)
        assert with_out < 0.5 * without, (H is None, with_out, without)


@pytest.mark.parametrize("N,K", [(118, 172), (1, 171), (3, 64)])
def test_outlier_columns_absorb_gptq_error(N, K):
    g = torch.Generator().manual_seed(N * K)
    X = torch.randn(384, K, generator=g) @ torch.randn(K, K, generator=g) / K ** 0.5
    W = torch.randn(N, K, generator=g)
    H = 2.0 / X.shape[0] * X.T @ X
    idx = torch.tensor(sorted(torch.randperm(K, generator=g)[:16].tolist()))
    err = lambda Wq: (X @ W.T - X @ Wq.T).norm().item()  # noqa: E731
    q_out = gptq_quantize(W, H, 4, idx)
    q_none = gptq_quantize(W, H, 4)
    # same bits, some columns left in floating point: better
    assert err(q_out.dequantize()) < 0.95 * err(q_none.dequantize())
    # the outlier weights were changed by the error feedback ...
    assert not torch.allclose(q_out.outlier_weight, W[:, idx])
    # ... and that change is what makes them better than keeping the original columns
    kept = q_out.dequantize()
    kept[:, idx] = W[:, idx]
    assert err(q_out.dequantize()) < 0.95 * err(kept)
    # the non-outlier part of the result is exactly the codes times the scale
    keep = keep_columns(K, idx)
    torch.testing.assert_close(q_out.dequantize()[:, keep], q_out.codes.float() * q_out.scales[:, :1], rtol=0, atol=0)
