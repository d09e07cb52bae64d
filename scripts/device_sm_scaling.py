"""Does the warp-specialized wgmma kernel's per-block time stay put when more SMs work? (issue 5, twenty-first
session). The GEMM alone (quik_wgmma_ws_f16_wB, unsplit, fused f16 epilogue) at fixed M and K for output widths N
that give 0.5 .. 2 waves of 128 x 256 tiles on the GPU's SMs: every block does the same work (128 tokens x 256
weight rows x K), so if the SMs do not share a limit, one wave takes the same time whatever its block count, and
the time per block-tile is flat. If they share one (L2, the crossbar), the time grows with the blocks in flight.
Also: FP16 F.linear (cuBLAS) on the same shapes.

    PYTHONPATH=$PWD python3 scripts/device_sm_scaling.py [--m 512,1024] [--k 5120] [--n 2560,5120,...] [--bits 8,4]
"""
import argparse

import torch
import torch.nn.functional as F

from quiktool.bench import Timer
from quiktool.runtime import cuda

p = argparse.ArgumentParser()
p.add_argument("--m", default="512,1024")
p.add_argument("--k", type=int, default=5120)
p.add_argument("--n", default="2560,5120,7680,8448,10240,16896")
p.add_argument("--bits", default="8,4")
p.add_argument("--reps", type=int, default=200)
args = p.parse_args()

dev = torch.device("cuda", 0)
torch.cuda.set_device(dev)
cuda.WGMMA_W4_WIDE_MIN_M = 0  # 4-bit weights on the 4-bit kernel (no widening)
cuda.WGMMA_RS_MIN_M = 0
assert cuda._wgmma_kernels(0) is not None, "the wgmma kernels did not load"
sms = cuda._device_info(0)[1]
timer = Timer(dev, reps=args.reps, warmup=20, max_point_s=0.5)
gen = torch.Generator(device=dev).manual_seed(0)
K = kp = args.k
print(f"device {torch.cuda.get_device_name(dev)}, {sms} SMs, torch {torch.__version__}, K = {K}")
print(f"{'bits':>4} {'M':>5} {'N':>6} {'tiles':>5} {'waves':>5} {'us':>8} {'us/wave':>8} {'TOP/s':>6} "
      f"{'fp16 us':>8} {'x fp16':>6}")
for bits in (int(b) for b in args.bits.split(",")):
    for M in (int(m) for m in args.m.split(",")):
        for N in (int(n) for n in args.n.split(",")):
            a = torch.randint(-8, 8, (M, kp), dtype=torch.int8, device=dev, generator=gen)
            if bits == 8:
                w = torch.randint(-128, 128, (N, kp), dtype=torch.int8, device=dev, generator=gen)
            else:
                w = torch.randint(0, 256, (N, kp // 2), dtype=torch.uint8, device=dev, generator=gen)
            a_scale = torch.rand(M, device=dev) + 0.5
            a_zero = torch.zeros(M, device=dev)
            w_scale = torch.rand(N, device=dev) + 0.5
            wsum = torch.zeros(N, device=dev)
            out = torch.empty(M, N, dtype=torch.float16, device=dev)
            name, grid, block, smem = cuda._wgmma_plan(M, N, "f16", bits, kp=kp)
            assert "_ws_" in name, name
            argv = (a.data_ptr(), w.data_ptr(), out.data_ptr(), M, N, kp, a_scale.data_ptr(), a_zero.data_ptr(),
                    0.0, w_scale.data_ptr(), wsum.data_ptr(), 0, 0)
            t = timer(lambda: cuda._launch(0, name, grid, block, cuda._SIG_WG, argv, smem), [()]).ms * 1e3
            x = torch.randn(M, K, dtype=torch.float16, device=dev, generator=gen)
            wf = torch.randn(N, K, dtype=torch.float16, device=dev, generator=gen)
            tf = timer(lambda: F.linear(x, wf), [()]).ms * 1e3
            waves = -(-grid // sms)
            print(f"{bits:>4} {M:>5} {N:>6} {grid:>5} {waves:>5} {t:8.2f} {t / waves:8.2f} "
                  f"{2 * M * N * K / t / 1e6:6.0f} {tf:8.2f} {tf / t:6.2f}", flush=True)
            del a, w, out, x, wf
