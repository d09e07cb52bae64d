"""Kernel-level A/B of compile-time variants of kernels/quik_wgmma.cu on the GPU, in one process.

Each variant is the shipped source built by nvcc with extra -D flags (the kernel's tuning knobs). For each
variant: the i32 entry point is checked for exact sums against reference.int_gemm on fresh random codes
(odd shapes), then the f16 entry point (the fused epilogue) is timed with CUDA events on the LLaMA-2
shapes, beside cuBLAS FP16 (torch.matmul) and cuBLASLt FP8 (torch._scaled_mm, e4m3, the library's best
case) on the same M, N, K. A K sweep at fixed M, N separates per-tile time from per-block fixed costs.

    python3 scripts/device_wgmma_variants.py [--variants "base=;b2=-DWG_B_AHEAD=2"] [--m 2048,8192] [--json F]

Variants whose name starts with "diag" are diagnostic builds (-DWG_DIAG=1 / 2: no weight unpack / no
wgmma; with --kernel ws, -DWS_DIAG=1 / 2 / 3: no weight work / no shared stores or fence / no global loads):
their sums are wrong by design, so they are timed but not checked, and only ever compared with the others to
split a K tile's time into its parts.

--kernel ws times the warp-specialized entry points (quik_wgmma_ws_*, the default large-M path) instead of
wgmma_gemm's, --kernel rs the register-operand ones (quik_wgmma_rs_*_w4; diagnostic build -DRS_DIAG=1: no weight
loads or fragment builds); --wb 8 the 8-bit-weight entry points (codes in [-128, 127], no unpack).

    python3 scripts/device_wgmma_variants.py --kernel ws --variants "base=;diagnob=-DWS_DIAG=1" --ksweep ''
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quiktool.runtime import cuda, reference  # noqa: E402

SHAPES = [(4096, 4096), (8192, 28672), (28672, 8192)]  # (K, N)


def build(defines: list[str]) -> Path:
    src = cuda._source(cuda.WGMMA_FILE)
    tmp = Path(tempfile.mkdtemp(prefix="wgmma-var-"))
    (tmp / "k.cu").write_text(src)
    out = tmp / "k.cubin"
    proc = subprocess.run([cuda.find_nvcc(), *cuda.NVCC_WGMMA_OPTIONS, *defines, "-o", str(out), str(tmp / "k.cu")],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"nvcc failed for {defines}: {proc.stderr[-2000:]}")
    return out


def knob(defines: list[str], name: str, default: int) -> int:
    for d in defines:
        if d.startswith(f"-D{name}="):
            return int(d.split("=", 1)[1])
    return default


def load(cubin: Path, defines: list[str], kernel: str, wb: int) -> dict:
    """The variant's entry points with their launch parameters: kernel "wg" (wgmma_gemm; -DWG_DEPTH changes
    the shared-memory rings), "ws" (wgmma_gemm_ws; -DWS_STAGES does) or "rs" (wgmma_gemm_rs, 4-bit weights;
    -DRS_STAGES does), weight width wb."""
    import cupy
    mod = cupy.RawModule(path=str(cubin))
    tile = (cuda._WG_BM, cuda._WG_BN)
    if kernel == "ws":
        smem, threads = cuda.wgmma_ws_smem_bytes(knob(defines, "WS_STAGES", cuda._WS_STAGES)), cuda._WS_THREADS
    elif kernel == "rs":
        smem, threads = cuda.wgmma_rs_smem_bytes(knob(defines, "RS_STAGES", cuda._RS_STAGES)), cuda._RS_THREADS
        tile = (cuda._RS_BT, cuda._RS_BW)
    else:
        smem, threads = cuda.wgmma_smem_bytes(knob(defines, "WG_DEPTH", cuda._WG_DEPTH), wb), cuda._WG_THREADS
    prefix = {"ws": "quik_wgmma_ws", "rs": "quik_wgmma_rs"}.get(kernel, "quik_wgmma")
    fns = {}
    for ep in ("i32", "f16"):
        k = mod.get_function(f"{prefix}_{ep}_w{wb}")
        k.max_dynamic_shared_size_bytes = smem
        fns[ep] = (mod, k, smem, threads, tile)
    return fns


def launch(fn, a, w, out, M, N, kp, epi=(0, 0, 0.0, 0, 0, 0)) -> None:
    import cupy
    _, k, smem, threads, (bm, bn) = fn
    grid = -(-M // bm) * -(-N // bn)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    args = [cupy.uint64(a.data_ptr()), cupy.uint64(w.data_ptr()), cupy.uint64(out.data_ptr()), cupy.int32(M),
            cupy.int32(N), cupy.int32(kp), cupy.uint64(epi[0]), cupy.uint64(epi[1]), cupy.float32(epi[2]),
            cupy.uint64(epi[3]), cupy.uint64(epi[4]), cupy.uint64(epi[5]), cupy.int32(0)]
    k((grid,), (threads,), tuple(args), shared_mem=smem, stream=stream)


def timeit(fs: dict, reps: int) -> dict:
    """Median ms of each callable, the callables taking turns run by run (a drift of the GPU's clock or
    temperature during the call then reaches every variant alike, not the ones timed last)."""
    for f in fs.values():
        for _ in range(3):
            f()
    ts = {name: [] for name in fs}
    for _ in range(reps):
        for name, f in fs.items():
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            f()
            e.record()
            e.synchronize()
            ts[name].append(s.elapsed_time(e))
    return {name: statistics.median(t) for name, t in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="base=")
    ap.add_argument("--m", default="2048,8192")
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN list")
    ap.add_argument("--ksweep", default="1024,4096,16384", help="K values at M=2048, N=8192 ('' = skip)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--kernel", choices=("wg", "ws", "rs"), default="wg",
                    help="wgmma_gemm, wgmma_gemm_ws or wgmma_gemm_rs (4-bit only) entry points")
    ap.add_argument("--wb", type=int, choices=(4, 8), default=4, help="weight width of the entry points timed")
    ap.add_argument("--json")
    args = ap.parse_args()
    lo, hi = (-8, 8) if args.wb == 4 else (-128, 128)  # weight codes
    torch.manual_seed(0)
    dev = "cuda"
    variants = []
    for item in args.variants.split(";"):
        name, _, flags = item.partition("=")
        variants.append((name, flags.split()))
    with ThreadPoolExecutor(len(variants)) as pool:  # nvcc runs take ~40-90 s each: build them side by side
        cubins = list(pool.map(build, [flags for _, flags in variants]))
    built = {name: load(cubin, flags, args.kernel, args.wb) for (name, flags), cubin in zip(variants, cubins)}
    print(torch.cuda.get_device_name(), "torch", torch.__version__)

    # exactness of every variant (fresh random codes, odd shapes)
    for name, fns in built.items():
        if name.startswith("diag"):
            print(f"exact {name:10s} not checked (diagnostic build)")
            continue
        for M, kq, N in [(300, 4160, 1000), (2048, 4096, 4096), (17, 64, 301)]:
            kp = reference.padded_k(kq)
            a = reference.pad_columns(torch.randint(-128, 128, (M, kq), dtype=torch.int8, device=dev), kp)
            w = cuda.prepare_weight(torch.randint(lo, hi, (N, kq), dtype=torch.int8, device=dev), args.wb)
            out = torch.full((M, N), 0x7FFFFFFF, dtype=torch.int32, device=dev)
            launch(fns["i32"], a, w, out, M, N, kp)
            ok = torch.equal(out, reference.int_gemm(a, w, args.wb))
            print(f"exact {name:10s} M={M} Kq={kq} N={N}: {ok}")
            if not ok:
                raise SystemExit(f"variant {name} is wrong")

    rows = []
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    points = [(M, K, N) for M in map(int, args.m.split(",")) for K, N in shapes]
    points += [(2048, K, 8192) for K in map(int, filter(None, args.ksweep.split(",")))]
    for M, K, N in points:
        a = torch.randint(-8, 8, (M, K), dtype=torch.int8, device=dev)
        w = cuda.prepare_weight(torch.randint(lo, hi, (N, K), dtype=torch.int8, device=dev), args.wb)
        sa, za = torch.rand(M, device=dev), torch.randn(M, device=dev)
        ws, su = torch.rand(N, device=dev), torch.randn(N, device=dev)
        out = torch.empty(M, N, dtype=torch.float16, device=dev)
        epi = (sa.data_ptr(), za.data_ptr(), 8.0, ws.data_ptr(), su.data_ptr(), 0)
        x16 = torch.randn(M, K, dtype=torch.float16, device=dev)
        w16 = torch.randn(N, K, dtype=torch.float16, device=dev)
        a8, w8 = x16.to(torch.float8_e4m3fn), w16.to(torch.float8_e4m3fn)
        one = torch.ones((), device=dev)
        fs = {"fp16": lambda: torch.matmul(x16, w16.t()),
              "fp8": lambda: torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float16)}
        for name, fns in built.items():
            fs[name] = lambda fns=fns: launch(fns["f16"], a, w, out, M, N, K, epi)
        ms = timeit(fs, args.reps)
        del x16, w16, a8, w8
        fp16, fp8 = ms.pop("fp16"), ms.pop("fp8")
        row = {"M": M, "K": K, "N": N, "fp16_ms": fp16, "fp8_ms": fp8, "variants": ms}
        tops = lambda t: 2 * M * N * K / t / 1e9  # noqa: E731
        line = f"M={M:5d} K={K:5d} N={N:5d}  fp16 {fp16:.4f} ({tops(fp16):5.0f})  fp8 {fp8:.4f} ({tops(fp8):5.0f})"
        for name, t in ms.items():
            line += f"  {name} {t:.4f} ({tops(t):5.0f}, {fp16 / t:.2f}x)"
        print(line, flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
