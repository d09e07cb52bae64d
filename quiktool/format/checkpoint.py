"""Read and write a packed quiktool checkpoint folder (written atomically).

    OUT_DIR/config.json        the model's Hugging Face config plus ``quantization_config``:
                               {quant_method: "quik", format_version, tool_version, config (the
                               QuantConfig), layers: {name: PackedLinear.meta()}, source, calibration}
    OUT_DIR/model.safetensors  PackedLinear tensors (``<layer>.<field>``) and every other parameter
                               in fp16; tied weights are stored once and re-tied on load
    OUT_DIR/tokenizer files    so the folder is self-describing

Everything is written under a temporary name beside OUT_DIR and renamed into place at the end.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from quiktool import __version__
from quiktool.errors import CheckpointError
from quiktool.format.layout import FORMAT_VERSION, PackedLinear

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def prepare_output_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise CheckpointError(f"output {str(out)!r} exists; pass --overwrite to replace it or choose another path")
    if not out.parent.exists():
        raise CheckpointError(f"the parent folder of {str(out)!r} does not exist")
    return out


def atomic_replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temporary folder into place, replacing ``out`` only once ``tmp`` is complete."""
    old = None
    if out.exists():
        old = out.with_name(out.name + f".old-{os.getpid()}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def save_packed(out_dir, model, tokenizer, qcfg_dict: dict, extra: dict | None = None, overwrite: bool = False) -> Path:
    from quiktool.runtime.fuse import QuikSlice
    from quiktool.runtime.quik_linear import QuikLinear

    out = prepare_output_dir(out_dir, overwrite)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    skip = set()
    for name, mod in model.named_modules():
        # QuikSlice (runtime.fuse) stands for a fused member and keeps its PackedLinear; the fused core has none
        if isinstance(mod, (QuikLinear, QuikSlice)) and mod.packed is not None:
            tensors.update(mod.packed.to_tensors(name))
            layers[name] = mod.packed.meta()
            skip.add(name + ".")
    seen: dict[int, str] = {}
    for key, t in model.state_dict().items():
        if any(key.startswith(s) for s in skip):
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # tied (e.g. lm_head = embeddings): store once
            continue
        seen[ptr] = key
        tensors[key] = (t.to(torch.float16) if t.is_floating_point() else t).detach().cpu().contiguous()
    cfg = model.config.to_dict()
    cfg["dtype"] = "float16"
    cfg["quantization_config"] = {
        "quant_method": "quik", "format_version": FORMAT_VERSION, "tool_version": __version__,
        "config": qcfg_dict, "layers": layers, **(extra or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "quiktool_format_version": str(FORMAT_VERSION)})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        atomic_replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_quant_config(path: str | os.PathLike) -> dict:
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{str(p)!r} has no config.json; it is not a packed quiktool checkpoint")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != "quik":
        raise CheckpointError(f"{str(p)!r} is not a quiktool checkpoint (config.json lacks quantization_config.quant_method='quik')")
    if qc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(p)!r} has format_version {qc.get('format_version')!r}; this quiktool reads {FORMAT_VERSION}")
    return cfg


def load_packed(path, dtype: torch.dtype = torch.float32, device: str = "cpu", backend: str = "torch"):
    """-> (model with QuikLinear layers, tokenizer or None, quantization_config dict)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from quiktool.models.adapters import set_module
    from quiktool.runtime.quik_linear import QuikLinear

    p = Path(path)
    cfg = read_quant_config(p)
    qc = cfg.pop("quantization_config")
    try:
        tensors = load_file(str(p / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(p / WEIGHTS)!r} is missing, truncated or not safetensors ({e})") from None
    cfg.pop("dtype", None)
    model_type = cfg.pop("model_type", None)
    try:
        hf_cfg = AutoConfig.for_model(model_type, **cfg)
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    except Exception as e:
        raise CheckpointError(f"cannot build the model described by {p / 'config.json'}: {type(e).__name__}: {e}") from None
    model.config.use_cache = False
    layers = qc.get("layers") or {}
    if not isinstance(layers, dict) or not layers:
        raise CheckpointError(f"{str(p)!r}: quantization_config.layers is empty")
    for name, meta in layers.items():
        packed = PackedLinear.from_tensors(name, tensors, meta)
        try:
            set_module(model, name, QuikLinear(packed, dtype=dtype, device=device, backend=backend))
        except AttributeError:
            raise CheckpointError(f"layer {name!r} of the checkpoint does not exist in a {model_type} model") from None
    rest = {k: v for k, v in tensors.items() if not any(k.startswith(n + ".") for n in layers)}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        tied = {k for k in missing if k.endswith("lm_head.weight")}
    really_missing = [k for k in missing if k not in tied and not k.endswith("rotary_emb.inv_freq")]
    if really_missing or unexpected:
        raise CheckpointError(f"{str(p / WEIGHTS)!r} does not match its config: missing {really_missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        model.tie_weights()
    # QuikLinear buffers were placed at build time; move everything else (dtype already set by from_config)
    for mod in model.modules():
        if not isinstance(mod, QuikLinear):
            for prm in mod.parameters(recurse=False):
                prm.data = prm.data.to(device)
            for bname, buf in list(mod.named_buffers(recurse=False)):
                if buf is not None:
                    setattr(mod, bname, buf.to(device))
    model.eval()
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # the packed folder normally carries it
        log.warning("no tokenizer in %s (%s)", p, type(e).__name__)
    return model, tokenizer, qc
