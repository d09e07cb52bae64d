"""CUDA backend: launchers for kernels/*.cu, compiled with NVRTC through CuPy's RawModule (and its disk
cache), launched with cuLaunchKernel on torch's current stream. The one exception, kernels/quik_wgmma.cu
(sm_90a wgmma, which NVRTC cannot build), is built by nvcc into a cached cubin (compile_wgmma).

The only module of the package that imports CuPy, always lazily (inside functions), so that
``import quiktool.runtime.cuda`` works on a machine without CuPy or a GPU and ``is_available()``
answers False there.

Every public function has the signature (and the results) of its namesake in ``reference.py``;
tensors come in and go out as torch tensors, zero-copy (raw device pointers), and kernels run on
torch's current CUDA stream of the tensors' device, without host synchronization. Launchers check
everything the kernels assume (dtype, shape, contiguity, device, alignment, Kp % 64) and raise
``KernelError``: CuPy checks nothing and a wrong pointer is silent memory corruption. Index VALUES
(keep/outlier columns) are not checked per call, since that needs a host sync; the kernel never reads
out of bounds and turns a bad row into NaN scale/zero instead (see kernels/quik_act_quant.cu).

Extension over ``reference.py``: keyword-only ``out=`` buffers, for callers that preallocate (CUDA
graphs) and for the tests, which poison them to catch elements a kernel fails to write.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.resources
import logging
import math
import numbers
import os
import hashlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from quiktool.errors import KernelError
from quiktool.runtime import reference as _ref
from quiktool.runtime.reference import ActCodes, padded_k

__all__ = [
    "NAME", "K_ALIGN", "ActCodes", "padded_k", "is_available", "prepare_weight", "quantize_activations",
    "int_gemm", "quik_gemm", "quik_gemm_outliers", "compile_all", "nvrtc_version", "KERNELS", "NVRTC_OPTIONS", "LIB_MIN_M",
    "LIB_MIN_MACS", "gemm_path", "mma_splits", "wgmma_splits", "fp8_exact_on", "quantize_split", "quantize_layer", "quik_linear",
    "PreparedLinear",
    "WGMMA_FILE", "WGMMA_KERNELS", "NVCC_WGMMA_OPTIONS", "WGMMA_MIN_M", "find_nvcc", "find_nvdisasm", "compile_wgmma",
]

log = logging.getLogger(__name__)

NAME = "cuda"
K_ALIGN = 64  # the GEMM's K tile; must equal reference.K_ALIGN (the shared runtime layout)
assert K_ALIGN == _ref.K_ALIGN

# Options for every kernel source, on both paths (runtime RawModule and compile_all). No fast math:
# the activation quantizer must match torch bit for bit (it also uses non-.ftz PTX, see its header).
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)
# What CuPy's RawModule appends on its own (cupy/cuda/compiler.py), besides -arch=sm_XY of the device;
# compile_all adds them too so that CI builds exactly what the runtime builds.
_CUPY_ADDED_OPTIONS: tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")

_EPS = ("i32", "f16", "bf16")
KERNELS: dict[str, tuple[str, ...]] = {
    "quik_act_quant.cu": ("quik_act_quant_f16", "quik_act_quant_bf16", "quik_act_quant_f16_gmem",
                          "quik_act_quant_bf16_gmem", "quik_act_quant_split_f16", "quik_act_quant_split_bf16",
                          "quik_act_quant_split_cl_f16", "quik_act_quant_split_cl_bf16")
                         + tuple(f"quik_act_quant_rows_{dt}_c{nc}" for dt in ("f16", "bf16") for nc in (1, 2, 4, 8)),
    "quik_gemm.cu": tuple(
        [f"quik_gemm_{ep}_w{wb}_{cfg}" for ep in _EPS for wb in (4, 8) for cfg in ("big", "mid")]
        + [f"quik_gemv_{ep}_w{wb}_m{mt}{r}" for ep in _EPS for wb in (4, 8) for mt in (8, 16)
           for r in ("", "_r16", "_r64")]
        + [f"quik_gemvo_{ep}_w{wb}_m{mt}{r}" for ep in ("f16", "bf16") for wb in (4, 8) for mt in (8, 16)
           for r in ("", "_r16", "_r64")]
        + [f"quik_gemv_{ep}_w{wb}_m16{r}_ln" for ep in _EPS for wb in (4, 8) for r in ("", "_r16", "_r64")]
        + [f"quik_gemvo_{ep}_w{wb}_m16{r}_ln" for ep in ("f16", "bf16") for wb in (4, 8) for r in ("", "_r16", "_r64")]
        + ["quik_unpack_w4_lut"] + [f"quik_epilogue_{a}acc_{ep}" for a in ("f32", "i32") for ep in ("f16", "bf16")]
        + [f"quik_gemm_sk_w{wb}_mid" for wb in (4, 8)] + [f"quik_splitk{g}_{ep}" for g in ("", "_g1") for ep in _EPS]
    ),
}

# Tile configurations of quik_gemm.cu (must match its entry-point macros): BM, BN, threads, stages.
_TILE = {"big": (128, 256, 256, 4), "mid": (64, 128, 128, 4)}
_GEMV_THREADS = 256
# Output features per block of the small-M kernel: 32, 16 (*_r16: twice the blocks, twice the loads in
# flight per warp) or 64 (*_r64: half the blocks, each reading the activations once for 64 rows). None: the
# rule of _gemv_rows. QUIKTOOL_GEMV_RULE=m keeps the earlier rule everywhere (16 for 9 <= M <= 16, 32 for
# M <= 8), for A/B runs.
GEMV_ROWS: int | None = None
GEMV_RULE = os.environ.get("QUIKTOOL_GEMV_RULE", "n")
# The 16-token small-M kernels with whole-line weight loads (quik_gemv_*_m16*_ln, kernels/quik_gemm.cu LINES):
# QUIKTOOL_GEMV_LINES = 1 (default) takes them by the rule of _gemv_lines, 0 never, 2 always (A/B runs);
# GEMV_LINES is set below _env_int.
_MAX_KP = 1 << 17  # the w4 path accumulates 16 * acc in int32: |a| <= 128, |w| <= 8, Kp < 2^17
_ACT_SMEM_MAX = 192 * 1024  # rows up to this many bytes are staged in shared memory (K <= 98304)

_OUT_EP = {torch.float16: "f16", torch.bfloat16: "bf16"}


def _env_int(name: str, default: int | None = None) -> int | None:
    v = os.environ.get(name)
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        raise KernelError(f"{name} must be an integer, got {v!r}") from None


GEMV_LINES = _env_int("QUIKTOOL_GEMV_LINES", 1)  # what it does: the comment under GEMV_RULE


# ---------------------------------------------------------------------------------------------------
# Sources, compilation, module cache
# ---------------------------------------------------------------------------------------------------
def _source(filename: str) -> str:
    """Text of kernels/<filename>: $QUIKTOOL_KERNELS_DIR if set (kernel development: A/B runs against an
    older copy), else the source checkout's folder, else the installed package data."""
    return _source_in(os.environ.get("QUIKTOOL_KERNELS_DIR") or None, filename)


@functools.lru_cache(maxsize=None)
def _source_in(override: str | None, filename: str) -> str:
    """_source for one value of QUIKTOOL_KERNELS_DIR, cached per folder and file: a process that changes the
    variable (scripts/device_gemv_rule_ab.py loads two source trees) gets each folder's own text."""
    if override:
        path = Path(override) / filename
        if not path.is_file():
            raise KernelError(f"QUIKTOOL_KERNELS_DIR={override!r} has no {filename}; unset it to use the shipped kernels")
        log.warning("kernel source %s from QUIKTOOL_KERNELS_DIR", path)
        text = path.read_text()
    else:
        local = Path(__file__).resolve().parents[2] / "kernels" / filename
        if local.is_file():
            text = local.read_text()
        else:
            text = importlib.resources.files("quiktool.kernels").joinpath(filename).read_text()
    # Local headers are inlined here (NVRTC then needs no include path): `#include "name.cuh"` -> its text.
    return _INCLUDE.sub(lambda m: _source_in(override, m.group(1)), text)


_INCLUDE = re.compile(r'^#include "([\w.]+\.cuh)"[ \t]*$', re.MULTILINE)


def _cupy() -> Any:
    try:
        import cupy  # noqa: PLC0415 - lazy by design
    except Exception as e:  # ImportError, or a CuPy that cannot find its CUDA libraries
        raise KernelError(f"the CUDA backend needs CuPy (pip install 'quiktool[cuda]'): {e}") from None
    return cupy


def is_available() -> bool:
    """True when torch sees a CUDA device and CuPy can drive it."""
    if not torch.cuda.is_available():
        return False
    try:
        cupy = _cupy()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def nvrtc_version() -> tuple[int, int] | None:
    """NVRTC's (major, minor), or None when the library cannot be loaded (no GPU needed)."""
    try:
        from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415
        return tuple(nvrtc.getVersion())  # type: ignore[return-value]
    except Exception:
        return None


