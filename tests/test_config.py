"""QuantConfig: presets, strict keys, value checks, per-layer resolution."""
from __future__ import annotations

import pytest

from quiktool.config import (
    LAYER_TYPES,
    LayerRule,
    QuantConfig,
    ResolvedRule,
    from_dict,
    list_presets,
    load_config,
)
from quiktool.errors import ConfigError

PRESETS = ["gptq-w4a16-g128", "gptq-w4a16", "quik-4b-2of4", "quik-4b-all4", "quik-4b", "quik-8b", "rtn-w4a16",
           "rtn-w4a4", "w4a8"]


def test_presets_listed():
    assert set(PRESETS) <= set(list_presets())


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_resolve(name):
    c = load_config(name)
    assert isinstance(c, QuantConfig) and c.name == name
    for lt in LAYER_TYPES:
        for k in (64, 172, 4096, 11008):
            r = c.resolve(lt, k)
            assert isinstance(r, ResolvedRule)
            assert 0 <= r.n_outliers < k
    # round trip through a dict
    assert from_dict(c.to_dict()) == c


def test_quik_4b_preset_values():
    c = load_config("quik-4b")
    assert (c.algorithm, c.weight_bits, c.act_bits, c.outliers) == ("gptq", 4, 4, 0.0625)
    assert c.resolve("attn_in", 4096) == ResolvedRule(4, 4, 256, -1, None)
    assert c.resolve("mlp_out", 11008) == ResolvedRule(8, 8, 688, -1, None)
    assert c.resolve("mlp_out", 172).n_outliers == 11  # round(10.75)
    s = load_config("quik-4b-2of4")
    assert s.resolve("attn_in", 64).sparsity == "2:4" and s.resolve("mlp_in", 64).sparsity is None
    g = load_config("gptq-w4a16-g128")
    assert g.resolve("mlp_out", 172) == ResolvedRule(4, 16, 0, 128, None)


def test_load_by_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("algorithm: rtn\nweight_bits: 8\nact_bits: 8\noutliers: 16\n")
    c = load_config(p)
    assert (c.name, c.algorithm, c.weight_bits, c.outliers) == ("mine", "rtn", 8, 16)
    assert load_config(str(p)) == c
    e = tmp_path / "empty.yaml"
    e.write_text("")
    assert load_config(e) == QuantConfig(name="empty")


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="quik-4b"):  # the message lists the presets
        load_config("quik-5b")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["algorithm: [gptq\n", "- 1\n- 2\n", "just a string\n"])
