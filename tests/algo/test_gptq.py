"""GPTQ (+ outliers, groups, clipping, 2:4) against RTN, an independent OBQ-style reference and its invariants."""
from __future__ import annotations

import math

import pytest
import torch

from quiktool.algo.gptq import QuantizedWeight, expand_group_scales, gptq_quantize
from quiktool.algo.outliers import keep_columns


def _setup(N: int, K: int, seed: int, n: int = 384):
    """Correlated inputs X [n, K], weights W [N, K] and the real Hessian H = 2/n X^T X."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, K, generator=g) @ torch.randn(K, K, generator=g) / K ** 0.5
    X = X + 0.1 * torch.randn(n, K, generator=g)
    W = torch.randn(N, K, generator=g)
    H = 2.0 / n * X.T @ X
    return X, W, H, g


def _out_err(X, W, Wq) -> float:
    return (X @ W.T - X @ Wq.T).norm().item()


def _rand_idx(K: int, k: int, g) -> torch.Tensor:
    return torch.sort(torch.randperm(K, generator=g)[:k]).values


SHAPES = [(118, 172), (3, 64), (1, 171)]


# ------------------------------------------------------------------------------------- GPTQ vs RTN
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [-1, 16])
@pytest.mark.parametrize("N,K", SHAPES)
def test_gptq_beats_rtn(N, K, bits, group_size):
    X, W, H, _ = _setup(N, K, seed=N + K + bits)
    e_gptq = _out_err(X, W, gptq_quantize(W, H, bits, group_size=group_size, block_size=32).dequantize())
    e_rtn = _out_err(X, W, gptq_quantize(W, None, bits, group_size=group_size).dequantize())
    assert e_gptq < 0.9 * e_rtn, (e_gptq, e_rtn)


def _ref_gptq(W, H, bits, idx, damp=0.01, sparse=False):
    """Independent GPTQ: column by column with the explicit inverse Hessian (OBQ downdate), fp64, no blocks.

    ``sparse``: SparseGPT 2:4, at the first column of every 4 drop the 2 with the least ``w^2 / U_jj^2``
    (U the upper Cholesky factor of H^-1, the diagonal GPTQ uses)."""
    N, K = W.shape
    keep = keep_columns(K, idx)
    perm = torch.cat([keep, idx])
    Kq = keep.numel()
    w = W.double()[:, perm].clone()
    Hp = H.double()[perm][:, perm]
    Hinv = torch.linalg.inv(Hp + damp * Hp.diag().mean() * torch.eye(K, dtype=torch.float64))
    U_diag = torch.linalg.cholesky(Hinv, upper=True).diag()
    hi = 2 ** (bits - 1) - 1
    s = w[:, :Kq].abs().amax(1) / hi
    codes = torch.zeros(N, Kq, dtype=torch.int64)
    mask = torch.ones(N, Kq, dtype=torch.float64)
    for i in range(Kq):
        if sparse and i % 4 == 0 and i + 4 <= Kq:
            sal = w[:, i:i + 4].pow(2) / U_diag[i:i + 4].pow(2)
            drop = sal.argsort(dim=1)[:, :2]
            mask[torch.arange(N)[:, None], i + drop] = 0.0
        q = torch.clamp(torch.round(w[:, i] / s), -hi - 1, hi) * mask[:, i]
        codes[:, i] = q.long()
        e = (w[:, i] - q * s) / Hinv[i, i]
        w[:, i + 1:] -= e[:, None] * Hinv[i, i + 1:][None, :]
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / Hinv[i, i]
    return codes, s, w[:, Kq:]


@pytest.mark.parametrize("N,K,n_out,bits,block_size", [
    (118, 172, 11, 4, 128), (118, 172, 11, 8, 32), (3, 64, 0, 4, 32), (3, 64, 0, 8, 128), (1, 171, 5, 4, 32),
])
def test_gptq_matches_independent_reference(N, K, n_out, bits, block_size):
    X, W, H, g = _setup(N, K, seed=3 * K + n_out)
    idx = _rand_idx(K, n_out, g)
    qw = gptq_quantize(W, H, bits, idx, block_size=block_size)
    codes, s, ow = _ref_gptq(W, H, bits, idx)
    # fp32 vs fp64: a near-tie may round one code to the other neighbour, which then steers that row's
    # later updates a little differently; everything else agrees
    diff = (qw.codes.long() - codes).abs()
    assert int(diff.max()) <= 1
    assert (diff == 0).double().mean().item() >= 0.995
    same = (diff == 0).all(1)
    assert same.double().mean().item() >= 0.95
    torch.testing.assert_close(qw.scales[:, 0].double(), s, rtol=1e-6, atol=0)
    if n_out:
        torch.testing.assert_close(qw.outlier_weight.double()[same], ow[same], rtol=1e-4,
                                   atol=1e-4 * ow.abs().max().item())


@pytest.mark.parametrize("N,K,n_out", [(118, 172, 11), (3, 64, 0), (1, 171, 5)])
def test_gptq_2of4_matches_independent_reference(N, K, n_out):
    X, W, H, g = _setup(N, K, seed=5 * K + n_out)
    idx = _rand_idx(K, n_out, g)
    qw = gptq_quantize(W, H, 4, idx, sparsity="2:4", block_size=32)
    codes, _, ow = _ref_gptq(W, H, 4, idx, sparse=True)
    same = (qw.codes.long() == codes).all(1)
    assert (qw.codes.long() == codes).double().mean().item() >= 0.995
    assert same.double().mean().item() >= 0.95
    if n_out:
        torch.testing.assert_close(qw.outlier_weight.double()[same], ow[same], rtol=1e-4,
                                   atol=1e-4 * ow.abs().max().item())


# ---------------------------------------------------------------------- identity Hessian == RTN exactly
@pytest.mark.parametrize("N,K,n_out,bits,group_size,clip,sparsity", [
    (3, 64, 0, 4, -1, False, None),
    (118, 172, 7, 4, -1, True, None),
    (118, 172, 7, 8, 16, False, None),
    (118, 172, 7, 4, 16, False, None),
    (1, 171, 1, 8, 16, True, None),
    (1, 171, 1, 4, 48, True, "2:4"),
    (118, 172, 7, 4, 48, False, "2:4"),
    (3, 64, 0, 8, -1, False, "2:4"),
])
def test_identity_hessian_equals_rtn(N, K, n_out, bits, group_size, clip, sparsity):
    g = torch.Generator().manual_seed(K + n_out + bits)
    W = torch.randn(N, K, generator=g) * 0.02
    idx = _rand_idx(K, n_out, g)
    kw = dict(bits=bits, outlier_idx=idx, group_size=group_size, clip_search=clip, sparsity=sparsity)
    a = gptq_quantize(W, torch.eye(K), block_size=32, **kw)  # groups of 48 cross the 32-column blocks
    b = gptq_quantize(W, None, **kw)
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.scales, b.scales)
    assert torch.equal(a.outlier_idx, b.outlier_idx)
    assert torch.equal(a.outlier_weight, b.outlier_weight)
    assert torch.equal(b.outlier_weight, W[:, idx])


# ------------------------------------------------------------------------------ RTN against formulas
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [-1, 8, 16, 128])
@pytest.mark.parametrize("N,K,n_out", [(118, 172, 5), (3, 64, 0), (1, 171, 2), (3, 9, 1)])
def test_rtn_codes_scales_and_group_shape(N, K, n_out, bits, group_size):
    g = torch.Generator().manual_seed(N * 7 + K)
    W = torch.randn(N, K, generator=g)
    idx = _rand_idx(K, n_out, g)
    qw = gptq_quantize(W, None, bits, idx, group_size=group_size)
    Kq = K - n_out
    G = 1 if group_size == -1 else math.ceil(Kq / group_size)
    assert qw.codes.shape == (N, Kq) and qw.codes.dtype == torch.int8
    assert qw.scales.shape == (N, G) and qw.scales.dtype == torch.float32
    assert qw.outlier_idx.tolist() == idx.tolist() and qw.outlier_weight.shape == (N, n_out)
    hi = 2 ** (bits - 1) - 1
    Wk = W[:, [c for c in range(K) if c not in set(idx.tolist())]]
    gs = Kq if group_size == -1 else group_size
    for gi in range(G):
        cols = Wk[:, gi * gs:(gi + 1) * gs]
        s = cols.abs().amax(1) / hi
        assert torch.equal(qw.scales[:, gi], s)
        q = torch.clamp(torch.round(cols / s[:, None]), -hi - 1, hi).to(torch.int8)
        assert torch.equal(qw.codes[:, gi * gs:(gi + 1) * gs], q)
    assert int(qw.codes.min()) >= -hi - 1 and int(qw.codes.max()) <= hi
    # dequantize puts codes * scale back at the non-outlier columns, the fp weights at the outliers
    deq = qw.dequantize()
    assert deq.shape == (N, K)
    assert torch.equal(deq[:, idx], W[:, idx])
    keep = keep_columns(K, idx)
    assert torch.equal(deq[:, keep], qw.codes.float() * expand_group_scales(qw.scales, Kq, group_size))


def test_expand_group_scales():
    s = torch.tensor([[1.0, 2.0, 3.0]])
    assert expand_group_scales(s, 7, 3).tolist() == [[1, 1, 1, 2, 2, 2, 3]]
    assert expand_group_scales(s[:, :1], 4, -1).tolist() == [[1, 1, 1, 1]]


@pytest.mark.parametrize("bits", [4, 8])
def test_clip_search_never_increases_rtn_mse(bits):
    g = torch.Generator().manual_seed(bits)
    W = torch.randn(118, 172, generator=g)
    W = W + (torch.rand(118, 172, generator=g) < 0.02) * torch.randn(118, 172, generator=g) * 6
    for gs in (-1, 16):
        a = gptq_quantize(W, None, bits, group_size=gs, clip_search=True).dequantize()
        b = gptq_quantize(W, None, bits, group_size=gs).dequantize()
        ea, eb = (a - W).pow(2).sum(1), (b - W).pow(2).sum(1)
        assert bool((ea <= eb * (1 + 1e-6)).all())
        if bits == 4:
            assert ea.sum() < 0.95 * eb.sum()  # and on these heavy-tailed rows it helps


def test_zero_row_and_dead_column():
    X, W, H, g = _setup(5, 64, seed=11)
    W[2] = 0.0
    H[:, 9] = 0.0
    H[9, :] = 0.0  # channel 9 never fires
    for Hh in (None, H):
        qw = gptq_quantize(W, Hh, 4, torch.tensor([3, 40]))
        assert bool(torch.isfinite(qw.scales).all()) and bool(torch.isfinite(qw.outlier_weight).all())
        assert bool((qw.codes[2] == 0).all()) and qw.scales[2, 0].item() == 1.0
    qw = gptq_quantize(W, H, 4, torch.tensor([3, 40]))
    keep = keep_columns(64, torch.tensor([3, 40]))
    assert bool((qw.codes[:, (keep == 9).nonzero().item()] == 0).all())  # dead input: weight dropped


def test_block_size_does_not_change_result():
    X, W, H, g = _setup(118, 172, seed=12)
    idx = _rand_idx(172, 9, g)
    a = gptq_quantize(W, H, 4, idx, block_size=128)
    b = gptq_quantize(W, H, 4, idx, block_size=20)
    assert (a.codes == b.codes).double().mean().item() >= 0.995
    torch.testing.assert_close(a.outlier_weight, b.outlier_weight, rtol=1e-4, atol=1e-4)


def test_quantized_weight_dequantize_places_columns():
    codes = torch.tensor([[1, -2, 3]], dtype=torch.int8)
    qw = QuantizedWeight(codes, torch.tensor([[0.5]]), torch.tensor([1]), torch.tensor([[9.0]]), 4, -1)
    assert qw.dequantize().tolist() == [[0.5, 9.0, -1.0, 1.5]]


# ----------------------------------------------------------------------------------------- 2:4
def _groups_of_4(codes: torch.Tensor) -> torch.Tensor:
    N, Kq = codes.shape
    full = Kq - Kq % 4
    return codes[:, :full].reshape(N, -1, 4)


@pytest.mark.parametrize("group_size", [-1, 16, 10])
@pytest.mark.parametrize("N,K,n_out", [(118, 172, 5), (3, 64, 0), (1, 171, 2)])
def test_2of4_pattern_and_beats_magnitude_pruning(N, K, n_out, group_size):
    X, W, H, g = _setup(N, K, seed=K * 5 + n_out)
    idx = _rand_idx(K, n_out, g)
    sp = gptq_quantize(W, H, 4, idx, group_size=group_size, sparsity="2:4", block_size=32)
    rtn = gptq_quantize(W, None, 4, idx, group_size=group_size, sparsity="2:4")
    for qw in (sp, rtn):
        zeros = (_groups_of_4(qw.codes) == 0).sum(2)
        assert bool((zeros >= 2).all())  # pruned 2, a kept weight may still round to 0
    # exactly 2 pruned: with 8-bit codes the kept weights of RTN practically never round to zero
    q8 = gptq_quantize(W, None, 8, idx, group_size=group_size, sparsity="2:4")
    W8 = W[:, keep_columns(K, idx)]
    g4 = _groups_of_4(W8).abs()
    z8 = _groups_of_4(q8.codes) == 0
    assert bool((z8.sum(2) == 2).all())
    # ... and they are the two smallest magnitudes of each group
    smallest = torch.zeros_like(z8)
    smallest.scatter_(2, g4.topk(2, dim=2, largest=False).indices, True)
    assert torch.equal(z8, smallest)
    e_sp = _out_err(X, W, sp.dequantize())
    e_rtn = _out_err(X, W, rtn.dequantize())
    assert e_sp < 0.9 * e_rtn, (e_sp, e_rtn)


@pytest.mark.parametrize("K,n_out", [(64, 0), (172, 11), (171, 3)])
def test_2of4_gptq_exact_pattern_on_weights_away_from_zero(K, n_out):
    """With the identity Hessian GPTQ keeps the weights where they are: exactly 2 zeros per group of 4."""
    g = torch.Generator().manual_seed(K)
    W = (0.5 + 0.5 * torch.rand(118, K, generator=g)) * torch.sign(torch.randn(118, K, generator=g))
    idx = _rand_idx(K, n_out, g)
    qw = gptq_quantize(W, torch.eye(K) * 3.0, 4, idx, sparsity="2:4", block_size=64)
    z = (_groups_of_4(qw.codes) == 0).sum(2)
    assert bool((z == 2).all())
    tail = qw.codes[:, qw.codes.shape[1] - qw.codes.shape[1] % 4:]
    assert bool((tail != 0).all())  # a ragged tail is kept whole


def test_bad_sparsity_arguments():
    X, W, H, _ = _setup(3, 64, seed=1)
    with pytest.raises(ValueError):
        gptq_quantize(W, H, 4, sparsity="1:2")
    with pytest.raises(ValueError):
        gptq_quantize(W, H, 4, sparsity="2:4", block_size=30)
