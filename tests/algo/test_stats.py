"""Streaming statistics: ChannelStats and HessianAccumulator against one-shot computations."""
from __future__ import annotations

import pytest
import torch

from quiktool.algo.stats import ChannelStats, HessianAccumulator


def _chunks(X: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    assert sum(sizes) == X.shape[0]
    return list(torch.split(X, sizes))


@pytest.mark.parametrize("K,sizes", [(172, [1, 37, 200, 3, 271]), (64, [5, 5, 118]), (171, [512])])
def test_hessian_accumulator_equals_one_shot(K, sizes):
    g = torch.Generator().manual_seed(K)
    n = sum(sizes)
    X = torch.randn(n, K, generator=g) @ torch.randn(K, K, generator=g) / K ** 0.5 + 0.3
    acc = HessianAccumulator(K)
    for c in _chunks(X, sizes):
        acc.add(c)
    assert acc.n == n
    ref = 2.0 / n * (X.double().T @ X.double())
    assert acc.H.dtype == torch.float32 and acc.H.shape == (K, K)
    torch.testing.assert_close(acc.H.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_hessian_accumulator_takes_3d_chunks():
    """Hook inputs are [B, T, K]: all leading dims are tokens."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 17, 64, generator=g)
    acc = HessianAccumulator(64)
    acc.add(X[:2])
    acc.add(X[2:])
    flat = X.reshape(-1, 64).double()
    torch.testing.assert_close(acc.H.double(), 2.0 / 51 * flat.T @ flat, rtol=1e-5, atol=1e-6)
    assert acc.n == 51


def test_hessian_accumulator_ignores_empty_chunk():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(40, 64, generator=g)
    acc = HessianAccumulator(64)
    acc.add(X[:0])
    acc.add(X[:25])
    acc.add(X[25:25])
    acc.add(X[25:])
    assert acc.n == 40
    assert bool(torch.isfinite(acc.H).all())
    torch.testing.assert_close(acc.H.double(), 2.0 / 40 * X.double().T @ X.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K,sizes", [(172, [1, 99, 20]), (3, [7, 1]), (171, [64])])
def test_channel_stats_match_direct(K, sizes):
    g = torch.Generator().manual_seed(100 + K)
    n = sum(sizes)
    X = torch.randn(n, K, generator=g) * torch.rand(K, generator=g) * 5 - 0.4
    cs = ChannelStats(K)
    for c in _chunks(X, sizes):
        cs.add(c[None])  # as a [1, T, K] hook input
    assert cs.count == n
    assert torch.equal(cs.max_abs, X.abs().amax(0))
    torch.testing.assert_close(cs.mean_sq.double(), X.double().pow(2).mean(0), rtol=1e-6, atol=0)
    assert cs.mean_sq.dtype == torch.float32 and cs.mean_sq.shape == (K,)


def test_channel_stats_max_is_of_absolute_values():
    x = torch.tensor([[-5.0, 1.0, 0.5], [2.0, -3.0, 0.25]])
    cs = ChannelStats(3)
    cs.add(x)
    assert cs.max_abs.tolist() == [5.0, 3.0, 0.5]
    torch.testing.assert_close(cs.mean_sq, torch.tensor([14.5, 5.0, (0.25 + 0.0625) / 2]))


def test_channel_stats_ignores_empty_chunk():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(10, 64, generator=g)
    cs = ChannelStats(64)
    cs.add(X[:0])
    cs.add(X)
    assert cs.count == 10
    assert torch.equal(cs.max_abs, X.abs().amax(0))
