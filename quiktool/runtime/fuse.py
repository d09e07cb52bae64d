"""Runtime fusion of the QUIK layers that read the same input (LLaMA: q/k/v, and gate/up).

The adapter's groups name the linears that read one input tensor. QUIK chooses a layer's outlier columns
from the statistics of its input, so the members of a group have the same outlier columns and quantize
that input identically; their integer GEMMs can then run as one wider GEMM on one set of activation
codes: one quantizer launch, one outlier product and one GEMM instead of three, and a wider N keeps
the GPU busier. Per output element nothing changes in the quantizer, the integer sums or the epilogue.
The only difference is the outlier product: one F.linear over the concatenated outlier weights instead
of one per member; cuBLAS may pick another algorithm for the wider matrix, so y_base (and then the
output) can differ from the unfused model's in the last bit. Both backends run the same fused model,
so the CUDA and torch backends stay bit-identical to each other.

    fused = FusedQuikLinear(members)            # one QuikLinear over the concatenated output features
    block.q_proj = QuikSlice(fused, 0)  ...    # each member's output: a column slice of the fused output

A slice computes the fused output when it sees a new input and caches it until every member of the group
has taken its slice (the model calls q, k and v on the same tensor object, one after the other); the
cache holds that input tensor itself, so an identity match can never be a recycled address.

Members of equal width get contiguous outputs where the CUDA backend's wgmma kernel runs and the width is a
multiple of its 256-column tile (LLaMA-2's q/k/v and gate/up): it writes the fused output as one [M, width]
block per member (QuikLinear.forward_blocks). Column slices of an [M, N] output are strided, and the model's
elementwise ops on them (SiLU and the product on gate / up) fall back to PyTorch's non-vectorized kernels: ~1.7 ms of a LLaMA-2-7B prefill of 2048 tokens (docs/RESULTS.md,
tenth session). Same values either way. QUIKTOOL_FUSE_BLOCKS=0 turns it off (A/B runs).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
from torch import Tensor

from quiktool.models.adapters import Adapter, adapter_for, blocks, get_module, set_module
from quiktool.runtime.quik_linear import QuikLinear
from quiktool.runtime.reference import concat_weights

_CONCAT = ("w_rt", "w_scale", "wsum", "outlier_weight", "bias")   # per-output-feature tensors, dim 0
_SHARED = ("keep_idx", "outlier_idx")                               # per-input-column, equal in a group
BLOCKS = os.environ.get("QUIKTOOL_FUSE_BLOCKS", "1") != "0"


def fusable(members: list[nn.Module]) -> str | None:
    """None when ``members`` can run as one layer, else the reason they cannot."""
    if len(members) < 2:
        return "a single layer"
    if not all(type(m) is QuikLinear for m in members):
        return "not all QuikLinear"
    a = members[0]
    if a.act_bits == 16:
        return "weight-only layers (A16)"
    for m in members[1:]:
        same = (m.in_features == a.in_features and m.act_bits == a.act_bits and m.weight_bits == a.weight_bits
                and m.dtype == a.dtype and m.backend == a.backend and m.w_rt.device == a.w_rt.device
                and (m.bias is None) == (a.bias is None))
        if not same:
            return "different shapes, bits, dtype, backend, device or bias"
        if not torch.equal(m.outlier_idx, a.outlier_idx):
            return "different outlier columns"
    return None


class FusedQuikLinear(nn.Module):
    """One QuikLinear whose output features are the members' in order, and the bookkeeping of the slices."""

    def __init__(self, members: list[QuikLinear]):
        super().__init__()
        why = fusable(members)
        if why is not None:
            raise ValueError(f"these layers cannot be fused: {why}")
        first = members[0]
        core = QuikLinear.__new__(QuikLinear)
        nn.Module.__init__(core)
        core.packed = None  # the members keep theirs (QuikSlice.packed): the checkpoint's view is per member
        core.in_features, core.out_features = first.in_features, sum(m.out_features for m in members)
        core.weight_bits, core.act_bits, core.backend, core.dtype = (first.weight_bits, first.act_bits,
                                                                     first.backend, first.dtype)
        for name in _CONCAT:
            parts = [getattr(m, name) for m in members]
            if parts[0] is None:
                cat = None
            elif name == "w_rt":  # the 4-bit runtime layout interleaves rows (reference.tile_w4)
                cat = concat_weights(parts, first.weight_bits)
            else:
                cat = torch.cat(parts, 0).contiguous()
            core.register_buffer(name, cat, persistent=False)
        for name in _SHARED:
            core.register_buffer(name, getattr(first, name), persistent=False)
        self.core = core
        ends = torch.tensor([m.out_features for m in members]).cumsum(0).tolist()
        self.bounds = [(e - m.out_features, e) for e, m in zip(ends, members)]
        widths = {m.out_features for m in members}
        # one output block per member when all have one even width (the wgmma kernel's seg, quik_wgmma.cu)
        self.block = widths.pop() if len(widths) == 1 and members[0].out_features % 2 == 0 else 0
        self._x: Tensor | None = None
        self._version = -1
        self._parts: list[Tensor] | None = None
        self._taken: set[int] = set()

    def extra_repr(self) -> str:
        return f"members={len(self.bounds)}, out={[b - a for a, b in self.bounds]}"

    def output(self, i: int, x: Tensor) -> Tensor:
        """Member i's output for input x: a view of the fused output (its block, or its columns)."""
        if self._x is not x or self._version != x._version or i in self._taken:
            self._x, self._version, self._parts, self._taken = x, x._version, self._compute(x), set()
        self._taken.add(i)
        y = self._parts[i]
        if len(self._taken) == len(self.bounds):  # every member served: let the tensors go
            self._x = self._parts = None
        return y

    def _compute(self, x: Tensor) -> list[Tensor]:
        y, blocked = self.core.forward_blocks(x, self.block if BLOCKS else 0)
        if blocked:  # y's memory: one contiguous [M, width] block per member
            flat, M, lead = y.view(-1), y.shape[0], x.shape[:-1]
            return [flat[M * a: M * b].view(*lead, b - a) for a, b in self.bounds]
        return [y[..., a:b] for a, b in self.bounds]


class QuikSlice(nn.Module):
    """Stands where a member QuikLinear was: forwards to its fused group and returns its columns."""

    def __init__(self, group: FusedQuikLinear, index: int, member: QuikLinear):
        super().__init__()
        object.__setattr__(self, "group", group)  # not a submodule: the group is registered once, on the block
        self.index = index
        self.packed = member.packed
        self.in_features, self.out_features = member.in_features, member.out_features
        self.weight_bits, self.act_bits = member.weight_bits, member.act_bits

    def extra_repr(self) -> str:
        return f"member {self.index} of a fused group, in={self.in_features}, out={self.out_features}"

    def forward(self, x: Tensor) -> Tensor:
        return self.group.output(self.index, x)


def fuse_shared_inputs(model: nn.Module, adapter: Adapter | None = None) -> int:
    """Fuse every adapter group of QuikLinears that reads one input (see the module doc), in place.
    Returns how many groups were fused; groups that cannot be fused (fusable) stay as they are."""
    adapter = adapter or adapter_for(model)
    n = 0
    for block in blocks(model, adapter):
        for g, group in enumerate(adapter.groups):
            paths = [path for path, _ in group]
            members = [get_module(block, p) for p in paths]
            if fusable(members) is not None:
                continue
            fused = FusedQuikLinear(members)
            block.add_module(f"quik_fused_{g}", fused)
            for i, (p, m) in enumerate(zip(paths, members)):
                set_module(block, p, QuikSlice(fused, i, m))
            n += 1
    return n
