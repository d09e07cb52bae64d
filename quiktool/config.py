"""Validated, frozen configuration for quantization, loaded from YAML presets in configs/.

A config is plain data: ``QuantConfig`` says how every quantized linear is treated, with
per-layer-type overrides (``LayerRule``). Layer types are generic so one preset serves every
architecture: ``attn_in`` (q/k/v), ``attn_out`` (o), ``mlp_in`` (up/gate, fc1), ``mlp_out``
(down, fc2). Unknown keys and out-of-range values raise ``ConfigError`` naming the bad value.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from quiktool.errors import ConfigError

CONFIG_VERSION = 1
LAYER_TYPES = ("attn_in", "attn_out", "mlp_in", "mlp_out")
WEIGHT_BITS = (4, 8)
ACT_BITS = (4, 8, 16)  # 16 = activations stay in floating point (weight-only quantization)
ALGORITHMS = ("gptq", "rtn")
OUTLIER_STATS = ("max_abs", "mean_sq")
SPARSITY = (None, "2:4")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not accepted; use one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class LayerRule:
    """How one layer type is quantized. ``None`` fields inherit from the ``QuantConfig``."""

    weight_bits: int | None = None
    act_bits: int | None = None
    outliers: float | None = None  # >= 1: absolute channel count; in [0, 1): fraction of in_features
    group_size: int | None = None
    sparsity: str | None = None

    def __post_init__(self) -> None:
        if self.weight_bits is not None:
            _check_choice("weight_bits", self.weight_bits, WEIGHT_BITS)
        if self.act_bits is not None:
            _check_choice("act_bits", self.act_bits, ACT_BITS)
        if self.outliers is not None:
            _check_outliers(self.outliers)
        if self.group_size is not None:
            _check_group(self.group_size)
        if self.sparsity is not None:
            _check_choice("sparsity", self.sparsity, SPARSITY)


def _check_outliers(v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"outliers={v!r} is not accepted; use a count >= 1, a fraction in [0, 1), or 0")
    if v >= 1 and float(v) != int(v):
        raise ConfigError(f"outliers={v!r} is not accepted; counts >= 1 must be whole numbers")


def _check_group(v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or v >= 8):
        raise ConfigError(f"group_size={v!r} is not accepted; use -1 (per output channel) or an integer >= 8")


@dataclass(frozen=True)
class ResolvedRule:
    """The fully resolved treatment of one concrete linear layer."""

    weight_bits: int
    act_bits: int
    n_outliers: int
    group_size: int
    sparsity: str | None


@dataclass(frozen=True)
class QuantConfig:
    """Everything ``quantize`` needs besides the model and the calibration file."""

    name: str = "custom"
    algorithm: str = "gptq"
    weight_bits: int = 4
    act_bits: int = 4
    outliers: float = 0.0625  # 256 of 4096, QUIK's default ratio; see docs/RESULTS.md for small widths
    outlier_stat: str = "max_abs"
    group_size: int = -1
    damp: float = 0.01
    block_size: int = 128
    clip_search: bool = False
    sparsity: str | None = None
    overrides: Mapping[str, LayerRule] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _check_choice("algorithm", self.algorithm, ALGORITHMS)
        _check_choice("weight_bits", self.weight_bits, WEIGHT_BITS)
        _check_choice("act_bits", self.act_bits, ACT_BITS)
        _check_choice("outlier_stat", self.outlier_stat, OUTLIER_STATS)
        _check_choice("sparsity", self.sparsity, SPARSITY)
        _check_outliers(self.outliers)
        _check_group(self.group_size)
        if not (isinstance(self.damp, (int, float)) and 0 < self.damp < 1):
            raise ConfigError(f"damp={self.damp!r} is not accepted; use a number in (0, 1), e.g. 0.01")
        if not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise ConfigError(f"block_size={self.block_size!r} is not accepted; use a positive integer, e.g. 128")
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"config version {self.version!r} is not supported; this quiktool reads version {CONFIG_VERSION}")
        for k, v in self.overrides.items():
            _check_choice("overrides key", k, LAYER_TYPES)
            if not isinstance(v, LayerRule):
                raise ConfigError(f"overrides[{k}] must be a LayerRule, got {type(v).__name__}")

    def resolve(self, layer_type: str, in_features: int) -> ResolvedRule:
        """The rule for one layer of ``layer_type`` with ``in_features`` input channels."""
        _check_choice("layer type", layer_type, LAYER_TYPES)
        r = self.overrides.get(layer_type, LayerRule())
        pick = lambda a, b: b if a is None else a  # noqa: E731
        outliers = pick(r.outliers, self.outliers)
        n_out = int(outliers) if outliers >= 1 else int(round(outliers * in_features))
        if n_out >= in_features:
            raise ConfigError(
                f"outliers={outliers!r} gives {n_out} outlier channels for a layer with {in_features} inputs; "
                f"use fewer than {in_features}"
            )
        rule = ResolvedRule(
            weight_bits=pick(r.weight_bits, self.weight_bits),
            act_bits=pick(r.act_bits, self.act_bits),
            n_outliers=n_out,
            group_size=pick(r.group_size, self.group_size),
            sparsity=pick(r.sparsity, self.sparsity),
        )
        if rule.group_size != -1 and rule.act_bits != 16:
            # the integer GEMM keeps one int32 accumulator per output, so one weight scale per row
            raise ConfigError(
                f"group_size={rule.group_size} with act_bits={rule.act_bits} ({layer_type}) is not supported; "
                "group-wise scales need act_bits=16, integer-activation layers use group_size=-1"
            )
        return rule

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = {k: {kk: vv for kk, vv in dataclasses.asdict(v).items() if vv is not None}
                          for k, v in self.overrides.items()}
        return d

    def replace(self, **changes: Any) -> "QuantConfig":
        return from_dict({**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


def _strict(cls, data: Mapping[str, Any], where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; accepted keys: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as e:  # wrong types that slipped past validation
        raise ConfigError(f"{where}: {e}") from None


def from_dict(data: Mapping[str, Any], where: str = "config") -> QuantConfig:
    data = dict(data)
    ov = data.get("overrides") or {}
    if not isinstance(ov, Mapping):
        raise ConfigError(f"{where}: overrides must be a mapping of layer type to rule")
    data["overrides"] = {k: _strict(LayerRule, v, f"{where}: overrides.{k}") for k, v in ov.items()}
    return _strict(QuantConfig, data, where)


def preset_dir() -> Path:
    """configs/ in a source checkout, or the copy installed as package data."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs", here / "configs"):
        if cand.is_dir():
            return cand
    import importlib.resources

    return Path(str(importlib.resources.files("quiktool.configs")))


def list_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_config(name_or_path: str | Path) -> QuantConfig:
    """Load a preset by name (``quik-4b``) or a YAML file by path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = preset_dir() / f"{name_or_path}.yaml"
        if not p.exists():
            raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset; presets: {', '.join(list_presets())}")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; give a YAML path or one of: {', '.join(list_presets())}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must be a mapping of keys to values, got {type(data).__name__}")
    data.setdefault("name", p.stem)
    return from_dict(data, where=str(p))
