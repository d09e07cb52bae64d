"""Where the host time of an eager QUIK layer call goes (issue 5): cProfile over many calls of one layer while the
GPU is kept busy by a long spin (so that no launch waits for the GPU and the profile is the host's own work).

For each shape, scheme, outlier count and M: the median host time per call (device_host_time.host_us), then the
cProfile table of --calls calls, sorted by own time (top --top).

    PYTHONPATH=$PWD python3 scripts/device_host_profile.py [--shapes 4096x4096] [--m 128,512,2048]
      [--schemes w4a4] [--outliers 256] [--calls 150] [--top 25]
"""
import argparse
import cProfile
import io
import pstats
import statistics

import torch
from device_host_time import host_us  # this folder: python3 puts a script's own folder on sys.path

from quiktool.bench import _inputs, build_layers

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="4096x4096")
p.add_argument("--m", default="128,512,2048")
p.add_argument("--schemes", default="w4a4")
p.add_argument("--outliers", default="256")
p.add_argument("--calls", type=int, default=150)
p.add_argument("--top", type=int, default=25)
args = p.parse_args()

dev = torch.device("cuda")
gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
print(torch.cuda.get_device_name(0), torch.__version__)
for sh in args.shapes.split(","):
    K, N = (int(v) for v in sh.split("x"))
    W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
    built = build_layers(W, args.schemes.split(","), [int(o) for o in args.outliers.split(",")], torch.float16, dev,
                         "cuda", gen_cpu)
    del W
    for M in (int(m) for m in args.m.split(",")):
        xs = _inputs(M, K, torch.float16, dev, gen_dev)
        for b in built:
            if isinstance(b, tuple):
                print(sh, M, b)
                continue
            layer = b.layer
            times = host_us(layer, xs, args.calls, 200_000_000)  # ~0.1 s of spin: every call only enqueues
            torch.cuda._sleep(200_000_000)
            prof = cProfile.Profile()
            prof.enable()
            for i in range(args.calls):
                layer(xs[i % len(xs)])
            prof.disable()
            torch.cuda.synchronize()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
            print(f"== {sh} M={M} {b.scheme} {b.n_out} outliers: host per call median {statistics.median(times):.1f} us, "
                  f"min {min(times):.1f} us over {args.calls} calls")
            print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:6000], flush=True)
