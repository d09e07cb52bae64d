"""Speed benchmarks: one QUIK layer against cuBLAS and the Hopper peers, and a whole LLaMA model.

``bench_layer`` times ``QuikLinear.forward`` (activation quantization + integer GEMM + outlier GEMM
+ epilogue, the layer as a user calls it) against ``F.linear`` in FP16/BF16 (cuBLAS) on the same
random input, for LLaMA-2 linear shapes K x N (in_features x out_features) and token counts M:

    x [M, K] fp16  ->  QuikLinear  ->  y [M, N] fp16        vs   F.linear(x, W16 [N, K])

and, on CUDA, the peers a Hopper user would pick instead (REFERENCE.md section 3):
    FP8 W8A8 rowwise  torch._scaled_mm(x_e4m3 [M, K], W_e4m3 [N, K]^T, s_x fp32 [M, 1], s_w fp32 [1, N])
    W4A16 tinygemm    torch.ops.aten._weight_int4pack_mm(x bf16 [M, K], W int4-packed, 128, scale+zero [K/128, N, 2])
Both peers are timed as their GEMM alone (activations already in FP8 / BF16): that favours them,
since the QUIK time includes its own activation quantization. It also splits the QUIK time into the
stages that ``QuikLinear.forward`` runs, by calling the backend functions the same way.

``bench_model`` builds a LlamaForCausalLM with random weights directly on the device and measures
prefill (batch x seqlen tokens), greedy decode with the KV cache (batch 1, HF ``generate``), weight
memory, peak memory and checkpoint size, for FP16 and QUIK variants (RTN + random outliers).

Timing (``Timer``): CUDA events around every single call, a warm-up first, the median of many runs;
before each run an L2-sized buffer is overwritten (the weights of a real model are not in L2 when a
layer starts) and the GPU is given a head start (a spin of at least twice the host's time of one call) so the
measured span is device time, not the host's launch latency (the model benchmark includes that latency, as a
user sees it). Inputs are
random normal (never zeros) and rotate among a few buffers. On CPU: ``time.perf_counter``.
``bench_layer`` times FP16 and the QUIK layers of one shape and M in ``rounds`` alternating rounds (FP16 first in
even rounds, last in odd ones; each round one Timer point per layer) and reports the median over rounds: the
H100 runs at its power cap under these loads, and its SM clock, hence FP16's time, depends on what ran just
before (docs/RESULTS.md, twenty-second session: FP16 1.26 ms right after an idle pause, 1.37-1.57 ms in later
rounds on 8192 x 28672 at M = 2048, QUIK 0.72-0.95 ms throughout). With ``rounds=1`` FP16 is timed once, first,
as before that session.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from quiktool.errors import ConfigError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ constants
# LLaMA-2 linear shapes, K x N = in_features x out_features: attention (q/k/v/o), MLP in, MLP out.
LLAMA_SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "llama2-7b": ((4096, 4096), (4096, 11008), (11008, 4096)),
    "llama2-13b": ((5120, 5120), (5120, 13824), (13824, 5120)),
    "llama2-70b": ((8192, 8192), (8192, 28672), (28672, 8192)),
}
DEFAULT_SHAPES = tuple(s for shapes in LLAMA_SHAPES.values() for s in shapes)
DEFAULT_M = (1, 16, 128, 512, 2048, 8192)
SCHEMES = {"w4a4": (4, 4), "w4a8": (4, 8), "w8a8": (8, 8)}  # name -> (weight bits, activation bits)
DEFAULT_OUTLIERS = (0, 256)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

MIN_REPS = 5              # never fewer timed runs than this (unless --reps is smaller)
DEFAULT_ROUNDS = 4        # bench_layer: alternating rounds of FP16 and the QUIK layers (see the module doc)
L2_FALLBACK = 50 << 20    # H100 L2, when the device does not report its own
HEAD_START_CYCLES = 300_000  # ~0.15 ms of GPU spin before each timed call, at least (see Timer)
HEAD_START_HOST_MARGIN = 2.0  # Timer(cover_host=True): the spin also lasts this many times the host's time of a call
SPIN_CYCLES_PER_S = 2.0e9     # torch.cuda._sleep counts SM clock cycles: ~2 GHz on the H100 / H200 (1.98 GHz max)
UNSTEADY = 2.0  # a row whose median is above this many times its fastest run is marked '~' in the table
W4A16_GROUP = 128
W4A16_INNER_K_TILES = 8

# Model presets (LLaMA-2 geometry; "tiny" is for CPU tests). No download: random weights.
ARCHS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1024, max_position_embeddings=2048),
}
MODEL_OUTLIER_NOTE = ("outlier channels: random (one draw per group of layers that read the same input, as QUIK's "
                      "input statistics make them), count from the preset (fraction of in_features)")


# -------------------------------------------------------------------------------------- option parsing
def _items(spec: str | Sequence | None) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    return [str(s).strip() for s in spec]


def parse_shapes(spec: str | Sequence | None) -> list[tuple[int, int]]:
    """'4096x4096,llama2-70b' (KxN pairs or model names), or [(K, N), ...] -> [(K, N), ...] without
    duplicates; None -> every LLaMA-2 shape."""
    if spec is None:
        return list(DEFAULT_SHAPES)
    out: list[tuple[int, int]] = []
    for item in (_items(spec) if isinstance(spec, str) else list(spec)):
        if isinstance(item, (tuple, list)):
            cands = [tuple(item)]
        elif str(item).strip().lower() in LLAMA_SHAPES:
            cands = list(LLAMA_SHAPES[str(item).strip().lower()])
        else:
            parts = str(item).strip().lower().split("x")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ConfigError(f"shape {str(item)!r} is not accepted; use KxN (in_features x out_features, "
                                  f"e.g. 4096x11008) or one of {', '.join(LLAMA_SHAPES)}")
            cands = [tuple(int(p) for p in parts)]
        for c in cands:
            if len(c) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in c):
                raise ConfigError(f"shape {item!r} is not accepted; K and N must be positive integers")
            if c not in out:
                out.append(c)
    if not out:
        raise ConfigError("no shapes given; use e.g. --shapes 4096x4096,8192x28672")
    return out


def parse_ints(spec: str | Sequence | None, name: str, minimum: int, default: Sequence[int]) -> list[int]:
    """'1,16,2048' -> [1, 16, 2048] (each >= ``minimum``, duplicates dropped); None -> ``default``."""
    if spec is None:
        return list(default)
    out: list[int] = []
    for item in _items(spec):
        try:
            v = int(item)
        except ValueError:
            raise ConfigError(f"{name} value {item!r} is not an integer; use e.g. {','.join(map(str, default))}") from None
        if v < minimum:
            raise ConfigError(f"{name}={v} is not accepted; values must be >= {minimum}")
        if v not in out:
            out.append(v)
    if not out:
        raise ConfigError(f"no {name} values given; use e.g. {','.join(map(str, default))}")
    return out


def parse_schemes(spec: str | Sequence | None) -> list[str]:
    if spec is None:
        return list(SCHEMES)
    out: list[str] = []
    for item in _items(spec):
        s = item.lower()
        if s not in SCHEMES:
            raise ConfigError(f"scheme {item!r} is not accepted; use one of {', '.join(SCHEMES)}")
        if s not in out:
            out.append(s)
    if not out:
        raise ConfigError(f"no schemes given; use some of {', '.join(SCHEMES)}")
    return out


def _check_dtype(dtype: str, allowed: Sequence[str]) -> torch.dtype:
    if dtype not in allowed:
        raise ConfigError(f"dtype {dtype!r} is not accepted; use one of {', '.join(allowed)}")
    return DTYPES[dtype]


def resolve_device_backend(device: str, backend: str) -> tuple[torch.device, str]:
    """Check that ``device`` exists and ``backend`` can run there -> (torch.device, 'cuda' | 'torch')."""
    from quiktool.runtime.backends import BACKENDS, resolve_backend

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not accepted; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not accepted; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} needs a CUDA GPU and this machine has none; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not accepted; use one of {', '.join(BACKENDS)}")
    if dev.type == "cpu":
        if backend == "cuda":
            raise ConfigError("backend 'cuda' runs on a GPU; use --device cuda, or --backend torch on the CPU")
        return dev, "torch"
    try:
        return dev, resolve_backend(backend)
    except ImportError as e:  # runtime/cuda.py missing or broken: say so in one line
        raise ConfigError(f"backend {backend!r} cannot be loaded: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Result of timing one callable: median and minimum over ``reps`` runs, in milliseconds; on CUDA also
    ``host_us``, the host's time to enqueue one call (median over the warm-up calls after the first, which
    nothing makes wait for the GPU): what an eager caller pays per call when the GPU is not the bottleneck."""

    ms: float
    min_ms: float
    reps: int
    host_us: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def l2_bytes(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or L2_FALLBACK)


