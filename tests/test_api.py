"""The pipeline on tiny random models of every family, and end to end on the real stories260K."""
import math

import pytest
import torch

from conftest import FAMILIES, tiny_model
from quiktool import api
from quiktool.config import load_config
from quiktool.models.adapters import adapter_for, get_module
from quiktool.runtime.quik_linear import QuikLinear


@pytest.mark.parametrize("family", FAMILIES)
def test_quik4b_pipeline_on_every_family(family):
    m = tiny_model(family)
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, m.config.vocab_size, (4, 32), generator=g)
    stats = api.collect_channel_stats(m, windows)
    cfg = load_config("quik-4b")
    api.quantize_model(m, cfg, stats, windows, progress=False)
    a = adapter_for(m)
    for i, block in enumerate(get_module(m, a.blocks)):
        for p, ltype in a.linears():
            q = get_module(block, p)
            assert isinstance(q, QuikLinear), p
            rule = cfg.resolve(ltype, q.in_features)
            assert (q.weight_bits, q.act_bits, q.packed.n_outliers) == (rule.weight_bits, rule.act_bits, rule.n_outliers)
            # the outliers are the channels with the largest max |x|
            top = torch.topk(stats[f"{a.blocks}.{i}.{p}"]["max_abs"], rule.n_outliers).indices.sort().values
            assert torch.equal(q.packed.outlier_idx.long(), top)
    with torch.no_grad():
        assert torch.isfinite(m(windows[:1]).logits).all()


@pytest.mark.slow
def test_end_to_end_stories260k_quik_beats_rtn_w4a4(stories_path, data_dir, tmp_path):
    calib = tmp_path / "calib.safetensors"
    r = api.calibrate(str(stories_path), str(calib), "c4", nsamples=16, seqlen=128, seed=0,
                      data_dir=str(data_dir), progress=False)
    assert r["layers"] == 5 * 7 and r["tokens"] == 16 * 128
    ppl = {}
    for preset in ("quik-4b", "rtn-w4a4"):
        out = tmp_path / preset
        q = api.quantize(str(stories_path), str(calib), str(out), load_config(preset), data_dir=str(data_dir),
                         progress=False)
        assert q["ratio"] > 2.0  # 4-bit codes + scales + FP16 outliers vs FP16
        e = api.eval_ppl(str(out), "wikitext2", seqlen=256, max_windows=12, data_dir=str(data_dir), backend="torch",
                         progress=False)
        assert e["backend"] == "torch" and e["windows"] == 12 and math.isfinite(e["ppl"])
        ppl[preset] = e["ppl"]
    fp = api.eval_ppl(str(stories_path), "wikitext2", seqlen=256, max_windows=12, data_dir=str(data_dir),
                      progress=False)["ppl"]
    assert fp < ppl["quik-4b"] < ppl["rtn-w4a4"], (fp, ppl)
