"""Exact PyTorch reference of the QUIK layer kernels: the oracle for kernels/*.cu and the CPU backend.

Every function here has the same signature as its CUDA launcher in ``runtime/cuda.py``.

Runtime layout (shared by both backends; built once at load by ``prepare_weight``):
  Kq      = in_features - n_outliers; Kp = Kq rounded up to ``K_ALIGN`` (pad codes are 0 on both
            sides, so they add nothing to the integer sums)
  w       4-bit: uint8 [N, Kp / 2], ``format.packing`` nibble order, rows interleaved by ``tile_w4``:
            groups of 8 rows (the last one N % 8 rows when that is not 0), each stored step-major, i.e.
            64 packed bytes of every row of the group, then the next 64 (a last step of 32 bytes when
            Kp % 128 == 64). The CUDA decode kernels read one step of 8 rows per load instruction, which
            this makes one contiguous 512-byte block (kernels/quik_ptx.cuh, w4_off: the byte address).
          8-bit: int8 [N, Kp] row-major
  a_codes int8 [M, Kp], one signed code per byte (4-bit codes in [-8, 7], 8-bit in [-128, 127])

Exactness of the integer product: codes are small integers, so their products and sums are
integers. A float matmul of integer-valued operands is exact when every partial sum stays below
2^24 (fp32) or 2^53 (fp64) in magnitude, whatever the summation order. ``int_gemm`` picks fp32
when ``max|a| * max|w| * Kp < 2^24`` and fp64 otherwise, then converts to int32: bit-identical to
an int32 accumulator (which cannot overflow either under the fp64 bound for any real layer).

The epilogue (fp32): out[m, n] = acc[m, n] * (a_scale[m] * w_scale[n])
                               + (a_zero[m] + a_shift * a_scale[m]) * wsum[n]
                               + y_base[m, n]          (outlier product + bias, or 0)
Each operation is one IEEE fp32 operation rounded to nearest, in exactly this order (parenthesised
products first, then the sums left to right), then one rounding to the output dtype.

The outlier product (the FP16 part of the layer), two definitions by token count M (``quik_linear``):
  M <= FUSED_OUTLIER_MAX_M (decode): y_base = outlier_sum, fp32, summed over the outlier columns j in
      ascending order into four lanes (column j into lane j % 4), s_l = s_l + x[m, idx[j]] * w_out[n, j]
      (each product and each sum rounded to nearest), then (s_0 + s_1) + (s_2 + s_3), then + bias[n]; the
      CUDA backend computes it inside the small-M GEMM kernel (quik_gemm_outliers).
  otherwise: y_base = F.linear(x_out, w_out, bias) in the model dtype (cuBLAS on a GPU: the same call on
      both backends). The order is part
of the contract: the CUDA epilogue performs the same sequence without FMA contraction, so the two
backends' outputs are bit-identical, and so are the logits of a whole quantized model. (Close is not
enough: 4-bit activation rounding is discontinuous, and a 1-ulp-sized perturbation of the inputs moves
a SmolLM2-135M QUIK-4B perplexity by about 1%; see docs/RESULTS.md.)
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import Tensor

import torch.nn.functional as F

from quiktool.algo.quant import act_shift
from quiktool.algo.quant import quantize_activations as _quant_acts
from quiktool.format.packing import pad_columns, unpack_int4

K_ALIGN = 64
NAME = "torch"
# Layers called with at most this many tokens sum their outlier product in the order of outlier_sum (the
# CUDA backend fuses it into the decode GEMM kernel); above, F.linear. Part of the contract of both
# backends, which read it at call time; QUIKTOOL_FUSED_OUTLIER_MAX_M=0 restores F.linear everywhere (A/B runs).
FUSED_OUTLIER_MAX_M = int(os.environ.get("QUIKTOOL_FUSED_OUTLIER_MAX_M", "16"))


class ActCodes(NamedTuple):
    codes: Tensor      # int8 [M, Kp]
    scale: Tensor      # fp32 [M]
    zero: Tensor       # fp32 [M]
    x_outlier: Tensor  # x.dtype [M, n_out]


def padded_k(kq: int) -> int:
    return -(-kq // K_ALIGN) * K_ALIGN


def prepare_weight(codes: Tensor, bits: int) -> Tensor:
    """int8 codes [N, Kq] -> runtime weight (see module doc), on the codes' device."""
    from quiktool.format.packing import pack_int4

    kp = padded_k(codes.shape[1])
    codes = pad_columns(codes, kp)
    return tile_w4(pack_int4(codes)) if bits == 4 else codes


