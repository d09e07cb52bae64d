"""Packed checkpoint folders: save_packed / load_packed on a tiny random LLaMA quantized by quantize_model."""
from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from quiktool.api import quantize_model
from quiktool.config import load_config
from quiktool.errors import CheckpointError
from quiktool.format.checkpoint import WEIGHTS, load_packed, read_quant_config, save_packed
from quiktool.format.layout import FORMAT_VERSION
from quiktool.runtime.quik_linear import QuikLinear

LINEARS = [("self_attn.q_proj", 64), ("self_attn.k_proj", 64), ("self_attn.v_proj", 64), ("self_attn.o_proj", 64),
           ("mlp.up_proj", 64), ("mlp.gate_proj", 64), ("mlp.down_proj", 172)]
NAMES = [f"model.layers.{i}.{n}" for i in range(2) for n, _ in LINEARS]


def _tiny_llama(seed: int):
    import transformers as tf

    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(seed)
    m = tf.LlamaForCausalLM(cfg).eval()
    m.config.use_cache = False
    # the checkpoint stores every non-quantized parameter in fp16 (documented): start from fp16-exact values so
    # that the round trip can be compared bit for bit
    with torch.no_grad():
        for p in m.parameters():
            p.copy_((p + 0.01 * torch.randn_like(p)).half().float())  # norms too: not all ones
    return m


def _stats(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.{n}": {"max_abs": torch.rand(k, generator=g) * 3 + 0.1,
                                      "mean_sq": torch.rand(k, generator=g) + 0.1}
            for i in range(2) for n, k in LINEARS}


# (preset, changes): GPTQ with outliers and a W8A8 down_proj; RTN A16 with groups; RTN W4A8 with outliers
CONFIGS = {"quik-4b": ("quik-4b", {}), "rtn-w4a16-g128": ("gptq-w4a16-g128", {"algorithm": "rtn"}),
           "rtn-w4a8": ("w4a8", {"algorithm": "rtn"})}


@functools.lru_cache(maxsize=None)
def _quantize(key: str):
    """(key, quantized model, its config dict, input ids, its logits); built once per session."""
    preset, changes = CONFIGS[key]
    qcfg = load_config(preset).replace(**changes)
    m = _tiny_llama(seed=len(key))
    g = torch.Generator().manual_seed(123)
    windows = torch.randint(0, 128, (2, 16), generator=g)
    quantize_model(m, qcfg, _stats(7), windows if qcfg.algorithm == "gptq" else None, progress=False)
    ids = torch.randint(0, 128, (2, 19), generator=g)
    with torch.no_grad():
        logits = m(ids).logits
    return key, m, qcfg.to_dict(), ids, logits


@pytest.fixture(scope="module", params=list(CONFIGS))
def quantized(request):
    return _quantize(request.param)


@pytest.fixture(scope="module")
def one():
    """One quantized model for the tests of failure paths (RTN: cheap)."""
    return _quantize("rtn-w4a8")


@pytest.fixture(scope="module")
def saved(quantized, tmp_path_factory):
    name, m, qd, ids, logits = quantized
    out = tmp_path_factory.mktemp(f"ck-{name}") / "packed"
    save_packed(out, m, None, qd, {"source_model": "tiny-llama"})
    return out


@pytest.fixture(scope="module")
def saved_one(one, tmp_path_factory):
    name, m, qd, *_ = one
    out = tmp_path_factory.mktemp("ck-one") / "packed"
    save_packed(out, m, None, qd)
    return out


def test_quantize_model_replaced_every_linear(quantized):
    name, m, *_ = quantized
    ql = {n for n, mod in m.named_modules() if isinstance(mod, QuikLinear)}
    assert ql == set(NAMES)
    down = m.get_submodule("model.layers.0.mlp.down_proj")
    q = m.get_submodule("model.layers.1.self_attn.q_proj")
    if name == "quik-4b":
        assert (down.weight_bits, down.act_bits, down.packed.n_outliers) == (8, 8, 11)  # 0.0625 * 172
        assert (q.weight_bits, q.act_bits, q.packed.n_outliers) == (4, 4, 4)
    elif name == "rtn-w4a16-g128":
        assert (down.act_bits, down.packed.group_size, down.packed.scales.shape[1]) == (16, 128, 2)
        assert q.packed.n_outliers == 0
    else:
        assert (down.weight_bits, down.act_bits, down.packed.n_outliers) == (4, 8, 11)


def test_outliers_are_the_top_channels_of_the_stats():
    name, m, *_ = _quantize("quik-4b")
    st = _stats(7)
    for n in NAMES:
        mod = m.get_submodule(n)
        k = mod.packed.n_outliers
        top = torch.sort(torch.topk(st[n]["max_abs"], k).indices).values
        assert mod.packed.outlier_idx.long().tolist() == top.tolist()