def test_bad_yaml(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm: gptq\nweight_bit: 4\n")
    with pytest.raises(ConfigError, match="weight_bit") as e:
        load_config(p)
    assert "accepted keys" in str(e.value) and "weight_bits" in str(e.value)  # says what would be accepted
    with pytest.raises(ConfigError, match="outlier_count"):
        from_dict({"outlier_count": 3})


def test_unknown_override_keys():
    with pytest.raises(ConfigError, match="act_bit"):
        from_dict({"overrides": {"mlp_out": {"act_bit": 8}}})
    with pytest.raises(ConfigError, match="lm_head"):
        from_dict({"overrides": {"lm_head": {"act_bits": 8}}})
    with pytest.raises(ConfigError, match="overrides"):
        from_dict({"overrides": [1, 2]})
    with pytest.raises(ConfigError):
        from_dict({"overrides": {"mlp_out": None}})


@pytest.mark.parametrize("key,value", [("weight_bits", 3), ("weight_bits", 16), ("weight_bits", 2),
                                       ("act_bits", 2), ("act_bits", 32), ("act_bits", 6)])
def test_bits_out_of_range(key, value):
    with pytest.raises(ConfigError, match=key):
        from_dict({key: value})
    with pytest.raises(ConfigError, match=key):
        from_dict({"overrides": {"attn_out": {key: value}}})


@pytest.mark.parametrize("key,ok", [("weight_bits", (4, 8)), ("act_bits", (4, 8, 16))])
def test_bits_accepted(key, ok):
    for v in ok:
        assert getattr(from_dict({key: v, "group_size": -1}), key) == v
        assert getattr(LayerRule(**{key: v}), key) == v


@pytest.mark.parametrize("changes", [
    {"algorithm": "awq"}, {"outlier_stat": "p99"}, {"sparsity": "4:8"}, {"outliers": -1}, {"outliers": 2.5},
    {"outliers": True}, {"outliers": "many"}, {"outliers": float("nan")}, {"outliers": float("inf")},
    {"group_size": 0}, {"group_size": 4}, {"group_size": -2}, {"group_size": 64.0}, {"damp": 0}, {"damp": 1.5},
    {"block_size": 0}, {"version": 2},
])
def test_bad_values(changes):
    (key,) = changes
    with pytest.raises(ConfigError, match=key):
        from_dict(changes)


def test_fraction_vs_absolute_outliers():
    frac = QuantConfig(outliers=0.25)
    assert frac.resolve("attn_in", 64).n_outliers == 16
    assert frac.resolve("mlp_out", 172).n_outliers == 43
    absolute = QuantConfig(outliers=16)
    assert absolute.resolve("attn_in", 64).n_outliers == 16
    assert absolute.resolve("mlp_out", 172).n_outliers == 16
    assert QuantConfig(outliers=1).resolve("attn_in", 64).n_outliers == 1  # 1 is a count, not 100 %
    assert QuantConfig(outliers=0).resolve("attn_in", 64).n_outliers == 0
    assert QuantConfig(outliers=0.99).resolve("attn_in", 64).n_outliers == 63
    with pytest.raises(ConfigError):
        QuantConfig(outliers=0.999).resolve("attn_in", 64)  # rounds to all 64 channels


def test_more_outliers_than_channels():
    c = QuantConfig(outliers=64)
    assert c.resolve("attn_in", 65).n_outliers == 64
    with pytest.raises(ConfigError, match="64"):
        c.resolve("attn_in", 64)
    with pytest.raises(ConfigError):
        c.resolve("attn_in", 10)
    ov = from_dict({"outliers": 0, "overrides": {"mlp_out": {"outliers": 200}}})
    assert ov.resolve("attn_in", 172).n_outliers == 0
    with pytest.raises(ConfigError, match="200"):
        ov.resolve("mlp_out", 172)


def test_group_size_needs_a16():
    with pytest.raises(ConfigError, match="group_size"):
        QuantConfig(group_size=128, act_bits=4).resolve("attn_in", 4096)
    with pytest.raises(ConfigError, match="group_size"):
        QuantConfig(group_size=128, act_bits=8).resolve("mlp_out", 4096)
    assert QuantConfig(group_size=128, act_bits=16).resolve("attn_in", 4096).group_size == 128
    # an override that brings 4-bit activations back to a grouped config is rejected for that layer only
    c = from_dict({"group_size": 128, "act_bits": 16, "outliers": 0, "overrides": {"mlp_out": {"act_bits": 4}}})
    assert c.resolve("attn_in", 256).group_size == 128
    with pytest.raises(ConfigError, match="mlp_out"):
        c.resolve("mlp_out", 256)


def test_resolve_rejects_unknown_layer_type():
    with pytest.raises(ConfigError, match="lm_head"):
        QuantConfig().resolve("lm_head", 64)


def test_overrides_inherit():
    c = from_dict({"weight_bits": 4, "act_bits": 4, "outliers": 8, "overrides": {"mlp_out": {"weight_bits": 8}}})
    assert c.resolve("mlp_out", 172) == ResolvedRule(8, 4, 8, -1, None)
    assert c.resolve("attn_in", 64) == ResolvedRule(4, 4, 8, -1, None)


def test_replace_keeps_validation():
    c = load_config("quik-4b")
    d = c.replace(act_bits=8, outliers=32)
    assert (d.act_bits, d.outliers, d.weight_bits) == (8, 32, 4)
    assert d.overrides == c.overrides and c.act_bits == 4  # frozen original untouched
    assert c.replace(act_bits=None) == c  # None means "not given"
    with pytest.raises(ConfigError, match="act_bits"):
        c.replace(act_bits=5)
    with pytest.raises(ConfigError, match="colour"):
        c.replace(colour="red")
    with pytest.raises(ConfigError, match="act_bit"):
        c.replace(overrides={"mlp_out": {"act_bit": 8}})
    with pytest.raises(ConfigError, match="group_size"):
        c.replace(group_size=128).resolve("attn_in", 4096)


def test_frozen():
    c = QuantConfig()
    with pytest.raises(Exception):
        c.act_bits = 8  # type: ignore[misc]