def _tile_groups(x: Tensor, gs: int, inverse: bool) -> Tensor:
    """tile_w4 for rows that form whole groups of gs rows: x [G * gs, RB] -> [G * gs, RB]."""
    rb = x.shape[1]
    G, S = x.shape[0] // gs, rb // 64
    t = rb - 64 * S                                            # the last step's bytes, 0 or 32
    if not inverse:
        x = x.reshape(G, gs, rb)
        steps = x[:, :, :64 * S].reshape(G, gs, S, 64).transpose(1, 2).reshape(G, S * gs * 64)
        parts = [steps] + ([x[:, :, 64 * S:].reshape(G, gs * t)] if t else [])
        return torch.cat(parts, 1).reshape(G * gs, rb)
    x = x.reshape(G, gs * rb)
    rows = x[:, :S * gs * 64].reshape(G, S, gs, 64).transpose(1, 2).reshape(G, gs, S * 64)
    parts = [rows] + ([x[:, S * gs * 64:].reshape(G, gs, t)] if t else [])
    return torch.cat(parts, 2).reshape(G * gs, rb)


def tile_w4(w: Tensor, inverse: bool = False) -> Tensor:
    """Packed 4-bit weights uint8 [N, RB] (RB = Kp / 2, a multiple of 32), row-major -> the runtime layout
    (module doc), or back with ``inverse``. A permutation of the bytes: same shape, dtype and device."""
    N, rb = w.shape
    if rb % 32:
        raise ValueError(f"tile_w4: rows of {rb} bytes; Kp / 2 is a multiple of 32")
    n8 = N - N % 8
    parts = ([_tile_groups(w[:n8], 8, inverse)] if n8 else []) + ([_tile_groups(w[n8:], N - n8, inverse)]
                                                                   if N > n8 else [])
    return torch.cat(parts, 0) if len(parts) > 1 else (parts[0].contiguous() if parts else w.contiguous())


def concat_weights(parts: list[Tensor], bits: int) -> Tensor:
    """Runtime weights of layers with the same input -> the runtime weight of their output features in order
    (a fused layer group, runtime/fuse.py)."""
    if bits != 4:
        return torch.cat(parts, 0).contiguous()
    return tile_w4(torch.cat([tile_w4(p, inverse=True) for p in parts], 0))


def quantize_activations(x: Tensor, keep_idx: Tensor, outlier_idx: Tensor, bits: int) -> ActCodes:
    """x [M, K] float -> per-token codes of the ``keep_idx`` columns, and the outlier columns as they are."""
    xk = x.index_select(1, keep_idx)                          # [M, Kq]
    codes, scale, zero = _quant_acts(xk, bits)
    return ActCodes(pad_columns(codes, padded_k(xk.shape[1])), scale, zero, x.index_select(1, outlier_idx))


def _unpack_weight(w: Tensor, w_bits: int, kp: int) -> Tensor:
    return unpack_int4(tile_w4(w, inverse=True), kp) if w_bits == 4 else w


def int_gemm(a_codes: Tensor, w: Tensor, w_bits: int) -> Tensor:
    """acc[m, n] = sum_k a_codes[m, k] * wcode[n, k], exactly, as int32 [M, N]."""
    kp = a_codes.shape[1]
    wq = _unpack_weight(w, w_bits, kp)                        # int8 [N, Kp]
    amax = int(a_codes.to(torch.int16).abs().max()) if a_codes.numel() else 0  # int8 abs(-128) wraps to -128
    bound = (1 << 7 if amax > 8 else 8) * (1 << (w_bits - 1)) * kp
    dt = torch.float32 if bound < (1 << 24) else torch.float64
    return (a_codes.to(dt) @ wq.to(dt).T).to(torch.int32)


