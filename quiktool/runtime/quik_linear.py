"""QuikLinear: a drop-in nn.Linear replacement that runs a PackedLinear on a backend.

forward(x [*, K]) with M = prod(*):
    x2        = x.reshape(M, K)                                  # [M, K]
    A16 layer:  y = x2 @ W_deq^T + bias                          (weight-only quantization)
    A4/A8:      y = backend.quik_linear(x2, ...) (CUDA: the layer's cuda.PreparedLinear, same kernels), i.e.
                codes, s, z, x_out = quantize_split(x2)          # codes [M, Kp] int8
                y_base = x_out @ W_out^T + bias                  # [M, N] FP16 outlier GEMM (cuBLAS on GPU)
                y = quik_gemm(codes, W_codes, ..., y_base)       # int GEMM + dequant epilogue
    return y.reshape(*, N)
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from quiktool.algo.outliers import keep_columns
from quiktool.format.layout import PackedLinear
from quiktool.runtime.backends import get_backend

# The CUDA backend runs through a cuda.PreparedLinear per layer (its operands checked once); QUIKTOOL_PREPARED=0
# calls cuda.quik_linear, which checks every operand on every call, instead (host-overhead A/B runs; same bits).
PREPARED = os.environ.get("QUIKTOOL_PREPARED", "1") != "0"


class QuikLinear(nn.Module):
    def __init__(self, packed: PackedLinear, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", backend: str = "torch"):
        super().__init__()
        self.packed = packed  # CPU copy, the checkpoint's view of this layer
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.weight_bits, self.act_bits = packed.weight_bits, packed.act_bits
        self.backend = backend
        self.dtype = dtype
        p = packed
        bias = None if p.bias is None else p.bias.to(device, dtype)
        self.register_buffer("bias", bias, persistent=False)
        if p.act_bits == 16:
            self.register_buffer("w_deq", p.dequantize().to(device, dtype), persistent=False)
            return
        if p.group_size != -1:
            raise ValueError("group-wise weight scales need act_bits=16 (the integer GEMM keeps one scale per row)")
        be = get_backend(backend)
        self.register_buffer("w_rt", be.prepare_weight(p.codes().to(device), p.weight_bits), persistent=False)
        self.register_buffer("w_scale", p.scales[:, 0].to(device).contiguous(), persistent=False)
        self.register_buffer("wsum", p.wsum.to(device), persistent=False)
        self.register_buffer("keep_idx", keep_columns(p.in_features, p.outlier_idx.long()).to(device, torch.int32),
                             persistent=False)
        self.register_buffer("outlier_idx", p.outlier_idx.to(device, torch.int32), persistent=False)
        self.register_buffer("outlier_weight", p.outlier_weight.to(device, dtype), persistent=False)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, W{self.weight_bits}A{self.act_bits}, "
                f"outliers={self.packed.n_outliers}, backend={self.backend}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(x)[0]

    def forward_blocks(self, x: torch.Tensor, seg: int = 0) -> tuple[torch.Tensor, bool]:
        """forward, optionally with the output in blocks: -> (y, blocked). With seg > 0 (even, dividing
        out_features) the CUDA backend may return y [M, N] whose memory holds N / seg contiguous blocks of
        [M, seg] (blocked = True: runtime.fuse's members, each contiguous); otherwise y is forward's."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)                       # [M, K]
        if x2.dtype != self.dtype:
            x2 = x2.to(self.dtype)
        if self.act_bits == 16:
            return F.linear(x2, self.w_deq, self.bias).reshape(*lead, self.out_features), False
        if PREPARED and self.backend == "cuda" and x2.is_cuda:
            y, blocked = self._prepared_cuda().run(x2.contiguous(), seg)                   # [M, N]
            if blocked:
                return y, True
        else:
            be = get_backend(self.backend)
            y = be.quik_linear(x2.contiguous(), self.keep_idx, self.outlier_idx, self.act_bits, self.w_rt,
                               self.weight_bits, self.w_scale, self.wsum, self.outlier_weight, self.bias)  # [M, N]
        return y.reshape(*lead, self.out_features), False

    _prepared = None  # cuda.PreparedLinear over this layer's buffers, built at the first CUDA call

    def _prepared_cuda(self):
        """The layer's operands checked once (cuda.PreparedLinear): per call only x is checked."""
        p, b = self._prepared, self._buffers  # the dict itself: self.<buffer> costs a Module.__getattr__ call each
        if p is None or not (p.w is b["w_rt"] and p.outlier_weight is b["outlier_weight"] and p.bias is b["bias"]
                             and p.w_scale is b["w_scale"] and p.wsum is b["wsum"] and p.keep is b["keep_idx"]
                             and p.outl is b["outlier_idx"]):  # first call, or a buffer was replaced (.to())
            from quiktool.runtime import cuda

            self._prepared = cuda.PreparedLinear(self.keep_idx, self.outlier_idx, self.act_bits, self.w_rt,
                                                 self.weight_bits, self.w_scale, self.wsum, self.outlier_weight,
                                                 self.bias, self.dtype)
        return self._prepared


def set_backend(model: nn.Module, backend: str) -> int:
    """Point every QuikLinear of ``model`` at ``backend`` ('torch' or 'cuda'); returns how many.

    Both backends read the same runtime layout (runtime/reference.py), so no repacking is needed."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, QuikLinear):
            mod.backend = backend
            n += 1
    return n
