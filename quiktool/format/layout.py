"""The packed layout of one quantized linear layer: the single definition of what is stored.

``PackedLinear`` lists every tensor a layer keeps in the checkpoint (safetensors key
``<layer>.<field>``) and its scalar metadata (in ``config.json`` -> ``quantization_config.layers``).
``from_quantized`` packs an algorithm result; ``codes`` unpacks. Format version: ``FORMAT_VERSION``.

Tensors, for in_features K, out_features N, n_out outliers, Kq = K - n_out, G weight groups:
    qweight         4-bit: uint8 [N, ceil(Kq / 2)] (two codes a byte, see format.packing)
                    8-bit: int8  [N, Kq]
                    columns are the non-outlier input channels in ascending order
    scales          fp32 [N, G]   symmetric weight scale per row (G = 1) or per group of codes
    outlier_idx     int32 [n_out] ascending input channels kept in floating point
    outlier_weight  fp16 [N, n_out]
    wsum            fp32 [N]      sum over the non-outlier columns of the dequantized weight row,
                                  the zero-point term of the activation dequantization
    bias            fp16 [N]      only when the layer has a bias
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from quiktool.algo.gptq import QuantizedWeight, expand_group_scales
from quiktool.errors import CheckpointError
from quiktool.format.packing import pack_int4, unpack_int4

FORMAT_VERSION = 1
FIELDS = ("qweight", "scales", "outlier_idx", "outlier_weight", "wsum", "bias")


@dataclass
class PackedLinear:
    in_features: int
    out_features: int
    weight_bits: int
    act_bits: int
    group_size: int
    qweight: Tensor
    scales: Tensor
    outlier_idx: Tensor
    outlier_weight: Tensor
    wsum: Tensor
    bias: Tensor | None = None
    sparsity: str | None = None

    @property
    def n_outliers(self) -> int:
        return int(self.outlier_idx.numel())

    @property
    def kq(self) -> int:
        return self.in_features - self.n_outliers

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Tensor | None, act_bits: int,
                       sparsity: str | None = None) -> "PackedLinear":
        codes = qw.codes.cpu()
        N, Kq = codes.shape
        deq = codes.double() * expand_group_scales(qw.scales.cpu().double(), Kq, qw.group_size)
        return cls(
            in_features=Kq + qw.outlier_idx.numel(), out_features=N, weight_bits=qw.bits, act_bits=act_bits,
            group_size=qw.group_size,
            qweight=pack_int4(codes) if qw.bits == 4 else codes.clone(),
            scales=qw.scales.cpu().float().contiguous(),
            outlier_idx=qw.outlier_idx.cpu().to(torch.int32),
            outlier_weight=qw.outlier_weight.cpu().to(torch.float16).contiguous(),
            wsum=deq.sum(1).float(),
            bias=None if bias is None else bias.detach().cpu().to(torch.float16),
            sparsity=sparsity,
        )

    def codes(self) -> Tensor:
        """int8 [N, Kq] integer codes."""
        return unpack_int4(self.qweight, self.kq) if self.weight_bits == 4 else self.qweight

    def dequantize(self) -> Tensor:
        """fp32 [N, K]: the weight this layer computes with."""
        qw = QuantizedWeight(self.codes(), self.scales, self.outlier_idx.long(), self.outlier_weight.float(),
                             self.weight_bits, self.group_size)
        return qw.dequantize()

    def meta(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "weight_bits": self.weight_bits, "act_bits": self.act_bits, "group_size": self.group_size,
                "n_outliers": self.n_outliers, "bias": self.bias is not None, "sparsity": self.sparsity}

    def to_tensors(self, prefix: str) -> dict[str, Tensor]:
        out = {f"{prefix}.{f}": getattr(self, f).contiguous() for f in FIELDS if getattr(self, f) is not None}
        return out

    @classmethod
    def from_tensors(cls, prefix: str, tensors: dict[str, Tensor], meta: dict) -> "PackedLinear":
        """Rebuild from checkpoint tensors, checking every shape and dtype against ``meta``."""
        try:
            K, N, wb, ab, gs, n_out = (int(meta[k]) for k in
                                       ("in_features", "out_features", "weight_bits", "act_bits", "group_size", "n_outliers"))
            has_bias = bool(meta["bias"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"layer {prefix}: metadata is incomplete or malformed ({e})") from None
        if wb not in (4, 8) or ab not in (4, 8, 16) or not 0 <= n_out < K:
            raise CheckpointError(f"layer {prefix}: weight_bits={wb}, act_bits={ab}, n_outliers={n_out} are out of range")
        if not (gs == -1 or (gs >= 1 and ab == 16)):
            raise CheckpointError(f"layer {prefix}: group_size={gs} with act_bits={ab} is not valid "
                                  "(-1, or a positive group size with act_bits=16)")
        kq = K - n_out
        G = 1 if gs == -1 else -(-kq // gs)
        expect = {
            "qweight": ((N, (kq + 1) // 2), torch.uint8) if wb == 4 else ((N, kq), torch.int8),
            "scales": ((N, G), torch.float32),
            "outlier_idx": ((n_out,), torch.int32),
            "outlier_weight": ((N, n_out), torch.float16),
            "wsum": ((N,), torch.float32),
        }
        if has_bias:
            expect["bias"] = ((N,), torch.float16)
        got = {}
        for f, (shape, dtype) in expect.items():
            key = f"{prefix}.{f}"
            if key not in tensors:
                raise CheckpointError(f"checkpoint lacks tensor {key!r}; the file is truncated or not written by quiktool")
            t = tensors[key]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise CheckpointError(f"tensor {key!r} is {t.dtype} {tuple(t.shape)}; expected {dtype} {shape}")
            got[f] = t
        for f in ("scales", "outlier_weight", "wsum"):
            if not torch.isfinite(got[f].float()).all():
                raise CheckpointError(f"tensor {prefix}.{f} holds NaN or Inf")
        idx = got["outlier_idx"].long()
        if n_out and (int(idx.min()) < 0 or int(idx.max()) >= K or not bool((idx[1:] > idx[:-1]).all())):
            raise CheckpointError(f"tensor {prefix}.outlier_idx is not ascending within [0, {K})")
        return cls(K, N, wb, ab, gs, got["qweight"], got["scales"], got["outlier_idx"], got["outlier_weight"],
                   got["wsum"], got.get("bias"), meta.get("sparsity"))
