"""Quantizers: symmetric per-channel / per-group weights, dynamic per-token asymmetric activations.

Conventions (REFERENCE.md section 1), for ``b`` bits:
- weights, symmetric: ``scale = max|w| / (2^(b-1) - 1)``, ``q = clamp(round(w / scale), -2^(b-1), 2^(b-1) - 1)``;
  a row (group) of zeros gets scale 1 so that ``q = 0`` and nothing divides by zero.
- activations, asymmetric per token over the non-outlier columns: ``scale = (max - min) / (2^b - 1)``,
  ``zero = min``, ``q = clamp(round((x - zero) / scale), 0, 2^b - 1) - 2^(b-1)`` stored signed;
  dequantized ``x ~ (q + 2^(b-1)) * scale + zero``. A constant row gets scale 1.
All arithmetic is fp32 and ``torch.round`` (round half to even), the same as ``rintf`` in the kernels.
"""
from __future__ import annotations

import torch
from torch import Tensor


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def weight_scales(w: Tensor, bits: int, clip: Tensor | float = 1.0) -> Tensor:
    """Symmetric scale per row of ``w`` [N, K] -> [N] fp32; ``clip`` shrinks max|w| (scalar or [N])."""
    amax = w.float().abs().amax(dim=1) * clip
    scale = amax / qrange(bits)[1]
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_weight(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Integer codes (int8) of ``w`` [N, K] with per-row ``scale`` [N] (or [N, 1])."""
    lo, hi = qrange(bits)
    s = scale.reshape(-1, 1) if scale.dim() == 1 else scale
    return torch.clamp(torch.round(w.float() / s), lo, hi).to(torch.int8)


def search_clip(w: Tensor, bits: int, grid: int = 20, min_shrink: float = 0.55) -> Tensor:
    """Per-row shrink factor of max|w| minimising the round-to-nearest squared error -> [N] fp32."""
    best_err = torch.full((w.shape[0],), float("inf"), dtype=torch.float32, device=w.device)
    best = torch.ones(w.shape[0], dtype=torch.float32, device=w.device)
    wf = w.float()
    for i in range(grid + 1):
        p = 1.0 - (1.0 - min_shrink) * i / grid
        s = weight_scales(wf, bits, p)
        err = (quantize_weight(wf, s, bits).float() * s[:, None] - wf).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, p), best)
    return best


def act_shift(bits: int) -> int:
    """Offset between the unsigned code (0 .. 2^b - 1) and the stored signed code."""
    return 1 << (bits - 1)


def quantize_activations(x: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token asymmetric codes of ``x`` [M, K]: (codes int8 [M, K], scale fp32 [M], zero fp32 [M])."""
    xf = x.float()
    mn = xf.amin(dim=1)
    mx = xf.amax(dim=1)
    # divide by a tensor: an IEEE division on CPU and CUDA alike (torch's CUDA division by a Python
    # scalar multiplies by the reciprocal, 1 ulp away from the CPU result)
    scale = (mx - mn) / torch.full_like(mx, float((1 << bits) - 1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((xf - mn[:, None]) / scale[:, None]), 0, (1 << bits) - 1)
    return (q - act_shift(bits)).to(torch.int8), scale, mn


def dequantize_activations(codes: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    return (codes.float() + act_shift(bits)) * scale[:, None] + zero[:, None]