def _cubin_kernels(cubin: bytes) -> set[str]:
    """Kernel names in a cubin: NVCC/NVRTC put each kernel's code in an ELF section '.text.<name>'."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise KernelError("NVRTC returned something that is not a 64-bit ELF cubin")
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _typ, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize)
        return name, off, size

    _, str_off, _ = section(shstrndx)
    names = set()
    for i in range(shnum):
        name_off = section(i)[0]
        end = cubin.index(b"\0", str_off + name_off)
        name = cubin[str_off + name_off:end].decode()
        if name.startswith(".text."):
            names.add(name[len(".text."):])
    return names


def compile_all(arch: str) -> dict[str, bytes]:
    """Compile every kernel source for ``arch`` ("sm_80", "sm_90", ...) without a GPU -> {file: cubin}.

    Same sources and options as the runtime path (NVRTC_OPTIONS + what CuPy adds), through NVRTC directly
    because CuPy's own compile helpers query the current device. Raises KernelError with NVRTC's log on a
    compile error, or when NVRTC cannot be loaded, or when a cubin lacks an expected kernel.
    """
    if not re.fullmatch(r"sm_\d{2,3}", arch):
        raise KernelError(f"compile_all: arch must look like 'sm_90', got {arch!r}")
    try:
        from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415
        nvrtc.getVersion()
    except Exception as e:
        raise KernelError(f"compile_all: NVRTC cannot be loaded: {e}") from None
    options = [*NVRTC_OPTIONS, f"-arch={arch}", *_CUPY_ADDED_OPTIONS]
    out: dict[str, bytes] = {}
    for filename, expected in KERNELS.items():
        prog = nvrtc.createProgram(_source(filename), filename, [], [])
        try:
            try:
                nvrtc.compileProgram(prog, options)
            except Exception as e:
                raise KernelError(f"{filename} ({arch}) does not compile: {e}\n{nvrtc.getProgramLog(prog)}") from None
            cubin = bytes(nvrtc.getCUBIN(prog))
        finally:
            nvrtc.destroyProgram(prog)
        missing = set(expected) - _cubin_kernels(cubin)
        if missing:
            raise KernelError(f"{filename} ({arch}) lacks kernels {sorted(missing)}")
        out[filename] = cubin
    return out


@functools.lru_cache(maxsize=None)
def _kernels(device_index: int, arch: str) -> dict[str, int]:
    """All kernels compiled (CuPy's disk cache makes later processes fast) and loaded on one device.

    -> {name: CUfunction handle}. The handles stay valid because _MODULES keeps the RawModules and
    RawKernels that own them alive for the life of the process.
    """
    cupy = _cupy()
    handles: dict[str, int] = {}
    with cupy.cuda.Device(device_index):
        for filename, names in KERNELS.items():
            log.info("compiling %s for %s (device %d); cached on disk by CuPy after the first time",
                     filename, arch, device_index)
            module = cupy.RawModule(code=_source(filename), options=NVRTC_OPTIONS)
            _MODULES.append(module)
            for name in names:
                kernel = module.get_function(name)
                _MODULES.append(kernel)
                if name.startswith("quik_gemm_"):
                    cfg, wb = name.rsplit("_", 1)[1], int(name.split("_w")[1][0])
                    bm, bn, _threads, stages = _TILE[cfg]
                    kernel.max_dynamic_shared_size_bytes = _tile_smem(bm, bn, wb, stages)
                elif name.startswith("quik_act_quant_") and not name.endswith("_gmem"):  # they stage rows
                    kernel.max_dynamic_shared_size_bytes = _ACT_SMEM_MAX
                elif name.startswith("quik_gemvo_"):
                    kernel.max_dynamic_shared_size_bytes = _GEMVO_SMEM_MAX
                handles[name] = int(kernel.kernel.ptr)
    return handles


_MODULES: list[Any] = []  # every loaded RawModule / RawKernel: they own the CUmodules behind the handles


def _tile_smem(bm: int, bn: int, w_bits: int, stages: int) -> int:
    """Dynamic shared memory of a tiled GEMM: stages x (A tile [BM, 64 B] + W tile [BN, 32 or 64 B])."""
    return stages * (bm * 64 + bn * (32 if w_bits == 4 else 64))


# ---------------------------------------------------------------------------------------------------
# The sm_90a kernel (kernels/quik_wgmma.cu): wgmma needs the sm_90a target, on which NVRTC 13.0 crashes
# (REFERENCE.md section 3), so this one file is built by nvcc into a cubin, cached on disk by the hash of
# its source, options and nvcc version, and loaded with cupy.RawModule(path=...). Without nvcc (or on a
# GPU other than sm_90) the path is simply not offered: gemm_path falls back to the cuBLASLt / mma.sync
# paths, with one warning.
# ---------------------------------------------------------------------------------------------------
WGMMA_FILE = "quik_wgmma.cu"
WGMMA_KERNELS: tuple[str, ...] = (tuple(f"quik_wgmma_{ws}{ep}_w{b}{blk}" for ws in ("", "ws_") for b in (4, 8)
                                        for blk in ("", "_blk") for ep in (_EPS[1:] if blk else _EPS))
                                  + tuple(f"quik_wgmma_rs_{ep}_w4{blk}" for blk in ("", "_blk")
                                          for ep in (_EPS[1:] if blk else _EPS))
                                  + ("quik_wgmma_ws_sk_w4", "quik_wgmma_ws_sk_w8")
                                  + tuple(f"quik_wgmma_ws_n{bn}_{ep}_w{b}" for bn in (160, 176, 224) for b in (4, 8)
                                          for ep in _EPS)
                                  + tuple(f"quik_wgmma_ws_c3_{ep}_w8{blk}" for blk in ("", "_blk")
                                          for ep in (_EPS[1:] if blk else _EPS))
                                  + tuple(f"quik_wgmma_ws_c3_n{bn}_{ep}_w8" for bn in (160, 176, 224) for ep in _EPS)
                                  + ("quik_wgmma_ws_c3_sk_w8",)
                                  + tuple(f"quik_wgmma_ws_{c3}cl_{ep}_w{b}" for c3, bs in (("", (4, 8)), ("c3_", (8,)))
                                          for b in bs for ep in _EPS))
NVCC_WGMMA_OPTIONS: tuple[str, ...] = ("-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-O3", "-std=c++17")
_WG_BM, _WG_BN, _WG_THREADS = 128, 256, 256                       # quik_wgmma.cu's tile and block
# quik_wgmma.cu's WG_DEPTH default (wgmma groups in flight), which sizes its shared-memory rings (a CPU test
# reads it from the source).
_WG_DEPTH = 1


def wgmma_smem_bytes(depth: int = _WG_DEPTH, w_bits: int = 4) -> int:
    """quik_wgmma.cu's dynamic shared memory for its WG_DEPTH: depth + 3 activation stages of 128 x 128 B,
    depth + 2 weight slots of 256 x 128 B (8-bit weights: depth + 3, they share the activations' ring), the
    epilogue's 2 x 256 fp32 factors, 1 KiB alignment slack."""
    slots = depth + (2 if w_bits == 4 else 3)
    return (depth + 3) * _WG_BM * 128 + slots * _WG_BN * 128 + 2 * _WG_BN * 4 + 1024


_WG_SMEM = wgmma_smem_bytes()
_WG_SMEM_W8 = wgmma_smem_bytes(w_bits=8)
# The warp-specialized kernels (quik_wgmma_ws_*, fourteenth session): a producer warpgroup copies the tiles into
# a ring of WS_STAGES slots (activations 128 x 128 B + weights 256 x 128 B), two consumer warpgroups run the
# wgmmas (and unpack 4-bit weights), mbarriers instead of a block barrier per K tile. H100 layer A/B in one
# process (docs/PERF_LOG.md, fourteenth session): W8A8 x0.75-0.89 of the earlier kernel's time at M = 512 ..
# 8192 on the nine LLaMA-2 shapes (s14a, s14c); W4A4 / W4A8 x0.94-0.985 at M = 2048 / 8192, except K = 28672
# (28672 x 8192: x1.00-1.03; s14e); after the fifteenth session's fixes (producer copy plan, weight loads kept
# after the consumers' proxy fence) x0.89-0.97 of that again (s15b). QUIKTOOL_WGMMA_WS=0 (8-bit weights) /
# QUIKTOOL_WGMMA_WS_W4=0 (4-bit) run the earlier kernel (A/B runs; same bits).
WGMMA_WS = os.environ.get("QUIKTOOL_WGMMA_WS", "1") != "0"
WGMMA_WS_W4 = os.environ.get("QUIKTOOL_WGMMA_WS_W4", "1") != "0"
_WS_THREADS, _WS_STAGES = 384, 4  # quik_wgmma.cu's WS_THREADS and WS_STAGES default (a CPU test reads it)


def wgmma_ws_smem_bytes(stages: int = _WS_STAGES) -> int:
    """quik_wgmma.cu's dynamic shared memory for the warp-specialized kernels: stages x (128 x 128 B +
    256 x 128 B), the epilogue's 2 x 256 fp32 factors, two 8-byte mbarriers per stage, 1 KiB alignment slack."""
    return stages * (_WG_BM + _WG_BN) * 128 + 2 * _WG_BN * 4 + 16 * stages + 1024


_WS_SMEM = wgmma_ws_smem_bytes()
# The register-operand kernels for 4-bit weights (quik_wgmma_rs_*, sixteenth session): the product transposed,
# 256 tokens x 128 weight rows per block, the unpacked weights straight from registers into the wgmmas (no
# shared stores, no proxy fence), the activations through a ring of RS_STAGES 32 KiB stages. They run from
# WGMMA_RS_MIN_M tokens (QUIKTOOL_WGMMA_RS_MIN_M; 0: never) on rows of WGMMA_RS_MIN_KP or more codes
# (QUIKTOOL_WGMMA_RS_MIN_KP). H100 layer A/B in one process against quik_wgmma_ws_* (docs/PERF_LOG.md, sixteenth
# session, W4A4 / W4A8, 0 and 256 outliers; s16b, s16e, s16f, s16g): x0.91-0.99 at M = 2048 .. 8192 where
# Kp >= 7680 (28672 x 8192 x0.91-0.94, 13824 x 5120 x0.92-0.95, 8192 x 28672 x0.94-0.99, 8192 x 8192 with 256
# outliers, Kp = 7936, x0.99), but x1.01-1.16 on K = 4096 / 5120 (its per-tile fixed costs: a fragment built
# before the first wgmma, the transposed epilogue) and x1.03 on 11008 x 4096 at M = 1024. Since the seventeenth
# session they run only where the widening below is off (it takes M >= WGMMA_W4_WIDE_MIN_M first).
WGMMA_RS_MIN_M: int = _env_int("QUIKTOOL_WGMMA_RS_MIN_M", 2048)
WGMMA_RS_MIN_KP: int = _env_int("QUIKTOOL_WGMMA_RS_MIN_KP", 7680)
_RS_BT, _RS_BW, _RS_THREADS, _RS_STAGES = 256, 128, 384, 5  # quik_wgmma.cu's RS tile, block, RS_STAGES default


def wgmma_rs_smem_bytes(stages: int = _RS_STAGES) -> int:
    """quik_wgmma.cu's dynamic shared memory for the register-operand kernels: stages x 256 x 128 B of
    activations, the epilogue's fp32 factors (2 x 256 per token, 2 x 128 per weight row), two 8-byte mbarriers
    per stage, 1 KiB alignment slack."""
    return stages * _RS_BT * 128 + (2 * _RS_BT + 2 * _RS_BW) * 4 + 16 * stages + 1024


_RS_SMEM = wgmma_rs_smem_bytes()
# 4-bit weights at large M widened first: one pass (quik_unpack_w4_lut) writes the layer's codes as int8
# [N, Kp] into a temporary, then the 8-bit warp-specialized kernel (quik_wgmma_ws_*_w8) multiplies. Why: every
# 4-bit wgmma kernel unpacks each weight tile once per token tile that uses it (8 times at M = 2048, 32 at 8192),
# and that work cost 20-33% of their time (s16a, s16b); the separate pass does it once, at memory speed
# (~1.5 bytes per code moved), and the 8-bit kernel ran at 1.77-1.95x FP16 on the 70B shapes (s15g). Same
# integer sums, so the same bits. Cost: a transient int8 copy of the layer's weights (N x Kp bytes) during the
# call. From WGMMA_W4_WIDE_MIN_M tokens (QUIKTOOL_WGMMA_W4_WIDE_MIN_M; 0: never). H100 layer A/B in one process
# against the sixteenth session's routing (docs/PERF_LOG.md, seventeenth session, s17e): W4A4 x0.92-0.96 at
# M = 2048 and x0.83-0.93 at 8192 on five LLaMA-2 shapes (4096 x 4096 to 28672 x 8192), 256 outliers x0.90-0.99,
# W4A8 x0.94-0.97; at M = 1024 x1.00-1.08 (slower: the pass is paid for fewer tokens), hence 2048 then. Since the
# pass runs on a side stream (WIDEN_SIDE below), 1024 (eighteenth session, H100, in one process against 2048,
# s18g): at M = 1024 x0.89-0.99 on 8 of the 9 LLaMA-2 shapes, W4A4 with 256 outliers and W4A8 without (4096 x 4096:
# x1.10 with 256 outliers, x0.996 without; x0.96 in s18f), at 1536 x0.87-0.95 everywhere. W4A4 without outliers
# was not measured there (the run timed out). At 512 it is mixed (x0.97-1.18, s18f): not lowered further.
WGMMA_W4_WIDE_MIN_M: int = _env_int("QUIKTOOL_WGMMA_W4_WIDE_MIN_M", 1024)
# 8-bit weights below WGMMA_W8_DEEP_MAX_M tokens take the deep-copy entry points (quik_wgmma_ws_c3_*: the producer
# keeps three K tiles of copies in flight instead of two; twenty-second session). Why: at M = 512 the 8-bit
# consumers spent ~30% of their stall samples waiting for full stages (ncu, s21k); the twenty-first session's s21l,
# with depth 3 for every kernel, measured W8A8 x0.92-0.99 of the layer time at M = 256 / 512 on the nine LLaMA-2
# shapes but x0.99-1.03 at 2048 and the 4-bit kernel x1.01-1.07, so only 8-bit weights, and only at few tokens. H100
# layer A/B in one process (docs/PERF_LOG.md, twenty-second session, s22a, W8A8 with 0 / 256 outliers): x0.917-0.993
# at M = 256 / 512 on all nine shapes; at 768 mixed, x0.969-0.999 on 6 shapes but x1.006-1.066 on three whose
# 128 x 224 tiles run (11008 x 4096, 8192 x 8192, 28672 x 8192); hence below 768. (4-bit weights widened to int8 start
# at WGMMA_W4_WIDE_MIN_M = 1024, so they keep depth 2.) QUIKTOOL_WGMMA_W8_DEEP_MAX_M (0: never; the tests force it
# up). Same sums, so the same bits.
WGMMA_W8_DEEP_MAX_M: int = _env_int("QUIKTOOL_WGMMA_W8_DEEP_MAX_M", 768)
# The widening needs neither x nor the quantizer: in a layer call (PreparedLinear.run) it runs on a side stream
# while the quantizer and the outlier product run on the caller's stream, and the GEMM waits for both. Why: the
# quantizer is bound by its per-row steps, not by memory (s17b), so the memory-speed pass (at 1.03-1.05x the time of
# a copy of its bytes, s18b) can use the bandwidth the quantizer leaves. Same kernels on the same operands: same
# bits. H100 layer A/B in one process (docs/PERF_LOG.md, eighteenth session, s18b / s18c): x0.94-0.99 at M = 2048
# on five LLaMA-2 shapes with 0 or 256 outliers, W4A4 and W4A8; x0.98-1.04 at M = 8192. The outlier product on the
# side stream as well was slower (x1.00-1.05 at M >= 2048, up to x1.61 at 512, s18b): not done.
# QUIKTOOL_WIDEN_SIDE=0: the widening on the caller's stream, inside the GEMM's launch (_wgmma_weights).
WIDEN_SIDE: bool = os.environ.get("QUIKTOOL_WIDEN_SIDE", "1") != "0"
# The outlier product of a split-K layer (mma.sync or wgmma slices, then quik_splitk_* with the epilogue) runs on the
# side stream, forked after the quantizer (it reads the quantizer's outlier columns), so that it overlaps the slicing
# GEMM: only the second kernel reads y_base, so the caller's stream waits for the side stream between the two kernels
# (the join), not before the GEMM as s18b's version (fork before the quantizer, join before the GEMM) had to. Same
# F.linear on the same values: same bits. H200 layer A/B in one process, 256 outliers, on the split points of six or
# seven LLaMA-2 shapes (docs/PERF_LOG.md, twenty-seventh session): W4A4 x0.906-0.940 (M = 128 / 512, s27a), W4A8
# x0.851-0.971 and W8A8 x0.872-1.003 (M = 128 / 256 / 512, s27b), x0.996-1.005 where nothing changed; forking before
# the quantizer and gathering the outlier columns from x on the side stream instead was x1.01-1.16 slower. But it costs
# the host 8-14 us per eager call (the events' fork and join, the stream switch; s27f, s27h), on calls whose host
# time already matches or exceeds their GPU time when eager (55-96 us against 29-88 us at M = 128 / 512, s27c).
# Hence by default only while a CUDA graph is being captured, where the host's time is not replayed. OUTLIER_SIDE
# (QUIKTOOL_OUTLIER_SIDE): 0 never (the outlier product on the caller's stream, before the GEMM); 1 under graph
# capture (default); 2 in every call (A/B runs, tests).
OUTLIER_SIDE: int = _env_int("QUIKTOOL_OUTLIER_SIDE", 1)
# torch's current-stream getter and setter without torch.cuda.stream's Python (1.2 against 9.9 us for a switch and
# back on the device's hosts, s27e); None in a torch without them (then torch.cuda.stream).
_GET_STREAM = getattr(torch._C, "_cuda_getCurrentStream", None)
_SET_STREAM = getattr(torch._C, "_cuda_setStream", None)
_SIDE: dict[int, Any] = {}


def _side_stream(dev: int) -> Any:
    """The side stream of device ``dev`` (torch.cuda.Stream), one per device, made when its wgmma kernels load
    (outside any graph capture) or on first use."""
    if dev not in _SIDE:
        _SIDE[dev] = torch.cuda.Stream(device=dev)
    return _SIDE[dev]


class _Event:
    """A CUDA event without timing (cudaEventDisableTiming), made on the current device, destroyed with the object."""

    __slots__ = ("handle",)

    def __init__(self) -> None:
        self.handle = _cupy().cuda.runtime.eventCreateWithFlags(2)

    def __del__(self) -> None:
        try:
            _cupy().cuda.runtime.eventDestroy(self.handle)
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to free
            pass


class _ThreadEvents(threading.local):
    """Each thread's fork and join events per device: a thread records one and at once queues the wait on it, so
    reusing them is safe, and another thread's records cannot get in between."""

    def __init__(self) -> None:
        self.events: dict[tuple[int, bool], _Event] = {}


_TEV = _ThreadEvents()


def _on_stream(dev: int, stream: Any, fn: Any, *args: Any) -> Any:
    """fn(*args) with torch's current stream of ``dev`` set to ``stream`` (a torch.cuda.Stream), then set back."""
    if _GET_STREAM is None or _SET_STREAM is None or _current_device() != dev:
        with torch.cuda.stream(stream):
            return fn(*args)
    prev = _GET_STREAM(dev)  # (stream_id, device_index, device_type)
    _SET_STREAM(stream_id=stream.stream_id, device_index=stream.device_index, device_type=stream.device_type)
    try:
        return fn(*args)
    finally:
        _SET_STREAM(stream_id=prev[0], device_index=prev[1], device_type=prev[2])


def _no_join() -> None:
    """The join of a layer call whose outlier product stays on the caller's stream: nothing to wait for."""


def _fork_join(dev: int, side: Any, fork: bool) -> None:
    """fork: the side stream waits for what was queued so far on torch's current stream of ``dev``; join (fork
    False): that stream waits for the side stream. What torch's Stream.wait_stream does, with this thread's reused
    events (wait_stream makes a new Event object each time: 12.9 us for a fork and a join on the device's hosts
    against 6.3 us, docs/PERF_LOG.md, twenty-seventh session, s27e); torch's own where ``dev`` is not the current
    device (the events belong to the device they were made on)."""
    if _current_device() != dev:
        main = torch.cuda.current_stream(dev)
        side.wait_stream(main) if fork else main.wait_stream(side)
        return
    ev = _TEV.events.get((dev, fork))
    if ev is None:
        ev = _TEV.events[(dev, fork)] = _Event()
    rt, main_raw = _cupy().cuda.runtime, _raw_stream(dev)
    rt.eventRecord(ev.handle, main_raw if fork else side.cuda_stream)
    rt.streamWaitEvent(side.cuda_stream if fork else main_raw, ev.handle, 0)


# QUIKTOOL_WGMMA=0 turns the path off (A/B runs); QUIKTOOL_WGMMA_MIN_M: fewest tokens that use it;
# WGMMA_MIN_TILES: fewest 128 x 256 output tiles (None: WGMMA_MIN_TILE_SHARE of the GPU's multiprocessors,
# since one block runs per SM and too few tiles leave SMs idle; the tests set 0 to run the kernel on small
# shapes). The share, from a layer A/B in one process on the H100 at M = 256 / 512 / 1024 over the LLaMA-2
# shapes, W4A4 and W4A8 (docs/PERF_LOG.md, seventh session, s7g): with 80 or more tiles (0.6 of 132 SMs) the
# wgmma kernel beat the path taken otherwise at every point (x0.59-0.95 of its time); at 64 tiles it lost on
# five of seven points (to x1.11), at 32-40 tiles on all (x1.12-1.49). The earlier rule (one tile per SM) had
# sent e.g. 28672 x 8192 at M = 512 (128 tiles) to cuBLASLt INT8 at 0.71x FP16, where wgmma gives 1.06x.
WGMMA = os.environ.get("QUIKTOOL_WGMMA", "1") != "0"
WGMMA_MIN_M: int = _env_int("QUIKTOOL_WGMMA_MIN_M", 128)
WGMMA_MIN_TILES: int | None = None
WGMMA_MIN_TILE_SHARE = 0.6
# 8-bit weights (W8A8, QUIK-4B's down_proj) on the wgmma kernel too (quik_wgmma_*_w8), where it applies by the
# rules above; otherwise they take cuBLASLt INT8 (torch._int_mm: an sm_80 CUTLASS kernel, then our epilogue
# pass) or the mma.sync kernels. H100 layer A/B in one process (docs/PERF_LOG.md, tenth session, s10f), W8A8
# with 256 outliers: x0.82-0.94 of the earlier path's time at M = 2048 / 8192 on all nine LLaMA-2 shapes,
# x0.83-0.94 at M = 512 where it applies. QUIKTOOL_WGMMA_W8=0 turns it off (A/B runs; same bits).
WGMMA_W8 = os.environ.get("QUIKTOOL_WGMMA_W8", "1") != "0"
# W4A4 at M >= 2048 on the largest layers: cuBLASLt FP8 (when it applies) before wgmma, by a rule (min M, min N,
# min Kp, min Kp beside min N): FP8 when M >= min M and ((N >= min N and Kp >= the fourth) or Kp >= min Kp).
# Off by default since the fifteenth session: with the warp-specialized kernel's copy plan and ordered loads,
# wgmma took x0.90-0.97 of the FP8 layer time on every point the rule sent to FP8 (H100, in one process, s15d:
# 5120 x 13824, 8192 x 28672, 28672 x 8192 at M = 2048 / 8192; docs/PERF_LOG.md). The rule, FP8_FIRST_RULE, came
# from the seventh session (s7p: FP8 then x0.91-0.96 of wgmma's time on 8192 x 28672) and the tenth (s10a: the
# fourth bound, for the fused 7B layers). QUIKTOOL_WGMMA_FP8_FIRST=1 turns it back on (A/B runs).
FP8_FIRST_RULE: tuple[int, ...] = (2048, 12288, 16384, 4608)
WGMMA_FP8_FIRST: tuple[int, ...] | None = (FP8_FIRST_RULE if os.environ.get("QUIKTOOL_WGMMA_FP8_FIRST") == "1"
                                           else None)


def find_nvcc() -> str | None:
    """$QUIKTOOL_NVCC, else nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda; None if absent."""
    explicit = os.environ.get("QUIKTOOL_NVCC")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def find_nvdisasm() -> str | None:
    """nvdisasm (to read a cubin's SASS; the kernel tests and scripts/sass_loads.py use it, the runtime does not):
    $QUIKTOOL_NVDISASM, beside nvcc, on PATH, or from the nvidia-cuda-nvdisasm wheel (test extra); None if absent."""
    import importlib.util  # noqa: PLC0415

    if os.environ.get("QUIKTOOL_NVDISASM"):
        return os.environ["QUIKTOOL_NVDISASM"]
    nvcc = find_nvcc()
    if nvcc and (Path(nvcc).resolve().parent / "nvdisasm").is_file():
        return str(Path(nvcc).resolve().parent / "nvdisasm")
    if shutil.which("nvdisasm"):
        return shutil.which("nvdisasm")
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for exe in sorted(Path(root).glob("cu*/bin/nvdisasm")):
            return str(exe)
    return None


def _cache_dir() -> Path:
    root = os.environ.get("QUIKTOOL_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                                os.path.expanduser("~/.cache"), "quiktool")
    return Path(root) / "kernels"


def compile_wgmma(nvcc: str | None = None) -> Path:
    """Build kernels/quik_wgmma.cu for sm_90a with nvcc (no GPU needed) -> path of the cached cubin.

    Cached under $QUIKTOOL_CACHE_DIR (default ~/.cache/quiktool)/kernels by the hash of the source, the
    options and nvcc's version; written to a temporary name and renamed, so concurrent processes never
    load half a file. Raises KernelError when nvcc is missing or fails (with its message), or when the
    cubin lacks an expected kernel.
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise KernelError("nvcc not found (set QUIKTOOL_NVCC or CUDA_HOME, or put nvcc on PATH); "
                          "it builds the sm_90a wgmma kernel")
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelError(f"cannot run {nvcc}: {e}") from None
    src = _source(WGMMA_FILE)
    key = hashlib.sha256("\0".join([src, *NVCC_WGMMA_OPTIONS, version]).encode()).hexdigest()[:24]
    target = _cache_dir() / f"quik_wgmma-{key}.cubin"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quiktool-nvcc-") as tmp:
        cu, cubin = Path(tmp) / WGMMA_FILE, Path(tmp) / "out.cubin"
        cu.write_text(src)
        log.info("building %s with %s (sm_90a); cached in %s", WGMMA_FILE, nvcc, target.parent)
        proc = subprocess.run([nvcc, *NVCC_WGMMA_OPTIONS, "-o", str(cubin), str(cu)], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0 or not cubin.is_file():
            raise KernelError(f"nvcc failed on {WGMMA_FILE} (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        data = cubin.read_bytes()
    missing = set(WGMMA_KERNELS) - _cubin_kernels(data)
    if missing:
        raise KernelError(f"{WGMMA_FILE} (sm_90a) lacks kernels {sorted(missing)}")
    part = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    part.write_bytes(data)
    os.replace(part, target)
    return target


_WGMMA: dict[int, dict[str, int] | None] = {}
_CLUSTERS: dict[int, dict[int, int]] = {}  # per device: _cluster_occupancy's counts


def _wgmma_kernels(device_index: int) -> dict[str, int] | None:
    """The wgmma kernels loaded on one device -> {name: CUfunction}, or None where the path is unavailable
    (switched off, not an sm_90 GPU, no nvcc, a build failure: warned once)."""
    if device_index not in _WGMMA:
        handles = None
        if WGMMA and _device_info(device_index)[0] == "sm_90":
            try:
                path = compile_wgmma()
                cupy = _cupy()
                handles = {}
                with cupy.cuda.Device(device_index):
                    module = cupy.RawModule(path=str(path))
                    _MODULES.append(module)
                    for name in WGMMA_KERNELS:
                        kernel = module.get_function(name)
                        kernel.max_dynamic_shared_size_bytes = _wgmma_block(name)[1]
                        _MODULES.append(kernel)
                        handles[name] = int(kernel.kernel.ptr)
                    _CLUSTERS[device_index] = _cluster_occupancy(device_index, handles)
                _luts(device_index)  # the widening's lookup table (_wgmma_weights), built outside any graph capture
                _side_stream(device_index)
            except Exception as e:  # noqa: BLE001 - any failure: the other paths do the work
                log.warning("wgmma path unavailable on cuda:%d (%s: %s); large-M GEMMs use the other paths",
                            device_index, type(e).__name__, e)
                handles = None
        _WGMMA[device_index] = handles
    return _WGMMA[device_index]


class _Params(threading.local):
    """Per-thread, preallocated kernel parameter slots for cuLaunchKernel, by signature.

    CuPy's RawKernel call packs its arguments anew on every launch (~15 us); filling ctypes slots and
    calling the driver directly costs a few microseconds, which matters for decode-sized GEMMs.
    Signature letters: p = pointer (uint64), i = int32, l = int64, f = float32.
    """

    _CTYPE = {"p": ctypes.c_uint64, "i": ctypes.c_int32, "l": ctypes.c_int64, "f": ctypes.c_float}

    def __init__(self) -> None:
        self.by_sig: dict[str, tuple[list[Any], int, Any]] = {}

    def pack(self, sig: str, values: Sequence[Any]) -> int:
        entry = self.by_sig.get(sig)
        if entry is None:
            entry = self.by_sig[sig] = self.slots(sig)
        slots = entry[0]
        for slot, value in zip(slots, values):
            slot.value = value
        return entry[1]

    @classmethod
    def slots(cls, sig: str, values: Sequence[Any] | None = None) -> tuple[list[Any], int, Any]:
        """New parameter slots for ``sig`` (filled with ``values``) -> (slots, the address of the pointer array
        cuLaunchKernel takes, that array): the array must stay alive as long as the address is used."""
        slots = [cls._CTYPE[c]() if values is None else cls._CTYPE[c](v) for c, v in zip(sig, values or sig)]
        array = (ctypes.c_void_p * len(sig))(*[ctypes.addressof(v) for v in slots])
        return slots, ctypes.addressof(array), array


_PARAMS = _Params()
_SIG_ACT = "pppppppiiiii"   # x, keep, outl, codes, scale, zero, x_out, K, Kq, Kp, n_out, bits
_SIG_SPLIT = "ppppppiiii"    # x, outl, codes, scale, zero, x_out, K, Kp, n_out, bits
_SIG_ROWS = "ppppppiiiii"    # x, outl, codes, scale, zero, x_out, M, K, Kp, n_out, bits
_SIG_GEMM = "pppiiippfppp"  # A, W, out, M, N, Kp, a_scale, a_zero, a_shift, w_scale, wsum, y_base
_SIG_WG = _SIG_GEMM + "i"    # quik_wgmma_*: the same, then seg (the _blk kernels: N / seg blocks of [M, seg])
_SIG_GEMVO = "pppiiippfppppiip"  # _SIG_GEMM without y_base, then x_out, w_out, n_out, chunk, bias
_SIG_UNPACK = "pppii"       # W, Wb, lut, N, Kp / 2
_SIG_EPI = "ppiippfppp"     # acc, out, M, N, a_scale, a_zero, a_shift, w_scale, wsum, y_base
_SIG_SK = "pppiiii"         # quik_gemm_sk_*: A, W, part, M, N, Kp, splits
_SIG_SKE = "ppiiippfppp"    # quik_splitk_*: part, out, M, N, splits, then _SIG_EPI's epilogue arguments


class _Recorder(threading.local):
    """What one PreparedLinear call does while ``on`` (its own thread only), as steps: ("k", the raw arguments of a
    _launch, on the side stream or not), ("ob", x_outlier, y_base, on the side stream) for the outlier product,
    ("fork",) / ("join",) around the side stream's work (the widening, OUTLIER_SIDE's outlier product); the buffers
    made through _empty; and ``clean`` = False where the call did GPU work that a launch plan cannot replay (a
    library GEMM, torch ops). ``side``: launches now go to the side stream. ``eager_only``: the call would have run
    otherwise under graph capture (OUTLIER_SIDE = 1), so its plan must not be replayed into a graph."""

    def __init__(self) -> None:
        self.on, self.clean, self.side, self.eager_only = False, True, False, False
        self.steps: list[tuple] = []
        self.bufs: list[Tensor] = []


_REC = _Recorder()


def _empty(*shape: int, dtype: torch.dtype, device: Any) -> Tensor:
    """torch.empty for the launchers' per-call buffers; noted while a call is recorded (its launch plan allocates
    the same buffers)."""
    t = torch.empty(*shape, dtype=dtype, device=device)
    if _REC.on:
        _REC.bufs.append(t)
    return t


def _unplannable() -> None:
    """Called by launchers that do GPU work other than _launch (torch ops, library GEMMs, a side stream): the call
    being recorded, if any, gets no launch plan."""
    if _REC.on:
        _REC.clean = False


class _WatchedModule(types.ModuleType):
    """The class of this module and of reference: any attribute assignment (an A/B knob such as PDL or
    WGMMA_MIN_M, a test's monkeypatch, a script switching kernel builds) advances _GENERATION, and launch plans
    recorded under an earlier generation are not replayed."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        _GENERATION[0] += 1

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        _GENERATION[0] += 1


_GENERATION = [0]
sys.modules[__name__].__class__ = _WatchedModule
_ref.__class__ = _WatchedModule


@functools.lru_cache(maxsize=None)
def _device_info(device_index: int) -> tuple[str, int, int]:
    """(arch "sm_XY", multiprocessor count, 10 * major + minor), asked once per device (launchers use it)."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return (f"sm_{major}{minor}", torch.cuda.get_device_properties(device_index).multi_processor_count,
            10 * major + minor)


def _resident_blocks(index: int, name: str, block: int, smem: int) -> int:
    """Blocks of kernel ``name`` (block threads, smem bytes of dynamic shared memory) that fit on one SM at
    once (the driver's occupancy calculator: registers, shared memory, threads), at least 1. Cached per
    loaded function, not per name: an A/B run that loads two builds of a kernel gets each build's own."""
    return _occupancy(_kernels(index, _device_info(index)[0])[name], block, smem)


@functools.lru_cache(maxsize=None)
def _occupancy(fn: int, block: int, smem: int) -> int:
    return max(1, int(_cupy().cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn, block, smem)))


# torch.cuda.current_device() without its Python wrapper (it runs on every launch)
_current_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device


def _raw_stream(index: int) -> int:
    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what Triton uses: no Stream object built
    return get(index) if get is not None else torch.cuda.current_stream(index).cuda_stream


class _LaunchAttr(ctypes.Structure):  # CUlaunchAttribute: id, padding to 8 bytes, a 64-byte value union
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_char * 4), ("value", ctypes.c_ubyte * 64)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig (cuda.h, CUDA >= 12.0)
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_LaunchAttr)), ("numAttrs", ctypes.c_uint)]


