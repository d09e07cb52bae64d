"""The calibration statistics file: per linear layer, per input channel, written atomically.

safetensors with tensors ``<layer>.max_abs`` and ``<layer>.mean_sq`` (fp32 [in_features]) and
string metadata: format, tool_version, model (name), config_hash, fingerprint (JSON list), dataset,
nsamples, seqlen, seed, tokens.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from quiktool import __version__
from quiktool.errors import CheckpointError, QuikError

CALIB_FORMAT = "quiktool-calib/1"
STATS = ("max_abs", "mean_sq")


def save_calib(path, stats: dict[str, dict[str, torch.Tensor]], meta: dict, overwrite: bool = False) -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise QuikError(f"output {str(p)!r} exists; pass --overwrite to replace it")
    if not p.parent.is_dir():
        raise QuikError(f"the folder of {str(p)!r} does not exist")
    tensors = {f"{layer}.{k}": v.float().contiguous() for layer, d in stats.items() for k, v in d.items()}
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise QuikError(f"calibration statistic {k} holds NaN or Inf; the model produced non-finite activations")
    md = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
    md.update(format=CALIB_FORMAT, tool_version=__version__)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=md)
        from quiktool.format.checkpoint import _umask

        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def load_calib(path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"calibration file {str(p)!r} does not exist; create it with `quiktool calibrate`")
    try:
        with safe_open(str(p), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(p)!r} is not a readable safetensors calibration file ({e})") from None
    if md.get("format") != CALIB_FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a quiktool calibration file (format {md.get('format')!r}, expected {CALIB_FORMAT})")
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        layer, _, stat = k.rpartition(".")
        if stat not in STATS:
            raise CheckpointError(f"{str(p)!r}: unexpected tensor {k!r}")
        if not torch.isfinite(v).all():
            raise CheckpointError(f"{str(p)!r}: statistic {k!r} holds NaN or Inf; recalibrate")
        stats.setdefault(layer, {})[stat] = v
    meta = dict(md)
    for key in ("nsamples", "seqlen", "seed", "tokens", "fingerprint"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return stats, meta
