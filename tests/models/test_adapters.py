import pytest
import torch.nn as nn

from conftest import FAMILIES, tiny_model
from quiktool.errors import ModelError
from quiktool.models.adapters import adapter_for, blocks, get_module


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_names_every_linear_of_every_block(family):
    m = tiny_model(family)
    a = adapter_for(m)
    bl = blocks(m, a)
    assert len(bl) == m.config.num_hidden_layers
    for block in bl:
        named = {p for p, _ in a.linears()}
        for p in named:
            assert isinstance(get_module(block, p), nn.Linear), p
        actual = {n for n, mod in block.named_modules() if isinstance(mod, nn.Linear)}
        assert actual == named, f"{family}: adapter misses {actual - named} or names {named - actual}"


def test_llama_groups_follow_quik_order():
    a = adapter_for("llama")
    order = [[p.split(".")[-1] for p, _ in g] for g in a.groups]
    assert order == [["k_proj", "v_proj", "q_proj"], ["o_proj"], ["up_proj", "gate_proj"], ["down_proj"]]
    assert dict(a.linears())["mlp.down_proj"] == "mlp_out"


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(ModelError, match="gpt2.*supported model types"):
        adapter_for("gpt2")
