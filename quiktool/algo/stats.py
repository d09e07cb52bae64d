"""Streaming statistics over layer inputs: per-channel max |x| and mean x^2, and the GPTQ Hessian."""
from __future__ import annotations

import torch
from torch import Tensor


class ChannelStats:
    """Per-input-channel ``max |x|`` and ``mean x^2`` over all tokens seen (fp32 / fp64 sums)."""

    def __init__(self, k: int):
        self.max_abs = torch.zeros(k, dtype=torch.float32)
        self.sum_sq = torch.zeros(k, dtype=torch.float64)
        self.count = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float().cpu()
        if x.shape[0] == 0:
            return
        self.max_abs = torch.maximum(self.max_abs, x.abs().amax(0))
        self.sum_sq += x.double().pow(2).sum(0)
        self.count += x.shape[0]

    @property
    def mean_sq(self) -> Tensor:
        return (self.sum_sq / max(self.count, 1)).float()


class HessianAccumulator:
    """H = 2/n * sum_i x_i x_i^T over all n tokens (fp32), as in GPTQ."""

    def __init__(self, k: int, device: torch.device | str = "cpu"):
        self.H = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        m = x.shape[0]
        if m == 0:
            return
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H += x.T @ x
