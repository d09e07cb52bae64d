"""Where the host time of one eager QUIK layer call goes once its launch plan exists (issue 5; LAUNCH_PLANS).

Times, on the host, with the GPU kept busy by a long spin (device_host_time.host_us: every call only enqueues),
medians in us per call:
  module     QuikLinear(x): what a model's forward pays (nn.Module call, reshape, the layer's PreparedLinear)
  run        PreparedLinear.run(x): the checks of x, the plan lookup, the replay
  replay     _LaunchPlan.replay alone
  no-launch  the replay with the driver call (cuda._launch_fn) replaced by a no-op: buffers, outlier product, packing
  launches   the plan's kernel launches (their count in brackets)
  empty      one torch.empty of the layer's output [M, N] on the GPU
  F.linear   the outlier product alone (F.linear of the outlier columns; 0 outliers: none)
  FP16       F.linear(x, W) of the same shape: the FP16 layer's host time

    PYTHONPATH=$PWD python3 scripts/device_host_parts.py [--shapes 4096x4096,11008x4096] [--m 1,16,128,512]
      [--schemes w4a4] [--outliers 0,256]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from device_host_time import host_us  # this folder: python3 puts a script's own folder on sys.path

from quiktool.bench import _inputs, build_layers
from quiktool.runtime import cuda


def med(fn, xs) -> float:
    return statistics.median(host_us(fn, xs, 200))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="4096x4096,11008x4096")
    p.add_argument("--m", default="1,16,128,512")
    p.add_argument("--schemes", default="w4a4")
    p.add_argument("--outliers", default="0,256")
    args = p.parse_args()
    dev = torch.device("cuda")
    gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
    print(torch.cuda.get_device_name(0), torch.__version__, "LAUNCH_PLANS", cuda.LAUNCH_PLANS)
    cols = ("module", "run", "replay", "no-launch", "launches", "empty", "F.linear", "FP16")
    print(f"{'K x N':11s} {'M':>4s} {'scheme':6s} {'out':>3s} " + " ".join(f"{c:>10s}" for c in cols))
    for sh in args.shapes.split(","):
        K, N = (int(v) for v in sh.split("x"))
        W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
        built = build_layers(W, args.schemes.split(","), [int(o) for o in args.outliers.split(",")], torch.float16,
                             dev, "cuda", gen_cpu)
        w16 = W.to(torch.float16)
        del W
        for M in (int(m) for m in args.m.split(",")):
            xs = _inputs(M, K, torch.float16, dev, gen_dev)
            fp16 = med(lambda x: F.linear(x, w16), xs)
            empty = med(lambda x: torch.empty(M, N, dtype=torch.float16, device=dev), xs)
            for b in built:
                if isinstance(b, tuple):
                    print(sh, M, b)
                    continue
                layer = b.layer
                prepared = layer._prepared_cuda()
                module, run = med(layer, xs), med(prepared.run, xs)
                plan = prepared.plans.get((M, 0, xs[0].data_ptr() % 16 == 0))
                if plan is None or plan.steps is None:
                    print(f"{sh:11s} {M:4d} {b.scheme:6s} {b.n_out:3d} no replayable plan")
                    continue
                replay = med(lambda x: plan.replay(prepared, x), xs)
                real = cuda._launch_fn
                cuda._launch_fn = lambda *a: None
                try:
                    no_launch = med(lambda x: plan.replay(prepared, x), xs)
                finally:
                    cuda._launch_fn = real
                n_launch = sum(1 for s in plan.steps if s[0] is not None)
                xo = xs[0][:, :b.n_out].contiguous()
                w_out, bias = prepared.outlier_weight, prepared.bias
                flin = med(lambda x: F.linear(xo, w_out, bias), xs) if b.n_out else 0.0
                vals = (module, run, replay, no_launch, replay - no_launch, empty, flin, fp16)
                print(f"{sh:11s} {M:4d} {b.scheme:6s} {b.n_out:3d} " + " ".join(f"{v:10.1f}" for v in vals[:4])
                      + f" {vals[4]:6.1f} [{n_launch}]" + " ".join(f"{v:10.1f}" for v in vals[5:]), flush=True)


if __name__ == "__main__":
    main()
