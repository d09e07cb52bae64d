"""GPTQ with FP16 outlier columns (QUIK), optional groups, clipping search and 2:4 sparsity.

``gptq_quantize(W, H, ...)`` is a pure function. The columns are permuted so that the outlier
columns come last: GPTQ quantizes the others one at a time, pushing each column's rounding error
onto the not-yet-quantized columns through the inverse Hessian, and the outlier columns, which
are never rounded, absorb the rest. The permutation is undone in the result. With ``H=None`` it is
round-to-nearest (RTN) with the same scales, so both share one code path and one result type.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from quiktool.algo.outliers import keep_columns
from quiktool.algo.quant import qrange, quantize_weight, search_clip, weight_scales


@dataclass
class QuantizedWeight:
    """A quantized weight matrix W [N, K] split into integer and outlier parts.

    codes:          int8 [N, Kq]   integer codes of the non-outlier columns, ascending column order
    scales:         fp32 [N, G]    symmetric scale per output row (G = 1) or per group of ``group_size`` codes
    outlier_idx:    int64 [n_out]  ascending input-channel indices kept in floating point
    outlier_weight: fp32 [N, n_out] their weights, updated by GPTQ's error feedback
    group_size:     -1 (per row) or the number of consecutive codes sharing a scale
    """

    codes: Tensor
    scales: Tensor
    outlier_idx: Tensor
    outlier_weight: Tensor
    bits: int
    group_size: int

    def dequantize(self) -> Tensor:
        """The full fp32 weight [N, K] the quantized layer computes with."""
        N, Kq = self.codes.shape
        K = Kq + self.outlier_idx.numel()
        scale_cols = expand_group_scales(self.scales, Kq, self.group_size)  # [N, Kq]
        W = torch.empty(N, K, dtype=torch.float32, device=self.codes.device)
        W[:, keep_columns(K, self.outlier_idx.cpu()).to(W.device)] = self.codes.float() * scale_cols
        W[:, self.outlier_idx.to(W.device)] = self.outlier_weight.float()
        return W


def expand_group_scales(scales: Tensor, kq: int, group_size: int) -> Tensor:
    """[N, G] group scales -> [N, Kq], one scale per code column."""
    if group_size == -1:
        return scales[:, :1].expand(-1, kq)
    return scales.repeat_interleave(group_size, dim=1)[:, :kq]


def gptq_quantize(
    W: Tensor,
    H: Tensor | None,
    bits: int,
    outlier_idx: Tensor | None = None,
    group_size: int = -1,
    damp: float = 0.01,
    block_size: int = 128,
    clip_search: bool = False,
    sparsity: str | None = None,
) -> QuantizedWeight:
    """Quantize ``W`` [N, K] given the Hessian ``H`` [K, K] of its inputs (``None``: RTN).

    Works in fp32 on W's device. ``sparsity="2:4"`` prunes 2 of every 4 consecutive non-outlier
    columns per row jointly with quantization (SparseGPT's saliency ``w^2 / [H^-1]_ii^2``).
    """
    N, K = W.shape
    dev = W.device
    out_idx = (outlier_idx if outlier_idx is not None else torch.empty(0, dtype=torch.int64)).long().cpu()
    keep = keep_columns(K, out_idx)
    Kq = keep.numel()
    perm = torch.cat([keep, out_idx]).to(dev)  # non-outliers first (ascending), outliers last
    Wp = W.float()[:, perm].clone()
    if sparsity not in (None, "2:4"):
        raise ValueError(f"sparsity={sparsity!r}; use None or '2:4'")
    if sparsity == "2:4" and block_size % 4:
        raise ValueError("block_size must be a multiple of 4 with 2:4 sparsity")

    def scale_for(cols: Tensor) -> Tensor:
        clip = search_clip(cols, bits) if clip_search else 1.0
        return weight_scales(cols, bits, clip)

    G = 1 if group_size == -1 else -(-Kq // group_size)
    scales = torch.ones(N, G, dtype=torch.float32, device=dev)
    if group_size == -1:
        scales[:, 0] = scale_for(Wp[:, :Kq])
    codes = torch.zeros(N, Kq, dtype=torch.int8, device=dev)

    if H is None:  # round to nearest
        # 2:4 groups are aligned on the code columns (as in the GPTQ path), not on the scale groups
        Wm = Wp[:, :Kq] * _mask_2of4(Wp[:, :Kq].pow(2)) if sparsity == "2:4" else Wp[:, :Kq]
        for g in range(G):
            lo, hi = (0, Kq) if group_size == -1 else (g * group_size, min((g + 1) * group_size, Kq))
            if group_size != -1:
                scales[:, g] = scale_for(Wp[:, lo:hi])
            codes[:, lo:hi] = quantize_weight(Wm[:, lo:hi], scales[:, g], bits)
        return QuantizedWeight(codes, scales, out_idx, Wp[:, Kq:].clone(), bits, group_size)

    Hp = H.float().to(dev)[perm][:, perm].clone()
    dead = torch.diag(Hp) == 0
    Hp[dead, dead] = 1.0
    Wp[:, dead] = 0.0
    Hp += damp * torch.mean(torch.diag(Hp)) * torch.eye(K, device=dev)
    L = torch.linalg.cholesky(Hp)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # upper factor of H^-1

    lo_q, hi_q = qrange(bits)
    mask = None
    for i1 in range(0, Kq, block_size):
        i2 = min(i1 + block_size, Kq)
        W1 = Wp[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if group_size != -1 and c % group_size == 0:
                Wp[:, c:i2] = W1[:, i:]
                scales[:, c // group_size] = scale_for(Wp[:, c:min(c + group_size, Kq)])
            if sparsity == "2:4" and i % 4 == 0:
                width = min(4, i2 - c)
                sal = W1[:, i:i + width].pow(2) / torch.diag(Hinv1)[i:i + width].pow(2)
                mask = _mask_2of4(sal)
            s = scales[:, 0 if group_size == -1 else c // group_size]
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s), lo_q, hi_q)
            if sparsity == "2:4":
                q = q * mask[:, i % 4]
            codes[:, c] = q.to(torch.int8)
            err = (w - q * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        Wp[:, i1:i2] = W1
        Wp[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the outlier columns (at the end) absorb the error
    return QuantizedWeight(codes, scales, out_idx, Wp[:, Kq:].clone(), bits, group_size)


def _mask_2of4(saliency: Tensor) -> Tensor:
    """Keep the 2 most salient of every 4 consecutive columns per row; a ragged tail is kept whole."""
    N, C = saliency.shape
    m = torch.ones(N, C, dtype=saliency.dtype, device=saliency.device)
    full = C - C % 4
    if full:
        s = saliency[:, :full].reshape(N, -1, 4)
        drop = torch.topk(s, 2, dim=2, largest=False).indices
        mm = torch.ones_like(s)
        mm.scatter_(2, drop, 0.0)
        m[:, :full] = mm.reshape(N, full)
    return m