def test_roundtrip_logits_exact(quantized, saved):
    name, m, qd, ids, logits = quantized
    m2, tok, qc = load_packed(saved, dtype=torch.float32, device="cpu", backend="torch")
    assert tok is None
    with torch.no_grad():
        out = m2(ids).logits
    assert out.shape == (2, 19, 128)
    assert torch.equal(out, logits)
    assert qc["quant_method"] == "quik" and qc["format_version"] == FORMAT_VERSION
    assert qc["config"] == json.loads(json.dumps(qd))
    assert qc["source_model"] == "tiny-llama"
    assert set(qc["layers"]) == set(NAMES)
    for n in NAMES:
        a, b = m.get_submodule(n).packed, m2.get_submodule(n).packed
        assert qc["layers"][n] == a.meta()
        for f in ("qweight", "scales", "outlier_idx", "outlier_weight", "wsum"):
            assert torch.equal(getattr(a, f), getattr(b, f)), (n, f)
    # tied embeddings: stored once, tied again on load
    keys = set(load_file(str(saved / WEIGHTS)))
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr()
    assert not any(k.startswith(tuple(n + "." for n in NAMES)) and k.endswith(".weight") for k in keys)
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True


def test_roundtrip_changes_if_a_layer_changes(quantized, saved, tmp_path):
    """The exact-equality check above is meaningful: one perturbed scale changes the logits."""
    name, m, qd, ids, logits = quantized
    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    t = load_file(str(bad / WEIGHTS))
    t["model.layers.0.self_attn.v_proj.scales"] = t["model.layers.0.self_attn.v_proj.scales"] * 1.5
    save_file(t, str(bad / WEIGHTS), metadata={"format": "pt"})
    m2, _, _ = load_packed(bad)
    with torch.no_grad():
        assert not torch.equal(m2(ids).logits, logits)


def test_truncated_weights(saved_one, tmp_path):
    bad = tmp_path / "trunc"
    shutil.copytree(saved_one, bad)
    data = (bad / WEIGHTS).read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 7):
        (bad / WEIGHTS).write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_packed(bad)
    (bad / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_packed(bad)


def test_missing_layer_tensor(saved_one, tmp_path):
    bad = tmp_path / "missing"
    shutil.copytree(saved_one, bad)
    t = load_file(str(bad / WEIGHTS))
    del t["model.layers.1.mlp.down_proj.wsum"]
    save_file(t, str(bad / WEIGHTS), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.down_proj.wsum"):
        load_packed(bad)


def test_not_a_quiktool_checkpoint(saved_one, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_packed(empty)
    with pytest.raises(CheckpointError):
        load_packed(tmp_path / "does-not-exist")
    plain = tmp_path / "plain"
    _tiny_llama(5).save_pretrained(plain)  # an ordinary HF model folder
    with pytest.raises(CheckpointError, match="not a quiktool checkpoint"):
        load_packed(plain)
    broken = tmp_path / "broken"
    shutil.copytree(saved_one, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_packed(broken)
    cfg = json.loads((saved_one / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = FORMAT_VERSION + 1
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format_version"):
        read_quant_config(broken)
    cfg["quantization_config"]["format_version"] = FORMAT_VERSION
    cfg["quantization_config"]["layers"]["model.layers.9.mlp.up_proj"] = cfg["quantization_config"]["layers"].pop(
        "model.layers.1.mlp.up_proj")
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):
        load_packed(broken)


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_save_refuses_existing_folder(one, tmp_path):
    name, m, qd, ids, logits = one
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists"):
        save_packed(out, m, None, qd)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(CheckpointError, match="parent"):
        save_packed(tmp_path / "no" / "such", m, None, qd)
    save_packed(out, m, None, qd, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", WEIGHTS]
    assert _leftovers(tmp_path) == []
    m2, _, _ = load_packed(out)
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, logits)


class _FailingTokenizer:
    def save_pretrained(self, path):
        (__import__("pathlib").Path(path) / "tokenizer.json").write_text("{}")
        raise OSError("disk full")


def test_failed_save_leaves_nothing_behind(one, tmp_path):
    name, m, qd, *_ = one
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        save_packed(out, m, _FailingTokenizer(), qd)
    assert list(tmp_path.iterdir()) == []
    # with overwrite, a failed save keeps the previous checkpoint intact
    save_packed(out, m, None, qd)
    before = (out / WEIGHTS).read_bytes()
    with pytest.raises(OSError, match="disk full"):
        save_packed(out, m, _FailingTokenizer(), qd, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / WEIGHTS).read_bytes() == before
