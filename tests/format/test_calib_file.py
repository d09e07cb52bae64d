"""The calibration statistics file: round trip, refusal to overwrite, foreign files, NaN statistics."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from quiktool.errors import CheckpointError, QuikError
from quiktool.format.calib import CALIB_FORMAT, load_calib, save_calib


def _stats(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(2):
        for name, k in (("self_attn.q_proj", 64), ("mlp.down_proj", 172), ("mlp.up_proj", 64)):
            out[f"model.layers.{i}.{name}"] = {"max_abs": torch.rand(k, generator=g) * 10 + 0.1,
                                               "mean_sq": torch.rand(k, generator=g) + 0.01}
    return out


META = {"model": "stories260K", "config_hash": "abc123", "fingerprint": [0.5, -1.25, 3.0], "dataset": "c4",
        "nsamples": 8, "seqlen": 64, "seed": 3, "tokens": 512}


def test_roundtrip(tmp_path):
    stats = _stats()
    p = save_calib(tmp_path / "calib.safetensors", stats, META)
    assert p == tmp_path / "calib.safetensors" and p.is_file()
    got, meta = load_calib(p)
    assert set(got) == set(stats)
    for layer, d in stats.items():
        assert set(got[layer]) == {"max_abs", "mean_sq"}
        for k, v in d.items():
            assert got[layer][k].dtype == torch.float32 and torch.equal(got[layer][k], v)
    for k, v in META.items():
        assert meta[k] == v, k
    assert meta["format"] == CALIB_FORMAT
    assert "tool_version" in meta
    # no temporary file is left beside it
    assert sorted(x.name for x in tmp_path.iterdir()) == ["calib.safetensors"]


def test_refuses_existing_file_without_overwrite(tmp_path):
    p = tmp_path / "calib.safetensors"
    save_calib(p, _stats(0), META)
    before = p.read_bytes()
    with pytest.raises(QuikError, match="exists"):
        save_calib(p, _stats(1), META)
    assert p.read_bytes() == before
    save_calib(p, _stats(1), META, overwrite=True)
    got, _ = load_calib(p)
    layer = "model.layers.1.mlp.down_proj"
    assert torch.equal(got[layer]["max_abs"], _stats(1)[layer]["max_abs"])


def test_refuses_missing_folder(tmp_path):
    with pytest.raises(QuikError):
        save_calib(tmp_path / "nope" / "calib.safetensors", _stats(), META)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_save_rejects_non_finite(tmp_path, bad):
    stats = _stats()
    stats["model.layers.0.mlp.down_proj"]["mean_sq"][17] = bad
    with pytest.raises(QuikError, match="model.layers.0.mlp.down_proj.mean_sq"):
        save_calib(tmp_path / "c.safetensors", stats, META)
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_nan_stats(tmp_path):
    t = {f"{k}.{s}": v for k, d in _stats().items() for s, v in d.items()}
    t["model.layers.1.self_attn.q_proj.max_abs"][0] = float("nan")
    p = tmp_path / "c.safetensors"
    save_file(t, str(p), metadata={"format": CALIB_FORMAT, "nsamples": "8"})
    with pytest.raises(CheckpointError, match="NaN"):
        load_calib(p)


def test_load_rejects_foreign_safetensors(tmp_path):
    p = tmp_path / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"model.embed_tokens.weight": torch.randn(8, 4, generator=g)}, str(p), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a quiktool calibration file"):
        load_calib(p)
    q = tmp_path / "nometa.safetensors"
    save_file({"a.max_abs": torch.rand(4, generator=g) + 1}, str(q))
    with pytest.raises(CheckpointError, match="not a quiktool calibration file"):
        load_calib(q)


def test_load_rejects_unexpected_tensor(tmp_path):
    t = {f"{k}.{s}": v for k, d in _stats().items() for s, v in d.items()}
    t["model.layers.0.mlp.down_proj.weight"] = torch.rand(3) + 1
    p = tmp_path / "c.safetensors"
    save_file(t, str(p), metadata={"format": CALIB_FORMAT})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_calib(p)


def test_load_rejects_missing_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_calib(tmp_path / "none.safetensors")
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError):
        load_calib(p)
    good = tmp_path / "good.safetensors"
    save_calib(good, _stats(), META)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_calib(trunc)


def test_metadata_strings_are_stored_as_json(tmp_path):
    p = save_calib(tmp_path / "c.safetensors", _stats(), META)
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        md = f.metadata()
    assert json.loads(md["fingerprint"]) == META["fingerprint"]
    assert md["model"] == "stories260K"
