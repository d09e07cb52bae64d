"""A/B of the small-M kernel's block size (issue 5, decode): 32 vs 16 output features per block.

For each LLaMA-2 shape and M in {1, 8, 16}: cuda.quik_gemm (W4A4 codes, fp16 out, no y_base) with the
32-row and the 16-row variant, timed alternately in the same process with quiktool.bench.Timer (CUDA
events, L2 flushed, GPU head start, median), plus cuBLAS FP16 F.linear for the ratio, and a bit-for-bit
comparison of the two variants' outputs.

    PYTHONPATH=$PWD python3 scripts/device_gemv_rows.py [--reps 200]
"""
import argparse

import torch
import torch.nn.functional as F

from quiktool.bench import DEFAULT_SHAPES, Timer
from quiktool.runtime import cuda

p = argparse.ArgumentParser()
p.add_argument("--reps", type=int, default=200)
args = p.parse_args()
dev = torch.device("cuda")
timer = Timer(dev, args.reps, 20, 1.0, flush_l2=True)
g = torch.Generator(device="cuda").manual_seed(0)
print(torch.cuda.get_device_name(0), torch.__version__)
print(f"{'K x N':11s} {'M':>3s} {'FP16 ms':>8s} {'r32 ms':>8s} {'r16 ms':>8s} {'r16/r32':>7s} {'x FP16 r32':>10s} "
      f"{'x FP16 r16':>10s} {'TB/s r32':>8s} {'TB/s r16':>8s} same")
for K, N in DEFAULT_SHAPES:
    kp = cuda.padded_k(K)
    w = cuda.prepare_weight(torch.randint(-8, 8, (N, K), generator=g, device=dev, dtype=torch.int8), 4)
    W16 = torch.randn(N, K, generator=g, device=dev, dtype=torch.float16)
    for M in (1, 8, 16):
        a = torch.nn.functional.pad(torch.randint(-8, 8, (M, K), generator=g, device=dev, dtype=torch.int8), (0, kp - K))
        x = torch.randn(M, K, generator=g, device=dev, dtype=torch.float16)
        sa, za = torch.rand(M, device=dev) * 0.01 + 1e-3, torch.randn(M, device=dev)
        sw, su = torch.rand(N, device=dev) * 0.01 + 1e-3, torch.randn(N, device=dev)
        outs, times = {}, {}
        for rows in (32, 16):
            cuda.GEMV_ROWS = rows
            outs[rows] = cuda.quik_gemm(a, w, 4, sa, za, 8, sw, su, None, torch.float16)
            times[rows] = timer(lambda: cuda.quik_gemm(a, w, 4, sa, za, 8, sw, su, None, torch.float16), [()]).ms
        cuda.GEMV_ROWS = None
        fp = timer(lambda: F.linear(x, W16), [()]).ms
        same = torch.equal(outs[32], outs[16])
        gb = N * kp / 2 / 1e9
        print(f"{K}x{N:<6d} {M:3d} {fp:8.4f} {times[32]:8.4f} {times[16]:8.4f} {times[16] / times[32]:7.3f} "
              f"{fp / times[32]:10.2f} {fp / times[16]:10.2f} {gb / times[32] * 1e3:8.2f} {gb / times[16] * 1e3:8.2f} {same}",
              flush=True)
