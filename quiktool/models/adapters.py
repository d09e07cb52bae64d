"""Architecture adapters: each supported family described as data, not as a copied script.

An adapter names where the decoder blocks live and the block's linear layers in calibration
order: sequential groups, each quantized on the outputs of the already-quantized groups before it
(LLaMA: [k, v, q] -> [o] -> [up, gate] -> [down]). Every linear has a generic layer type that the
quantization config keys on. Embeddings, norms, attention arithmetic and the head stay untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from quiktool.errors import ModelError


@dataclass(frozen=True)
class Adapter:
    family: str
    model_types: tuple[str, ...]
    blocks: str                                   # dotted path of the ModuleList of decoder blocks
    groups: tuple[tuple[tuple[str, str], ...], ...]  # ((linear path in block, layer type), ...) per group
    final_norm: str
    head: str = "lm_head"

    def linears(self) -> list[tuple[str, str]]:
        return [item for group in self.groups for item in group]


_LLAMA_GROUPS = (
    (("self_attn.k_proj", "attn_in"), ("self_attn.v_proj", "attn_in"), ("self_attn.q_proj", "attn_in")),
    (("self_attn.o_proj", "attn_out"),),
    (("mlp.up_proj", "mlp_in"), ("mlp.gate_proj", "mlp_in")),
    (("mlp.down_proj", "mlp_out"),),
)

ADAPTERS: tuple[Adapter, ...] = (
    Adapter("llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3"), "model.layers", _LLAMA_GROUPS, "model.norm"),
    Adapter(
        "opt", ("opt",), "model.decoder.layers",
        (
            (("self_attn.k_proj", "attn_in"), ("self_attn.v_proj", "attn_in"), ("self_attn.q_proj", "attn_in")),
            (("self_attn.out_proj", "attn_out"),),
            (("fc1", "mlp_in"),),
            (("fc2", "mlp_out"),),
        ),
        "model.decoder.final_layer_norm",
    ),
    Adapter(
        "falcon", ("falcon",), "transformer.h",
        (
            (("self_attention.query_key_value", "attn_in"),),
            (("self_attention.dense", "attn_out"),),
            (("mlp.dense_h_to_4h", "mlp_in"),),
            (("mlp.dense_4h_to_h", "mlp_out"),),
        ),
        "transformer.ln_f",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_or_type) -> Adapter:
    mt = model_or_type if isinstance(model_or_type, str) else getattr(model_or_type.config, "model_type", None)
    for a in ADAPTERS:
        if mt in a.model_types:
            return a
    raise ModelError(f"architecture {mt!r} is not supported; supported model types: {', '.join(supported_model_types())}")


def get_module(root: nn.Module, path: str) -> nn.Module:
    m = root
    for part in path.split("."):
        m = getattr(m, part)
    return m


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, new)


def blocks(model: nn.Module, adapter: Adapter) -> nn.ModuleList:
    return get_module(model, adapter.blocks)
