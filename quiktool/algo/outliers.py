"""Outlier input channels: the top-k channels by a calibration statistic stay in floating point."""
from __future__ import annotations

import torch
from torch import Tensor


def select_outliers(stat: Tensor, k: int) -> Tensor:
    """Indices (int64, ascending) of the ``k`` largest entries of ``stat`` [K]. Ties break by lower index."""
    K = stat.numel()
    if not 0 <= k < K:
        raise ValueError(f"k={k} outliers is not in [0, {K})")
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    # stable: sort descending by value, ascending by index among equal values
    order = torch.argsort(stat.float().cpu(), descending=True, stable=True)
    return torch.sort(order[:k]).values


def keep_columns(K: int, outlier_idx: Tensor) -> Tensor:
    """The non-outlier columns of a K-wide layer, ascending (int64)."""
    mask = torch.ones(K, dtype=torch.bool)
    mask[outlier_idx.long()] = False
    return torch.nonzero(mask).flatten()