def quik_gemm(a_codes: Tensor, w: Tensor, w_bits: int, a_scale: Tensor, a_zero: Tensor, a_shift: int,
              w_scale: Tensor, wsum: Tensor, y_base: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """Integer GEMM + dequantization epilogue -> [M, N] in ``out_dtype`` (computed in fp32)."""
    acc = int_gemm(a_codes, w, w_bits).float()                          # int32 -> fp32, rounded to nearest
    # one eager op per line: each result is rounded to fp32 before the next op (no fusion, no FMA)
    scale = a_scale[:, None] * w_scale[None, :]                          # [M, N]
    row_zero = a_zero + a_scale * float(a_shift)                         # [M]
    out = acc * scale + row_zero[:, None] * wsum[None, :]                # [M, N]
    if y_base is not None:
        out = out + y_base.float()
    return out.to(out_dtype)


def quantize_split(x: Tensor, outlier_idx: Tensor, bits: int) -> ActCodes:
    """QUIK's activation split for a layer: the outlier columns as they are, every other column (in
    ascending order: the layout's keep_idx, algo.outliers.keep_columns) quantized per token.
    = quantize_activations(x, keep_columns(K, outlier_idx), outlier_idx, bits)."""
    from quiktool.algo.outliers import keep_columns

    keep = keep_columns(x.shape[1], outlier_idx.long()).to(x.device)
    return quantize_activations(x, keep, outlier_idx, bits)


def quantize_layer(x: Tensor, keep_idx: Tensor, outlier_idx: Tensor, bits: int) -> ActCodes:
    """What quik_linear quantizes with; keep_idx is the ascending complement of outlier_idx (the CUDA
    backend derives it in its kernel). Here: quantize_activations."""
    return quantize_activations(x, keep_idx, outlier_idx, bits)


def outlier_base(x_outlier: Tensor | None, outlier_weight: Tensor, bias: Tensor | None, M: int) -> Tensor | None:
    """y_base of quik_gemm: the outlier columns' product plus the bias (F.linear: cuBLAS on a GPU, the same
    call on both backends), the bias alone, or None."""
    if x_outlier is not None and x_outlier.shape[1]:
        return F.linear(x_outlier, outlier_weight, bias)                 # [M, N]
    if bias is not None:
        return bias.expand(M, -1).contiguous()
    return None


# Independent partial sums of outlier_sum (column j goes to lane j % OUTLIER_LANES); kernels/quik_gemm.cu
# (OUTL_LANES) combines them as (s0 + s1) + (s2 + s3).
OUTLIER_LANES = 4


def outlier_sum(x_outlier: Tensor, outlier_weight: Tensor, bias: Tensor | None) -> Tensor:
    """The decode definition of the outlier product: fp32 [M, N] with four partial sums per output
        s_l[m, n] = 0 (l = 0..3);  s_l = s_l + x_outlier[m, j] * outlier_weight[n, j]  for j = 0, 1, ..., n_out - 1,
            l = j % 4;  s = (s_0 + s_1) + (s_2 + s_3);  s = s + bias[n]
    every product and every sum one IEEE fp32 operation rounded to nearest (the inputs widened exactly).
    A fixed order on purpose: any GPU thread can reproduce it, whatever the shape (a matmul's order is the
    library's choice); four lanes rather than one chain so that the kernel's dependent adds are a quarter as
    long (docs/PERF_LOG.md, eighth session). x_outlier [M, n_out], outlier_weight [N, n_out], bias [N] or
    None; same dtype."""
    M, N = x_outlier.shape[0], outlier_weight.shape[0]
    xf = x_outlier.float()                                               # [M, n_out]
    wt = outlier_weight.float().T.contiguous()                           # [n_out, N]
    s = [torch.zeros(M, N, dtype=torch.float32, device=x_outlier.device) for _ in range(OUTLIER_LANES)]
    for j in range(x_outlier.shape[1]):
        p = xf[:, j, None] * wt[j][None, :]                               # [M, N], one rounding
        s[j % OUTLIER_LANES] = s[j % OUTLIER_LANES] + p                   # one rounding, never fused with p
    total = (s[0] + s[1]) + (s[2] + s[3])
    if bias is not None:
        total = total + bias.float()[None, :]
    return total


def outliers_in_gemm(M: int, n_out: int) -> bool:
    """Whether a layer call of M tokens with n_out outlier columns takes the decode definition of the outlier
    product (outlier_sum, quik_gemm_outliers) rather than F.linear: the one place both backends and the bench
    decide it (FUSED_OUTLIER_MAX_M is read at call time)."""
    return n_out > 0 and M <= FUSED_OUTLIER_MAX_M


def quik_gemm_outliers(a_codes: Tensor, w: Tensor, w_bits: int, a_scale: Tensor, a_zero: Tensor, a_shift: int,
                       w_scale: Tensor, wsum: Tensor, x_outlier: Tensor, outlier_weight: Tensor,
                       bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """quik_gemm with y_base = outlier_sum(x_outlier, outlier_weight, bias) (fp32): the decode layer's GEMM
    with its outlier product in the fixed order. x_outlier [M, n_out] as the quantizer returns it."""
    y_base = outlier_sum(x_outlier, outlier_weight, bias)
    return quik_gemm(a_codes, w, w_bits, a_scale, a_zero, a_shift, w_scale, wsum, y_base, out_dtype)


def quik_linear(x: Tensor, keep_idx: Tensor, outlier_idx: Tensor, act_bits: int, w: Tensor, w_bits: int,
                w_scale: Tensor, wsum: Tensor, outlier_weight: Tensor, bias: Tensor | None) -> Tensor:
    """The whole QUIK layer on x [M, K] -> [M, N] in x's dtype (what QuikLinear.forward runs):

        codes, scale, zero, x_out = quantize_activations(x, keep_idx, outlier_idx)   # = quantize_split
        y = quik_gemm(codes, ..., y_base = x_out @ outlier_weight^T + bias)

    keep_idx must be the complement of outlier_idx in ascending order (algo.outliers.keep_columns; the
    layer keeps it precomputed): the CUDA backend derives it from outlier_idx inside its kernel.
    With at most FUSED_OUTLIER_MAX_M tokens and outliers, the outlier product is outlier_sum instead
    (quik_gemm_outliers)."""
    a = quantize_layer(x, keep_idx, outlier_idx, act_bits)
    if outliers_in_gemm(x.shape[0], outlier_idx.numel()):
        return quik_gemm_outliers(a.codes, w, w_bits, a.scale, a.zero, act_shift(act_bits), w_scale, wsum,
                                  a.x_outlier, outlier_weight, bias, x.dtype)
    y_base = outlier_base(a.x_outlier, outlier_weight, bias, x.shape[0])
    return quik_gemm(a.codes, w, w_bits, a.scale, a.zero, act_shift(act_bits), w_scale, wsum, y_base, x.dtype)