_PDL_ATTR_ID = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
_CLUSTER_ATTR_ID = 4  # CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION (value: unsigned x, y, z)
# Programmatic dependent launch of the small-M GEMM after the quantizer (sm_90+): QUIKTOOL_PDL=0 turns it off.
PDL = os.environ.get("QUIKTOOL_PDL", "1") != "0"
# The same for the split-K tiled mma.sync kernel (quik_gemm_sk_*; twentieth session): its blocks start while the
# quantizer runs and fetch the prologue's weight tiles before griddepcontrol.wait. H100 layer A/B in one process
# (docs/PERF_LOG.md, twentieth session, s20f) at M = 128: x0.92-0.97 on the split shapes (W4A4 4096 x 4096 x1.02),
# but the unsplit mid-tile grids (>= the SM count of blocks, crowding the quantizer's) x1.09 / x1.11 (W8A8 4096 x
# 11008, 5120 x 13824): those keep plain launches (their kernels wait too, a no-op then).
# QUIKTOOL_PDL_TILED=0 launches the split-K kernel plainly as well (A/B runs; same kernels, same bits).
PDL_TILED = os.environ.get("QUIKTOOL_PDL_TILED", "1") != "0"
# The same for the split-K wgmma kernel (quik_wgmma_ws_sk_*: its producer waits before copying the activations),
# unless its weights were widened just before it (the widening pass, not the quantizer, then precedes it). H100
# layer A/B in one process against the kernel without the wait, launched plainly (s20h): W4A4 x0.93-0.97 on the 13
# split points at M = 128 / 256 / 512 (4096 x 4096 at M = 512 0.74x -> 0.79x FP16), W8A8 x0.97-0.99.
# QUIKTOOL_PDL_WGMMA_SPLIT=0 launches it plainly (A/B runs).
PDL_WGMMA_SPLIT = os.environ.get("QUIKTOOL_PDL_WGMMA_SPLIT", "1") != "0"
# And the unsplit warp-specialized kernels with 4-bit weights (thirtieth session; every ws producer waits now), whose
# consumers load their first weight tiles before any wait: H200 layer A/B in one process against the kernels without
# the wait, launched plainly (s30b): W4A4 x0.92-0.99 on the unsplit points at M = 128 / 512 (5120 x 5120 at M = 512
# 0.83x -> 0.91x FP16, 4096 x 11008 0.86x -> 0.90x), x0.97-0.99 with 256 outliers; one x1.006 (28672 x 8192 at 512).
# 8-bit weights (and 4-bit ones widened, which a widening pass precedes) launch plainly: their blocks can do nothing
# before the wait, and the same A/B read x0.97-0.99 on 4096 x 4096 / 5120 x 5120 but x1.06 on 28672 x 8192 at 512
# and 11008 x 4096 at 1024 (x1.03-1.10 again in s30c; PDL_WGMMA_UNSPLIT_W8 = 1 launches them as PDLs: A/B runs).
# QUIKTOOL_PDL_WGMMA_UNSPLIT=0 launches every unsplit kernel plainly (A/B runs).
PDL_WGMMA_UNSPLIT = os.environ.get("QUIKTOOL_PDL_WGMMA_UNSPLIT", "1") != "0"
PDL_WGMMA_UNSPLIT_W8 = os.environ.get("QUIKTOOL_PDL_WGMMA_UNSPLIT_W8", "0") != "0"


@functools.lru_cache(maxsize=None)
def _launch_ex(pdl: bool = True, cluster: int = 1) -> Any:
    """(cuLaunchKernelEx from the driver library (CuPy does not wrap it), a pointer to the launch attributes,
    their count, the attribute array it points into) for a programmatic dependent launch (pdl) and / or thread-block
    clusters of ``cluster`` blocks along x (cluster > 1), or None."""
    try:
        fn = ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    attrs, n = (_LaunchAttr * 2)(), 0
    if pdl:
        attrs[n].id = _PDL_ATTR_ID
        attrs[n].value[0] = 1  # programmaticStreamSerializationAllowed = 1 (an int at the union's start)
        n += 1
    if cluster > 1:
        attrs[n].id = _CLUSTER_ATTR_ID
        struct.pack_into("III", attrs[n].value, 0, cluster, 1, 1)
        n += 1
    return fn, ctypes.cast(attrs, ctypes.POINTER(_LaunchAttr)), n, attrs


def _launch(index: int, name: str, grid: int, block: int, sig: str, args: Sequence[Any], smem: int = 0,
            pdl: bool = False, cluster: int = 1) -> None:
    """Launch ``name`` on torch's current stream of device ``index`` (asynchronous, no sync). ``pdl``: as a
    programmatic dependent launch (the kernel waits for its predecessor with griddepcontrol.wait). ``cluster``:
    in thread-block clusters of that many consecutive blocks (sm_90; grid a multiple of it). While a
    PreparedLinear call is being recorded (_REC), the launch is noted for its launch plan."""
    if name.startswith("quik_wgmma_"):
        fn = (_wgmma_kernels(index) or {})[name]
    else:
        fn = _kernels(index, _device_info(index)[0])[name]
    if _current_device() != index:
        with torch.cuda.device(index):
            return _launch(index, name, grid, block, sig, args, smem, pdl, cluster)
    pdl = pdl and PDL and _device_info(index)[2] >= 90
    ex = _launch_ex(pdl, cluster) if pdl or cluster > 1 else None
    if cluster > 1 and ex is None:
        raise KernelError(f"launching {name} in clusters of {cluster} needs cuLaunchKernelEx (CUDA >= 12 driver)")
    if _REC.on:
        _REC.steps.append(("k", fn, name, grid, block, smem, ex, sig, tuple(args), _REC.side))
    _launch_fn(index, fn, name, grid, block, smem, _raw_stream(index), _PARAMS.pack(sig, args), ex)
    return None


def _launch_fn(index: int, fn: int, name: str, grid: int, block: int, smem: int, stream: int, params: int,
               ex: Any) -> None:
    """The driver call of _launch (and of a launch plan's replay): kernel handle ``fn`` with packed ``params`` on
    ``stream``; ex: _launch_ex()'s (cuLaunchKernelEx, its attributes) for a programmatic dependent or a cluster
    launch."""
    if ex is not None:
        launch, attrs, n = ex[:3]
        cfg = _LaunchConfig(grid, 1, 1, block, 1, 1, smem, stream, attrs, n)
        rc = launch(ctypes.byref(cfg), fn, params, None)
        if rc != 0:
            raise KernelError(f"launching {name} (cuLaunchKernelEx: programmatic dependent / cluster launch) failed: "
                              f"CUresult {rc}")
        return
    cupy = _cupy()
    try:
        cupy.cuda.driver.launchKernel(fn, grid, 1, 1, block, 1, 1, smem, stream, params, 0)
    except cupy.cuda.driver.CUDADriverError as e:
        if "CONTEXT" not in str(e).upper():
            raise KernelError(f"launching {name} failed: {e}") from None
        # a thread that never made the device's primary context current: do it, then retry once
        cupy.cuda.runtime.setDevice(index)
        cupy.cuda.driver.launchKernel(fn, grid, 1, 1, block, 1, 1, smem, stream, params, 0)


