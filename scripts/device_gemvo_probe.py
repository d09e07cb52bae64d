"""Kernel-level probe of the decode outlier product (issue 5, sixth session): where the time of quik_gemvo_* goes.

For each shape (K x N) and M, with inputs as a QUIK layer has them (codes [M, Kp], 256 or n_out outliers),
times in one process, L2 flushed before each run (bench.Timer):
  gemv         quik_gemm without y_base (the small-M kernel alone)
  gemv+y       quik_gemm with a precomputed y_base (the epilogue's extra load)
  outl_linear  index_select + F.linear of the outlier columns (what the unfused path adds)
  gemvo0       quik_gemm_outliers with no outlier column (the fused kernel's fixed cost)
  gemvo        quik_gemm_outliers with the outliers (the fused product)
All ordinary launches (no PDL): the kernels' own time, not their overlap with a quantizer.

    PYTHONPATH=$PWD python3 scripts/device_gemvo_probe.py [--m 1,8] [--n-out 256] [--reps 200]
"""
import argparse

import torch
import torch.nn.functional as F

from quiktool.bench import Timer
from quiktool.runtime import cuda, reference

p = argparse.ArgumentParser()
p.add_argument("--m", default="1,8,16")
p.add_argument("--n-out", type=int, default=256)
p.add_argument("--shapes", default="4096x4096,8192x8192,4096x11008,11008x4096,8192x28672")
p.add_argument("--reps", type=int, default=200)
args = p.parse_args()

dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
timer = Timer(dev, args.reps, 10, 0.5)
print(torch.cuda.get_device_name(0), torch.__version__)
print(f"{'K x N':12s} {'M':>2s} {'gemv':>8s} {'gemv+y':>8s} {'outl_lin':>8s} {'gemvo0':>8s} {'gemvo':>8s}  (us)")
for shape in args.shapes.split(","):
    K, N = map(int, shape.split("x"))
    n_out = args.n_out
    kq = K - n_out
    kp = reference.padded_k(kq)
    w = cuda.prepare_weight(torch.randint(-8, 8, (N, kq), generator=g, device=dev, dtype=torch.int8), 4)
    w_scale = torch.rand(N, generator=g, device=dev) * 0.02 + 0.002
    wsum = torch.randn(N, generator=g, device=dev)
    w_out = (torch.randn(N, n_out, generator=g, device=dev) * 0.02).half()
    w_out0 = w_out[:, :0].contiguous()
    outl = torch.randperm(K, generator=g, device=dev)[:n_out].to(torch.int32)
    for M in map(int, args.m.split(",")):
        x = torch.randn(M, K, generator=g, device=dev).half()
        a = reference.pad_columns(torch.randint(-8, 8, (M, kq), generator=g, device=dev, dtype=torch.int8), kp)
        a_scale = torch.rand(M, generator=g, device=dev) * 0.05 + 0.005
        a_zero = torch.randn(M, generator=g, device=dev)
        x_out = x.index_select(1, outl)  # [M, n_out], as the quantizer returns it
        y = F.linear(x_out, w_out)
        common = (a, w, 4, a_scale, a_zero, 8, w_scale, wsum)
        t = {
            "gemv": timer(lambda: cuda.quik_gemm(*common, None, torch.float16), [()]).ms,
            "gemv+y": timer(lambda: cuda.quik_gemm(*common, y, torch.float16), [()]).ms,
            "outl_lin": timer(lambda: F.linear(x.index_select(1, outl), w_out), [()]).ms,
            "gemvo0": timer(lambda: cuda.quik_gemm_outliers(*common, x_out[:, :0], w_out0, None, torch.float16),
                            [()]).ms,
            "gemvo": timer(lambda: cuda.quik_gemm_outliers(*common, x_out, w_out, None, torch.float16), [()]).ms,
        }
        print(f"{shape:12s} {M:2d} " + " ".join(f"{1e3 * t[k]:8.1f}" for k in t), flush=True)
