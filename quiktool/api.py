"""The Python API: the same verbs as the CLI (calibrate, quantize, eval_ppl, bench) as plain functions."""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm

from quiktool import __version__
from quiktool.algo.gptq import gptq_quantize
from quiktool.algo.outliers import select_outliers
from quiktool.algo.stats import ChannelStats, HessianAccumulator
from quiktool.config import QuantConfig
from quiktool.data import calibration_windows, eval_windows, load_rows, tokenize_stream
from quiktool.errors import CheckpointError, DataError, ModelError, QuikError
from quiktool.format.calib import load_calib, save_calib
from quiktool.format.checkpoint import load_packed, prepare_output_dir, save_packed
from quiktool.format.layout import PackedLinear
from quiktool.models.adapters import adapter_for, blocks as get_blocks, get_module, set_module
from quiktool.models.loading import DTYPES, config_hash, load_model, resolve, weight_fingerprint
from quiktool.models.runner import LayerRunner
from quiktool.runtime.backends import resolve_backend
from quiktool.runtime.quik_linear import QuikLinear

log = logging.getLogger(__name__)


def versions() -> dict:
    import transformers

    v = {"quiktool": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
         "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version  # package metadata: no CuPy import here

    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
        try:
            v["cupy"] = version(dist)
            break
        except PackageNotFoundError:
            pass
    return v


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def _check_seqlen(model, seqlen: int) -> None:
    ctx = getattr(model.config, "max_position_embeddings", None)
    if seqlen < 2:
        raise DataError(f"seqlen={seqlen} is too small; use at least 2")
    if ctx is not None and seqlen > ctx:
        raise DataError(f"seqlen={seqlen} exceeds the model's context of {ctx} tokens; use --seqlen {ctx} or less")


def _linear_names(model, adapter) -> list[tuple[str, str, torch.nn.Module]]:
    out = []
    for i, block in enumerate(get_blocks(model, adapter)):
        for path, ltype in adapter.linears():
            out.append((f"{adapter.blocks}.{i}.{path}", ltype, get_module(block, path)))
    return out


# ----------------------------------------------------------------------------------------- calibrate
def calibrate(model: str, out: str, dataset: str = "c4", nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
              data_dir: str | None = None, device: str = "cpu", dtype: str = "fp32", overwrite: bool = False,
              progress: bool = True) -> dict:
    """Run the FP model layer by layer over calibration windows; store per-channel input statistics."""
    if Path(out).exists() and not overwrite:
        raise QuikError(f"output {out!r} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    rows = load_rows(dataset, "calib", data_dir)
    m, tok, src = load_model(model, dtype=dtype, device="cpu")
    _check_seqlen(m, seqlen)
    adapter = adapter_for(m)
    windows = calibration_windows(tok, rows, nsamples, seqlen, seed)
    runner = LayerRunner(m, adapter, windows, device)
    stats: dict[str, ChannelStats] = {}
    for i, block in tqdm(runner, total=len(runner), desc="calibrate", unit="block", disable=not progress):
        hooks = []
        for path, _ in adapter.linears():
            lin = get_module(block, path)
            cs = stats.setdefault(f"{adapter.blocks}.{i}.{path}", ChannelStats(lin.in_features))
            hooks.append(lin.register_forward_hook(lambda _m, inp, _o, cs=cs: cs.add(inp[0])))
        try:
            runner.next_inps = runner.forward(block)   # hooks record; these outputs feed the next block
        finally:
            for h in hooks:
                h.remove()
    meta = {"model": src.name, "config_hash": config_hash(m.config), "fingerprint": weight_fingerprint(m),
            "dataset": str(dataset), "nsamples": nsamples, "seqlen": seqlen, "seed": seed,
            "tokens": int(windows.numel())}
    save_calib(out, {k: {"max_abs": v.max_abs, "mean_sq": v.mean_sq} for k, v in stats.items()}, meta, overwrite)
    return {**meta, "layers": len(stats), "seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb(), "out": out}


@torch.no_grad()
def collect_channel_stats(model, windows: torch.Tensor) -> dict:
    """Per-channel input statistics of every adapter-listed linear from full forwards of ``windows``
    [n, L] (for models that fit on one device; ``calibrate`` is the layer-by-layer version)."""
    adapter = adapter_for(model)
    dev = next(model.parameters()).device
    stats, hooks = {}, []
    for name, _, lin in _linear_names(model, adapter):
        cs = stats[name] = ChannelStats(lin.in_features)
        hooks.append(lin.register_forward_hook(lambda _m, inp, _o, cs=cs: cs.add(inp[0])))
    try:
        for w in windows:
            model(w[None].to(dev), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: {"max_abs": v.max_abs, "mean_sq": v.mean_sq} for k, v in stats.items()}


def check_calib_matches(meta: dict, model, layer_shapes: dict[str, int], stats: dict) -> None:
    h = config_hash(model.config)
    if meta.get("config_hash") != h:
        raise CheckpointError(
            f"calibration file is for model {meta.get('model')!r} (config {meta.get('config_hash')}), "
            f"not this model (config {h}); run `quiktool calibrate` for this model")
    fp, fp_now = meta.get("fingerprint") or [], weight_fingerprint(model)
    if len(fp) != len(fp_now) or any(abs(a - b) > 1e-2 * max(1.0, abs(b)) for a, b in zip(fp, fp_now)):
        raise CheckpointError(f"calibration file is for different weights ({meta.get('model')!r}, same architecture); recalibrate")
    for name, k in layer_shapes.items():
        if name not in stats:
            raise CheckpointError(f"calibration file lacks statistics for layer {name!r}; recalibrate")
        if stats[name]["max_abs"].numel() != k:
            raise CheckpointError(f"calibration statistics for {name!r} have {stats[name]['max_abs'].numel()} channels, the layer has {k}")


# ------------------------------------------------------------------------------------------ quantize
def _quantize_linear(lin, name, ltype, H, qcfg: QuantConfig, stats, dtype):
    rule = qcfg.resolve(ltype, lin.in_features)
    stat = stats[name][qcfg.outlier_stat] if stats is not None else None
    idx = select_outliers(stat, rule.n_outliers) if rule.n_outliers else torch.empty(0, dtype=torch.int64)
    qw = gptq_quantize(lin.weight.detach(), H, rule.weight_bits, idx, rule.group_size, qcfg.damp,
                       qcfg.block_size, qcfg.clip_search, rule.sparsity)
    packed = PackedLinear.from_quantized(qw, lin.bias, rule.act_bits, rule.sparsity)
    return QuikLinear(packed, dtype=dtype, device=lin.weight.device, backend="torch")


def quantize_model(model, qcfg: QuantConfig, stats: dict | None, windows: torch.Tensor | None,
                   device: str = "cpu", progress: bool = True) -> None:
    """Quantize every adapter-listed linear of ``model`` in place (QuikLinear, torch backend).

    GPTQ: layer by layer, group by group; each group's Hessian is collected on the outputs of the
    already-quantized groups before it. RTN needs no data."""
    adapter = adapter_for(model)
    dtype = next(model.parameters()).dtype
    if qcfg.algorithm == "rtn":
        for name, ltype, lin in tqdm(_linear_names(model, adapter), desc="quantize (rtn)", disable=not progress):
            set_module(model, name, _quantize_linear(lin, name, ltype, None, qcfg, stats, dtype))
        return
    runner = LayerRunner(model, adapter, windows, device)
    for i, block in tqdm(runner, total=len(runner), desc="quantize (gptq)", unit="block", disable=not progress):
        for group in adapter.groups:
            accs, hooks = {}, []
            for path, _ in group:
                lin = get_module(block, path)
                acc = accs[path] = HessianAccumulator(lin.in_features, device=lin.weight.device)
                hooks.append(lin.register_forward_hook(lambda _m, inp, _o, acc=acc: acc.add(inp[0])))
            try:
                runner.forward(block)
            finally:
                for h in hooks:
                    h.remove()
            for path, ltype in group:
                name = f"{adapter.blocks}.{i}.{path}"
                ql = _quantize_linear(get_module(block, path), name, ltype, accs[path].H, qcfg, stats, dtype)
                set_module(block, path, ql)


def quantize(model: str, calib: str, out: str, qcfg: QuantConfig, data_dir: str | None = None,
             device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict:
    """Quantize ``model`` with ``qcfg`` and write a packed checkpoint folder to ``out``."""
    prepare_output_dir(out, overwrite)
    t0 = time.perf_counter()
    stats, meta = load_calib(calib)
    m, tok, src = load_model(model, dtype="fp32", device="cpu")
    adapter = adapter_for(m)
    layers = _linear_names(m, adapter)
    check_calib_matches(meta, m, {n: lin.in_features for n, _, lin in layers}, stats)
    for name, ltype, lin in layers:  # fail before any heavy work
        qcfg.resolve(ltype, lin.in_features)
        if not torch.isfinite(lin.weight).all():
            raise ModelError(f"weight of {name!r} holds NaN or Inf; cannot quantize it")
    windows = None
    if qcfg.algorithm == "gptq":
        _check_seqlen(m, int(meta["seqlen"]))
        windows = calibration_windows(tok, load_rows(meta["dataset"], "calib", data_dir), int(meta["nsamples"]),
                                      int(meta["seqlen"]), int(meta["seed"]))
    fp16_bytes = sum(lin.weight.numel() * 2 + (0 if lin.bias is None else lin.bias.numel() * 2) for _, _, lin in layers)
    quantize_model(m, qcfg, stats, windows, device=device, progress=progress)
    m.to("cpu")
    packed_bytes = sum(t.numel() * t.element_size() for mod in m.modules() if isinstance(mod, QuikLinear)
                       for t in mod.packed.to_tensors("x").values())
    extra = {"source_model": src.name, "calibration": {k: meta.get(k) for k in ("dataset", "nsamples", "seqlen", "seed")}}
    save_packed(out, m, tok, qcfg.to_dict(), extra, overwrite=overwrite)
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    return {"out": out, "config": qcfg.name, "layers": len(layers), "quantized_layers_fp16_mb": fp16_bytes / 1e6,
            "quantized_layers_packed_mb": packed_bytes / 1e6, "ratio": fp16_bytes / max(packed_bytes, 1),
            "checkpoint_mb": size / 1e6, "seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()}


# ------------------------------------------------------------------------------------------ eval-ppl
def eval_ppl(model: str, dataset: str = "wikitext2", seqlen: int = 2048, max_windows: int | None = None,
             data_dir: str | None = None, device: str = "cpu", dtype: str | None = None, backend: str = "auto",
             progress: bool = True, fuse: bool = False) -> dict:
    """Perplexity of an unquantized model or a packed quiktool checkpoint.

    fuse: run the QUIK layers that read one input as one layer (runtime.fuse; q/k/v and gate/up): faster
    on a GPU, but its one outlier product may round differently in the last bit, which a quantized model
    amplifies (SmolLM2-135M QUIK-4B on the H200: 27.3062 -> 27.1310, docs/RESULTS.md). Off by default,
    so that GPU perplexity stays within 0.1% of the CPU reference."""
    from quiktool.eval import perplexity

    if max_windows is not None and max_windows < 1:
        raise DataError(f"max_windows={max_windows}; use a positive number or leave it out for all windows")
    src = resolve(model)
    rows = load_rows(dataset, "test", data_dir)  # cheap checks first: no model load for a missing file
    dev = device
    if src.kind == "packed":
        be = resolve_backend(backend)
        if be == "cuda" and dev == "cpu":
            dev = "cuda"
        dt = dtype or ("fp16" if dev != "cpu" else "fp32")
        m, tok, _ = load_packed(model, dtype=DTYPES[dt], device=dev, backend=be)
        if tok is None:
            raise CheckpointError(f"{model!r} carries no tokenizer files; re-run quantize")
        if fuse:
            from quiktool.runtime.fuse import fuse_shared_inputs

            log.info("fused %d groups of layers that share an input", fuse_shared_inputs(m))
    else:
        be = "none"
        dt = dtype or ("fp16" if dev != "cpu" else "fp32")
        m, tok, _ = load_model(model, dtype=dt, device=dev)
    _check_seqlen(m, seqlen)
    ids = tokenize_stream(tok, rows)
    windows = eval_windows(ids, seqlen, max_windows)
    r = perplexity(m, windows, device=dev, progress=progress)
    if not math.isfinite(r.ppl):
        log.warning("perplexity is not finite (%s)", r.ppl)
    return {"model": model, "dataset": dataset, "seqlen": seqlen, "windows": r.windows,
            "total_windows": ids.numel() // seqlen, "tokens": r.tokens, "ppl": r.ppl, "seconds": r.seconds,
            "backend": be, "fused": bool(fuse) if src.kind == "packed" else None, "dtype": dt, "device": dev,
            "machine": machine(), "versions": versions(),
            "date": time.strftime("%Y-%m-%d")}


def write_json(path: str, obj: dict) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, p)


# --------------------------------------------------------------------------------------------- bench
def bench_layer(shapes=None, m=None, schemes=None, outliers=None, reps: int = 100, warmup: int = 10,
                device: str = "cpu", backend: str = "auto", dtype: str = "fp16", max_point_s: float = 1.0,
                seed: int = 0, peers: bool = True, check: bool = True, on_progress=None,
                rounds: int | None = None) -> dict:
    """QuikLinear.forward vs FP16 F.linear (and, on CUDA, FP8 / W4A16 peers) per shape x M x scheme x outliers.

    See quiktool.bench.bench_layer; quiktool.bench.format_layer_table renders the result. rounds None: its
    default (bench.DEFAULT_ROUNDS)."""
    from quiktool import bench

    return bench.bench_layer(shapes, m, schemes, outliers, reps, warmup, device, backend, dtype, max_point_s,
                             seed, peers, check, on_progress, bench.DEFAULT_ROUNDS if rounds is None else rounds)


def bench_model(arch: str = "llama2-7b", configs="quik-4b,w4a8", batch: int = 1, seqlen: int = 2048,
                decode_tokens: int = 64, reps: int = 5, warmup: int = 2, device: str = "cpu", backend: str = "auto",
                dtype: str = "fp16", distinct_weights: bool = False, seed: int = 0, fuse: bool = True) -> dict:
    """Prefill / decode speed and memory of a random-weight LLaMA, FP vs QUIK presets.

    See quiktool.bench.bench_model; quiktool.bench.format_model_table renders the result."""
    from quiktool import bench

    return bench.bench_model(arch, configs, batch, seqlen, decode_tokens, reps, warmup, device, backend, dtype,
                             distinct_weights, seed, fuse)
