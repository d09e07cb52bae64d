"""The widening pass timed alone (issue 5): quik_unpack_w4_lut writing a layer's 4-bit codes as int8 [N, Kp], as
cuda._wgmma_weights runs it for 4-bit weights at M >= WGMMA_W4_WIDE_MIN_M, against a device-to-device copy of the
same number of bytes (reads + writes = 1.5 x N x Kp), the memory-bound floor of the pass.

For each K x N shape: the pass's median time (bench.Timer: L2 flushed, median of its runs), its bytes per second,
the copy's, and their ratio; the pass's output is checked against the reference's unpacking (reference._unpack_weight)
on the first shape.

    PYTHONPATH=$PWD python3 scripts/device_widen_time.py [--shapes 4096x4096,...] [--reps 200]
"""
import argparse

import torch

from quiktool.bench import DEFAULT_SHAPES, Timer, parse_shapes
from quiktool.runtime import cuda, reference

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="", help="K x N list (default: the nine LLaMA-2 shapes)")
p.add_argument("--reps", type=int, default=200)
args = p.parse_args()

dev = torch.device("cuda", 0)
torch.cuda.set_device(dev)
timer = Timer(dev, reps=args.reps, warmup=20, max_point_s=0.5)
lut = cuda._luts(0)[1]
shapes = parse_shapes(args.shapes) if args.shapes else [s for s in DEFAULT_SHAPES]
print(f"device {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
print(f"{'K x N':>12} {'pass ms':>9} {'GB/s':>7} {'copy ms':>9} {'GB/s':>7} {'pass/copy':>9}")
gen = torch.Generator(device=dev).manual_seed(0)
for i, (K, N) in enumerate(shapes):
    kp = -(-K // 64) * 64
    w = torch.randint(0, 256, (N, kp // 2), dtype=torch.uint8, device=dev, generator=gen)   # packed codes
    if i == 0:  # the pass's output: one int8 code per nibble of the tiled layout (reference.tile_w4), row-major
        got = cuda._unpack_w4(w, lut, N, kp, 0).view(torch.int8)
        want = reference._unpack_weight(w, 4, kp)
        if not torch.equal(got, want):
            raise SystemExit(f"the widening's output differs from reference._unpack_weight on {K}x{N}")
        print(f"the pass's output equals reference._unpack_weight on {K}x{N}")
    nbytes = N * kp // 2 + N * kp
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t_pass = timer(lambda: cuda._unpack_w4(w, lut, N, kp, 0), [()]).ms
    t_copy = timer(lambda: dst.copy_(src), [()]).ms
    print(f"{f'{K}x{N}':>12} {t_pass:9.4f} {nbytes / t_pass / 1e6:7.0f} {t_copy:9.4f} {nbytes / t_copy / 1e6:7.0f} "
          f"{t_pass / t_copy:9.2f}")
    del w, src, dst
