#!/usr/bin/env python
"""Quick standalone check of the CUDA kernels on a GPU: exactness table, then a mini benchmark.

    python scripts/gpu_kernel_check.py [--no-bench] [--iters 50]

Exactness (exit status 1 on any failure): activation quantization and the int32 GEMM must equal the
torch reference bit for bit; the fused GEMM must equal the reference in the same output dtype bit for bit
("same" column) and be within 1e-3 relative (Frobenius) error of the fp32 reference (bf16 output: of
the reference rounded to bf16, see tests/runtime/test_cuda.py).

Benchmark: quik_gemm (4-bit weights, 4-bit activation codes, fp16 out, no y_base) against torch.matmul
in fp16 ([M, K] @ [K, N]) in the same process, inputs rotated among enough buffers to exceed the L2
cache, warm-up first, medians:
  eager  CUDA events around each single call (--iters calls): what a Python caller sees, host launch
         overhead included (it dominates at decode sizes);
  graph  the same calls captured in a CUDA graph and replayed (events around a replay of 10 calls,
         median of 15 replays): GPU time alone.
"quant+gemm" adds the activation quantization of an fp16 input (K columns, no outliers).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without install

from quiktool.runtime import cuda, reference  # noqa: E402

DEV = "cuda"
L2_BYTES = 50 * 2**20


def _codes(g: torch.Generator, rows: int, cols: int, bits: int) -> torch.Tensor:
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    return torch.randint(lo, hi, (rows, cols), generator=g, device=DEV, dtype=torch.int8)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def exactness() -> bool:
    rows = []
    ok_all = True
    shapes = [(1, 4096, 4096), (3, 1000, 300), (16, 576, 1536), (118, 1536, 576), (2048, 4096, 4096),
              (300, 172, 64), (2048, 1000, 11008)]
    for M, kq, N in shapes:
        for w_bits, a_bits in ((4, 4), (4, 8), (8, 8)):
            g = torch.Generator(device=DEV).manual_seed(hash((M, kq, N, w_bits, a_bits)) & 0xFFFFFFFF)
            # activations: x [M, kq + 32] fp16, 32 outlier columns
            K = kq + 32
            perm = torch.randperm(K, generator=g, device=DEV)
            keep, outl = perm[32:].sort().values.int(), perm[:32].int()
            x = (torch.randn(M, K, generator=g, device=DEV) * 2).half()
            qr = reference.quantize_activations(x, keep.long(), outl.long(), a_bits)
            qc = cuda.quantize_activations(x, keep, outl, a_bits)
            qs = cuda.quantize_split(x, outl, a_bits)  # the layers' kernel: keep = the complement of outl
            act_ok = all(torch.equal(getattr(q, f).view(torch.uint8), getattr(qr, f).view(torch.uint8))
                         for f in reference.ActCodes._fields for q in (qc, qs))
            # integer GEMM on those codes
            w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
            acc = cuda.int_gemm(qc.codes, w, w_bits)
            int_ok = torch.equal(acc, reference.int_gemm(qr.codes, w, w_bits))
            # fused epilogue, fp16 and bf16
            w_scale = torch.rand(N, generator=g, device=DEV) * 0.02 + 0.002
            wsum = torch.randn(N, generator=g, device=DEV)
            errs, same = [], True
            for dt in (torch.float16, torch.bfloat16):
                y = torch.randn(M, N, generator=g, device=DEV).to(dt)
                args = (qr.codes, w, w_bits, qr.scale, qr.zero, 1 << (a_bits - 1), w_scale, wsum, y)
                ref = reference.quik_gemm(*args, torch.float32)
                got = cuda.quik_gemm(*args, dt)
                same &= torch.equal(got.view(torch.int16), reference.quik_gemm(*args, dt).view(torch.int16))
                errs.append(_rel(got, ref if dt == torch.float16 else ref.to(dt)))
            fused_ok = same and max(errs) <= 1e-3
            ok = act_ok and int_ok and fused_ok
            ok_all &= ok
            rows.append((M, kq, N, w_bits, a_bits, act_ok, int_ok, same, errs[0], errs[1], ok))
    print(f"{'M':>5} {'Kq':>5} {'N':>6} {'W':>2} {'A':>2} {'act':>5} {'int':>5} {'same':>5} {'err f16':>9} {'err bf16':>9}  result")
    for M, kq, N, wb, ab, a_ok, i_ok, same, e16, e_bf, ok in rows:
        print(f"{M:>5} {kq:>5} {N:>6} {wb:>2} {ab:>2} {str(a_ok):>5} {str(i_ok):>5} {str(same):>5} {e16:>9.2e} {e_bf:>9.2e}  "
              f"{'ok' if ok else 'FAIL'}")
    return ok_all


def _time(fn, sets: list, iters: int, warmup: int = 10) -> float:
    """Eager: median milliseconds of fn(*sets[i % len(sets)]) over ``iters`` calls, each between events."""
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    times = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*sets[i % len(sets)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _graph_time(fn, sets: list, reps: int = 10, replays: int = 15) -> float:
    """GPU time: median milliseconds per call of ``reps`` calls captured in one CUDA graph."""
    for i in range(3):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(*sets[i % len(sets)])
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def bench(iters: int) -> None:
    print(f"\nquik_gemm W4A4 -> fp16 vs torch.matmul fp16 on {torch.cuda.get_device_name()}; ms, speedup = fp16 / quik")
    print(f"{'':>20} {'---------- eager (per call) ----------':>40}   {'---------- graph (GPU time) ----------':>40}")
    print(f"{'M':>5} {'K':>6} {'N':>6}  {'fp16':>8} {'quik':>8} {'x':>6} {'q+gemm':>8} {'x':>6}   "
          f"{'fp16':>8} {'quik':>8} {'x':>6} {'q+gemm':>8} {'x':>6} {'TOPS':>6}")
    g = torch.Generator(device=DEV).manual_seed(0)
    for K, N in ((4096, 4096), (8192, 28672), (28672, 8192)):
        for M in (1, 16, 2048):
            # enough independent buffers that one pass over them exceeds 2x the L2
            n16 = max(2, min(8, -(-2 * L2_BYTES // (2 * (M * K + K * N)))))
            sets16 = [(torch.randn(M, K, generator=g, device=DEV).half(),
                       (torch.randn(K, N, generator=g, device=DEV) * 0.02).half()) for _ in range(n16)]
            t16 = _time(torch.matmul, sets16, iters)
            g16 = _graph_time(torch.matmul, sets16)
            del sets16
            nq = max(2, min(8, -(-2 * L2_BYTES // (M * K + K * N // 2))))
            setsq = []
            for _ in range(nq):
                setsq.append((_codes(g, M, K, 4), cuda.prepare_weight(_codes(g, N, K, 4), 4),
                              torch.rand(M, generator=g, device=DEV) + 0.1, torch.randn(M, generator=g, device=DEV),
                              torch.rand(N, generator=g, device=DEV) * 0.01, torch.randn(N, generator=g, device=DEV),
                              torch.randn(M, K, generator=g, device=DEV).half()))
            keep = torch.arange(K, dtype=torch.int32, device=DEV)
            none = keep[:0]

            def gemm(a, w, s, z, ws, su, x):
                return cuda.quik_gemm(a, w, 4, s, z, 8, ws, su, None, torch.float16)

            def chain(a, w, s, z, ws, su, x):
                q = cuda.quantize_activations(x, keep, none, 4)
                return cuda.quik_gemm(q.codes, w, 4, q.scale, q.zero, 8, ws, su, None, torch.float16)

            tq, tc = _time(gemm, setsq, iters), _time(chain, setsq, iters)
            gq, gc = _graph_time(gemm, setsq), _graph_time(chain, setsq)
            del setsq
            tops = 2 * M * K * N / (gq * 1e-3) / 1e12
            print(f"{M:>5} {K:>6} {N:>6}  {t16:>8.4f} {tq:>8.4f} {t16 / tq:>5.2f}x {tc:>8.4f} {t16 / tc:>5.2f}x   "
                  f"{g16:>8.4f} {gq:>8.4f} {g16 / gq:>5.2f}x {gc:>8.4f} {g16 / gc:>5.2f}x {tops:>6.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-bench", action="store_true", help="exactness table only")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    if not cuda.is_available():
        print("no CUDA GPU / CuPy: nothing to check", file=sys.stderr)
        return 2
    ok = exactness()
    print("\nexactness:", "ALL OK" if ok else "FAILURES")
    if not args.no_bench:
        bench(args.iters)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
