"""Bit packing of integer codes. The only place that knows how nibbles sit in a byte.

int4 layout: codes int8 [N, K] in [-8, 7] -> uint8 [N, ceil(K / 2)]; byte ``[n, i]`` holds column
``2i`` in its low nibble and column ``2i + 1`` in its high nibble, both two's complement. An odd K
is padded with a zero code.
"""
from __future__ import annotations

import torch
from torch import Tensor


def pack_int4(codes: Tensor) -> Tensor:
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"pack_int4 takes int8 [N, K] codes, got {codes.dtype} {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError("pack_int4: codes outside [-8, 7]")
    N, K = codes.shape
    if K % 2:
        codes = torch.cat([codes, torch.zeros(N, 1, dtype=torch.int8, device=codes.device)], dim=1)
    u = (codes.to(torch.int16) & 0xF).to(torch.uint8)  # [N, K2 * 2] nibbles
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()  # [N, ceil(K / 2)]


def unpack_int4(packed: Tensor, k: int) -> Tensor:
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != (k + 1) // 2:
        raise ValueError(f"unpack_int4 takes uint8 [N, ceil({k}/2)], got {packed.dtype} {tuple(packed.shape)}")
    lo = (packed & 0xF).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    u = torch.stack([lo, hi], dim=2).reshape(packed.shape[0], -1)[:, :k]  # [N, K] unsigned nibbles
    return torch.where(u >= 8, u - 16, u).to(torch.int8)


def pad_columns(t: Tensor, width: int) -> Tensor:
    """Zero-pad the last dimension of a 2-D tensor to ``width``."""
    if t.shape[1] == width:
        return t.contiguous()
    out = torch.zeros(t.shape[0], width, dtype=t.dtype, device=t.device)
    out[:, : t.shape[1]] = t
    return out
