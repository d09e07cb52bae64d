"""runtime/fuse.py: the QUIK layers that read one input run as one wider layer (CPU, torch backend)."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, tiny_model
from quiktool import api
from quiktool.config import load_config
from quiktool.format.checkpoint import load_packed, save_packed
from quiktool.models.adapters import adapter_for, blocks, get_module
from quiktool.runtime.fuse import FusedQuikLinear, QuikSlice, fusable, fuse_shared_inputs
from quiktool.runtime.quik_linear import QuikLinear

# groups of the adapter with more than one linear: LLaMA family [k, v, q] and [up, gate]; OPT [k, v, q];
# Falcon none (its q/k/v is one linear already)
MULTI = {"llama": 2, "mistral": 2, "qwen2": 2, "opt": 1, "falcon": 0}


def _quantized(family: str, preset: str = "quik-4b", seed: int = 0):
    m = tiny_model(family, seed)
    g = torch.Generator().manual_seed(seed + 1)
    windows = torch.randint(0, m.config.vocab_size, (4, 32), generator=g)
    api.quantize_model(m, load_config(preset).replace(algorithm="rtn"), api.collect_channel_stats(m, windows), None,
                       progress=False)
    ids = torch.randint(0, m.config.vocab_size, (2, 23), generator=g)
    return m, ids


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_model_computes_the_same_function(family):
    m, ids = _quantized(family)
    with torch.no_grad():
        ref = m(ids).logits
    fused = copy.deepcopy(m)
    n_blocks = len(blocks(fused, adapter_for(fused)))
    assert fuse_shared_inputs(fused) == MULTI[family] * n_blocks
    n_slices = sum(isinstance(mod, QuikSlice) for mod in fused.modules())
    assert n_slices == sum(len(gr) for gr in adapter_for(fused).groups if len(gr) > 1) * n_blocks
    with torch.no_grad():
        got = fused(ids).logits
    # same quantizer, integer sums and epilogue per element; only the outlier product is one F.linear over the
    # concatenated weights instead of one per layer, which may round differently in the last bit
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_fused_slices_serve_one_input_once_and_recompute_on_a_new_one():
    m, ids = _quantized("llama")
    block = m.model.layers[0]
    q, k, v = (copy.deepcopy(get_module(block, f"self_attn.{n}_proj")) for n in "qkv")
    fused = FusedQuikLinear([k, v, q])
    calls = []
    core_forward = fused.core.forward_blocks
    fused.core.forward_blocks = lambda x, seg=0: calls.append(1) or core_forward(x, seg)
    sk, sv, sq = (QuikSlice(fused, i, mod) for i, mod in enumerate([k, v, q]))
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        outs = [sq(x), sk(x), sv(x)]                      # any order; one fused forward for the three
        assert len(calls) == 1 and fused._x is None       # released once every member was served
        for out, mod in zip(outs, (q, k, v)):
            assert torch.equal(out, mod(x))               # each slice is its layer's output here (fp32, CPU)
        sq(x)
        sq(x)                                             # the same member twice: recomputed, not stale
        assert len(calls) == 3
        y = torch.randn(3, 5, 64)
        assert torch.equal(sk(y), k(y)) and len(calls) == 4
        x2 = y.clone()
        sv(x2)
        x2.mul_(2.0)                                      # modified in place: a new input
        assert torch.equal(sv(x2), v(x2)) and len(calls) == 6


def test_members_of_one_even_width_get_output_blocks():
    """Equal even widths: the fused layer asks the backend for one output block per member (the wgmma kernel
    writes them; on the CPU the torch backend returns the [M, N] output and the members are its columns)."""
    m, _ = _quantized("llama")
    block = m.model.layers[0]
    q, k, v = (get_module(block, f"self_attn.{n}_proj") for n in "qkv")
    gate, up = (get_module(block, f"mlp.{n}_proj") for n in ("gate", "up"))
    assert FusedQuikLinear([q, k, v]).block == 0            # GQA: q is wider than k and v
    fused = FusedQuikLinear([gate, up])
    assert fused.block == gate.out_features == 172
    x = torch.randn(2, 3, 64)
    y, blocked = fused.core.forward_blocks(x, fused.block)
    assert not blocked and y.shape == (2, 3, 344)
    with torch.no_grad():
        parts = fused._compute(x)
        assert all(torch.equal(p, fused.core(x)[..., a:b]) for p, (a, b) in zip(parts, fused.bounds))


def test_layers_with_different_outliers_or_bits_are_left_alone():
    m, _ = _quantized("llama")
    block = m.model.layers[0]
    q, k = (get_module(block, f"self_attn.{n}_proj") for n in "qk")
    other = copy.deepcopy(k)
    other.outlier_idx = (other.outlier_idx + 1) % other.in_features    # another set of columns
    assert fusable([q, other]) == "different outlier columns"
    o = get_module(block, "self_attn.o_proj")
    assert fusable([q]) == "a single layer"
    assert fusable([q, torch.nn.Linear(64, 64)]) == "not all QuikLinear"
    assert "different" in fusable([q, get_module(block, "mlp.down_proj")])
    assert fusable([q, k]) is None and isinstance(o, QuikLinear)
    with pytest.raises(ValueError, match="cannot be fused"):
        FusedQuikLinear([q, other])
    a16, _ = _quantized("llama", "gptq-w4a16")
    aq, ak = (get_module(a16.model.layers[0], f"self_attn.{n}_proj") for n in "qk")
    assert fusable([aq, ak]) == "weight-only layers (A16)"
    assert fuse_shared_inputs(a16) == 0


def test_a_fused_model_saves_the_same_checkpoint(tmp_path):
    m, ids = _quantized("llama")
    plain = save_packed(tmp_path / "plain", m, None, load_config("quik-4b").to_dict())
    fuse_shared_inputs(m)
    fused = save_packed(tmp_path / "fused", m, None, load_config("quik-4b").to_dict())
    from safetensors.torch import load_file
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(fused / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, _, _ = load_packed(fused)
    assert sum(isinstance(mod, QuikLinear) for mod in model.modules()) == 14
