"""A/B of the small-M kernel's block size (issue 5, decode): 32, 16 or 64 output features per block.

For each LLaMA-2 shape and M in {1, 8, 16}: cuda.quik_gemm (W4A4 codes, fp16 out, no y_base) with each
variant, timed alternately in the same process with quiktool.bench.Timer (CUDA events, L2 flushed, GPU
head start, median), plus cuBLAS FP16 F.linear for the ratio, and a bit-for-bit comparison of every
variant's output with the 32-row one's. Also prints each variant's grid in waves (blocks / (resident blocks per
SM x SMs)) and the GB/s of the weight stream (packed bytes / time) beside FP16's (2 N K bytes / time); before
2026-11-27 the header said TB/s over these GB/s values.

    PYTHONPATH=$PWD python3 scripts/device_gemv_rows.py [--reps 200] [--rows 32,16,64] [--shapes KxN,..] [--m 1,8,16]
"""
import argparse

import torch
import torch.nn.functional as F

from quiktool.bench import DEFAULT_SHAPES, Timer
from quiktool.runtime import cuda

p = argparse.ArgumentParser()
p.add_argument("--reps", type=int, default=200)
p.add_argument("--rows", default="32,16,64", help="variants; the first is the base of the ratios")
p.add_argument("--shapes", default="", help="KxN list (default: the nine LLaMA-2 shapes of bench layer)")
p.add_argument("--m", default="1,8,16")
args = p.parse_args()
ROWS = [int(r) for r in args.rows.split(",")]
dev = torch.device("cuda")
timer = Timer(dev, args.reps, 20, 1.0, flush_l2=True)
g = torch.Generator(device="cuda").manual_seed(0)
print(torch.cuda.get_device_name(0), torch.__version__)
print(f"{'K x N':11s} {'M':>3s} {'FP16 ms':>8s} " + " ".join(f"{'r%d ms' % r:>8s}" for r in ROWS) + " "
      + " ".join(f"{'r%d/r%d' % (r, ROWS[0]):>8s}" for r in ROWS[1:]) + " "
      + " ".join(f"{'xFP16 r%d' % r:>9s}" for r in ROWS) + " " + " ".join(f"{'GB/s r%d' % r:>9s}" for r in ROWS)
      + " " + " ".join(f"{'waves r%d' % r:>9s}" for r in ROWS) + " FP16GB/s same")
SHAPES = [tuple(map(int, x.split("x"))) for x in args.shapes.split(",")] if args.shapes else DEFAULT_SHAPES
for K, N in SHAPES:
    kp = cuda.padded_k(K)
    w = cuda.prepare_weight(torch.randint(-8, 8, (N, K), generator=g, device=dev, dtype=torch.int8), 4)
    W16 = torch.randn(N, K, generator=g, device=dev, dtype=torch.float16)
    for M in map(int, args.m.split(",")):
        a = torch.nn.functional.pad(torch.randint(-8, 8, (M, K), generator=g, device=dev, dtype=torch.int8), (0, kp - K))
        x = torch.randn(M, K, generator=g, device=dev, dtype=torch.float16)
        sa, za = torch.rand(M, device=dev) * 0.01 + 1e-3, torch.randn(M, device=dev)
        sw, su = torch.rand(N, device=dev) * 0.01 + 1e-3, torch.randn(N, device=dev)
        outs, times, waves = {}, {}, {}
        for rows in ROWS:
            cuda.GEMV_ROWS = rows
            name, grid, block, smem = cuda._plan(M, N, 4, "f16", 0)  # the kernel the call below launches
            waves[rows] = grid / (cuda._resident_blocks(0, name, block, smem) * cuda._device_info(0)[1])
            outs[rows] = cuda.quik_gemm(a, w, 4, sa, za, 8, sw, su, None, torch.float16)
            times[rows] = timer(lambda: cuda.quik_gemm(a, w, 4, sa, za, 8, sw, su, None, torch.float16), [()]).ms
        cuda.GEMV_ROWS = None
        fp = timer(lambda: F.linear(x, W16), [()]).ms
        same = all(torch.equal(outs[ROWS[0]], outs[r]) for r in ROWS[1:])
        gb = N * kp / 2 / 1e9
        print(f"{K}x{N:<6d} {M:3d} {fp:8.4f} " + " ".join(f"{times[r]:8.4f}" for r in ROWS) + " "
              + " ".join(f"{times[r] / times[ROWS[0]]:8.3f}" for r in ROWS[1:]) + " "
              + " ".join(f"{fp / times[r]:9.2f}" for r in ROWS) + " "
              + " ".join(f"{gb / times[r] * 1e3:9.2f}" for r in ROWS) + " "
              + " ".join(f"{waves[r]:9.2f}" for r in ROWS) + f" {2 * N * K / 1e9 / fp * 1e3:9.2f} {same}", flush=True)