# ---------------------------------------------------------------------------------------------------
# Argument checks (one line per failure, naming the argument and what is accepted)
# ---------------------------------------------------------------------------------------------------
def _dt(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def _check(name: str, t: Any, dtypes: Sequence[torch.dtype], shape: Sequence[int | None],
           device: int | None, align: int = 1) -> int:
    """Raise KernelError unless ``t`` is a contiguous CUDA tensor of ``dtypes`` and ``shape`` (None = any)
    on device index ``device`` (None = any CUDA device); returns its data pointer.

    Kept to cheap tensor queries: it runs on every launch."""
    if not isinstance(t, Tensor):
        raise KernelError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_cuda:
        raise KernelError(f"{name}: must be a CUDA tensor, got device {t.device}")
    if device is not None and t.get_device() != device:
        raise KernelError(f"{name}: must be on cuda:{device} like the other arguments, got {t.device}")
    if t.dtype not in dtypes:
        raise KernelError(f"{name}: dtype must be {_dt(dtypes)}, got {str(t.dtype).replace('torch.', '')}")
    got = t.shape
    if len(got) != len(shape) or any(s is not None and s != d for s, d in zip(shape, got)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise KernelError(f"{name}: shape must be {want}, got {list(got)}")
    if not t.is_contiguous():
        raise KernelError(f"{name}: must be contiguous (strides {list(t.stride())}); call .contiguous()")
    ptr = t.data_ptr()
    if align > 1 and ptr % align and t.numel():
        raise KernelError(f"{name}: data pointer must be {align}-byte aligned (a view at an offset?); "
                          "pass a fresh contiguous tensor")
    return ptr


def _index_i32(name: str, idx: Any, device: int) -> Tensor:
    """keep/outlier index -> int32 on ``device``; int64 is converted (better: store int32 once at load)."""
    _check(name, idx, (torch.int32, torch.int64), (None,), device)
    return idx if idx.dtype == torch.int32 else idx.to(torch.int32)


def _check_kp(kp: int, what: str) -> None:
    if kp <= 0 or kp % K_ALIGN or kp >= _MAX_KP:
        raise KernelError(f"{what}: Kp must be a positive multiple of {K_ALIGN} below {_MAX_KP}, got {kp} "
                          "(pad with reference.padded_k / prepare_weight)")


def _bits(name: str, bits: Any) -> int:
    if bits not in (4, 8) or isinstance(bits, bool):
        raise KernelError(f"{name} must be 4 or 8, got {bits!r}")
    return int(bits)


# ---------------------------------------------------------------------------------------------------
# Public API (mirrors reference.py)
# ---------------------------------------------------------------------------------------------------
def prepare_weight(codes: Tensor, bits: int) -> Tensor:
    """int8 codes [N, Kq] -> runtime weight on the codes' device: uint8 [N, Kp/2] (4-bit) or int8 [N, Kp].

    The layout is the reference one (both backends share it); built once at load, so the host syncs of
    the packing checks don't matter.
    """
    bits = _bits("bits", bits)
    return _ref.prepare_weight(codes, bits).contiguous()


def quantize_activations(x: Tensor, keep_idx: Tensor, outlier_idx: Tensor, bits: int, *,
                         out: ActCodes | None = None) -> ActCodes:
    """Per-token codes of x's ``keep_idx`` columns and a copy of its outlier columns (bit-exact with reference).

    x fp16/bf16 [M, K]; keep_idx [Kq] and outlier_idx [n_out] int32 (int64 is converted) ->
    ActCodes(codes int8 [M, Kp], scale fp32 [M], zero fp32 [M], x_outlier x.dtype [M, n_out]),
    Kp = padded_k(Kq), pad codes 0. ``out`` (optional) receives the results in place.
    """
    _check("x", x, (torch.float16, torch.bfloat16), (None, None), None)
    dev = x.get_device()
    bits = _bits("bits", bits)
    keep = _index_i32("keep_idx", keep_idx, dev)
    outl = _index_i32("outlier_idx", outlier_idx, dev)
    K, kq = x.shape[1], keep.numel()
    if not 1 <= kq <= K:
        raise KernelError(f"keep_idx: needs 1 to K={K} columns, got {kq}")
    return _quant_gather(x, keep, outl, bits, padded_k(kq), out)


def _quant_gather(x: Tensor, keep: Tensor, outl: Tensor, bits: int, kp: int, out: ActCodes | None) -> ActCodes:
    """quantize_activations after its checks (x, keep, outl and bits as it validated them)."""
    M, K = x.shape
    kq, n_out, dev, x_ptr = keep.numel(), outl.numel(), x.get_device(), x.data_ptr()
    out, ptrs = _act_out(out, x, M, kp, n_out, dev, codes_align=4)  # codes rows written as 32-bit words
    if M == 0:
        return out
    row_bytes = -(-K // 8) * 16  # K fp16/bf16 values, rounded up to whole 16-byte copies
    staged = row_bytes <= _ACT_SMEM_MAX
    name = "quik_act_quant_" + ("f16" if x.dtype == torch.float16 else "bf16") + ("" if staged else "_gmem")
    _launch(dev, name, M, _act_threads(K, kp, M), _SIG_ACT,
            (x_ptr, keep.data_ptr(), outl.data_ptr() if n_out else 0, *ptrs[:3], ptrs[3] if n_out else 0,
             K, kq, kp, n_out, bits),
            row_bytes if staged else 0)
    return out


def _act_out(out: ActCodes | None, x: Tensor, M: int, kp: int, n_out: int, dev: int,
             codes_align: int) -> tuple[ActCodes, tuple[int, int, int, int]]:
    """The quantizers' result buffers: allocated (right by construction) or the caller's, checked."""
    if out is None:
        out = ActCodes(_empty(M, kp, dtype=torch.int8, device=x.device),
                       _empty(M, dtype=torch.float32, device=x.device),
                       _empty(M, dtype=torch.float32, device=x.device),
                       _empty(M, n_out, dtype=x.dtype, device=x.device))
        return out, (out.codes.data_ptr(), out.scale.data_ptr(), out.zero.data_ptr(), out.x_outlier.data_ptr())
    return out, (_check("out.codes", out.codes, (torch.int8,), (M, kp), dev, align=codes_align),
                 _check("out.scale", out.scale, (torch.float32,), (M,), dev),
                 _check("out.zero", out.zero, (torch.float32,), (M,), dev),
                 _check("out.x_outlier", out.x_outlier, (x.dtype,), (M, n_out), dev))


def _split_smem(K: int, kp: int) -> int:
    """Dynamic shared memory of quik_act_quant_split: the row, the outlier bitmap and prefix counts, the codes."""
    words = ((-(-K // 32)) + 1) // 2 * 2
    return 2 * (-(-K // 8) * 8) + 8 * words + kp


# From ACT_MANY_ROWS rows on (0: never), the one-row-per-block quantizers run half the threads per row, at
# least 256: with many rows the quantizer is a throughput problem, and smaller blocks let more rows run at
# once on an SM (2048 threads). H100 layer A/B in one process (docs/PERF_LOG.md, seventh session, s7m, W4A4,
# M = 512 / 2048 / 8192): K = 11008 / 13824 rows x0.91-0.97 of the layer time, K = 5120 x0.96-0.98, the
# other shapes x0.98-1.01; a cap of 256 threads lost on K = 28672 (x1.05-1.10), 128 more so.
ACT_MANY_ROWS: int = _env_int("QUIKTOOL_ACT_MANY_ROWS", 512)


def _act_threads(K: int, kp: int, M: int = 1) -> int:
    # One block per row, ~16 columns per thread: a wide row on too few threads is latency bound
    # (measured: 256 threads took ~28 us for one 28672-column row); many rows: see ACT_MANY_ROWS.
    threads = min(1024, max(128, 1 << (max(kp, K) // 16 - 1).bit_length()))
    if ACT_MANY_ROWS and M >= ACT_MANY_ROWS:
        threads = max(min(threads, 256), threads // 2)
    return threads


# quik_act_quant_split_cl_*: one row per cluster of _QC CTAs (sm_90 and later), each CTA a chunk of whole
# 32-column words, for rows of at least QUANT_CLUSTER_MIN_K columns. H100 layer A/B in one process
# (scripts/device_gemv_rule_ab.py, docs/PERF_LOG.md fifth session): at K = 28672 the cluster kernel took
# x0.96 (M = 1) and x0.92 (M = 16) of the layer time, at K = 11008 / 13824 x0.98-1.12, at K <= 8192
# x1.03-1.19 (it takes ~8-9 us at any K; the one-CTA kernel ~7 us at K = 4096, ~14.5 us at K = 28672).
# QUIKTOOL_QUANT_CLUSTER=0 keeps the one-CTA kernel everywhere, QUIKTOOL_QUANT_CLUSTER_MIN_K moves the bound
# (A/B runs; same bits).
_QC = 8  # kernels/quik_act_quant.cu, QC
QUANT_CLUSTER = os.environ.get("QUIKTOOL_QUANT_CLUSTER", "1") != "0"
QUANT_CLUSTER_MIN_K: int = _env_int("QUIKTOOL_QUANT_CLUSTER_MIN_K", 16384)


def _cluster_quant(K: int, capability: int) -> bool:
    """Whether quantize_split runs the cluster kernel for rows of K columns on a GPU of this capability."""
    return QUANT_CLUSTER and capability >= 90 and K >= QUANT_CLUSTER_MIN_K


def _cluster_plan(K: int) -> tuple[int, int]:
    """quik_act_quant_split_cl_*: (threads per CTA, dynamic shared memory) for rows of K columns: a chunk of
    wpc words per CTA, ~16 columns per thread, 64 * wpc bytes of staged row + 8 * wpc of bitmap and counts."""
    words = -(-K // 32)
    wpc = -(-words // _QC)
    return min(1024, max(64, 1 << (-(-32 * wpc // 16) - 1).bit_length())), 72 * wpc


def quantize_split(x: Tensor, outlier_idx: Tensor, bits: int, *, out: ActCodes | None = None) -> ActCodes:
    """QUIK's activation split (bit-exact with reference.quantize_split): the outlier columns copied, every
    other column, in ascending order, quantized per token.

    x fp16/bf16 [M, K]; outlier_idx [n_out] int32 (int64 is converted), distinct, any order ->
    ActCodes(codes int8 [M, Kp], scale fp32 [M], zero fp32 [M], x_outlier x.dtype [M, n_out]),
    Kp = padded_k(K - n_out). The kept columns are found from a bitmap of the outliers, not gathered
    through an index array: from ACT_ROWS_MIN_M rows on, persistent blocks that hold rows in registers
    (quik_act_quant_rows_*, where _rows_plan applies); else on sm_90 and later rows of QUANT_CLUSTER_MIN_K
    columns or more take one cluster of 8 CTAs each (quik_act_quant_split_cl_*), other rows one CTA
    (quik_act_quant_split_*), and
    rows too wide for that one's shared memory (K above ~60k) go through quantize_activations with the
    complement computed by torch (a host sync).
    ``out`` (optional) receives the results in place; out.codes must be 16-byte aligned.
    """
    _check("x", x, (torch.float16, torch.bfloat16), (None, None), None)
    dev = x.get_device()
    bits = _bits("bits", bits)
    outl = _index_i32("outlier_idx", outlier_idx, dev)
    K, n_out = x.shape[1], outl.numel()
    kq = K - n_out
    if kq < 1:
        raise KernelError(f"outlier_idx: {n_out} outliers leave no column of K={K} to quantize")
    return _quant_split(x, outl, bits, padded_k(kq), out)


def _quant_split(x: Tensor, outl: Tensor, bits: int, kp: int, out: ActCodes | None,
                 rows_min: int | None = None) -> ActCodes:
    """quantize_split after its checks (x, outl and bits as it validated them); rows_min: _rows_plan's."""
    M, K = x.shape
    n_out, dev, x_ptr = outl.numel(), x.get_device(), x.data_ptr()
    rows = _rows_plan(M, K, kp, n_out, x_ptr, rows_min)
    if rows is not None:  # many rows: persistent blocks, rows in registers
        nc, threads, smem = rows
        kernel = f"quik_act_quant_rows_{'f16' if x.dtype == torch.float16 else 'bf16'}_c{nc}"
        out, ptrs = _act_out(out, x, M, kp, n_out, dev, codes_align=16)  # 16-byte code row stores
        grid = min(M, _device_info(dev)[1] * _resident_blocks(dev, kernel, threads, smem))
        _launch(dev, kernel, grid, threads, _SIG_ROWS,
                (x_ptr, outl.data_ptr() if n_out else 0, *ptrs[:3], ptrs[3] if n_out else 0, M, K, kp, n_out, bits),
                smem)
        return out
    if _cluster_quant(K, _device_info(dev)[2]):  # one row per cluster of _QC CTAs
        kernel, grid = "quik_act_quant_split_cl_", M * _QC
        threads, smem = _cluster_plan(K)
    else:  # one row per CTA
        smem = _split_smem(K, kp)
        if smem > _ACT_SMEM_MAX:
            from quiktool.algo.outliers import keep_columns  # noqa: PLC0415
            _unplannable()  # torch ops and a host sync
            keep = keep_columns(K, outl.long()).to(device=x.device, dtype=torch.int32)
            return _quant_gather(x, keep, outl, bits, kp, out)
        kernel, grid, threads = "quik_act_quant_split_", M, _act_threads(K, kp)
    out, ptrs = _act_out(out, x, M, kp, n_out, dev, codes_align=16)  # the one-CTA kernel: 16-byte row copies
    if M:
        _launch(dev, kernel + ("f16" if x.dtype == torch.float16 else "bf16"), grid, threads, _SIG_SPLIT,
                (x_ptr, outl.data_ptr() if n_out else 0, *ptrs[:3], ptrs[3] if n_out else 0, K, kp, n_out, bits), smem)
    return out


# quik_act_quant_rows_*_c{NC} (kernels/quik_act_quant.cu, "Rows mode"): the split-mode quantizer for
# ACT_ROWS_MIN_M rows or more, where x is 16-byte aligned and K % 8 == 0: persistent blocks that build the
# outlier bitmap once and hold a row in registers, NC chunks of 8 columns per thread, about ACT_ROWS_THREADS
# threads per row (at most 512). H100, in one process (docs/PERF_LOG.md, ninth session): the quantizer alone
# x0.68-0.90 of the gather kernel's time at M = 2048 / 8192; the layer x0.97-1.00 there, but with 256 outliers
# x0.96-1.03 at M = 512 / 1024 (four shapes 1.2-2.6% slower: the wgmma GEMM after it runs 2-3 us longer, not
# understood), hence the bound. Where the layer's GEMM is not the unsplit wgmma kernel (mma.sync with or without
# split-K, the split-K wgmma kernel, the library paths), the rows kernel runs from ACT_ROWS_MIN_M_NOWG = 17 tokens
# (PreparedLinear.run): H100, layer A/B in one process (nineteenth session), M = 128 / 512: x0.90-0.98 without
# outliers, x0.95-1.01 with 256 (s19c, s19d), while the unsplit wgmma layers took x0.94-1.03 (s19c); in front of the
# split-K wgmma kernel at M = 128 / 256 / 512 x0.93-0.97 without outliers, x0.96-0.99 with 256 (s19k). Since the
# twenty-second session also in front of the unsplit wgmma kernel from ACT_ROWS_MIN_M = 256 tokens (was 2048): with the
# narrower tiles and deep copies in place, H100 layer A/B in one process (s22e, M = 256 .. 1024): W4A4 without
# outliers x0.939-0.989 on every unsplit point (5120 x 5120 at M = 512 x0.944, 28672 x 8192 x0.949), with 256
# outliers x0.960-1.004 except three points at M = 768 (x1.007-1.016); the quantizer alone x0.65-0.81 at M = 512
# without outliers, x0.71-0.94 with 256 (s22e). Below 256 tokens not measured there: the bound.
# QUIKTOOL_ACT_ROWS=0 turns it off (A/B runs; the kernels give the same bits).
ACT_ROWS = os.environ.get("QUIKTOOL_ACT_ROWS", "1") != "0"
ACT_ROWS_MIN_M: int = _env_int("QUIKTOOL_ACT_ROWS_MIN_M", 256)
ACT_ROWS_MIN_M_NOWG: int = _env_int("QUIKTOOL_ACT_ROWS_MIN_M_NOWG", 17)
# QUIKTOOL_ACT_ROWS_WG_SPLIT=0: the split-K wgmma layers keep the gather kernel below ACT_ROWS_MIN_M (A/B runs).
ACT_ROWS_WG_SPLIT = os.environ.get("QUIKTOOL_ACT_ROWS_WG_SPLIT", "1") != "0"
ACT_ROWS_THREADS: int = _env_int("QUIKTOOL_ACT_ROWS_THREADS", 256)
_ROWS_NC = (1, 2, 4, 8)  # the entry points
_ROWS_MAX_T = 512  # kernels/quik_act_quant.cu, ROWS_MAX_T (the entry points' launch bounds)


def _rows_plan(M: int, K: int, kp: int, n_out: int, x_ptr: int = 0,
               min_m: int | None = None) -> tuple[int, int, int] | None:
    """The rows-mode quantizer for M rows of K columns -> (NC, threads, dynamic shared memory), or None
    where it does not apply: off, fewer than min_m rows (None: ACT_ROWS_MIN_M), K % 8 != 0, x not 16-byte
    aligned, rows wider than 8 chunks of 8 columns x 512 threads (32768), shared memory over the limit."""
    if not ACT_ROWS or M < (ACT_ROWS_MIN_M if min_m is None else min_m) or K % 8 or x_ptr % 16:
        return None
    chunks = K // 8
    nc = next((n for n in _ROWS_NC if -(-chunks // n) <= ACT_ROWS_THREADS), _ROWS_NC[-1])
    per_nc = -(-chunks // nc)                # threads with nc chunks each ...
    threads = -(-per_nc // 32) * 32          # ... in whole warps
    words = ((-(-K // 32)) + 1) // 2 * 2
    smem = 8 * words + kp + 4 * n_out
    if threads > _ROWS_MAX_T or smem > _ACT_SMEM_MAX:
        return None
    return nc, threads, smem


# quantize_layer's kernel choice: the split kernel up to SPLIT_MAX_M tokens, the gather kernel above.
# Measured on the H200 (docs/PERF_LOG.md, A/B in one process): at M = 1 and 16 the split kernel takes
# 1-2 us off a 7-10 us quantizer (layer time x0.89-1.00 on the LLaMA-2 shapes); at M = 512 and 2048 it is
# 1-6% slower (both kernels are instruction bound there, ncu). QUIKTOOL_SPLIT_QUANT_MAX_M (environment)
# replaces the bound; 0 turns the split kernel off (A/B runs; both kernels give the same bits).
SPLIT_MAX_M: int = _env_int("QUIKTOOL_SPLIT_QUANT_MAX_M", 16)


def quantize_layer(x: Tensor, keep_idx: Tensor, outlier_idx: Tensor, bits: int) -> ActCodes:
    """What quik_linear quantizes with (as reference.quantize_layer, bit-exact): keep_idx must be the
    ascending complement of outlier_idx (the layer's layout). Up to SPLIT_MAX_M tokens, and from
    ACT_ROWS_MIN_M tokens where the rows-mode kernel applies, quantize_split (which derives the kept columns
    itself; only keep_idx's length is checked), else quantize_activations."""
    _check("x", x, (torch.float16, torch.bfloat16), (None, None), None)
    dev = x.get_device()
    keep, outl = _index_i32("keep_idx", keep_idx, dev), _index_i32("outlier_idx", outlier_idx, dev)
    _split_check(keep, outl, x.shape[1])
    return _quant_layer(x, keep, outl, _bits("bits", bits))


def _split_check(keep: Tensor, outl: Tensor, K: int) -> None:
    if keep.numel() + outl.numel() != K or not keep.numel():
        raise KernelError(f"keep_idx ({keep.numel()}) and outlier_idx ({outl.numel()}) must split the K={K} "
                          "columns of x, with at least one kept")


def _quant_layer(x: Tensor, keep: Tensor, outl: Tensor, bits: int, rows_min: int | None = None) -> ActCodes:
    """quantize_layer after its checks (keep is outl's ascending complement, both int32 on x's device);
    rows_min: the rows kernel's token minimum (None: ACT_ROWS_MIN_M)."""
    M, K = x.shape
    kp = padded_k(keep.numel())
    if M <= SPLIT_MAX_M or _rows_plan(M, K, kp, outl.numel(), x.data_ptr(), rows_min):
        return _quant_split(x, outl, bits, kp, None, rows_min)
    return _quant_gather(x, keep, outl, bits, kp, None)


def quik_linear(x: Tensor, keep_idx: Tensor, outlier_idx: Tensor, act_bits: int, w: Tensor, w_bits: int,
                w_scale: Tensor, wsum: Tensor, outlier_weight: Tensor, bias: Tensor | None) -> Tensor:
    """The whole QUIK layer, as reference.quik_linear (bit-identical): quantize_layer, then at most
    FUSED_OUTLIER_MAX_M tokens quik_gemm_outliers (the outlier product inside the small-M kernel), else the
    outlier product by F.linear (cuBLAS, as on the torch backend) and quik_gemm. A layer called many times
    should hold a PreparedLinear instead (QuikLinear does): the same launches, its operands checked once."""
    layer = PreparedLinear(keep_idx, outlier_idx, act_bits, w, w_bits, w_scale, wsum, outlier_weight, bias,
                           x.dtype if isinstance(x, Tensor) else None)
    layer.plans = None  # called once: nothing to replay
    return layer(x)


# Launch plans (PreparedLinear.run): an eager layer call spent 56-341 us of host time at M = 128 / 512 against 14-31 us
# for FP16 F.linear (H100, docs/RESULTS.md, twenty-fourth session, s24b), ~113 Python calls deciding the same plan
# again on every call. QUIKTOOL_LAUNCH_PLANS=0 runs the launchers on every call (A/B runs; the same launches).
LAUNCH_PLANS = os.environ.get("QUIKTOOL_LAUNCH_PLANS", "1") != "0"
_PLANS_MAX = 64   # plans per layer (token counts x seg x alignment) before the layer's plans are dropped
_WS_ALIGN = 512   # byte alignment of each buffer inside a replay's workspace (torch's allocator gives 512 too)


def _symbolic_args(sig: str, args: Sequence[Any], ranges: Sequence[tuple[int, int, int]]
                   ) -> tuple[tuple[Any, ...], tuple[tuple[int, int, int], ...]] | None:
    """A recorded launch's arguments -> (template, fixups): the template holds every argument that is the same
    on each call (numbers, null pointers, pointers into the layer's own tensors), 0 where a per-call pointer goes;
    a fixup (argument position, buffer, byte offset) says which buffer's pointer, plus the offset, fills it.
    ranges: (start pointer, bytes, buffer) of every tensor a pointer may point into, buffer -1 for the layer's
    own (constant) tensors. None when a pointer lies in none of them (the plan cannot be replayed)."""
    template, fixups = list(args), []
    for pos, (kind, value) in enumerate(zip(sig, args)):
        if kind != "p" or value == 0:
            continue
        hit = next(((start, buf) for start, size, buf in ranges if start <= value < start + size), None)
        if hit is None:
            return None
        if hit[1] >= 0:
            template[pos] = 0
            fixups.append((pos, hit[1], value - hit[0]))
    return tuple(template), tuple(fixups)


class _LaunchPlan:
    """One PreparedLinear call's work, recorded by _record and replayed by replay, as steps in the order they ran:
    ("k", kernel handle, name, grid, block, dynamic smem, PDL, sig, template, fixups, on the side stream) for a
    launch (its arguments as _symbolic_args made them), ("ob", x_outlier buffer or None, y_base buffer or None, on
    the side stream) for the outlier product (torch's F.linear, which allocates its own output), ("fork",) /
    ("join",) for the side stream (the widening, OUTLIER_SIDE's outlier product). Buffers: 0 is x; 1.. the
    launchers' per-call buffers (_empty) in allocation order, then each outlier product's output. A replay allocates
    the buffers that a launch points into (in one workspace, on the caller's stream: the join orders the side
    stream's use before the workspace is freed) or that are tensors to the caller (the output, the outlier columns
    F.linear reads), with the recorded shapes and dtypes. steps None: the call did work a plan cannot hold
    (_unplannable); run then keeps calling the launchers for that key until a knob changes."""

    __slots__ = ("generation", "steps", "ptrs", "workspace", "tensors", "out", "segmented", "params", "eager_only")

    @classmethod
    def make(cls, generation: int, x: Tensor, steps: list[tuple] | None, bufs: list[Tensor], y: Tensor,
             segmented: bool, consts: list[Tensor]) -> "_LaunchPlan":
        plan = cls()
        plan.generation, plan.steps, plan.segmented, plan.eager_only = generation, None, segmented, False
        if steps is None:
            return plan
        tensors = [x, *bufs]
        for step in steps:  # outlier products' outputs: buffers after the launchers' own
            if step[0] == "ob" and step[2] is not None:
                tensors.append(step[2])
        index = {id(t): i for i, t in enumerate(tensors)}
        ranges = [(t.data_ptr(), t.numel() * t.element_size(), index[id(t)]) for t in tensors]
        ranges += [(t.data_ptr(), t.numel() * t.element_size(), -1) for t in consts]
        spans = sorted((start, start + size) for start, size, _ in ranges if size)
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):  # a pointer could belong to two tensors
            return plan
        out = index.get(id(y))
        if out is None or out == 0:
            return plan
        plan_steps, pointed, as_tensor, y_bases = [], set(), {out}, set()
        for step in steps:
            if step[0] == "ob":
                _, x_outlier, y_base, on_side = step
                xo = None
                if x_outlier is not None and x_outlier.numel():
                    xo = index.get(id(x_outlier))
                    if xo is None:
                        return plan
                    as_tensor.add(xo)
                yb = None if y_base is None else index[id(y_base)]
                if yb is not None:
                    y_bases.add(yb)
                plan_steps.append(("ob", xo, yb, on_side))
            elif step[0] == "k":
                _, fn, name, grid, block, smem, ex, sig, args, side = step
                sym = _symbolic_args(sig, args, ranges)
                if sym is None:
                    return plan
                pointed.update(buf for _pos, buf, _off in sym[1])
                plan_steps.append(("k", fn, name, grid, block, smem, ex, sig, *sym, side))
            else:
                plan_steps.append(step)  # ("fork",), ("join",)
        if out not in pointed or out in y_bases:  # the output must come from a launch
            return plan
        workspace, size = [], 0
        for i in sorted(pointed - as_tensor - y_bases - {0}):  # pointer-only buffers of the launchers
            workspace.append((i, size))
            size += -(-(tensors[i].numel() * tensors[i].element_size()) // _WS_ALIGN) * _WS_ALIGN
        plan.workspace = (size, tuple(workspace))
        plan.tensors = tuple((i, tuple(tensors[i].shape), tensors[i].dtype) for i in sorted(as_tensor))
        plan.ptrs, plan.out, plan.steps = [0] * len(tensors), out, tuple(plan_steps)
        plan.params = threading.local()  # per thread: each launch's parameter slots, the constants filled once
        return plan

    def replay(self, layer: "PreparedLinear", x: Tensor) -> tuple[Tensor, bool]:
        """The recorded call on a new x (checked by run; same token count and alignment): fresh buffers, the same
        launches on torch's current stream (and the side stream between fork and join), the outlier product by the
        same torch call."""
        dev, ptrs, made = layer.dev, list(self.ptrs), {}
        ptrs[0] = x.data_ptr()
        size, workspace = self.workspace
        if size:
            ws = torch.empty(size, dtype=torch.uint8, device=x.device)  # noqa: F841 - alive until the launches
            base = ws.data_ptr()
            for i, off in workspace:
                ptrs[i] = base + off
        for i, shape, dtype in self.tensors:
            t = made[i] = torch.empty(shape, dtype=dtype, device=x.device)
            ptrs[i] = t.data_ptr()
        params = getattr(self.params, "slots", None)
        if params is None:  # this thread's first replay of the plan
            params = self.params.slots = [_Params.slots(s[7], s[8]) if s[0] == "k" else None for s in self.steps]
        stream, side_stream, side, y_bases = _raw_stream(dev), 0, None, []
        for step, slots in zip(self.steps, params):
            kind = step[0]
            if kind == "k":
                _, fn, name, grid, block, smem, ex, _sig, _template, fixups, on_side = step
                values = slots[0]
                for pos, buf, off in fixups:
                    values[pos].value = ptrs[buf] + off
                _launch_fn(dev, fn, name, grid, block, smem, side_stream if on_side else stream, slots[1], ex)
            elif kind == "ob":
                _, xo, yb, on_side = step
                ob_args = (None if xo is None else made[xo], layer.outlier_weight, layer.bias, x.shape[0])
                y_base = (_on_stream(dev, side, _ref.outlier_base, *ob_args) if on_side
                          else _ref.outlier_base(*ob_args))
                if yb is not None:
                    ptrs[yb] = y_base.data_ptr()
                    y_bases.append(y_base)  # alive until the launches that read it are queued
            elif kind == "fork":  # as PreparedLinear._run: the side stream waits for what the caller queued
                side = _side_stream(dev)
                _fork_join(dev, side, True)
                side_stream = side.cuda_stream
            else:  # "join": the caller's stream waits for the side stream's work before the kernel that reads it
                _fork_join(dev, side, False)
        return made[self.out], self.segmented


class PreparedLinear:
    """quik_linear for one layer's fixed operands (everything but x), checked once here; each call checks x
    alone (dtype, shape, device, contiguity) and runs the same kernels with the same arguments as the
    launchers (quantize_layer, quik_gemm, quik_gemm_outliers), hence the same bits.

    Why: a 7B prefill makes 128 QUIK layer calls, and re-checking the nine operands of every call (plus the
    launchers' own re-checks of what the previous launcher returned) made the host, not the GPU, the
    bottleneck (docs/RESULTS.md, tenth session). The operands must not be replaced or moved afterwards:
    QuikLinear builds a new one when a buffer was replaced (e.g. by ``.to()``).

    keep_idx / outlier_idx: the layer's ascending column split (int32, or int64: converted once); w, w_scale,
    wsum as in quik_gemm; outlier_weight [N, n_out] and bias [N] or None in ``dtype`` (fp16 / bf16), the
    dtype x must have (None: outlier_weight's).
    """

    __slots__ = ("keep", "outl", "act_bits", "w", "w_bits", "w_scale", "wsum", "outlier_weight", "bias", "dtype",
                 "dev", "K", "N", "kp", "n_out", "a_shift", "plans")

    def __init__(self, keep_idx: Tensor, outlier_idx: Tensor, act_bits: int, w: Tensor, w_bits: int,
                 w_scale: Tensor, wsum: Tensor, outlier_weight: Tensor, bias: Tensor | None,
                 dtype: torch.dtype | None = None):
        self.act_bits, self.w_bits = _bits("act_bits", act_bits), _bits("w_bits", w_bits)
        dtype = outlier_weight.dtype if dtype is None and isinstance(outlier_weight, Tensor) else dtype
        if dtype not in _OUT_EP:
            raise KernelError(f"x: dtype must be {_dt(list(_OUT_EP))}, got {str(dtype).replace('torch.', '')}")
        _check("w", w, (torch.uint8, torch.int8), (None, None), None)
        dev = w.get_device()
        self.keep, self.outl = _index_i32("keep_idx", keep_idx, dev), _index_i32("outlier_idx", outlier_idx, dev)
        self.n_out, self.K = self.outl.numel(), self.keep.numel() + self.outl.numel()
        _split_check(self.keep, self.outl, self.K)
        self.kp = padded_k(self.keep.numel())
        wk = self.kp // 2 if self.w_bits == 4 else self.kp
        _check("w", w, (torch.uint8,) if self.w_bits == 4 else (torch.int8,), (None, wk), dev, align=16)
        self.N = N = w.shape[0]
        _check("w_scale", w_scale, (torch.float32,), (N,), dev)
        _check("wsum", wsum, (torch.float32,), (N,), dev)
        _check("outlier_weight", outlier_weight, (dtype,), (N, self.n_out), dev)
        if bias is not None:
            _check("bias", bias, (dtype,), (N,), dev)
        self.w, self.w_scale, self.wsum, self.outlier_weight, self.bias = w, w_scale, wsum, outlier_weight, bias
        self.dtype, self.dev, self.a_shift = dtype, dev, 1 << (self.act_bits - 1)
        # (M, seg, x 16-byte aligned) -> the launch plan of such a call (None: no plans, e.g. a one-off layer)
        self.plans: dict[tuple[int, int, bool], _LaunchPlan] | None = {}

    def __call__(self, x: Tensor) -> Tensor:
        return self.run(x)[0]

    def _rows_min(self, M: int, path: str | None) -> int | None:
        """The rows quantizer's token minimum for a call of M tokens whose GEMM takes ``path`` (None: the default,
        ACT_ROWS_MIN_M): in front of the unsplit wgmma kernel from ACT_ROWS_MIN_M tokens (measured from 256 there,
        see ACT_ROWS_MIN_M), in front of the other GEMMs from ACT_ROWS_MIN_M_NOWG."""
        wg = path == "wgmma" and not (ACT_ROWS_WG_SPLIT and wgmma_splits(M, self.N, self.kp, self.w_bits,
                                                                         self.dev) > 1)
        return None if path is None or wg else ACT_ROWS_MIN_M_NOWG

    def quantize(self, x: Tensor) -> ActCodes:
        """The activation quantizer exactly as ``run`` calls it for x (the same kernel choice; bench layer times
        this as the layer's quantize stage). x as ``run`` takes it."""
        M = x.shape[0]
        if M <= 16 or _ref.outliers_in_gemm(M, self.n_out):
            return _quant_layer(x, self.keep, self.outl, self.act_bits)
        path = gemm_path(M, self.N, self.kp, self.w_bits, self.a_shift, self.dev)
        return _quant_layer(x, self.keep, self.outl, self.act_bits, self._rows_min(M, path))

    def run(self, x: Tensor, seg: int = 0) -> tuple[Tensor, bool]:
        """-> (y, segmented). seg > 0 (even, dividing N) asks for N / seg blocks of [M, seg] in y's memory
        instead of [M, N] (the members of a fused group, each contiguous); only the wgmma path writes that
        layout, for seg a multiple of its 256-column tile, and ``segmented`` says whether it did.

        The first call for a (token count, seg, x alignment) runs the launchers and records what they launched
        (_LaunchPlan); later calls replay that plan: the same kernels with the same arguments, only the pointers
        of x and of fresh buffers changed, without re-deciding the plan on the host (LAUNCH_PLANS)."""
        if seg and (seg < 0 or seg % 2 or self.N % seg):
            raise KernelError(f"seg={seg}: must be 0 or an even divisor of N={self.N}")
        if not (type(x) is Tensor and x.dtype is self.dtype and x.dim() == 2 and x.shape[1] == self.K
                and x.is_cuda and x.get_device() == self.dev and x.is_contiguous()):
            _check("x", x, (self.dtype,), (None, self.K), self.dev)  # raises, naming what is wrong (or passes)
        if not LAUNCH_PLANS or self.plans is None or _REC.on or _current_device() != self.dev:
            return self._run(x, seg)
        key = (x.shape[0], seg, x.data_ptr() % 16 == 0)  # the rows quantizer needs a 16-byte aligned x
        plan = self.plans.get(key)
        if plan is not None and plan.generation == _GENERATION[0]:
            if plan.steps is None or (plan.eager_only and torch.cuda.is_current_stream_capturing()):
                return self._run(x, seg)
            return plan.replay(self, x)
        if torch.cuda.is_current_stream_capturing():  # the launchers' choices differ there (one-time setups)
            return self._run(x, seg)
        return self._record(key, x, seg)

    def _record(self, key: tuple[int, int, bool], x: Tensor, seg: int) -> tuple[Tensor, bool]:
        """run's first call for ``key``: the launchers' call, recorded into the layer's plan for it."""
        generation, rec = _GENERATION[0], _REC
        rec.on, rec.clean, rec.side, rec.eager_only, rec.steps, rec.bufs = True, True, False, False, [], []
        try:
            y, segmented = self._run(x, seg)
        finally:
            rec.on = False
        steps, bufs, rec.steps, rec.bufs = rec.steps, rec.bufs, [], []
        if generation == _GENERATION[0]:
            if len(self.plans) >= _PLANS_MAX:  # many token counts (e.g. a sweep): start over
                self.plans.clear()
            consts = [t for t in (self.w, self.w_scale, self.wsum, self.keep, self.outl, self.outlier_weight, self.bias,
                                  *_LUTS.get(self.dev, ())) if t is not None]  # _LUTS: the widening's tables
            plan = self.plans[key] = _LaunchPlan.make(generation, x, steps if rec.clean else None, bufs, y,
                                                      segmented, consts)
            plan.eager_only = rec.eager_only
        return y, segmented

    def _run(self, x: Tensor, seg: int) -> tuple[Tensor, bool]:
        """run through the launchers (x checked)."""
        M = x.shape[0]
        if _ref.outliers_in_gemm(M, self.n_out):
            # decode: the outlier product inside the small-M kernel, in reference.outlier_sum's order
            a = _quant_layer(x, self.keep, self.outl, self.act_bits)
            return _gemmo_run(a.codes, self.w, self.w_bits, a.scale, a.zero, self.a_shift, self.w_scale, self.wsum,
                              a.x_outlier, self.outlier_weight, self.bias, self.dtype, None, self.dev), False
        seg = seg if seg % _WG_BN == 0 else 0  # a tile must lie in one block (quik_wgmma.cu, seg)
        side = wide = path = None
        join = _no_join
        if M <= 16 and self.n_out:  # only with QUIKTOOL_FUSED_OUTLIER_MAX_M below 16 (A/B runs)
            # the outlier product first, so that the quantizer immediately precedes the small-M GEMM, which then
            # overlaps it (programmatic dependent launch); the same F.linear on the same values: same bits
            _unplannable()  # the outlier columns gathered by torch
            y_base = _ref.outlier_base(x.index_select(1, self.outl), self.outlier_weight, self.bias, M)
            a = _quant_layer(x, self.keep, self.outl, self.act_bits)
        else:
            path = gemm_path(M, self.N, self.kp, self.w_bits, self.a_shift, self.dev)
            rec = _REC if _REC.on else None
            widen = WIDEN_SIDE and _widen_planned(M, self.w_bits, path)
            eligible = not widen and self._outlier_side(M, path)
            oside = eligible and (OUTLIER_SIDE >= 2 or torch.cuda.is_current_stream_capturing())
            if rec and eligible and not oside:
                rec.eager_only = True            # a capture would take the side stream: not this call's plan

            def fork() -> None:  # the side stream waits for what main queued before (and may free)
                nonlocal side
                side = _side_stream(self.dev)
                _fork_join(self.dev, side, True)
                if rec:
                    rec.steps.append(("fork",))

            if widen:
                fork()
            a = _quant_layer(x, self.keep, self.outl, self.act_bits, self._rows_min(M, path))
            if oside:
                fork()                           # after the quantizer, whose outlier columns F.linear reads
                y_base = _on_stream(self.dev, side, _ref.outlier_base, a.x_outlier, self.outlier_weight, self.bias, M)
                if rec:
                    rec.steps.append(("ob", a.x_outlier, y_base, True))
            if widen:
                if rec:
                    rec.side = True              # the widening's launch goes to the side stream
                wide = _on_stream(self.dev, side, _unpack_w4, self.w, _luts(self.dev)[1], self.N, self.kp,
                                  self.dev)      # int8 [N, Kp]
                if rec:
                    rec.side = False
            if not oside:
                y_base = _ref.outlier_base(a.x_outlier, self.outlier_weight, self.bias, M)
                if rec:
                    rec.steps.append(("ob", a.x_outlier, y_base, False))  # torch, replayed as such
            if widen:
                _fork_join(self.dev, side, False)  # join: the GEMM queued next reads the widened weights
                wide.record_stream(torch.cuda.current_stream(self.dev))  # side's pool: kept until main is done
                if rec:
                    rec.steps.append(("join",))
            if oside:
                # join, called by the launchers right before the kernel that reads y_base (the split-K add). y_base
                # lives in the side stream's pool: its block is reused only by later side-stream work, which every
                # layer call queues after a fork, i.e. after this call's reader; x_outlier (main's pool) is reused
                # only by work main queues after the join.
                def join() -> None:
                    _fork_join(self.dev, side, False)
                    if rec:
                        rec.steps.append(("join",))
        # y_base: a fresh contiguous [M, N] tensor of self.dtype (F.linear or the expanded bias) or None
        epi = (a.scale.data_ptr(), a.zero.data_ptr(), float(self.a_shift), self.w_scale.data_ptr(),
               self.wsum.data_ptr(), 0 if y_base is None else y_base.data_ptr())
        y, path = _gemm_run(a.codes, self.w, self.w_bits, self.N, self.kp, self.dev, epi, self.dtype, None, seg,
                            wide, path, join)
        return y, bool(seg) and path == "wgmma"

    def _outlier_side(self, M: int, path: str) -> bool:
        """Whether a call of M tokens whose GEMM takes ``path`` may make its outlier product on the side stream
        (OUTLIER_SIDE on; then always (2) or under graph capture (1)): with outliers, more than 16 tokens, and a
        split-K plan (mma.sync or wgmma slices), whose second kernel is the only reader of the outlier product."""
        if not OUTLIER_SIDE or not self.n_out or M <= 16:
            return False
        if path == "mma":
            return mma_splits(M, self.N, self.kp, self.w_bits, self.dev) > 1
        return path == "wgmma" and wgmma_splits(M, self.N, self.kp, self.w_bits, self.dev) > 1


def _gemm_checks(a_codes: Tensor, w: Tensor, w_bits: int) -> tuple[int, int, int, int, int, int, int]:
    """Validate the integer operands -> (M, N, Kp, w_bits, device index, a pointer, w pointer)."""
    w_bits = _bits("w_bits", w_bits)
    a_ptr = _check("a_codes", a_codes, (torch.int8,), (None, None), None, align=16)
    dev = a_codes.get_device()
    M, kp = a_codes.shape
    _check_kp(kp, "a_codes")
    if w_bits == 4:
        w_ptr = _check("w", w, (torch.uint8,), (None, kp // 2), dev, align=16)
    else:
        w_ptr = _check("w", w, (torch.int8,), (None, kp), dev, align=16)
    return M, w.shape[0], kp, w_bits, dev, a_ptr, w_ptr


def _tiled_plan(cfg: str, M: int, N: int, w_bits: int, ep: str) -> tuple[str, int, int, int]:
    """The tiled kernel of configuration ``cfg`` ("big" or "mid") -> (name, grid, block, dynamic smem)."""
    bm, bn, threads, stages = _TILE[cfg]
    grid = -(-M // bm) * -(-N // bn)  # 1-D: the kernel derives its grouped (m, n) raster from blockIdx.x
    return f"quik_gemm_{ep}_w{w_bits}_{cfg}", grid, threads, _tile_smem(bm, bn, w_bits, stages)


def _gemv_rows(M: int, N: int, sms: int, lines: bool = False) -> int:
    """Output features per block of the small-M kernel (sms: the GPU's multiprocessors). M <= 8: 64 rows
    once N >= 64 * sms, i.e. when even 64-row blocks cover every SM, else 32. M > 8: 32 rows once N >=
    64 * sms, or 48 * sms for the whole-line kernels (``lines``), else 16. QUIKTOOL_GEMV_RULE=m: the earlier
    rule (16 rows at M > 8, else 32; measured on an H200).
    From H100 layer A/Bs in one process (scripts/device_gemv_rule_ab.py, docs/PERF_LOG.md): with N >= 8448
    the 64 / 32 rows took x0.86-0.95 of the time at M = 1 and x0.88-0.98 at M = 16 (fifth session); with
    fewer blocks than SMs, 64 rows at M = 1 were x1.02-1.10 (8192 x 8192, 13824 x 5120, 28672 x 8192) and 32
    rows at M = 16 mixed (x0.95-1.11) with the fragment kernels. With the whole-line 16-token kernels (2 blocks
    per SM) 32 rows at N = 8192 (256 blocks, one wave) took x0.84-0.94 of the 16 rows' time (two waves), at
    N = 5120 x0.94-1.05 and at N = 4096 (fewer blocks than SMs) x1.05-1.09 (eleventh session, s11k): hence
    48 * sms for them. The fragment kernels keep 64 * sms (the outlier-fused 16-token kernel on 28672 x 8192
    took x1.06 with 32 rows, s11l)."""
    if GEMV_RULE == "n":
        if M > 8:
            return 32 if N >= (48 if lines else 64) * sms else 16
        return 64 if N >= 64 * sms else 32
    return 16 if M > 8 else 32


def _gemv_block_rows(M: int, N: int, sms: int, lines: bool = False) -> int:
    """Output features per block of the small-M kernels: GEMV_ROWS when set, else the rule of _gemv_rows."""
    return GEMV_ROWS or _gemv_rows(M, N, sms, lines)


def _gemv_plan(M: int, N: int, w_bits: int, ep: str, rows: int | None = None,
               sms: int = 132, lines: bool = False) -> tuple[str, int, int, int]:
    """The small-M kernel (M <= 16) -> (name, grid, block, dynamic smem). rows: output features per
    block, 32, 16 or 64 (None: GEMV_ROWS, else _gemv_rows for a GPU with ``sms`` multiprocessors);
    lines: the whole-line variant (_ln) where there is one (M > 8)."""
    if M > 16:
        raise KernelError(f"the small-M kernel takes M <= 16, got {M}")
    rows = rows or _gemv_block_rows(M, N, sms)
    suffix = {32: "", 16: "_r16", 64: "_r64"}[rows] + ("_ln" if lines and M > 8 else "")
    return f"quik_gemv_{ep}_w{w_bits}_m{8 if M <= 8 else 16}{suffix}", -(-N // rows), _GEMV_THREADS, 0


def _gemv_lines(frag: tuple[str, int, int, int], ln: tuple[str, int, int, int], device: int) -> bool:
    """Whether a 16-token call takes the whole-line kernel (its plan ``ln``) instead of the fragment kernel
    (``frag``; the two may differ in rows per block, _gemv_rows). By default yes, unless the fragment kernel's
    grid fits on the GPU in one wave and the whole-line one's does not (the whole-line kernels have more
    registers: 2 blocks per SM where the fragment kernels fit 3 or more).
    H100 layer A/B (docs/PERF_LOG.md, eleventh session, s11g): the whole-line kernels took x0.82-0.97 of the
    time on the 70B shapes and 5120 x 13824 at M = 16, but x1.07-1.17 with the 320 blocks of N = 5120, which
    then need two waves. With the tiled 4-bit layout (twelfth session) the fragment kernels load whole lines of
    4-bit weights too; the rule against never at M = 16 (s12d, W4A4, where the choice differs): x0.95-1.05
    without outliers, x0.93-0.98 with 256 (identical kernels differed by x0.93-1.05 in that run); for 8-bit
    weights (row-major) it still pays (x0.76-0.93, s12c). An 8-token whole-line kernel was tried and removed
    (x1.01-1.17 slower under the tiled layout, s12c)."""
    if GEMV_LINES not in (0, 1, 2):
        raise KernelError(f"QUIKTOOL_GEMV_LINES={GEMV_LINES} is not accepted; use 1 (the rule), 0 (never) or 2 "
                          "(always)")
    if GEMV_LINES != 1:
        return GEMV_LINES == 2
    sms = _device_info(device)[1]
    one_wave = lambda p: p[1] <= _resident_blocks(device, p[0], p[2], p[3]) * sms  # noqa: E731
    return one_wave(ln) or not one_wave(frag)


def _plan(M: int, N: int, w_bits: int, ep: str, device: int) -> tuple[str, int, int, int]:
    """Kernel choice -> (name, grid, block, dynamic smem).

    M <= 16: the weight-streaming kernel (decode). Otherwise the tiled kernel, 128 x 256 tiles when they
    fill the GPU at least once, else 64 x 128 tiles (more blocks for medium M / small N), which _mma_run splits
    along K where even they leave SMs idle (_split_k).
    """
    if M <= 16:
        sms = _device_info(device)[1]
        plan = _gemv_plan(M, N, w_bits, ep, sms=sms)
        if M > 8:
            ln = _gemv_plan(M, N, w_bits, ep, _gemv_block_rows(M, N, sms, lines=True), sms, lines=True)
            return ln if _gemv_lines(plan, ln, device) else plan
        return plan
    bm, bn = _TILE["big"][:2]
    big_enough = -(-M // bm) * -(-N // bn) >= _device_info(device)[1]
    return _tiled_plan("big" if big_enough else "mid", M, N, w_bits, ep)


# Split-K of the mid tiles (quik_gemm_sk_* then quik_splitk_*): where the 64 x 128 tiles leave SMs idle (M = 128
# on N = 4096 / 5120: 64 / 80 blocks, each through the whole K, for 132 SMs), the grid is run `splits` times over
# slices of K, the slices' int32 sums written to a temporary [splits, M, N] and added by a second kernel that
# applies the epilogue (exact: integer sums in any order). The rule (_split_k) aims at 2 blocks per SM in one wave:
# fitted on the H100 (docs/PERF_LOG.md, nineteenth session, s19a, s19b): more slices, or splitting grids of more
# blocks than SMs, took up to x1.57 of the unsplit time (the temporary's traffic and a second wave), while grids of
# 64 - 128 blocks gained x0.64 - 0.93; two slices only from K = 8192 (at K = 4096, M = 256 they took x1.04 - 1.10
# with 4-bit weights, x0.92 with 8-bit ones). GEMM_SPLIT_K (QUIKTOOL_GEMM_SPLIT_K): None = the rule, 1 = never, n > 1 = n slices
# wherever the mid tiles run (A/B runs, tests).
GEMM_SPLIT_K: int | None = _env_int("QUIKTOOL_GEMM_SPLIT_K")
_SPLIT_BLOCKS_PER_SM = 2
_SPLIT_MAX = 8       # slices at most (the temporary is splits x M x N x 4 bytes)
_SPLIT_MIN_KT = 8    # K tiles of 64 codes per slice at least (the 4-stage pipeline fills once per slice)
_SPLIT_TWO_MIN_KT = 128  # two slices only from this many K tiles (K = 8192)


def _split_k(name: str, grid: int, kp: int, dev: int) -> int:
    """Slices of K for the plan (name, grid) of _plan: 1 (no split) unless the mid tiles run; then
    floor(_SPLIT_BLOCKS_PER_SM * SMs / grid), at most _SPLIT_MAX and one per _SPLIT_MIN_KT K tiles, and 1 instead of
    2 below _SPLIT_TWO_MIN_KT K tiles."""
    if not name.startswith("quik_gemm_") or not name.endswith("_mid"):
        return 1
    kt = kp // 64
    if GEMM_SPLIT_K is not None:
        return max(1, min(GEMM_SPLIT_K, kt))
    splits = min(_SPLIT_MAX, kt // _SPLIT_MIN_KT, _SPLIT_BLOCKS_PER_SM * _device_info(dev)[1] // grid)
    return 1 if splits < 2 or (splits == 2 and kt < _SPLIT_TWO_MIN_KT) else splits


def mma_splits(M: int, N: int, kp: int, w_bits: int, dev: int) -> int:
    """Slices of K that quiktool's mma.sync GEMM runs in for M x N x kp (1: not split; the plan of _plan)."""
    name, grid = _plan(M, N, w_bits, "f16", dev)[:2]
    return _split_k(name, grid, kp, dev)


def _mma_run(dev: int, plan: tuple[str, int, int, int], ptrs: tuple[int, int, int], M: int, N: int, kp: int,
             w_bits: int, ep: str, epi: tuple, join: Any = _no_join) -> None:
    """Launch quiktool's mma.sync plan (from _plan) on A, W, out pointers, split along K where _split_k says so.
    join: as _gemm_run's."""
    name, grid, block, smem = plan
    splits = _split_k(name, grid, kp, dev)
    if splits == 1:
        join()
        # the small-M kernel starts early and prefetches its weights while the quantizer runs
        _launch(dev, name, grid, block, _SIG_GEMM, (*ptrs, M, N, kp, *epi), smem, pdl=name.startswith("quik_gemv_"))
    else:
        _split_run(dev, (f"quik_gemm_sk_w{w_bits}_mid", grid * splits, block, smem), ptrs, M, N, kp, splits, ep, epi,
                   pdl=PDL_TILED, join=join)


# The add kernel of split-K: from SPLITK_GROUP_MIN slices (QUIKTOOL_SPLITK_GROUP_MIN; 0: never) quik_splitk_*, which
# loads the slices in groups of 8 before adding them, else quik_splitk_g1_*, one slice at a time (the kernel before
# the twenty-eighth session). The same int32 sums, so the same bits. H200 layer A/B in one process (W4A4 at M = 128 /
# 512 on the 7B / 13B shapes, 0 and 256 outliers; docs/PERF_LOG.md, s28g): x0.971-0.992 of the layer time with 6-8
# slices, x0.989-0.990 with 3, x1.002-1.003 with 4 and x1.012-1.029 with 2.
SPLITK_GROUP_MIN: int = _env_int("QUIKTOOL_SPLITK_GROUP_MIN", 5)


def _splitk_kernel(ep: str, splits: int) -> str:
    """The add kernel of a split-K product in ``splits`` slices with epilogue ``ep`` (SPLITK_GROUP_MIN's rule)."""
    return f"quik_splitk{'' if 0 < SPLITK_GROUP_MIN <= splits else '_g1'}_{ep}"


def _split_run(dev: int, sk: tuple[str, int, int, int], ptrs: tuple[int, int, int], M: int, N: int, kp: int,
               splits: int, ep: str, epi: tuple, pdl: bool = False, join: Any = _no_join) -> None:
    """A split-K product: the slicing kernel sk = (name, grid, block, smem) of quik_gemm_sk_* / quik_wgmma_ws_sk_*
    on (A, W, out) pointers writes int32 sums to a temporary [splits, M, N], quik_splitk_<ep> adds them into out.
    pdl: launch the slicing kernel as a programmatic dependent launch (both slicing kernels wait with
    griddepcontrol.wait before reading A). join: called between the two launches (the epilogue's y_base is being
    made on a side stream, OUTLIER_SIDE)."""
    name, grid, block, smem = sk
    part = _empty(splits, M, N, dtype=torch.int32, device=f"cuda:{dev}")  # every element written
    _launch(dev, name, grid, block, _SIG_SK, (*ptrs[:2], part.data_ptr(), M, N, kp, splits), smem, pdl=pdl)
    join()
    _launch(dev, _splitk_kernel(ep, splits), -(-(M * ((N + 1) // 2)) // 256), 256, _SIG_SKE,
            (part.data_ptr(), ptrs[2], M, N, splits, *epi))


def _epilogue_checks(a_codes: Tensor, a_scale: Tensor, a_zero: Tensor, a_shift: Any, w_scale: Tensor,
                     wsum: Tensor, out_dtype: torch.dtype, out: Tensor | None, M: int, N: int,
                     dev: int) -> tuple[tuple[int, int, int, int], Tensor, int]:
    """Validate the epilogue's operands and the output (allocated when None) -> (pointers of a_scale, a_zero,
    w_scale, wsum), out, out's pointer."""
    if out_dtype not in _OUT_EP:
        raise KernelError(f"out_dtype must be {_dt(list(_OUT_EP))}, got {out_dtype}")
    ptrs = (_check("a_scale", a_scale, (torch.float32,), (M,), dev),
            _check("a_zero", a_zero, (torch.float32,), (M,), dev),
            _check("w_scale", w_scale, (torch.float32,), (N,), dev),
            _check("wsum", wsum, (torch.float32,), (N,), dev))
    if isinstance(a_shift, bool) or not isinstance(a_shift, numbers.Real):
        raise KernelError(f"a_shift must be a number (2^(bits-1)), got {a_shift!r}")
    if out is None:
        out = torch.empty(M, N, dtype=out_dtype, device=a_codes.device)
        return ptrs, out, out.data_ptr()
    return ptrs, out, _check("out", out, (out_dtype,), (M, N), dev, align=16)


def int_gemm(a_codes: Tensor, w: Tensor, w_bits: int, *, out: Tensor | None = None) -> Tensor:
    """acc[m, n] = sum_k a_codes[m, k] * wcode[n, k], exactly, as int32 [M, N] (the debug/exactness path).

    a_codes int8 [M, Kp] (Kp % 64 == 0); w uint8 [N, Kp/2] (w_bits 4) or int8 [N, Kp] (w_bits 8).
    """
    M, N, kp, w_bits, dev, a_ptr, w_ptr = _gemm_checks(a_codes, w, w_bits)
    if out is None:
        out = torch.empty(M, N, dtype=torch.int32, device=a_codes.device)
        o_ptr = out.data_ptr()
    else:
        o_ptr = _check("out", out, (torch.int32,), (M, N), dev, align=16)
    if M and N:
        if _wgmma_ok(M, N, kp, w_bits, dev):
            _wgmma_run(dev, w, w_bits, (a_ptr, o_ptr), M, N, kp, "i32", (0, 0, 0.0, 0, 0, 0))
        else:
            _mma_run(dev, _plan(M, N, w_bits, "i32", dev), (a_ptr, w_ptr, o_ptr), M, N, kp, w_bits, "i32",
                     (0, 0, 0.0, 0, 0, 0))
    return out


def quik_gemm(a_codes: Tensor, w: Tensor, w_bits: int, a_scale: Tensor, a_zero: Tensor, a_shift: int,
              w_scale: Tensor, wsum: Tensor, y_base: Tensor | None, out_dtype: torch.dtype, *,
              out: Tensor | None = None) -> Tensor:
    """Integer GEMM + dequantization epilogue -> [M, N] in ``out_dtype`` (fp16 or bf16; computed in fp32).

    out = acc * (a_scale[m] * w_scale[n]) + (a_zero[m] + a_shift * a_scale[m]) * wsum[n] + y_base[m, n],
    bit-identical to reference.quik_gemm. a_codes int8 [M, Kp]; w as in int_gemm; a_scale, a_zero fp32
    [M]; w_scale, wsum fp32 [N]; y_base None or out_dtype [M, N]. a_shift = 2^(bits-1) of the codes.

    Kernel choice (gemm_path): at large M (enough tokens and LIB_MIN_MACS multiply-adds) the integer
    product runs in cuBLASLt: W4A4 (a_shift 8: codes in [-8, 7]) on the FP8 tensor cores with e4m3 copies
    of the codes (exact fp32 sums), W4A8 / W8A8 on the INT8 ones (torch._int_mm, int32 sums); weight
    codes unpacked per call by our kernel, then our epilogue kernel. Otherwise our mma.sync kernels with
    the epilogue fused (see _plan).
    """
    M, N, kp, w_bits, dev, a_ptr, w_ptr = _gemm_checks(a_codes, w, w_bits)
    ptrs, out, o_ptr = _epilogue_checks(a_codes, a_scale, a_zero, a_shift, w_scale, wsum, out_dtype, out, M, N, dev)
    y_p = 0 if y_base is None else _check("y_base", y_base, (out_dtype,), (M, N), dev, align=16)
    return _gemm_run(a_codes, w, w_bits, N, kp, dev, (*ptrs[:2], float(a_shift), *ptrs[2:], y_p), out_dtype, out)[0]


def _gemm_run(a_codes: Tensor, w: Tensor, w_bits: int, N: int, kp: int, dev: int, epi: tuple, out_dtype: torch.dtype,
              out: Tensor | None, seg: int = 0, wide: Tensor | None = None,
              path: str | None = None, join: Any = _no_join) -> tuple[Tensor, str]:
    """quik_gemm after its checks: epi = the epilogue's (a_scale, a_zero pointers, a_shift as a float, w_scale,
    wsum, y_base pointers (0: none)); out None (allocated here) or checked. -> (out, the path that ran, "" for
    an empty product). seg > 0 (a multiple of 256 dividing N): where the wgmma kernel runs, out holds N / seg
    blocks of [M, seg] instead of [M, N] (quik_wgmma.cu, seg). wide: w already widened to int8 [N, Kp] by the
    caller (where _widen_planned said so), for _wgmma_weights. path: gemm_path's answer when the caller has it.
    join: called once before the first kernel that reads epi's y_base (PreparedLinear.run, OUTLIER_SIDE)."""
    M = a_codes.shape[0]
    if out is None:
        out = _empty(M, N, dtype=out_dtype, device=a_codes.device)
    if not (M and N):
        join()
        return out, ""
    a_ptr, w_ptr, o_ptr = a_codes.data_ptr(), w.data_ptr(), out.data_ptr()
    path = path or gemm_path(M, N, kp, w_bits, epi[2], dev)
    if path == "wgmma":
        if _wgmma_run(dev, w, w_bits, (a_ptr, o_ptr), M, N, kp, _OUT_EP[out_dtype], epi, seg, wide, join):
            path = "wgmma-sk"  # split along K: out is [M, N], not the blocked layout
    elif path != "mma":
        acc = _library_int_gemm(path, a_codes, w, w_bits, N, kp, dev)     # [M, N] fp32 or int32, exact
        kind = "f32" if path == "fp8" else "i32"
        join()
        _launch(dev, f"quik_epilogue_{kind}acc_{_OUT_EP[out_dtype]}", -(-(M * ((N + 1) // 2)) // 256), 256,
                _SIG_EPI, (acc.data_ptr(), o_ptr, M, N, *epi))
    else:
        ep = _OUT_EP[out_dtype]
        _mma_run(dev, _plan(M, N, w_bits, ep, dev), (a_ptr, w_ptr, o_ptr), M, N, kp, w_bits, ep, epi, join)
    return out, path


_GEMVO_M = 16                # the fused kernels' most tokens per launch (kernels/quik_gemm.cu, quik_gemvo_*)
# Dynamic shared memory allowed to quik_gemvo_* (+ <= 34 KiB static: red of the 16-token 64-row kernels; the
# kernel attribute is set to it at load, which also sets the SM's shared-memory carve-out), and the most the
# launcher asks for before it stages the weight tile in chunks (only for thousands of outlier columns).
# QUIKTOOL_GEMVO_SMEM_MAX (bytes) lowers both, for A/B runs.
_GEMVO_SMEM_MAX: int = _env_int("QUIKTOOL_GEMVO_SMEM_MAX", 192 << 10)
_GEMVO_SMEM_WANT = min(96 << 10, _GEMVO_SMEM_MAX)


def _gemvo_smem(rows: int, M: int, n_out: int, chunk: int) -> int:
    """Dynamic shared memory of quik_gemvo_*: the weight tile [rows, 2 * chunk + 16 bytes] + x values [M, n_out]
    16-bit (quik_gemm.cu, OutlierProduct)."""
    return rows * (2 * chunk + 16) + 2 * M * n_out


def _gemvo_chunk(rows: int, M: int, n_out: int) -> int | None:
    """Outlier columns per staged tile chunk: all of them when that fits _GEMVO_SMEM_WANT, else the most that
    do (a multiple of 8; at least 8 within _GEMVO_SMEM_MAX); None when not even that fits."""
    if _gemvo_smem(rows, M, n_out, n_out) <= _GEMVO_SMEM_WANT or n_out <= 8:
        return n_out if _gemvo_smem(rows, M, n_out, n_out) <= _GEMVO_SMEM_MAX else None
    chunk = (_GEMVO_SMEM_WANT - 2 * M * n_out - 16 * rows) // (2 * rows) // 8 * 8
    chunk = max(chunk, 8)
    return chunk if _gemvo_smem(rows, M, n_out, chunk) <= _GEMVO_SMEM_MAX else None


def _gemvo_plan(M: int, N: int, w_bits: int, ep: str, n_out: int, sms: int,
                lines: bool) -> tuple[str, int, int, int, int]:
    """The outlier-fused small-M kernel (quik_gemvo_*, whole-line loads when ``lines`` and M > 8) ->
    (name, grid, block, dynamic smem, outlier columns per staged chunk)."""
    rows = _gemv_block_rows(M, N, sms, lines)
    name, grid, block, _ = _gemv_plan(M, N, w_bits, ep, rows=rows, lines=lines)
    chunk = _gemvo_chunk(rows, M, n_out)
    return name.replace("quik_gemv_", "quik_gemvo_"), grid, block, _gemvo_smem(rows, M, n_out, chunk), chunk


def quik_gemm_outliers(a_codes: Tensor, w: Tensor, w_bits: int, a_scale: Tensor, a_zero: Tensor, a_shift: int,
                       w_scale: Tensor, wsum: Tensor, x_outlier: Tensor, outlier_weight: Tensor,
                       bias: Tensor | None, out_dtype: torch.dtype, *, out: Tensor | None = None) -> Tensor:
    """quik_gemm with the outlier product fused (bit-identical to reference.quik_gemm_outliers): y_base =
    reference.outlier_sum(x_outlier, outlier_weight, bias), computed by the small-M kernel itself
    (quik_gemvo_*); any M, in launches of up to 16 tokens.

    a_codes .. wsum as in quik_gemm; x_outlier [M, n_out] (the quantizer's), outlier_weight [N, n_out] and
    bias [N] (or None) in out_dtype (fp16 / bf16). Started as a programmatic dependent launch of the
    preceding kernel (the quantizer): only the weights are read before waiting for it.
    """
    M, N, kp, w_bits, dev, a_ptr, w_ptr = _gemm_checks(a_codes, w, w_bits)
    _, out, _ = _epilogue_checks(a_codes, a_scale, a_zero, a_shift, w_scale, wsum, out_dtype, out, M, N, dev)
    _check("x_outlier", x_outlier, (out_dtype,), (M, None), dev)
    _check("outlier_weight", outlier_weight, (out_dtype,), (N, x_outlier.shape[1]), dev)
    if bias is not None:
        _check("bias", bias, (out_dtype,), (N,), dev)
    return _gemmo_run(a_codes, w, w_bits, a_scale, a_zero, a_shift, w_scale, wsum, x_outlier, outlier_weight, bias,
                      out_dtype, out, dev)


def _gemmo_run(a_codes: Tensor, w: Tensor, w_bits: int, a_scale: Tensor, a_zero: Tensor, a_shift: int,
               w_scale: Tensor, wsum: Tensor, x_outlier: Tensor, outlier_weight: Tensor, bias: Tensor | None,
               out_dtype: torch.dtype, out: Tensor | None, dev: int) -> Tensor:
    """quik_gemm_outliers after its checks; out None (allocated here) or checked."""
    (M, kp), N, n_out = a_codes.shape, w.shape[0], x_outlier.shape[1]
    if out is None:
        out = _empty(M, N, dtype=out_dtype, device=a_codes.device)
    ep = _OUT_EP[out_dtype]
    if _gemvo_chunk(64, _GEMVO_M, n_out) is None:  # > ~12000 outlier columns: torch ops, same bits
        _unplannable()
        log.warning("quik_gemm_outliers: %d outlier columns exceed the fused kernel's shared memory; using the "
                    "torch reference ops (slow)", n_out)
        return out.copy_(_ref.quik_gemm_outliers(a_codes, w, w_bits, a_scale, a_zero, a_shift, w_scale, wsum,
                                                 x_outlier, outlier_weight, bias, out_dtype))
    a_ptr, w_ptr, o_ptr, xo_ptr = a_codes.data_ptr(), w.data_ptr(), out.data_ptr(), x_outlier.data_ptr()
    a_scale_p, a_zero_p, w_scale_p, wsum_p = a_scale.data_ptr(), a_zero.data_ptr(), w_scale.data_ptr(), wsum.data_ptr()
    wo_ptr, b_ptr = outlier_weight.data_ptr(), 0 if bias is None else bias.data_ptr()
    sms = _device_info(dev)[1]
    for m0 in range(0, M if N else 0, _GEMVO_M):  # M <= 16 (decode): one launch
        mc = min(_GEMVO_M, M - m0)
        frag = _gemvo_plan(mc, N, w_bits, ep, n_out, sms, lines=False)
        ln = _gemvo_plan(mc, N, w_bits, ep, n_out, sms, lines=True) if mc > 8 else None
        name, grid, block, smem, chunk = ln if ln and _gemv_lines(frag[:4], ln[:4], dev) else frag
        args = (a_ptr + m0 * kp, w_ptr, o_ptr + m0 * N * out.element_size(), mc, N, kp, a_scale_p + 4 * m0,
                a_zero_p + 4 * m0, float(a_shift), w_scale_p, wsum_p, xo_ptr + m0 * n_out * x_outlier.element_size(),
                wo_ptr, n_out, chunk, b_ptr)
        _launch(dev, name, grid, block, _SIG_GEMVO, args, smem, pdl=True)
    return out


# ---------------------------------------------------------------------------------------------------
# The library paths of quik_gemm at large M: cuBLASLt's FP8 / INT8 GEMMs (kernels/quik_gemm.cu, end)
# ---------------------------------------------------------------------------------------------------
# A GEMM goes through a library path when it has at least LIB_MIN_MACS multiply-adds (M * N * Kp) and at
# least the path's minimum token count; below, quiktool's own mma.sync kernels are faster, because the
# weight unpack and the accumulator's round trip through memory are fixed costs. Measured crossover (H200,
# scripts/device_crossover.sh, docs/RESULTS.md): FP8 W4A4 ties mma.sync at M = 256 on 8192 x 28672 and
# 28672 x 8192 and wins from M = 512; INT8 W4A8 loses at M = 256 and wins from 512; on 4096 x 4096
# (8.6e9 MACs at M = 512) mma.sync wins up to M = 512 and loses at M = 2048. FP8 from 512 too since the
# nineteenth session (H100, layer A/B in one process, s19b): at M = 256 the mma.sync kernel took x0.75 / x0.86 of
# the FP8 path's layer time on 8192 x 8192 / 28672 x 8192 (x1.03 on 13824 x 5120); at 512 they tie (11008 x 4096).
# QUIKTOOL_LIB_GEMM_MIN_M (environment) replaces both token minimums (0: never use the library paths),
# QUIKTOOL_LIB_GEMM_MIN_MACS the work minimum; the tests and the crossover script use them.
_PATH_MIN_M = {"fp8": 512, "int8": 512}
LIB_MIN_M: int | None = _env_int("QUIKTOOL_LIB_GEMM_MIN_M")
LIB_MIN_MACS: int = _env_int("QUIKTOOL_LIB_GEMM_MIN_MACS", 1 << 34)
_FP8_MAX_KP = 32768  # |acc| <= 64 * Kp stays far below 2^24, and the per-device proof covers this K


def _min_m(path: str) -> int:
    return _PATH_MIN_M[path] if LIB_MIN_M is None else LIB_MIN_M


def _wgmma_plan(M: int, N: int, ep: str, w_bits: int = 4, blk: bool = False, kp: int = 0,
                bn: int = _WG_BN) -> tuple[str, int, int, int]:
    """quik_wgmma_[ws_[c3_][n<bn>_]|rs_]<ep>_w<bits>[_blk] for M x N x kp -> (name, grid, block, dynamic smem); 1-D
    grid, the kernel rasters it. 4-bit weights from WGMMA_W4_WIDE_MIN_M tokens get an 8-bit entry point (the caller
    widens them first, _wgmma_weights). bn: the warp-specialized kernel's tile width (_wgmma_shape), 256 or one of
    WGMMA_NARROW_BNS; it applies only where that kernel runs (the register-operand and the earlier kernels have
    one tile). c3_: 8-bit weights below WGMMA_W8_DEEP_MAX_M tokens (_w8_deep)."""
    if w_bits == 4 and 0 < WGMMA_W4_WIDE_MIN_M <= M:
        w_bits = 8  # the codes widened to int8 first (_wgmma_weights), then the 8-bit kernel
    if w_bits == 4 and 0 < WGMMA_RS_MIN_M <= M and kp >= WGMMA_RS_MIN_KP:
        family, grid = "rs_", -(-M // _RS_BT) * -(-N // _RS_BW)
    elif WGMMA_WS if w_bits == 8 else WGMMA_WS_W4:
        family = ("ws_c3_" if _w8_deep(M, w_bits) else "ws_") + ("" if bn == _WG_BN else f"n{bn}_")
        grid = -(-M // _WG_BM) * -(-N // bn)
    else:
        family, grid = "", -(-M // _WG_BM) * -(-N // _WG_BN)
    name = f"quik_wgmma_{family}{ep}_w{w_bits}{'_blk' if blk else ''}"
    return (name, grid, *_wgmma_block(name))


# Persistent 8-bit grids (thirtieth session): the unsplit warp-specialized entry points with 8-bit weights
# (wgmma_gemm_ws's PERSIST: 8-bit layers and 4-bit ones widened, i.e. every wgmma layer from 1024 tokens) loop over
# output tiles, so they may run one block per SM instead of one per tile: each block's producer then copies its next
# tile's first K tiles during the epilogue of the last, and no block is launched or fills its pipeline again after
# its first tile. H200 layer A/B in one process against one block per tile (docs/PERF_LOG.md, thirtieth session, s30a;
# same bits): x0.993 on average over the 8-bit kernels' points at M = 512 / 1024 / 2048 (x0.97-1.007; 4096 x 4096
# W4A4 at 2048 1.08x -> 1.10x FP16, W8A8 1.11x -> 1.13x), x0.997 at 8192 (x0.98-1.013); less than the 3-5% predicted
# (the epilogue itself does not overlap the main loop: both consumer warpgroups run it). QUIKTOOL_WGMMA_PERSIST=0:
# one block per tile (each block's loop runs once).
WGMMA_PERSIST: bool = _env_int("QUIKTOOL_WGMMA_PERSIST", 1) != 0
WGMMA_PERSIST_GRID: int | None = None  # tests: this many blocks at most instead of the multiprocessor count


def _persist_grid(dev: int, name: str, tiles: int) -> int:
    """The grid of wgmma entry point ``name`` (an unsplit plan of ``tiles`` output tiles) on ``dev``: one block per
    SM at most where WGMMA_PERSIST and the kernel loops over tiles, else one block per tile."""
    if not (WGMMA_PERSIST and name.startswith("quik_wgmma_ws_") and name.endswith(("_w8", "_w8_blk"))):
        return tiles
    return min(tiles, WGMMA_PERSIST_GRID or _device_info(dev)[1])


def _pdl_unsplit(name: str, plain_weights: bool) -> bool:
    """Whether the unsplit wgmma entry point ``name`` starts as a programmatic dependent launch (PDL_WGMMA_UNSPLIT):
    a warp-specialized kernel (the earlier ones do not wait), its weights not widened just before (plain_weights),
    4-bit ones unless PDL_WGMMA_UNSPLIT_W8."""
    return (PDL_WGMMA_UNSPLIT and plain_weights and name.startswith("quik_wgmma_ws_")
            and ("_w4" in name or PDL_WGMMA_UNSPLIT_W8))


def _w8_deep(M: int, w_bits: int) -> bool:
    """Whether the warp-specialized kernel for M tokens of w_bits weights (8 after any widening) is a deep-copy
    entry point (quik_wgmma_ws_c3_*, WGMMA_W8_DEEP_MAX_M)."""
    return w_bits == 8 and M < WGMMA_W8_DEEP_MAX_M


def _wgmma_run(dev: int, w: Tensor, w_bits: int, ptrs: tuple[int, int], M: int, N: int, kp: int, ep: str,
               epi: tuple, seg: int = 0, wide: Tensor | None = None, join: Any = _no_join) -> bool:
    """Launch the wgmma plan for M x N x kp (A and out pointers in ptrs; seg and join as _gemm_run's), split along
    K where wgmma_splits says so (then out is [M, N] whatever seg asked). -> whether it was split."""
    bn, splits = _wgmma_shape(M, N, kp, w_bits, dev, seg)
    name, grid, block, smem = _wgmma_plan(M, N, ep, w_bits, blk=seg > 0 and splits == 1, kp=kp, bn=bn)
    w_ptr, _w = _wgmma_weights(name, w, w_bits, N, kp, dev, wide)  # _w: keeps widened weights alive until launched
    if splits == 1:
        join()
        args = (ptrs[0], w_ptr, ptrs[1], M, N, kp, *epi, seg)
        _launch(dev, name, _persist_grid(dev, name, grid), block, _SIG_WG, args, smem, pdl=_pdl_unsplit(name, _w is w))
        return False
    cl, tiles = _wgmma_cluster_kernel(name, ep), _wgmma_tiles(M, N, dev)[0]
    if WGMMA_CLUSTER_SPLIT and _cluster_fits(dev, splits, tiles):
        join()  # the epilogue (inside) reads y_base
        block, smem = _wgmma_block(cl)
        _launch(dev, cl, tiles * splits, block, _SIG_WG, (ptrs[0], w_ptr, ptrs[1], M, N, kp, *epi, 0), smem,
                pdl=PDL_WGMMA_SPLIT and _w is w, cluster=splits)
        return True
    sk = _wgmma_split_kernel(name)
    _split_run(dev, (sk, tiles * splits, *_wgmma_block(sk)), (ptrs[0], w_ptr, ptrs[1]), M, N, kp,
               splits, ep, epi, pdl=PDL_WGMMA_SPLIT and _w is w, join=join)  # no PDL after a widening pass (_w)
    return True


# Cluster split-K (quik_wgmma_ws_[c3_]cl_*, twenty-ninth session): a split plan's slices of one tile run as one
# thread-block cluster that adds their sums in distributed shared memory and applies the epilogue itself, instead of
# int32 slices [splits, M, N] through L2 and quik_splitk_* (the slicing kernel and the add kernel). Taken for every
# split plan whose clusters all fit on the GPU at once (_cluster_fits). QUIKTOOL_WGMMA_CLUSTER_SPLIT=0: never (the
# plane kernels; A/B runs).
WGMMA_CLUSTER_SPLIT: bool = _env_int("QUIKTOOL_WGMMA_CLUSTER_SPLIT", 1) != 0
_CLUSTER_MAX = 8  # the portable cluster size
# Fewer slices than the plane plan's (its clusters would not all fit) only while each slice gets at most this many
# more K tiles of 128 bytes: H200 s29f against s28b at M = 128, W4A4 without outliers, x0.88-0.91 with 1.3 more
# (4096 x 4096 8 -> 6 slices, 5120 x 5120 6 -> 5), x0.97-1.00 with 3.6 (11008 x 4096, 13824 x 5120), but x1.01 /
# x0.97 with 5.3 (8192 x 8192 4 -> 3, 4096 x 11008 3 -> 2) and x1.16 with 18.7 (28672 x 8192 4 -> 3): the main loop
# grows with K / slices, the planes' cost does not.
WGMMA_CLUSTER_EXTRA_KT = 4


def _wgmma_cluster_kernel(name: str, ep: str) -> str:
    """The cluster split-K entry point for a plan's entry point ``name`` and epilogue ``ep``: the same weight width
    and copy depth."""
    return f"quik_wgmma_ws_c3_cl_{ep}_w8" if "_c3_" in name else f"quik_wgmma_ws_cl_{ep}_w{8 if '_w8' in name else 4}"


def _cluster_occupancy(dev: int, handles: dict[str, int]) -> dict[int, int]:
    """{cluster size 2 .. _CLUSTER_MAX: how many clusters of that many blocks of the cluster split-K entry points
    (their block and shared memory; the fewest over them) ``dev`` runs at once}, from cuOccupancyMaxActiveClusters
    (0 where the driver cannot say). Asked once when the wgmma kernels load, outside any graph capture. H200: 66,
    39, 30, 22, 17, 15, 15 for 2 .. 8 (s29b; a cluster's blocks share a GPC, one block per SM)."""
    try:
        occ = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveClusters
    except (OSError, AttributeError):
        return {}
    occ.restype = ctypes.c_int
    occ.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.POINTER(_LaunchConfig)]
    counts = {}
    for name in (n for n in handles if "_cl_" in n):
        block, smem = _wgmma_block(name)
        for cluster in range(2, _CLUSTER_MAX + 1):
            ex = _launch_ex(False, cluster)
            if ex is None:
                return {}
            cfg = _LaunchConfig(cluster * _device_info(dev)[1], 1, 1, block, 1, 1, smem, None, ex[1], ex[2])
            count = ctypes.c_int(0)
            rc = occ(ctypes.byref(count), handles[name], ctypes.byref(cfg))
            counts[cluster] = min(counts.get(cluster, 1 << 30), count.value if rc == 0 else 0)
    return counts


def _max_clusters(dev: int, cluster: int) -> int:
    """How many clusters of ``cluster`` blocks of the cluster split-K kernels ``dev`` runs at once (0: unknown)."""
    return _CLUSTERS.get(dev, {}).get(cluster, 0)


def _cluster_fits(dev: int, splits: int, tiles: int) -> bool:
    """Whether ``tiles`` clusters of ``splits`` blocks run in one wave on ``dev`` (else the plane kernels run)."""
    return 2 <= splits <= _CLUSTER_MAX and tiles <= _max_clusters(dev, splits)


def _wgmma_split_kernel(name: str) -> str:
    """The split-K entry point for a plan's entry point ``name``: the same weight width and copy depth."""
    return "quik_wgmma_ws_c3_sk_w8" if "_c3_" in name else f"quik_wgmma_ws_sk_w{8 if '_w8' in name else 4}"


def _wgmma_weights(name: str, w: Tensor, w_bits: int, N: int, kp: int, dev: int,
                   wide: Tensor | None = None) -> tuple[int, Tensor]:
    """The weight pointer for the wgmma entry point ``name`` (from _wgmma_plan) -> (pointer, the tensor behind
    it, to keep alive until the launch): w itself, or for 4-bit weights planned on an 8-bit kernel their codes
    widened to int8 [N, Kp] (row-major, as 8-bit weights are held): ``wide`` where the caller already widened
    them (PreparedLinear.run, on its side stream), else widened here."""
    if w_bits == 4 and "_w8" in name:
        w8 = wide if wide is not None else _unpack_w4(w, _luts(dev)[1], N, kp, dev)
        return w8.data_ptr(), w8
    return w.data_ptr(), w


def _widen_planned(M: int, w_bits: int, path: str) -> bool:
    """Whether _gemm_run will run 4-bit weights widened to int8, given the layer's gemm_path: the wgmma path from
    WGMMA_W4_WIDE_MIN_M tokens, where _wgmma_plan always plans an 8-bit entry point."""
    return w_bits == 4 and 0 < WGMMA_W4_WIDE_MIN_M <= M and path == "wgmma"


def _wgmma_block(name: str) -> tuple[int, int]:
    """(block threads, dynamic shared memory) of a quik_wgmma_* entry point, by its family and weight width: the
    one mapping that both the loader (which sets each kernel's shared-memory limit) and _wgmma_plan use."""
    if "_rs_" in name:
        return _RS_THREADS, _RS_SMEM
    if "_ws_" in name:
        return _WS_THREADS, _WS_SMEM
    return _WG_THREADS, _WG_SMEM_W8 if "_w8" in name else _WG_SMEM


# Split-K on the wgmma kernel (quik_wgmma_ws_sk_w*, then quik_gemm.cu's quik_splitk_*): a GEMM with fewer 128 x 256
# tiles than the rule above asks for, but at least WGMMA_SPLIT_MIN_TILES (QUIKTOOL_WGMMA_SPLIT_MIN_TILES; 0: never),
# runs on the wgmma kernel in floor(SMs / tiles) slices of K (one wave of blocks, at most _WGMMA_SPLIT_MAX, slices
# of >= 8 K tiles of 128 bytes), the slices' int32 sums added by a second kernel that applies the epilogue (exact).
# The warp-specialized kernel's family only, and the plain [M, N] layout (fused groups get no blocked layout then).
# 8-bit weights from WGMMA_SPLIT_W8_MIN_M tokens. H100, layer A/B in one process (docs/PERF_LOG.md, nineteenth
# session, s19f / s19g), against the paths taken before (mma.sync with or without split-K, cuBLASLt FP8 / INT8):
# 4-bit weights x0.59-0.94 on 10 of the 12 points at M = 128 / 256 / 512 whose path changes (28672 x 8192 at
# M = 128: 1.30x -> 2.06x FP16), x1.03-1.06 on 4096 x 4096 at M = 256, x0.97-1.00 at 512; 8-bit weights x0.61-0.97
# at M = 256 / 512 but x1.01-1.05 at M = 128 (three points). Slices of >= 16 K tiles instead of 8 were slower or equal (s19g).
WGMMA_SPLIT_MIN_TILES: int = _env_int("QUIKTOOL_WGMMA_SPLIT_MIN_TILES", 32)
WGMMA_SPLIT_W8_MIN_M = 256
_WGMMA_SPLIT_MAX = 4
_WGMMA_SPLIT_MIN_KT = 8  # K tiles of 128 bytes per slice at least
# Fewer tiles still (one row of 128 x 256 tiles on an output narrower than 8192: 128 tokens on the 7B / 13B shapes,
# 16-20 tiles), 4-bit weights: from WGMMA_FEW_SPLIT_MIN_TILES tiles (QUIKTOOL_WGMMA_FEW_SPLIT_MIN_TILES; 0: never,
# they stay on the mma.sync split-K kernel, the rule before the twenty-seventh session) floor(SMs / tiles) slices, at
# most 8, of >= 4 K tiles each. H200 layer A/B in one process at M = 128 against the mma.sync split-K kernel
# (docs/PERF_LOG.md, twenty-seventh session, s27i): W4A4 x0.709-0.905 without outliers on 4096 x 4096, 5120 x 5120,
# 11008 x 4096, 13824 x 5120 (11008 x 4096 0.88x -> 1.10x FP16, 13824 x 5120 0.91x -> 1.28x), x0.752-0.929 with 256
# outliers and x1.011 on 4096 x 4096 (7 slices of 30 K tiles); at most 4 slices of >= 8 K tiles gained less
# (x0.810-0.952). Not measured on an H100 (none lent): the same SMs, clocks and tensor cores, slower memory.
WGMMA_FEW_SPLIT_MIN_TILES: int = _env_int("QUIKTOOL_WGMMA_FEW_SPLIT_MIN_TILES", 16)
_WGMMA_FEW_SPLIT_MAX = 8
_WGMMA_FEW_SPLIT_MIN_KT = 4


def _wgmma_tiles(M: int, N: int, dev: int) -> tuple[int, int]:
    """(128 x 256 output tiles of M x N, the fewest the wgmma rule takes unsplit on ``dev``)."""
    min_tiles = (math.ceil(WGMMA_MIN_TILE_SHARE * _device_info(dev)[1]) if WGMMA_MIN_TILES is None
                 else WGMMA_MIN_TILES)
    return -(-M // _WG_BM) * -(-N // _WG_BN), min_tiles


def wgmma_splits(M: int, N: int, kp: int, w_bits: int, dev: int) -> int:
    """Slices of K the wgmma kernel runs in for M x N x kp where gemm_path says 'wgmma' (1: not split)."""
    return _wgmma_shape(M, N, kp, w_bits, dev)[1]


def _split_rule(M: int, N: int, kp: int, w_bits: int, dev: int) -> int:
    """The split-K rule on 128 x 256 tiles (above): slices of K, 1 where it does not split."""
    tiles, min_tiles = _wgmma_tiles(M, N, dev)
    if tiles >= min_tiles or WGMMA_SPLIT_MIN_TILES <= 0 or (w_bits == 8 and M < WGMMA_SPLIT_W8_MIN_M):
        return 1
    if tiles >= WGMMA_SPLIT_MIN_TILES:
        most, min_kt = _WGMMA_SPLIT_MAX, _WGMMA_SPLIT_MIN_KT
    elif w_bits == 4 and 0 < WGMMA_FEW_SPLIT_MIN_TILES <= tiles:
        most, min_kt = _WGMMA_FEW_SPLIT_MAX, _WGMMA_FEW_SPLIT_MIN_KT
    else:
        return 1
    splits = min(_device_info(dev)[1] // tiles, most, -(-kp // 128) // min_kt)
    if WGMMA_CLUSTER_SPLIT and splits >= 2:  # the most slices whose clusters all fit at once, if any (_cluster_split)
        kt = -(-kp // 128)
        splits = next((s for s in range(splits, 1, -1) if _cluster_fits(dev, s, tiles)
                       and kt / s - kt / splits <= WGMMA_CLUSTER_EXTRA_KT), splits)
    return splits if splits >= 2 else 1


# Narrower tiles (quik_wgmma_ws_n<BN>_*, twenty-first session): the warp-specialized kernel on 128 x BN tiles, BN in
# WGMMA_NARROW_BNS, where 128 x 256 tiles leave SMs idle in their last wave (80 tiles of a 5120-wide output at 512
# tokens: one wave on 80 of 132 SMs; 128 tiles of 160 rows: one wave on 128). The model: a wave takes about the same
# time whatever its block count (at M = 512 on the H100, 4-bit weights: 47.1 / 49.5 / 51.7 us for 40 / 80 / 132
# blocks of 128 x 256 x 5120; 8-bit 34.7 / 39.7 / 47.0 us; scripts/device_sm_scaling.py, s21a), and a block's K tile
# costs BN + WGMMA_TILE_FIXED weight rows' worth of time (the activation tile's copy, the barriers, the wgmma issue
# do not shrink with BN): fitted to s21b, where 128-row tiles took x1.02-1.35 of a two- or four-slice split-K plan's
# time at M = 256 / 512 (4-bit weights), a 128 x 176 grid x1.04-1.06 of 256-wide tiles on 8192 x 28672 at M = 512,
# and the predicted wins came out smaller than waves x BN said (x0.84-0.98). A narrow width replaces 256 when its
# waves x (BN + fixed) is at most WGMMA_NARROW_GAIN of 256's; never a split-K plan (128 x 128 tiles against two
# slices: x1.02-1.35, s21b; that width was removed), nor a fused group's blocked output (seg: no such entry point).
# QUIKTOOL_WGMMA_BN: 256 = never narrow (A/B runs); a width of WGMMA_NARROW_BNS = that one wherever the rule's tile
# count allows, split plans and blocked outputs aside (tests).
WGMMA_NARROW_BNS: tuple[int, ...] = (224, 176, 160)
WGMMA_BN: int | None = _env_int("QUIKTOOL_WGMMA_BN")
WGMMA_NARROW_GAIN = 0.95
WGMMA_TILE_FIXED = 200


def _wgmma_shape(M: int, N: int, kp: int, w_bits: int, dev: int, seg: int = 0) -> tuple[int, int]:
    """(tile width, slices of K) of the wgmma kernel for M x N x kp where gemm_path says 'wgmma': 256 with the
    split-K rule's slices, or a narrower width unsplit. seg > 0: the caller asks for blocked outputs (256 only)."""
    if WGMMA_BN not in (None, _WG_BN, *WGMMA_NARROW_BNS):
        raise KernelError(f"QUIKTOOL_WGMMA_BN={WGMMA_BN} is not accepted; use 256 (never narrow), one of "
                          f"{', '.join(map(str, sorted(WGMMA_NARROW_BNS)))} (that width) or leave it unset (the rule)")
    splits = _split_rule(M, N, kp, w_bits, dev)
    if seg > 0 or WGMMA_BN == _WG_BN or (splits > 1 and WGMMA_BN is None):
        return _WG_BN, splits
    sms, min_tiles = _device_info(dev)[1], _wgmma_tiles(M, N, dev)[1]
    m_tiles = -(-M // _WG_BM)

    def cost(bn: int) -> int:  # waves x the time of a block's K tile, in weight rows
        return -(-m_tiles * -(-N // bn) // sms) * (bn + WGMMA_TILE_FIXED)

    best, base = (_WG_BN, splits), WGMMA_NARROW_GAIN * cost(_WG_BN)
    for bn in WGMMA_NARROW_BNS if WGMMA_BN is None else (WGMMA_BN,):
        if m_tiles * -(-N // bn) >= min_tiles and (WGMMA_BN is not None or cost(bn) <= base):
            best, base = (bn, 1), cost(bn) - 1  # a later (narrower) width must be strictly cheaper
    return best


def _wgmma_ok(M: int, N: int, kp: int, w_bits: int, dev: int) -> bool:
    """4-bit weights (8-bit ones where WGMMA_W8), at least WGMMA_MIN_M tokens (0: never) and WGMMA_MIN_TILES
    output tiles (or fewer, split along K: wgmma_splits), and the sm_90a kernel loaded on ``dev`` (its first load
    is a build or a disk read plus a module load: never inside a CUDA graph capture)."""
    if (w_bits != 4 and not (w_bits == 8 and WGMMA_W8)) or WGMMA_MIN_M <= 0 or M < max(WGMMA_MIN_M, 17):
        return False
    tiles, min_tiles = _wgmma_tiles(M, N, dev)
    if tiles < min_tiles and _split_rule(M, N, kp, w_bits, dev) == 1:
        return False
    if dev not in _WGMMA and torch.cuda.is_current_stream_capturing():
        return False
    return _wgmma_kernels(dev) is not None


def gemm_path(M: int, N: int, kp: int, w_bits: int, a_shift: Any, dev: int) -> str:
    """Which integer GEMM quik_gemm runs: 'wgmma' (4- or 8-bit weights, any activation bits: quik_wgmma.cu,
    sm_90), 'fp8' (W4A4, cuBLASLt FP8), 'int8' (W4A8 / W8A8, cuBLASLt INT8, torch._int_mm) or 'mma' (quiktool's
    mma.sync kernels). wgmma and mma fuse the epilogue."""
    rule = WGMMA_FP8_FIRST
    fp8_first = (rule is not None and a_shift == 8 and M >= rule[0]
                 and ((N >= rule[1] and kp >= (rule[3] if len(rule) > 3 else 0)) or kp >= rule[2]))
    if _wgmma_ok(M, N, kp, w_bits, dev) and not (fp8_first and _fp8_applies(M, N, kp, w_bits, dev)):
        return "wgmma"
    if LIB_MIN_M == 0 or M * N * kp < LIB_MIN_MACS:
        return "mma"
    if dev not in _LUTS and torch.cuda.is_current_stream_capturing():
        return "mma"  # first use inside a CUDA graph capture: the one-time setup cannot run there
    if a_shift == 8:
        return "fp8" if _fp8_applies(M, N, kp, w_bits, dev) else "mma"
    if M >= max(_min_m("int8"), 17) and N % 8 == 0 and hasattr(torch, "_int_mm"):
        return "int8"
    return "mma"


def _fp8_applies(M: int, N: int, kp: int, w_bits: int, dev: int) -> bool:
    """The FP8 path's own conditions (W4A4 is the caller's): enough tokens and work, shapes cuBLASLt takes,
    K within the exactness proof, the proof passed on this device."""
    if LIB_MIN_M == 0 or M * N * kp < LIB_MIN_MACS or M < _min_m("fp8"):
        return False
    if dev not in _LUTS and torch.cuda.is_current_stream_capturing():
        return False
    return w_bits == 4 and N % 16 == 0 and kp <= _FP8_MAX_KP and fp8_exact_on(dev)


_LUTS: dict[int, tuple[Tensor, Tensor, Tensor]] = {}


def _luts(dev: int) -> tuple[Tensor, Tensor, Tensor]:
    """(e4m3 byte of each nibble's code, in torch's encoding; int8 byte of each nibble's code; fp32 1.0),
    built once per device (host-to-device copies: not inside a CUDA graph capture, see gemm_path)."""
    if dev not in _LUTS:
        codes = torch.tensor(list(range(8)) + list(range(-8, 0)), dtype=torch.int8)
        d = f"cuda:{dev}"
        _LUTS[dev] = (codes.to(torch.float8_e4m3fn).view(torch.uint8).to(d), codes.view(torch.uint8).to(d),
                      torch.ones((), dtype=torch.float32, device=d))
    return _LUTS[dev]


def _unpack_w4(w: Tensor, lut: Tensor, N: int, kp: int, dev: int) -> Tensor:
    """uint8 [N, Kp/2] packed codes (the tiled layout, reference.tile_w4) -> uint8 [N, Kp] row-major, one lut
    byte per code."""
    out = _empty(N, kp, dtype=torch.uint8, device=w.device)
    blocks = -(-N // 8) * -(-(kp // 32) // 32)  # per 8-row group: its 8 x Kp / 32 16-byte vectors, 256 per block
    _launch(dev, "quik_unpack_w4_lut", blocks, 256, _SIG_UNPACK, (w.data_ptr(), out.data_ptr(), lut.data_ptr(), N,
                                                                  kp // 2))
    return out


def _library_int_gemm(path: str, a_codes: Tensor, w: Tensor, w_bits: int, N: int, kp: int, dev: int) -> Tensor:
    """acc [M, N] = a_codes [M, Kp] x w [N, Kp]^T through cuBLASLt: fp32 (path 'fp8') or int32 ('int8')."""
    _unplannable()  # torch / cuBLASLt ops
    e4m3_lut, int8_lut, one = _luts(dev)
    if path == "fp8":
        we = _unpack_w4(w, e4m3_lut, N, kp, dev).view(torch.float8_e4m3fn)   # [N, Kp]
        a8 = a_codes.to(torch.float8_e4m3fn)                                     # [M, Kp], exact for [-8, 7]
        acc = torch._scaled_mm(a8, we.t(), scale_a=one, scale_b=one, out_dtype=torch.float32,
                               use_fast_accum=False)                             # [M, N]
    else:
        wi = _unpack_w4(w, int8_lut, N, kp, dev).view(torch.int8) if w_bits == 4 else w   # [N, Kp]
        acc = torch._int_mm(a_codes, wi.t())                                     # [M, N] int32
    return acc if acc.is_contiguous() else acc.contiguous()                      # the epilogue reads row-major


_FP8_PROOF: dict[int, bool] = {}


def fp8_exact_on(dev: int) -> bool:
    """Prove, once per device and process, that the FP8 path returns exact integer sums.

    The e4m3 values and products are exact; what is not documented is whether the library keeps every
    bit while accumulating (Hopper's FP8 MMA accumulates with reduced precision internally; cuBLASLt
    promotes to fp32 when use_fast_accum=False). Adversarial rows (all products 64, 64 then 1, large
    then small, small then large, mixed signs) at the largest K of the path decide; any mismatch, or a
    torch without FP8 support, turns the path off with a warning, and the mma.sync kernels do the work.
    """
    if dev not in _FP8_PROOF:
        if torch.cuda.is_current_stream_capturing():
            return False  # not provable inside a CUDA graph capture; asked again later
        _FP8_PROOF[dev] = _fp8_prove(dev)
    return _FP8_PROOF[dev]


def _fp8_prove(dev: int) -> bool:
    if torch.cuda.get_device_capability(dev) < (8, 9) or not hasattr(torch, "_scaled_mm"):
        return False
    try:
        M = N = 128
        K = _FP8_MAX_KP
        g = torch.Generator(device=f"cuda:{dev}").manual_seed(0x5EED)
        a = torch.randint(-8, 8, (M, K), generator=g, device=f"cuda:{dev}", dtype=torch.int8)
        c = torch.randint(-8, 8, (N, K), generator=g, device=f"cuda:{dev}", dtype=torch.int8)
        half, alt = K // 2, torch.arange(K, device=f"cuda:{dev}") % 2 == 0
        big = torch.full((K,), -8, dtype=torch.int8, device=f"cuda:{dev}")
        one = torch.ones_like(big[:half])
        patterns = [big, torch.where(alt, big, 1), torch.cat([big[:half], one]), torch.cat([one, big[half:]]),
                    torch.where(alt, big, 7)]
        for i, p in enumerate(patterns):
            a[i], c[i] = p, p
            a[M - 1 - i], c[N - 1 - i] = p, -p.clamp(min=-7)
        w = prepare_weight(c, 4)
        got = _library_int_gemm("fp8", a, w, 4, N, K, dev)
        ok = torch.equal(got, _ref.int_gemm(a, w, 4).to(torch.float32))
    except Exception as e:  # noqa: BLE001 - any failure means: do not use the path
        log.warning("FP8 path disabled on cuda:%d: %s: %s", dev, type(e).__name__, e)
        return False
    if not ok:
        log.warning("FP8 path disabled on cuda:%d: its integer sums were not exact on adversarial codes", dev)
    return ok
