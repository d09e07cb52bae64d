"""The CLI as a user runs it: help, bad input (exit 2, one line, nothing half-written), the CI gate."""
import json
import shutil

import pytest
from click.testing import CliRunner

from quiktool.cli import cli


def run(*args):
    r = CliRunner().invoke(cli, ["-q", *map(str, args)])
    return r.exit_code, r.output


def err_line(out: str) -> str:
    lines = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize("cmd", [[], ["calibrate"], ["quantize"], ["eval-ppl"]])
def test_help_explains_every_option(cmd):
    code, out = run(*cmd, "--help")
    assert code == 0 and "Usage:" in out
    if cmd:
        for line in out.split("Options:")[1].splitlines():
            if line.strip().startswith("--") and "  " in line.strip():
                assert len(line.strip().split("  ", 1)[1].strip()) > 3, line


def test_unknown_option_exits_2():
    code, out = run("eval-ppl", "--model", "x", "--bogus")
    assert code == 2 and "No such option" in out


@pytest.fixture(scope="module")
def calib(stories_path, data_dir, tmp_path_factory):
    p = tmp_path_factory.mktemp("c") / "calib.safetensors"
    code, out = run("calibrate", "-m", stories_path, "--dataset", "c4", "--nsamples", 4, "--seqlen", 64,
                    "--data-dir", data_dir, "-o", p)
    assert code == 0, out
    return p


def test_bad_values_are_one_line_errors(stories_path, data_dir, calib, tmp_path):
    base = ["quantize", "-m", stories_path, "--calib", calib, "--data-dir", data_dir]
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("weight_bits: 4\nwieght_bits: 4\n")
    cases = [
        (base + ["--config", bad_cfg, "-o", tmp_path / "o1"], "unknown key(s) wieght_bits"),
        (base + ["--wbits", 3, "-o", tmp_path / "o2"], "weight_bits=3"),
        (base + ["--abits", 2, "-o", tmp_path / "o3"], "act_bits=2"),
        (base + ["--outliers", 100, "-o", tmp_path / "o4"], "outlier channels for a layer with 64 inputs"),
        (base + ["--config", "nope-preset", "-o", tmp_path / "o5"], "neither a file nor a preset"),
        (["eval-ppl", "-m", stories_path, "--seqlen", 4096, "--data-dir", data_dir], "exceeds the model's context"),
        (["eval-ppl", "-m", stories_path, "--dataset", tmp_path / "missing.txt"], "does not exist"),
        (["eval-ppl", "-m", tmp_path / "no-model"], "does not exist"),
    ]
    for args, want in cases:
        code, out = run(*args)
        assert code == 2, (args, out)
        assert want in err_line(out), (want, out)
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir() if p.is_dir())


def test_calib_from_another_model_is_refused(tiny, stories_path, calib, data_dir, tmp_path):
    other = tmp_path / "other"
    tiny("llama").save_pretrained(other)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(stories_path / f, other / f)
    shutil.copy(calib.parent / calib.name, tmp_path / "c.safetensors")
    code, out = run("quantize", "-m", other, "--calib", tmp_path / "c.safetensors", "-o", tmp_path / "q",
                    "--data-dir", data_dir)
    assert code == 2 and "not this model" in err_line(out)
    assert not (tmp_path / "q").exists()


def test_nan_weights_are_refused(stories_path, calib, data_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan-model"
    shutil.copytree(stories_path, bad)
    sd = load_file(bad / "model.safetensors")
    k = next(k for k in sd if "q_proj" in k)
    sd[k][0, 0] = float("nan")
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    code, out = run("quantize", "-m", bad, "--calib", calib, "-o", tmp_path / "q", "--data-dir", data_dir)
    assert code == 2 and "NaN or Inf" in err_line(out)


def test_existing_output_needs_overwrite_and_packed_roundtrip(stories_path, calib, data_dir, tmp_path):
    out = tmp_path / "packed"
    code, txt = run("quantize", "-m", stories_path, "--calib", calib, "--config", "rtn-w4a4", "-o", out)
    assert code == 0, txt
    code, txt = run("quantize", "-m", stories_path, "--calib", calib, "--config", "rtn-w4a4", "-o", out)
    assert code == 2 and "--overwrite" in err_line(txt)
    # eval-ppl on the packed folder with a JSON report and a passing / failing CI gate
    js = tmp_path / "r.json"
    code, txt = run("eval-ppl", "-m", out, "--seqlen", 128, "--max-windows", 2, "--data-dir", data_dir,
                    "--backend", "torch", "--json", js)
    assert code == 0, txt
    r = json.loads(js.read_text())
    assert r["windows"] == 2 and r["seqlen"] == 128 and r["backend"] == "torch" and "versions" in r
    assert r["fused"] is False
    # --fuse: q/k/v and gate/up as one layer each; the same function up to the outlier product's last bits
    code, txt = run("eval-ppl", "-m", out, "--seqlen", 128, "--max-windows", 2, "--data-dir", data_dir,
                    "--backend", "torch", "--fuse", "--json", js)
    assert code == 0, txt
    rf = json.loads(js.read_text())
    assert rf["fused"] is True and abs(rf["ppl"] - r["ppl"]) <= 1e-3 * r["ppl"]
    code, txt = run("eval-ppl", "-m", out, "--seqlen", 128, "--max-windows", 2, "--data-dir", data_dir,
                    "--max-ppl", r["ppl"] * 0.5)
    assert code == 1 and "exceeds --max-ppl" in txt
    # a truncated checkpoint is refused with one line
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    code, txt = run("eval-ppl", "-m", out, "--seqlen", 128, "--max-windows", 1, "--data-dir", data_dir)
    assert code == 2 and "truncated" in err_line(txt)


def test_foreign_safetensors_as_calib_is_refused(stories_path, data_dir, tmp_path):
    code, out = run("quantize", "-m", stories_path, "--calib", stories_path / "model.safetensors", "-o",
                    tmp_path / "q", "--data-dir", data_dir)
    assert code == 2 and "not a quiktool calibration file" in err_line(out)


def test_cuda_backend_without_gpu_is_a_clear_error(stories_path, calib, data_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "p"
    assert run("quantize", "-m", stories_path, "--calib", calib, "--config", "rtn-w4a4", "-o", out)[0] == 0
    code, txt = run("eval-ppl", "-m", out, "--backend", "cuda", "--seqlen", 64, "--max-windows", 1, "--data-dir", data_dir)
    assert code == 2 and "use --backend torch" in err_line(txt)
