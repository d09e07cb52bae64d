"""Probe (issue 5): can a library integer/FP8 GEMM carry the QUIK integer product at large M?

For M = 2048 and the large LLaMA shapes, times (CUDA events, L2 flushed, median of 20):
  fp16     F.linear(x [M, K], W [N, K])                       (cuBLAS, the baseline)
  quik     quiktool's own kernel: cuda.quik_gemm, fused epilogue (mma.sync s8)
  int_mm   torch._int_mm(a int8 [M, K], w int8 [N, K]^T) -> int32   (cuBLASLt IMMA)
  fp8      torch._scaled_mm(a e4m3, w e4m3^T, fp32 out)  with 4-bit codes as e4m3 (exact values)
  unpack   int4 packed [N, K/2] -> int8 [N, K] with torch ops
and checks exactness of int_mm and fp8 against reference.int_gemm on random 4-bit codes.

    PYTHONPATH=$PWD python3 scripts/device_probe_libgemm.py
"""
import statistics

import torch
import torch.nn.functional as F

from quiktool.runtime import cuda, reference

dev = "cuda"
flush = torch.empty(200 * 2**20 // 4, device=dev)


def t(fn, reps=20):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        flush.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(200_000)
        s.record(); fn(); e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


print(torch.cuda.get_device_name(0), torch.__version__)
g = torch.Generator(device=dev).manual_seed(0)
for M, K, N in [(2048, 4096, 4096), (2048, 8192, 28672), (2048, 28672, 8192), (8192, 8192, 28672), (16, 8192, 28672)]:
    x = torch.randn(M, K, device=dev, generator=g, dtype=torch.float16)
    W = torch.randn(N, K, device=dev, generator=g, dtype=torch.float16) * 0.02
    a = torch.randint(-8, 8, (M, K), device=dev, generator=g, dtype=torch.int8)
    wc = torch.randint(-8, 8, (N, K), device=dev, generator=g, dtype=torch.int8)
    wp = cuda.prepare_weight(wc, 4)
    sa, za = torch.rand(M, device=dev) * 0.01 + 1e-3, torch.randn(M, device=dev)
    sw, ws = torch.rand(N, device=dev) * 0.01 + 1e-3, torch.randn(N, device=dev)
    row = {}
    row["fp16"] = t(lambda: F.linear(x, W))
    row["quik"] = t(lambda: cuda.quik_gemm(a, wp, 4, sa, za, 8, sw, ws, None, torch.float16))
    ref = reference.int_gemm(a, wp, 4)
    try:
        r = torch._int_mm(a, wc.t())
        ok_int = torch.equal(r, ref)
        row["int_mm"] = t(lambda: torch._int_mm(a, wc.t()))
    except Exception as e:  # noqa: BLE001
        ok_int = f"error {type(e).__name__}: {str(e)[:120]}"
    a8, w8 = a.to(torch.float8_e4m3fn), wc.to(torch.float8_e4m3fn)
    one = torch.ones((), device=dev)
    for fast in (False, True):
        try:
            r8 = torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32, use_fast_accum=fast)
            row[f"fp8_fast{int(fast)}_exact"] = torch.equal(r8.to(torch.int32), ref)
            row[f"fp8_fast{int(fast)}"] = t(lambda: torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one,
                                                                    out_dtype=torch.float32, use_fast_accum=fast))
            row[f"fp8bf16_fast{int(fast)}"] = t(lambda: torch._scaled_mm(a8, w8.t(), scale_a=one, scale_b=one,
                                                                        out_dtype=torch.bfloat16, use_fast_accum=fast))
        except Exception as e:  # noqa: BLE001
            row[f"fp8_fast{int(fast)}"] = f"error {type(e).__name__}: {str(e)[:120]}"
    row["unpack_torch"] = t(lambda: torch.stack(((wp << 4).view(torch.int8) >> 4, wp.view(torch.int8) >> 4), -1).view(N, -1))
    row["int_mm_exact"] = ok_int
    print(f"M={M} K={K} N={N}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          flush=True)
    fp = row["fp16"]
    print("   x fp16: " + ", ".join(f"{k} {fp / v:.2f}" for k, v in row.items() if isinstance(v, float) and k != "fp16"))
    del x, W, a, wc, wp, a8, w8
    torch.cuda.empty_cache()
