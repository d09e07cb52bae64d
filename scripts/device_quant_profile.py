"""Run each activation quantizer kernel on a few shapes, for a profiler (issue 5: why is the quantizer at
~1 TB/s?). Each (kernel, shape) runs 3 times after a warm-up; profile the last call, e.g.

    ncu --kernel-name regex:quik_act_quant --launch-skip 0 --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python3 scripts/device_quant_profile.py

Without a profiler it prints CUDA-event times (median of --reps, L2 overwritten before each call) per kernel and
shape.
"""
import argparse
import statistics

import torch

from quiktool.runtime import cuda

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="2048x28672,2048x4096,1x4096,1x28672", help="MxK list")
p.add_argument("--n-out", type=int, default=256)
p.add_argument("--reps", type=int, default=20)
p.add_argument("--kernels", default="gather,split,rows", help="any of gather,split,rows,cast")
args = p.parse_args()
g = torch.Generator(device="cuda").manual_seed(0)
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # larger than the L2: every timed call starts cold
for spec in args.shapes.split(","):
    M, K = (int(v) for v in spec.split("x"))
    x = torch.randn(M, K, generator=g, device="cuda").half()
    perm = torch.randperm(K, generator=g, device="cuda")
    outl = perm[:args.n_out].int()
    keep = perm[args.n_out:].sort().values.int()
    def split(rows: bool):
        def fn():
            cuda.ACT_ROWS = rows  # quantize_split: rows mode (from ACT_ROWS_MIN_M rows) or one row per CTA
            return cuda.quantize_split(x, outl, 4)
        return fn
    runs = {"gather": lambda: cuda.quantize_activations(x, keep, outl, 4), "split": split(False), "rows": split(True),
            # torch's elementwise cast reads x and writes one byte per value, as the quantizers do, with no
            # arithmetic: meant as a bandwidth yardstick, it ran at 0.97-1.22 TB/s on the H200, slower than the rows
            # quantizer (s31a), so it is a floor for torch, not a ceiling for us
            "cast": lambda: x.to(torch.int8)}
    for name, fn in runs.items():
        if name not in args.kernels.split(","):
            continue
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(args.reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            flush.zero_()
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) * 1e3)
        us = statistics.median(ts)
        gbs = (M * K * 2 + M * cuda.padded_k(K - args.n_out)) / (us * 1e-6) / 1e9
        print(f"{spec:>12s} {name:7s} {us:8.1f} us  {gbs:7.0f} GB/s (x read + codes written)", flush=True)