class Timer:
    """Times ``fn(*args[i % len(args)])`` calls; see the module doc for the method.

    reps:        most timed runs per point; fewer when they would exceed ``max_point_s`` (never < MIN_REPS)
    warmup:      most untimed runs first (at least one: kernel compilation, cuBLAS handles, allocator);
                 also capped at a quarter of ``max_point_s``
    flush_l2:    on CUDA, overwrite 4 x L2 bytes before every timed run (layer benchmark); off for
                 whole-model timings, whose weights exceed L2 many times anyway
    cover_host:  on CUDA, make the head start at least HEAD_START_HOST_MARGIN x the host's time of one call
                 (the median over the warm-up calls), so that the host's enqueue ends before the GPU reaches
                 the call; off for whole-model timings, which include the host's latency as a user sees it.
                 Why: eager QUIK layer calls took 56-341 us of host time on the H100 machine (docs/RESULTS.md,
                 twenty-fourth session), at times more than the fixed spin plus the flush (~0.22 ms); a median
                 then measured the host
    """

    def __init__(self, device: torch.device, reps: int, warmup: int, max_point_s: float, flush_l2: bool = True,
                 cover_host: bool = True):
        self.device, self.reps, self.warmup, self.max_point_s = device, reps, warmup, max_point_s
        self.cuda, self.cover_host = device.type == "cuda", cover_host
        self.head_cycles = HEAD_START_CYCLES
        self.flush_buf = None
        if self.cuda and flush_l2:
            self.flush_buf = torch.empty(4 * l2_bytes(device) // 4, dtype=torch.float32, device=device)
        # A GPU spin before each timed call lets the host enqueue the call's kernels while the GPU is
        # busy, so the events measure the kernels back to back rather than the host's launch latency.
        self.head_start = self.cuda and hasattr(torch.cuda, "_sleep")

    def _prepare(self) -> None:
        if self.flush_buf is not None:
            self.flush_buf.zero_()
        if self.head_start:
            torch.cuda._sleep(self.head_cycles)

    def __call__(self, fn: Callable[..., Any], args: Sequence[tuple]) -> Timing:
        if not args:
            raise ValueError("Timer needs at least one argument tuple")
        with torch.cuda.device(self.device) if self.cuda else _nullctx():
            return self._time_cuda(fn, args) if self.cuda else self._time_cpu(fn, args)

    def _n_reps(self, est_s: float) -> int:
        budget = int(self.max_point_s / max(est_s, 1e-7))
        return max(min(self.reps, MIN_REPS), min(self.reps, budget))

    def _time_cpu(self, fn, args) -> Timing:
        n = len(args)
        t0 = time.perf_counter()
        fn(*args[0])
        for i in range(1, self.warmup):
            if time.perf_counter() - t0 > self.max_point_s / 4:
                break
            fn(*args[i % n])
        t = time.perf_counter()
        fn(*args[0])
        reps = self._n_reps(time.perf_counter() - t)
        times = []
        for i in range(reps):
            t = time.perf_counter()
            fn(*args[i % n])
            times.append((time.perf_counter() - t) * 1e3)
        return Timing(statistics.median(times), min(times), reps)

    def _time_cuda(self, fn, args) -> Timing:
        n = len(args)
        t0 = time.perf_counter()
        fn(*args[0])
        torch.cuda.synchronize()
        host = []  # the host's time of each warm-up call (enqueue only: nothing here waits for the GPU)
        for i in range(1, self.warmup):
            if time.perf_counter() - t0 > self.max_point_s / 4:
                break
            t = time.perf_counter()
            fn(*args[i % n])
            host.append(time.perf_counter() - t)
        torch.cuda.synchronize()
        self.head_cycles = HEAD_START_CYCLES
        t = time.perf_counter()  # one run as timed below, for the rep budget (host clock: includes the flush)
        self._prepare()
        t1 = time.perf_counter()
        fn(*args[0])
        host.append(time.perf_counter() - t1)
        torch.cuda.synchronize()
        reps = self._n_reps(time.perf_counter() - t)
        if self.cover_host:
            self.head_cycles = max(HEAD_START_CYCLES,
                                   int(HEAD_START_HOST_MARGIN * statistics.median(host) * SPIN_CYCLES_PER_S))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            self._prepare()
            starts[i].record()
            fn(*args[i % n])
            ends[i].record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        return Timing(statistics.median(times), min(times), reps, statistics.median(host) * 1e6)


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _err_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def _rel_err(y: Tensor, ref: Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------- peers
class _Peer:
    """One peer kernel for one weight: ``prepare(x)`` -> args tuple (untimed), ``run(*args)`` (timed).

    ``_make_peers`` reports a peer as n/a when its operation is missing, refuses the inputs, or
    computes a wrong result (relative error over ``max_err`` against the FP32 product)."""

    name = ""
    max_err = 0.2
    check_rel_err: float | None = None

    def prepare(self, x: Tensor) -> tuple:
        raise NotImplementedError

    def run(self, *args) -> Tensor:
        raise NotImplementedError


class _Fp8Rowwise(_Peer):
    """FP8 e4m3 W8A8 with per-row (activation) and per-output-channel (weight) fp32 scales."""

    name = "fp8"
    max_err = 0.15  # e4m3 keeps 3 mantissa bits: a few percent relative error is expected

    def __init__(self, W: Tensor, out_dtype: torch.dtype):
        f8 = torch.float8_e4m3fn
        self.fmax = torch.finfo(f8).max
        s = (W.abs().amax(dim=1).clamp_min(1e-12) / self.fmax).float()          # [N]
        self.w = (W / s[:, None]).clamp(-self.fmax, self.fmax).to(f8).contiguous()  # [N, K] row-major
        self.w_scale = s[None, :].contiguous()                                    # [1, N]
        self.out_dtype = out_dtype
        self.used_out_dtype = out_dtype

    def prepare(self, x: Tensor) -> tuple:
        s = (x.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / self.fmax)  # [M, 1]
        xq = (x.float() / s).clamp(-self.fmax, self.fmax).to(torch.float8_e4m3fn).contiguous()
        return xq, s.contiguous()

    def run(self, xq: Tensor, xs: Tensor) -> Tensor:
        # mat2 must be column-major: the transpose of the row-major [N, K] weight
        return torch._scaled_mm(xq, self.w.t(), scale_a=xs, scale_b=self.w_scale, out_dtype=self.used_out_dtype)

    def probe(self, x: Tensor) -> None:
        """Pick an output dtype this torch accepts for rowwise scaling (older ones: bf16 only)."""
        args = self.prepare(x)
        try:
            self.run(*args)
        except Exception:
            if self.out_dtype == torch.bfloat16:
                raise
            self.used_out_dtype = torch.bfloat16
            self.run(*args)


class _W4A16Tinygemm(_Peer):
    """torch's int4 weight-only GEMM (tinygemm), group 128, bf16 activations.

    Weights: unsigned codes u = q + 8 in [0, 15], q = clamp(round(w / s), -8, 7), s = max|w| / 7 per
    group of 128 input channels; tinygemm dequantizes (u - 8) * s + zero, zero = 0 here."""

    name = "w4a16"
    max_err = 0.05

    def __init__(self, W: Tensor):
        N, K = W.shape
        g = W.float().reshape(N, K // W4A16_GROUP, W4A16_GROUP)
        s = (g.abs().amax(dim=2) / 7).clamp_min(1e-12)                              # [N, G]
        q = torch.clamp(torch.round(g / s[:, :, None]), -8, 7)
        self.w_deq = (q * s[:, :, None]).reshape(N, K)                              # fp32 [N, K]
        u = (q + 8).to(torch.int32).reshape(N, K)                                  # [N, K] in [0, 15]
        sz = torch.stack([s, torch.zeros_like(s)], dim=2)                           # [N, G, 2]
        self.scale_zeros = sz.transpose(0, 1).contiguous().to(torch.bfloat16)       # [G, N, 2]
        conv = torch.ops.aten._convert_weight_to_int4pack
        try:  # torch >= 2.5: uint8 [N, K/2], even column in the high nibble
            self.w = conv((u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8).contiguous(), W4A16_INNER_K_TILES)
        except Exception as e_new:
            try:  # older torch: int32 [N, K]
                self.w = conv(u.contiguous(), W4A16_INNER_K_TILES)
            except Exception:
                raise e_new from None

    def prepare(self, x: Tensor) -> tuple:
        return (x.to(torch.bfloat16).contiguous(),)

    def run(self, xb: Tensor) -> Tensor:
        return torch.ops.aten._weight_int4pack_mm(xb, self.w, W4A16_GROUP, self.scale_zeros)


def _make_peers(W: Tensor, dtype: torch.dtype, probe_x: Tensor) -> dict[str, _Peer | str]:
    """Build and check each peer for weight W [N, K] (fp32, on the GPU) -> {name: peer or n/a reason}."""
    peers: dict[str, _Peer | str] = {}
    for name, make in (("fp8", lambda: _Fp8Rowwise(W, dtype)), ("w4a16", lambda: _W4A16Tinygemm(W))):
        try:
            p = make()
            if isinstance(p, _Fp8Rowwise):
                p.probe(probe_x)
                ref = probe_x.float() @ W.T
            else:
                ref = probe_x.to(torch.bfloat16).float() @ p.w_deq.T
            y = p.run(*p.prepare(probe_x))
            err = _rel_err(y.float(), ref)
            if not math.isfinite(err) or err > p.max_err:
                raise RuntimeError(f"wrong result: relative error {err:.3g} > {p.max_err}")
            p.check_rel_err = err
            peers[name] = p
        except Exception as e:
            peers[name] = _err_text(e)
            log.warning("peer %s n/a for weight %s: %s", name, tuple(W.shape), peers[name])
    return peers


# ------------------------------------------------------------------------------------------- layer
@dataclass
class _Built:
    """A QUIK layer ready to time, and what the stage timings and the check need."""

    scheme: str
    n_out: int
    layer: Any            # QuikLinear
    codes: Tensor         # int8 [N, Kq] on the device (for the reference check)
    build_s: float


def build_layers(W: Tensor, schemes: Sequence[str], outliers: Sequence[int], dtype: torch.dtype,
                 device: torch.device, backend: str, gen: torch.Generator) -> list[_Built | tuple[str, int, str]]:
    """QuikLinear for each (scheme, outlier count) of W [N, K] (fp32, on ``device``): RTN weights
    (``gptq_quantize(W, None, ...)``) with random outlier channels. One RTN + pack per weight-bit width
    and outlier count, shared by the schemes that use it (W4A4 and W4A8). Failures come back as
    (scheme, n_out, reason) so the rest of the table still runs."""
    from quiktool.algo.gptq import gptq_quantize
    from quiktool.format.layout import PackedLinear
    from quiktool.runtime.quik_linear import QuikLinear

    K = W.shape[1]
    out: list = []
    for n_out in outliers:
        idx = torch.randperm(K, generator=gen)[:n_out].sort().values
        for wbits in sorted({SCHEMES[s][0] for s in schemes}):
            users = [s for s in schemes if SCHEMES[s][0] == wbits]
            try:
                t0 = time.perf_counter()
                qw = gptq_quantize(W, None, wbits, idx)
                packed = PackedLinear.from_quantized(qw, None, SCHEMES[users[0]][1])
                t_pack = time.perf_counter() - t0
                for s in users:
                    t1 = time.perf_counter()
                    p = dataclasses.replace(packed, act_bits=SCHEMES[s][1])
                    layer = QuikLinear(p, dtype=dtype, device=device, backend=backend)
                    _sync(device)
                    out.append(_Built(s, n_out, layer, qw.codes, t_pack + time.perf_counter() - t1))
                    log.debug("built %dx%d %s outliers=%d in %.1f s", K, W.shape[0], s, n_out, out[-1].build_s)
            except Exception as e:
                for s in users:
                    out.append((s, n_out, _err_text(e)))
                log.warning("building %dx%d W%d outliers=%d failed: %s", K, W.shape[0], wbits, n_out, _err_text(e))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    order = {(s, n): i for i, (s, n) in enumerate((s, n) for n in outliers for s in schemes)}
    return sorted(out, key=lambda b: order[(b.scheme, b.n_out) if isinstance(b, _Built) else (b[0], b[1])])


def reference_forward(layer, codes: Tensor, x: Tensor) -> Tensor:
    """QuikLinear.forward through runtime/reference.py with a weight prepared from the codes themselves
    (independent of the layer's backend): the oracle for the CUDA backend's output. x [M, K] -> [M, N]."""
    from quiktool.runtime import reference as ref

    w = ref.prepare_weight(codes, layer.weight_bits)
    return ref.quik_linear(x.contiguous(), layer.keep_idx.long(), layer.outlier_idx.long(), layer.act_bits, w,
                           layer.weight_bits, layer.w_scale, layer.wsum, layer.outlier_weight, layer.bias)


def time_stages(layer, backend_mod, xs: Sequence[Tensor], timer: Timer, fused: bool) -> dict[str, float | None]:
    """Time each stage of ``QuikLinear.forward`` separately, calling the backend as forward does.

    fused (CUDA backend): quantize, gemm_epilogue (quik_gemm: int GEMM + epilogue in one kernel), outlier_gemm.
    otherwise: quantize, int_gemm, epilogue (= quik_gemm - int_gemm), outlier_gemm. ms; None = no such stage.
    At decode sizes (M <= reference.FUSED_OUTLIER_MAX_M) the outlier product is part of the GEMM call
    (quik_gemm_outliers), so outlier_gemm is None and the GEMM / epilogue stage includes it.
    The quantize stage runs the quantizer the layer itself runs: on the CUDA backend the layer's
    cuda.PreparedLinear.quantize, whose kernel choice depends on the GEMM that follows (below 2048 tokens the
    plain launcher, backend.quantize_layer, picks another kernel than the layer does)."""
    from quiktool.algo.quant import act_shift
    from quiktool.runtime import quik_linear as ql
    from quiktool.runtime import reference as ref

    be, L = backend_mod, layer
    shift = act_shift(L.act_bits)
    if fused and ql.PREPARED and xs[0].is_cuda:
        prepared = L._prepared_cuda()
        quantize = lambda x: prepared.quantize(x.contiguous())  # noqa: E731
    else:
        quantize = lambda x: be.quantize_layer(x.contiguous(), L.keep_idx, L.outlier_idx, L.act_bits)  # noqa: E731
    acts = [quantize(x) for x in xs]
    has_out = L.outlier_idx.numel() > 0
    in_gemm = ref.outliers_in_gemm(xs[0].shape[0], L.outlier_idx.numel())
    ybs = [F.linear(a.x_outlier, L.outlier_weight, L.bias) if has_out and not in_gemm else None for a in acts]
    st: dict[str, float | None] = {}
    st["quantize"] = timer(quantize, [(x,) for x in xs]).ms
    st["outlier_gemm"] = (timer(lambda a: F.linear(a.x_outlier, L.outlier_weight, L.bias), [(a,) for a in acts]).ms
                          if has_out and not in_gemm else None)
    if in_gemm:
        t_q = timer(lambda a: be.quik_gemm_outliers(a.codes, L.w_rt, L.weight_bits, a.scale, a.zero, shift,
                                                    L.w_scale, L.wsum, a.x_outlier, L.outlier_weight, L.bias,
                                                    xs[0].dtype), [(a,) for a in acts]).ms
    else:
        t_q = timer(lambda a, yb: be.quik_gemm(a.codes, L.w_rt, L.weight_bits, a.scale, a.zero, shift, L.w_scale,
                                               L.wsum, yb, xs[0].dtype), list(zip(acts, ybs))).ms
    if fused:
        st["gemm_epilogue"] = t_q
    else:
        t_i = timer(lambda a: be.int_gemm(a.codes, L.w_rt, L.weight_bits), [(a,) for a in acts]).ms
        st["int_gemm"] = t_i
        st["epilogue"] = max(t_q - t_i, 0.0)
    return st


def _inputs(M: int, K: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> list[Tensor]:
    # a few buffers (the L2 flush already makes every run start cold); fewer when one is large
    nbuf = 2 if M * K * 2 > (64 << 20) else 4
    return [torch.randn(M, K, generator=gen, device=device, dtype=torch.float32).to(dtype) for _ in range(nbuf)]


def bench_layer(shapes=None, m=None, schemes=None, outliers=None, reps: int = 100, warmup: int = 10,
                device: str = "cpu", backend: str = "auto", dtype: str = "fp16", max_point_s: float = 1.0,
                seed: int = 0, peers: bool = True, check: bool = True,
                on_progress: Callable[[dict], None] | None = None, rounds: int = DEFAULT_ROUNDS) -> dict:
    """Time QuikLinear.forward against F.linear (and the peers on CUDA) for every shape x M x scheme x outliers.

    shapes: 'KxN,...' / model names / [(K, N)]; m, outliers: '1,16' or ints; schemes: 'w4a4,w4a8,w8a8'.
    ``outliers`` left at None means (0, 256), dropping counts >= K for small shapes; given counts must be < K.
    ``rounds``: FP16 and the QUIK layers of a shape and M are timed in that many alternating rounds (see the
    module doc); each reported time is the median over its rounds (the rows keep every round's time).
    ``on_progress(result_so_far)`` is called after each shape (e.g. to write partial JSON).
    -> {"rows": [one dict per configuration], device, versions, timing method, ...}; see format_layer_table.
    """
    from quiktool.runtime.backends import get_backend

    shape_list = parse_shapes(shapes)
    m_list = parse_ints(m, "m", 1, DEFAULT_M)
    scheme_list = parse_schemes(schemes)
    explicit_out = outliers is not None
    out_list = parse_ints(outliers, "outliers", 0, DEFAULT_OUTLIERS)
    for k, n in shape_list:
        bad = [o for o in out_list if o >= k]
        if bad and explicit_out:
            raise ConfigError(f"outliers={bad[0]} is not below in_features K={k} of shape {k}x{n}; "
                              f"use outlier counts below {k}")
    for name, v in (("reps", reps), ("warmup", warmup), ("rounds", rounds)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}={v!r} is not accepted; use a positive integer")
    if not (isinstance(max_point_s, (int, float)) and max_point_s > 0):
        raise ConfigError(f"max_point_s={max_point_s!r} is not accepted; use a positive number of seconds")
    tdtype = _check_dtype(dtype, ("fp16", "bf16"))
    dev, be_name = resolve_device_backend(device, backend)
    be = get_backend(be_name)
    fused = be_name == "cuda"
    on_cuda = dev.type == "cuda"
    timer = Timer(dev, reps, warmup, max_point_s, flush_l2=True)

    t_start = time.perf_counter()
    result = _report_head("layer", dev, be_name, dtype)
    result.update({
        "shapes": [f"{k}x{n}" for k, n in shape_list], "m": m_list, "schemes": scheme_list, "outliers": out_list,
        "fused_epilogue": fused, "peers_enabled": bool(peers and on_cuda),
        "library_gemm": _library_gemm_rule() if fused else None,
        "timing": {"method": ("CUDA events around each call; L2 overwritten and a GPU head start (at least "
                              "head_start_host_margin x the host's time of a call) before each run"
                              if on_cuda else "time.perf_counter around each call"),
                   "max_reps": reps, "max_warmup": warmup, "max_point_s": max_point_s, "rounds": rounds,
                   "statistic": "median" if rounds == 1 else f"median over {rounds} alternating rounds of medians",
                   "l2_flush_bytes": int(timer.flush_buf.numel() * 4) if timer.flush_buf is not None else 0,
                   "head_start_cycles": HEAD_START_CYCLES if timer.head_start else 0,
                   "head_start_host_margin": HEAD_START_HOST_MARGIN if timer.head_start else 0},
        "peers": {"fp8": "torch._scaled_mm, e4m3 activations and weights, fp32 scales per token and per output "
                         "channel, GEMM only (activation quantization not timed)",
                  "w4a16": f"torch.ops.aten._weight_int4pack_mm (tinygemm), group {W4A16_GROUP}, bf16 activations"},
        "rows": [],
    })
    rows = result["rows"]
    gen_dev = torch.Generator(device=dev).manual_seed(seed)
    gen_cpu = torch.Generator().manual_seed(seed)
    n_total = sum(len(m_list) * len(scheme_list) * len([o for o in out_list if o < k]) for k, _ in shape_list)
    done = 0
    with torch.no_grad():
        for K, N in shape_list:
            shape = f"{K}x{N}"
            outs = [o for o in out_list if o < K]
            if len(outs) < len(out_list):
                log.info("shape %s: outlier counts %s are not below K=%d; skipped", shape,
                         [o for o in out_list if o >= K], K)
            t0 = time.perf_counter()
            W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
            w_fp = W.to(tdtype)
            built = build_layers(W, scheme_list, outs, tdtype, dev, be_name, gen_cpu)
            # probe with 16 rows: a peer that refuses some M is n/a for those rows only (_time_peers)
            peer_objs = _make_peers(W, tdtype, torch.randn(16, K, generator=gen_dev, device=dev).to(tdtype)) \
                if peers and on_cuda else {}
            log.info("shape %s: layers built in %.1f s", shape, time.perf_counter() - t0)
            for M in m_list:
                try:
                    xs = _inputs(M, K, tdtype, dev, gen_dev)
                    fp_fn = lambda x: F.linear(x, w_fp)  # noqa: E731
                    fp_times = [timer(fp_fn, [(x,) for x in xs])]  # round 0: FP16 first, as with rounds=1
                except Exception as e:  # e.g. out of memory at the largest M: record, go on
                    for b in built:
                        s, n = (b.scheme, b.n_out) if isinstance(b, _Built) else b[:2]
                        rows.append(_row_error(shape, K, N, M, s, n, f"baseline: {_err_text(e)}"))
                    done += len(built)
                    _free(dev)
                    continue
                peer_res = _time_peers(peer_objs, xs, timer) if peer_objs else \
                    {p: {"ms": None, "speedup": None, "error": "CUDA only" if not on_cuda else "disabled"}
                     for p in ("fp8", "w4a16")}
                # this M's rows in the order of `built`: [row, built layer or None, its rounds' timings or None]
                m_rows = []
                for b in built:
                    if not isinstance(b, _Built):
                        m_rows.append([_row_error(shape, K, N, M, b[0], b[1], f"build: {b[2]}"), None, None])
                        continue
                    row = _row_base(shape, K, N, M, b.scheme, b.n_out)
                    m_rows.append([row, b, None])
                    try:
                        L = b.layer
                        y = L(xs[0])
                        row["finite"] = bool(torch.isfinite(y).all())
                        row["gemm_path"] = _gemm_path(L, M) if fused else None
                        row["split_k"], row["tile_n"] = _gemm_tiling(L, M, row["gemm_path"])
                        if check and fused:
                            # against the exact reference on up to 256 rows (the same kernel family as M)
                            xc = xs[0][:256]
                            row["check_rel_err"] = _rel_err(L(xc).float(), reference_forward(L, b.codes, xc).float())
                            if not row["check_rel_err"] <= 1e-2:
                                log.warning("%s M=%d %s outliers=%d: CUDA output differs from the reference "
                                            "(relative error %.3g)", shape, M, b.scheme, b.n_out, row["check_rel_err"])
                        del y
                        m_rows[-1][2] = [timer(L, [(x,) for x in xs])]  # round 0
                    except Exception as e:
                        _failed(row, e, dev)
                # rounds 1..: FP16 and the layers alternate, FP16 last in odd rounds and first in even ones
                for r in range(1, rounds):
                    order = ["fp", *(e for e in m_rows if e[2] is not None)]
                    for e in order[::-1] if r % 2 else order:
                        if e == "fp":
                            fp_times.append(timer(fp_fn, [(x,) for x in xs]))
                        elif not e[0].get("error"):
                            try:
                                e[2].append(timer(e[1].layer, [(x,) for x in xs]))
                            except Exception as err:
                                _failed(e[0], err, dev)
                fp_ms = statistics.median(t.ms for t in fp_times)
                for p in peer_res.values():
                    p["speedup"] = fp_ms / p["ms"] if p.get("ms") else None
                for row, b, times in m_rows:
                    done += 1
                    if b is None:  # not built
                        rows.append(row)
                        continue
                    row.update({"fp_ms": fp_ms, "fp_reps": sum(t.reps for t in fp_times), "peers": peer_res,
                                "fp_ms_rounds": [t.ms for t in fp_times], "fp_host_us": _host_us(fp_times)})
                    if times is not None and not row.get("error"):
                        try:
                            L = b.layer
                            q_ms = statistics.median(t.ms for t in times)
                            stages = time_stages(L, be, xs, timer, fused)
                            flops = 2.0 * M * K * N
                            row.update({
                                "quik_ms": q_ms, "quik_min_ms": min(t.min_ms for t in times),
                                "quik_reps": sum(t.reps for t in times), "quik_ms_rounds": [t.ms for t in times],
                                "quik_host_us": _host_us(times),
                                "speedup": fp_ms / q_ms, "tops": flops / (q_ms * 1e-3) / 1e12,
                                "fp_tflops": flops / (fp_ms * 1e-3) / 1e12,
                                "stages_ms": stages,
                                "stage_share": {k: (None if v is None else v / q_ms) for k, v in stages.items()},
                                "build_s": b.build_s,
                            })
                            if not row["finite"]:
                                log.warning("%s M=%d %s outliers=%d: output holds NaN/Inf", shape, M, b.scheme,
                                            b.n_out)
                        except Exception as e:
                            _failed(row, e, dev)
                    rows.append(row)
                    log.info("[%d/%d] %s M=%d %s outliers=%d: %s", done, n_total, shape, M, b.scheme, b.n_out,
                             _progress_text(row))
                del xs
            del W, w_fp, built, peer_objs
            _free(dev)
            result["seconds"] = time.perf_counter() - t_start
            if on_progress is not None:
                on_progress(result)
    result["seconds"] = time.perf_counter() - t_start
    result["errors"] = sum(1 for r in rows if r.get("error"))
    return result


def _host_us(times: Sequence[Timing]) -> float | None:
    """The median over rounds of the host's time of one call (CUDA only; None on the CPU)."""
    hosts = [t.host_us for t in times if t.host_us is not None]
    return statistics.median(hosts) if hosts else None


def _failed(row: dict, e: Exception, dev: torch.device) -> None:
    """Record a layer's failure in its row (the rest of the table still runs)."""
    row["error"] = _err_text(e)
    log.warning("%s M=%d %s outliers=%d failed: %s", row["shape"], row["M"], row["scheme"], row["outliers"],
                row["error"])
    _free(dev)


def _time_peers(peer_objs: dict, xs: Sequence[Tensor], timer: Timer) -> dict:
    """Each peer's time on xs (its "speedup" over FP16 is filled in by the caller, after FP16's rounds)."""
    res = {}
    for name, p in peer_objs.items():
        if isinstance(p, str):
            res[name] = {"ms": None, "speedup": None, "error": p}
            continue
        try:
            args = [p.prepare(x) for x in xs]
            t = timer(p.run, args)
            res[name] = {"ms": t.ms, "speedup": None, "reps": t.reps, "error": None,
                         "check_rel_err": getattr(p, "check_rel_err", None)}
        except Exception as e:  # a peer may refuse some M (alignment): n/a for this row only
            res[name] = {"ms": None, "speedup": None, "error": _err_text(e)}
    return res


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row_base(shape, K, N, M, scheme, n_out) -> dict:
    wb, ab = SCHEMES[scheme]
    return {"shape": shape, "K": K, "N": N, "M": M, "scheme": scheme, "weight_bits": wb, "act_bits": ab,
            "outliers": n_out, "quik_ms": None, "fp_ms": None, "speedup": None, "tops": None,
            "peers": {}, "stages_ms": {}, "stage_share": {}, "error": None}


def _row_error(shape, K, N, M, scheme, n_out, err) -> dict:
    row = _row_base(shape, K, N, M, scheme, n_out)
    row["error"] = err
    return row


def _progress_text(row: dict) -> str:
    if row.get("error"):
        return f"error {row['error']}"
    pe = " ".join(f"{k} {v['speedup']:.2f}x" for k, v in row["peers"].items() if v.get("speedup"))
    return (f"QUIK {row['quik_ms']:.4f} ms, FP {row['fp_ms']:.4f} ms, {row['speedup']:.2f}x"
            + (f"; {pe}" if pe else ""))


def _report_head(kind: str, dev: torch.device, backend: str, dtype: str) -> dict:
    from quiktool.api import versions

    v = versions()
    head = {"kind": kind, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device_name(dev),
            "device_type": dev.type, "backend": backend, "dtype": dtype, "versions": v,
            "torch_cuda": torch.version.cuda, "host": platform.node()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        head.update({"sm_count": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                     "l2_bytes": l2_bytes(dev), "gpu_memory_bytes": props.total_memory})
    return head


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import os

    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


# ------------------------------------------------------------------------------------------- tables
def _f(v, fmt: str, na: str = "-") -> str:
    return na if v is None else format(v, fmt)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _render(header: Sequence[str], rows: list[list[str]], right: set[int]) -> list[str]:
    w = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.rjust(w[i]) if i in right else c.ljust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    return [fmt(header).rstrip(), fmt(["-" * x for x in w])] + [fmt(r).rstrip() for r in rows]


def _library_gemm_rule() -> dict:
    from quiktool.runtime import cuda

    wgmma = {"wgmma_min_m": cuda.WGMMA_MIN_M if cuda.WGMMA else 0, "wgmma_min_tile_share": cuda.WGMMA_MIN_TILE_SHARE,
             "wgmma_w4_wide_min_m": cuda.WGMMA_W4_WIDE_MIN_M, "widen_side": cuda.WIDEN_SIDE}
    if cuda.LIB_MIN_M == 0:
        return {"enabled": False, **wgmma}
    return {"enabled": True, "min_m": {p: cuda._min_m(p) for p in ("fp8", "int8")}, "min_macs": cuda.LIB_MIN_MACS,
            **wgmma}


def _gemm_path(layer, M: int) -> str:
    """Which integer GEMM the cuda backend runs for this layer at M tokens: 'wgmma', 'fp8', 'int8' or 'mma'."""
    from quiktool.algo.quant import act_shift
    from quiktool.runtime import cuda

    kp = cuda.padded_k(layer.keep_idx.numel())
    return cuda.gemm_path(M, layer.out_features, kp, layer.weight_bits, act_shift(layer.act_bits),
                          layer.w_rt.get_device())


def _gemm_tiling(layer, M: int, path: str | None) -> tuple[int, int | None]:
    """(slices of K of the integer GEMM (mma.sync or wgmma; 1: not split), the wgmma kernel's tile width (weight rows
    per block: 256, or a narrower one; None off the wgmma path)) for this layer at M tokens."""
    from quiktool.runtime import cuda

    args = (M, layer.out_features, cuda.padded_k(layer.keep_idx.numel()), layer.weight_bits, layer.w_rt.get_device())
    if path == "mma":
        return cuda.mma_splits(*args), None
    if path != "wgmma":
        return 1, None
    bn, splits = cuda._wgmma_shape(*args)
    return splits, bn


def _unsteady(row: dict) -> bool:
    ms, best = row.get("quik_ms"), row.get("quik_min_ms")
    return bool(ms and best and ms > UNSTEADY * best)


def format_layer_table(result: dict, compact: bool = False) -> str:
    """The layer benchmark as a text table (what the CLI prints). ``compact``: speed columns only."""
    fp = result["dtype"].upper()
    fused = result.get("fused_epilogue", False)
    t = result["timing"]
    lines = [
        f"QUIK layer (QuikLinear.forward, backend {result['backend']}) vs {fp} F.linear "
        f"({'cuBLAS' if result['device_type'] == 'cuda' else 'CPU'}) on {result['device']}; "
        f"torch {result['versions'].get('torch')}, {result['date']}",
        f"median of up to {t['max_reps']} runs per point ({t['method']})"
        + (f"; {fp} and QUIK timed in {t['rounds']} alternating rounds, the median over rounds"
           if t.get("rounds", 1) > 1 else "")
        + f"; x = {fp} ms / ms; TOP/s = 2*M*K*N / QUIK time; shapes are K x N (in x out features)",
    ]
    if result.get("peers_enabled"):
        lines.append(f"peers (GEMM alone, activations pre-quantized: favours them): FP8 = {result['peers']['fp8']}; "
                     f"W4A16 = {result['peers']['w4a16']}")
    else:
        lines.append("peers: n/a (timed on CUDA only)")
    rule = result.get("library_gemm") or {}
    if rule.get("wgmma_min_m"):
        lines.append("scheme+wgmma: the integer GEMM ran in quiktool's sm_90a wgmma kernel (4-bit weights, from "
                     f"M = {rule['wgmma_min_m']} tokens and 128 x 256 output tiles for "
                     f"{rule.get('wgmma_min_tile_share', 1.0):g} of the SMs)"
                     + (f"; from M = {rule['wgmma_w4_wide_min_m']} tokens 4-bit weights are widened to int8 in one "
                        "pass per call and multiplied by its 8-bit kernel, the pass included in the GEMM's time"
                        if rule.get("wgmma_w4_wide_min_m") else ""))
    if rule.get("enabled"):
        lines.append("scheme+fp8 / +int8: the integer GEMM ran in cuBLASLt on the FP8 / INT8 tensor cores (exact "
                     f"sums; from M = {rule['min_m']['fp8']} / {rule['min_m']['int8']} tokens and "
                     f"{rule['min_macs']:.2g} multiply-adds), otherwise in quiktool's mma.sync kernels")
    if any(r.get("split_k", 1) > 1 for r in result["rows"]):
        lines.append("+skN: the integer GEMM (mma.sync, or wgmma where +wgmma) split along K into N slices (its "
                     "tiles alone would leave SMs idle); wgmma: a tile's N slices run as one thread-block cluster "
                     "that adds their sums in distributed shared memory and applies the epilogue, where all such "
                     "clusters fit on the GPU at once; otherwise (and mma.sync) the int32 slices are added by a "
                     "second kernel that applies the epilogue")
    if any(r.get("tile_n") not in (None, 256) for r in result["rows"]):
        lines.append("+nBN: the wgmma kernel on tiles of 128 tokens x BN weight rows instead of 256 (where 256-row "
                     "tiles would leave SMs idle in their last wave)")
    if not compact:
        lines.append("stage columns: share of the QUIK layer time; "
                     + ("with the cuda backend the epilogue is fused into the GEMM (gemm+epi); "
                        if fused else "epi = quik_gemm - int_gemm; ")
                     + "at M <= 16 with outliers the outlier product runs inside the GEMM call (outl gemm -); "
                     + "the rest of the layer time is host overhead and the reshape/bias glue"
                     + ("; the widening of 4-bit weights runs on a side stream while the quantizer runs, so the "
                        "shares of widened layers can add up to more than 100%"
                        if fused and rule.get("widen_side") and rule.get("wgmma_w4_wide_min_m") else ""))
    host = not compact and any(r.get("quik_host_us") is not None for r in result["rows"])
    if host:
        lines.append(f"host us: the host's time to enqueue one eager call of the QUIK layer / of {fp} F.linear "
                     "(median of the warm-up calls): per layer call, an eager model is host-bound where it exceeds "
                     "the GPU time")
    head = ["shape", "M", "scheme", "out", "QUIK ms", f"{fp} ms", f"x {fp}", "TOP/s", "FP8 x", "W4A16 x"]
    stage_keys = (["quantize", "gemm_epilogue", "outlier_gemm"] if fused
                  else ["quantize", "int_gemm", "epilogue", "outlier_gemm"])
    stage_names = {"quantize": "quant", "gemm_epilogue": "gemm+epi", "int_gemm": "int gemm", "epilogue": "epi",
                   "outlier_gemm": "outl gemm"}
    if compact:
        head = head[:4] + ["QUIK ms", f"x {fp}", "FP8 x", "W4A16 x"]
    else:
        head += [stage_names[k] for k in stage_keys] + (["host us", f"{fp} host"] if host else [])
    body, errors = [], []
    for r in result["rows"]:
        scheme = r["scheme"] + (f"+{r['gemm_path']}" if r.get("gemm_path") in ("fp8", "int8", "wgmma") else "")
        scheme += f"+sk{r['split_k']}" if r.get("split_k", 1) > 1 else ""
        scheme += f"+n{r['tile_n']}" if r.get("tile_n") not in (None, 256) else ""
        base = [r["shape"], str(r["M"]), scheme, str(r["outliers"])]
        if r.get("error"):
            body.append(base + ["error"] + [""] * (len(head) - 5))
            errors.append(f"  {r['shape']} M={r['M']} {r['scheme']} outliers={r['outliers']}: {r['error']}")
            continue
        wrong = r.get("finite") is False or (r.get("check_rel_err") is not None and not r["check_rel_err"] <= 1e-2)
        quik = _f(r["quik_ms"], ".4f") + ("!" if wrong else "") + ("~" if _unsteady(r) else "")

        def peer(name):
            p = r["peers"].get(name) or {}
            return _f(p.get("speedup"), ".2f", "n/a")

        if compact:
            body.append(base + [quik, _f(r["speedup"], ".2f"), peer("fp8"), peer("w4a16")])
        else:
            body.append(base + [quik, _f(r["fp_ms"], ".4f"), _f(r["speedup"], ".2f"),
                                _f(r["tops"], ".1f"), peer("fp8"), peer("w4a16")]
                        + [_pct(r["stage_share"].get(k)) for k in stage_keys]
                        + ([_f(r.get("quik_host_us"), ".0f"), _f(r.get("fp_host_us"), ".0f")] if host else []))
    right = set(range(1, len(head))) - {2}
    lines += _render(head, body, right)
    na = {}
    for r in result["rows"]:
        for name, p in (r.get("peers") or {}).items():
            if p.get("error") and p["error"] not in ("CUDA only", "disabled"):
                na.setdefault(name, p["error"])
    for name, why in na.items():
        lines.append(f"{name} n/a where shown: {why}")
    bad = [r for r in result["rows"] if not r.get("error") and r.get("check_rel_err") is not None
           and not r["check_rel_err"] <= 1e-2]
    if bad:
        worst = max((r["check_rel_err"] for r in bad), key=lambda v: v if v == v else float("inf"))
        lines.append(f"WARNING (!): {len(bad)} row(s) whose CUDA output differs from the exact reference "
                     f"(relative error up to {worst:.3g} > 1e-2): their times are of a wrong result")
    unsteady = sum(1 for r in result["rows"] if not r.get("error") and _unsteady(r))
    if unsteady:
        lines.append(f"~: {unsteady} row(s) whose median QUIK time is above {UNSTEADY:g}x their fastest run: unsteady "
                     "timing (on CUDA: the host fell behind the GPU's head start, so host time is in the span); "
                     "rerun before trusting them")
    nonfinite = sum(1 for r in result["rows"] if r.get("finite") is False)
    if nonfinite:
        lines.append(f"WARNING (!): {nonfinite} row(s) whose QUIK output holds NaN/Inf")
    if errors:
        lines += [f"{len(errors)} configuration(s) failed:"] + errors
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- model
def build_llama(arch: str, dtype: torch.dtype, device: torch.device, seed: int):
    """A LlamaForCausalLM of preset ``arch`` with random weights, created directly on ``device`` in
    ``dtype`` (no fp32 CPU copy first), eval mode, KV cache on."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**ARCHS[arch], rms_norm_eps=1e-5, tie_word_embeddings=False, use_cache=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    p = next(model.parameters())
    if p.device != device or p.dtype != dtype:  # a transformers version that ignored the device context
        model.to(device=device, dtype=dtype)
    model.eval()
    model.config.use_cache = True
    return model


def quantize_random(model, qcfg, dtype: torch.dtype, device: torch.device, backend: str, gen: torch.Generator,
                    distinct_weights: bool = False) -> dict:
    """Replace every adapter-listed decoder linear by a QuikLinear: RTN weights (``gptq_quantize`` with
    H=None), random outlier channels, bits and outlier counts from ``qcfg.resolve(layer_type, in_features)``.

    Unless ``distinct_weights``, each linear of the first block is quantized and the later blocks get
    device copies of it (own memory, same values): packing on the host costs about a second per
    7B block, and the values do not change the speed. -> {"layers": n, "quantized": n_unique, "seconds"}."""
    from quiktool.algo.gptq import gptq_quantize
    from quiktool.format.layout import PackedLinear
    from quiktool.models.adapters import adapter_for, blocks as get_blocks, get_module, set_module
    from quiktool.runtime.quik_linear import QuikLinear

    t0 = time.perf_counter()
    adapter = adapter_for(model)
    first: dict[str, Any] = {}
    n = 0
    for block in get_blocks(model, adapter):
        group_idx: dict[int, Tensor] = {}  # one outlier draw per group: its layers read one input
        for gi, path, ltype in ((gi, p, t) for gi, group in enumerate(adapter.groups) for p, t in group):
            lin = get_module(block, path)
            if path in first and not distinct_weights:
                q = copy.deepcopy(first[path])  # own device buffers and own host PackedLinear, same values
            else:
                rule = qcfg.resolve(ltype, lin.in_features)
                if gi not in group_idx:
                    group_idx[gi] = torch.randperm(lin.in_features, generator=gen)
                idx = group_idx[gi][:rule.n_outliers].sort().values
                qw = gptq_quantize(lin.weight.detach(), None, rule.weight_bits, idx, rule.group_size,
                                   sparsity=rule.sparsity)
                packed = PackedLinear.from_quantized(qw, lin.bias, rule.act_bits, rule.sparsity)
                q = QuikLinear(packed, dtype=dtype, device=device, backend=backend)
                first.setdefault(path, q)
            set_module(block, path, q)
            del lin
            n += 1
    _sync(device)
    return {"layers": n, "quantized": n if distinct_weights else len(first), "seconds": time.perf_counter() - t0}


def weights_bytes(model) -> int:
    """Bytes of every parameter and buffer the model holds (QuikLinear: its runtime buffers), each storage once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def checkpoint_bytes(model) -> int:
    """Bytes of tensor data ``save_packed`` would write: PackedLinear tensors of each QuikLinear, and every
    other state-dict tensor in fp16 (integer tensors as they are), tied tensors once. Headers not counted."""
    from quiktool.runtime.fuse import QuikSlice
    from quiktool.runtime.quik_linear import QuikLinear

    total, skip = 0, []
    for name, mod in model.named_modules():
        if isinstance(mod, (QuikLinear, QuikSlice)) and mod.packed is not None:
            total += sum(t.numel() * t.element_size() for t in mod.packed.to_tensors(name).values())
            skip.append(name + ".")
    seen = set()
    for key, t in model.state_dict().items():
        if any(key.startswith(s) for s in skip):
            continue
        ptr = (t.device, t.untyped_storage().data_ptr())
        if ptr in seen:
            continue
        seen.add(ptr)
        total += t.numel() * (2 if t.is_floating_point() else t.element_size())
    return total


class _StepClock:
    """A generate() stopping criterion that never stops: it records the time after every new token
    (after a device sync, so the stamp is when that token exists)."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def __call__(self, input_ids, scores=None, **kwargs):
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _generate(model, prompt: Tensor, new_tokens: int, clock: _StepClock | None = None):
    from transformers import StoppingCriteriaList

    kw = {}
    if clock is not None:
        kw["stopping_criteria"] = StoppingCriteriaList([clock])
    eos = model.generation_config.eos_token_id
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
                          pad_token_id=eos if isinstance(eos, int) else 0, **kw)


def _capture(fn: Callable[[], Any], dev: torch.device) -> tuple[Any, Any]:
    """(graph, static output) of ``fn()`` captured as one CUDA graph, after two warm-up calls on a side
    stream (kernels compiled, one-time setup done outside the capture)."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _capture_prefill(model, ids: Tensor) -> tuple[Any, Tensor, Any]:
    """(graph, static input, static output) of the prefill forward (_prefill_fn) on a copy of ``ids``:
    copy new token ids into the static input, replay, read the output's logits."""
    fn, static = _prefill_fn(model), ids.clone()
    graph, out = _capture(lambda: fn(static), ids.device)
    return graph, static, out


def _graph_prefill(model, ids: Tensor, reps: int) -> float:
    """The prefill forward of ``ids`` [B, S] (as timed eagerly, _prefill_fn) captured as one CUDA graph and
    replayed ``reps`` times, CUDA events around each replay -> median ms. The eager prefill's span holds
    the host's enqueue time whenever the host falls behind the GPU (a QUIK forward makes ~4x the Python
    calls of an FP16 one, docs/RESULTS.md tenth session); a replay has no host in it, so this is what the
    kernels take."""
    graph, _, out = _capture_prefill(model, ids)
    graph.replay()  # one untimed replay
    torch.cuda.synchronize(ids.device)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph, out
    return statistics.median(times)


def _graph_decode(model, prompt: Tensor, steps: int) -> float:
    """Greedy decode of ``steps`` tokens after ``prompt`` [1, P] with a static KV cache, every step one
    replay of a CUDA graph that holds the whole forward (the graph feeds its own argmax back and advances
    the cache position itself) -> ms per token, CUDA events around all replays. Without the host in the
    loop this measures what the kernels do; HF generate (decode_tok_s) is mostly Python overhead."""
    from transformers import StaticCache

    dev = prompt.device
    P = prompt.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=P + steps + 4)
    out = model(prompt, past_key_values=cache, cache_position=torch.arange(P, device=dev), use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)                                   # [1, 1]
    pos = torch.full((1,), P, dtype=torch.long, device=dev)
    del out

    def step():
        o = model(tok, past_key_values=cache, cache_position=pos, use_cache=True)
        tok.copy_(o.logits[:, -1:].argmax(-1))
        pos.add_(1)

    graph, _ = _capture(step, dev)
    pos.fill_(P)
    graph.replay()  # one untimed replay
    torch.cuda.synchronize(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end) / steps
    del graph, cache
    return ms


def _prefill_fn(model):
    import inspect

    kw = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kw["logits_to_keep"] = 1  # what generate() computes at prefill; the LM head is not quantized
    return lambda ids: model(ids, **kw)


def bench_model(arch: str = "llama2-7b", configs=("quik-4b", "w4a8"), batch: int = 1, seqlen: int = 2048,
                decode_tokens: int = 64, reps: int = 5, warmup: int = 2, device: str = "cpu", backend: str = "auto",
                dtype: str = "fp16", distinct_weights: bool = False, seed: int = 0, fuse: bool = True) -> dict:
    """End-to-end LLaMA with random weights: FP baseline then each quantization preset in ``configs``
    (with ``fuse``, the QUIK layers that read one input run as one layer: runtime.fuse).

    Per variant: prefill time of [batch, seqlen] token ids (one forward, no cache, last-token logits),
    decode tokens/s (HF generate, greedy, batch 1, KV cache, prompt = seqlen tokens, measured from the
    first to the last of ``decode_tokens`` new tokens), weight memory, checkpoint size and, on CUDA, the
    peak memory of prefill and of decode (each from a fresh peak after the previous variant was freed),
    and on CUDA the same prefill replayed as one CUDA graph (graph_prefill_ms) and the same decode replayed as
    one CUDA graph per token (graph_decode_tok_s): GPU time without the host; a failure is recorded in
    graph_prefill_error / graph_decode_error and does not stop the benchmark.
    -> {"variants": [dict, ...], ...}; see format_model_table."""
    from quiktool.config import load_config

    if arch not in ARCHS:
        raise ConfigError(f"arch {arch!r} is not accepted; use one of {', '.join(ARCHS)}")
    names = _items(configs)
    qcfgs = [(n, load_config(n)) for n in names]  # ConfigError names the preset if unknown
    for name, v, lo in (("batch", batch, 1), ("seqlen", seqlen, 2), ("decode_tokens", decode_tokens, 0),
                        ("reps", reps, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name}={v!r} is not accepted; use an integer >= {lo}")
    ctx = ARCHS[arch]["max_position_embeddings"]
    if seqlen + decode_tokens + 1 > ctx:
        raise ConfigError(f"seqlen={seqlen} + decode_tokens={decode_tokens} exceeds the {arch} context of {ctx} "
                          "tokens; use fewer")
    tdtype = _check_dtype(dtype, ("fp16", "bf16", "fp32"))
    dev, be_name = resolve_device_backend(device, backend)
    if be_name == "cuda" and tdtype == torch.float32:
        raise ConfigError("the cuda backend computes in fp16 or bf16; use --dtype fp16 or bf16 (or --backend torch)")
    for n, q in qcfgs:  # every layer type must resolve before anything heavy runs
        for lt in ("attn_in", "attn_out", "mlp_in", "mlp_out"):
            w = ARCHS[arch]["intermediate_size"] if lt == "mlp_out" else ARCHS[arch]["hidden_size"]
            q.resolve(lt, w)

    t_start = time.perf_counter()
    result = _report_head("model", dev, be_name, dtype)
    result.update({"arch": arch, "model_config": ARCHS[arch], "batch": batch, "seqlen": seqlen,
                   "decode_tokens": decode_tokens, "reps": reps, "warmup": warmup,
                   "distinct_weights": distinct_weights, "fuse": fuse, "quantizer": "RTN (gptq_quantize with H=None)",
                   "outliers": MODEL_OUTLIER_NOTE, "variants": []})
    timer = Timer(dev, reps, max(warmup, 1), max_point_s=1e9, flush_l2=False, cover_host=False)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, ARCHS[arch]["vocab_size"], (batch, seqlen), generator=g).to(dev)
    for vname, qcfg in [(dtype, None)] + qcfgs:
        v: dict[str, Any] = {"variant": vname, "error": None}
        result["variants"].append(v)
        model = None
        try:
            t0 = time.perf_counter()
            model = build_llama(arch, tdtype, dev, seed)
            if qcfg is not None:
                v["quantize"] = quantize_random(model, qcfg, tdtype, dev, be_name,
                                                torch.Generator().manual_seed(seed + 2), distinct_weights)
                if fuse:
                    from quiktool.runtime.fuse import fuse_shared_inputs

                    v["fused_groups"] = fuse_shared_inputs(model)
            _free(dev)
            v["build_s"] = time.perf_counter() - t0
            v["weights_bytes"] = weights_bytes(model)
            v["checkpoint_bytes"] = checkpoint_bytes(model)
            log.info("%s: built in %.1f s, weights %.3f GB, checkpoint %.3f GB", vname, v["build_s"],
                     v["weights_bytes"] / 1e9, v["checkpoint_bytes"] / 1e9)
            with torch.no_grad():
                _reset_peak(dev)
                t = timer(_prefill_fn(model), [(ids,)])
                v.update({"prefill_ms": t.ms, "prefill_reps": t.reps,
                          "prefill_tok_s": batch * seqlen / (t.ms * 1e-3), "peak_prefill_bytes": _peak(dev)})
                log.info("%s: prefill %d x %d in %.2f ms", vname, batch, seqlen, t.ms)
                if dev.type == "cuda":
                    try:
                        ms = _graph_prefill(model, ids, reps)
                        v.update({"graph_prefill_ms": ms, "graph_prefill_tok_s": batch * seqlen / (ms * 1e-3)})
                        log.info("%s: prefill under a CUDA graph %.2f ms", vname, ms)
                    except Exception as e:  # record why, keep the other numbers
                        v["graph_prefill_error"] = _err_text(e)
                        log.warning("%s: CUDA-graph prefill failed: %s", vname, v["graph_prefill_error"])
                    _free(dev)
                if decode_tokens:
                    prompt = ids[:1]
                    _generate(model, prompt[:, : min(16, seqlen)], 3)  # warm-up: M = 16 and M = 1 kernels
                    _free(dev)
                    _reset_peak(dev)
                    clock = _StepClock(dev)
                    _generate(model, prompt, decode_tokens + 1, clock)
                    span = clock.stamps[-1] - clock.stamps[0]
                    steps = len(clock.stamps) - 1
                    v.update({"decode_tok_s": steps / span if span > 0 else None, "decode_ms_per_token":
                              span / max(steps, 1) * 1e3, "decode_steps": steps, "peak_decode_bytes": _peak(dev)})
                    log.info("%s: decode %.1f tokens/s", vname, v["decode_tok_s"] or 0.0)
                    if dev.type == "cuda":
                        _free(dev)
                        try:
                            ms = _graph_decode(model, prompt, decode_tokens)
                            v.update({"graph_decode_ms_per_token": ms, "graph_decode_tok_s": 1e3 / ms})
                            log.info("%s: decode under a CUDA graph %.1f tokens/s", vname, 1e3 / ms)
                        except Exception as e:  # record why, keep the other numbers
                            v["graph_decode_error"] = _err_text(e)
                            log.warning("%s: CUDA-graph decode failed: %s", vname, v["graph_decode_error"])
        except Exception as e:  # e.g. out of memory: record it, free, go on with the next variant
            v["error"] = _err_text(e)
            log.warning("%s failed: %s", vname, v["error"])
        finally:
            del model
            _free(dev)
    base = result["variants"][0]
    for v in result["variants"]:
        for key, inv, out in (("prefill_ms", True, "prefill_speedup"), ("decode_tok_s", False, "decode_speedup"),
                              ("graph_prefill_ms", True, "graph_prefill_speedup"),
                              ("graph_decode_tok_s", False, "graph_decode_speedup")):
            a, b = base.get(key), v.get(key)
            v[out] = (a / b if inv else b / a) if a and b else None
    result["seconds"] = time.perf_counter() - t_start
    result["errors"] = sum(1 for v in result["variants"] if v.get("error"))
    return result


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None


def format_model_table(result: dict) -> str:
    gb = lambda b: _f(None if b is None else b / 1e9, ".3f")  # noqa: E731
    lines = [
        f"{result['arch']} with random weights on {result['device']} (backend {result['backend']}, {result['dtype']}); "
        f"torch {result['versions'].get('torch')}, transformers {result['versions'].get('transformers')}, {result['date']}",
        f"prefill: {result['batch']} x {result['seqlen']} tokens, one forward, median of {result['reps']} (host "
        "enqueue time included where the host falls behind); graph prefill: the same forward as one CUDA graph "
        "replay (GPU time, CUDA only); "
        f"decode: HF generate, greedy, batch 1, KV cache, {result['decode_tokens']} tokens after a "
        f"{result['seqlen']}-token prompt (host overhead included); graph decode: the same decode with a static KV "
        f"cache, one CUDA graph replay per token (GPU time, CUDA only); x = vs {result['dtype']}",
        f"quantized variants: {result['quantizer']}, {result['outliers']}; weights = parameters + buffers on the "
        "device; ckpt = tensor bytes save_packed would write; peak = torch.cuda.max_memory_allocated",
    ]
    head = ["variant", "weights GB", "ckpt GB", "prefill ms", "prefill tok/s", "x", "graph prefill ms", "x",
            "decode tok/s", "x", "graph decode tok/s", "x", "peak prefill GB", "peak decode GB"]
    body = []
    for v in result["variants"]:
        if v.get("error"):
            body.append([v["variant"], f"error: {v['error']}"[:70]] + [""] * (len(head) - 2))
            continue
        body.append([v["variant"], gb(v.get("weights_bytes")), gb(v.get("checkpoint_bytes")),
                     _f(v.get("prefill_ms"), ".2f"), _f(v.get("prefill_tok_s"), ".0f"),
                     _f(v.get("prefill_speedup"), ".2f"), _f(v.get("graph_prefill_ms"), ".2f"),
                     _f(v.get("graph_prefill_speedup"), ".2f"), _f(v.get("decode_tok_s"), ".1f"),
                     _f(v.get("decode_speedup"), ".2f"), _f(v.get("graph_decode_tok_s"), ".1f"),
                     _f(v.get("graph_decode_speedup"), ".2f"), gb(v.get("peak_prefill_bytes")),
                     gb(v.get("peak_decode_bytes"))])
    lines += _render(head, body, set(range(1, len(head))))
    for v in result["variants"]:
        for what in ("prefill", "decode"):
            if v.get(f"graph_{what}_error"):
                lines.append(f"graph {what} n/a for {v['variant']}: {v[f'graph_{what}_error']}")
    return "\n".join(lines)
