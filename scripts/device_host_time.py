"""Host time against GPU time of one QUIK layer call (issue 5): is a small layer's timed span device time?

bench.Timer enqueues each timed run behind an L2 flush and a GPU spin (the head start, bench.HEAD_START_CYCLES),
so that the host's enqueue of the layer's kernels finishes while the GPU is still busy. When the host takes longer
than the flush and the spin, the GPU waits for the host and the run's time includes the host's launch latency.
For each shape, scheme, outlier count and M this prints:
  host us   the median host time of one call (perf_counter around the call, enqueued behind a long GPU spin so
            that no launch waits for the GPU), for the QUIK layer and for FP16 F.linear;
  per head start (--head-starts: cycles, a fixed spin; "auto": bench.Timer's default, the spin at least
            HEAD_START_HOST_MARGIN x the host's time of a call): the QUIK layer's Timer median and minimum over
            --rounds rounds (median of the rounds' medians, minimum of their minima), i.e. whether the head start
            changes the median.

  with --settings "A|B" (cuda module attributes in ab_settings.py's syntax, e.g. "LAUNCH_PLANS=0|LAUNCH_PLANS=1"):
            the host time of the QUIK layer under each setting instead, medians over --rounds alternating rounds (the
            head starts are then timed under the last setting; --head-starts "" skips them), and whether both gave
            the same bits.

    PYTHONPATH=$PWD python3 scripts/device_host_time.py [--shapes 5120x5120,4096x4096] [--m 128,512]
      [--schemes w4a4,w4a8] [--outliers 0,256] [--head-starts 300000,auto] [--rounds 4] [--reps 100]
      [--settings "LAUNCH_PLANS=0|LAUNCH_PLANS=1"]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ab_settings import parse  # this folder: python3 puts a script's own folder on sys.path

from quiktool import bench
from quiktool.bench import Timer, _inputs, build_layers
from quiktool.runtime import cuda

def host_us(fn, xs, n: int = 60, spin_cycles: int = 40_000_000) -> list[float]:
    """Host time (us) of each of n calls fn(xs[i % len(xs)]) while the GPU is kept busy by a spin of spin_cycles
    (~20 ms by default; it must outlast the n calls), so that no launch waits for the GPU. Also used by
    scripts/device_host_profile.py."""
    fn(xs[0])
    torch.cuda.synchronize()
    torch.cuda._sleep(spin_cycles)  # the calls below only enqueue
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(xs[i % len(xs)])
        times.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="5120x5120,4096x4096,11008x4096,8192x8192")
    p.add_argument("--m", default="128,512")
    p.add_argument("--schemes", default="w4a4,w4a8")
    p.add_argument("--outliers", default="0,256")
    p.add_argument("--head-starts", default="300000,auto")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--settings", default="", help='"A|B": host time under each (cuda attributes, "NAME=VALUE ..." '
                   "as in device_gemv_rule_ab.py)")
    args = p.parse_args()
    settings = [parse(t) for t in args.settings.split("|")] if args.settings else []
    # every attribute a setting names, as the module had it: each setting starts from these (so that an empty
    # setting, "", means the shipped values even after another setting changed them)
    shipped = {k: getattr(cuda, k) for st in settings for k in st}

    dev = torch.device("cuda")
    gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
    timer = Timer(dev, args.reps, 10, 0.5)  # cover_host: the head start follows the host's time
    fixed = Timer(dev, args.reps, 10, 0.5, cover_host=False)  # the spin is bench.HEAD_START_CYCLES
    head_starts = [h for h in args.head_starts.split(",") if h]
    base = bench.HEAD_START_CYCLES
    schemes, outliers = args.schemes.split(","), [int(o) for o in args.outliers.split(",")]

    print(torch.cuda.get_device_name(0), torch.__version__, "head starts (cycles):", head_starts)
    hs_cols = " ".join(f"{'med/min @' + str(h):>22s}" for h in head_starts)
    if settings:
        print("settings:", " | ".join(args.settings.split("|")))
        host_cols = " ".join(f"{'host us ' + chr(ord('A') + i):>9s}" for i in range(len(settings))) + " same"
    else:
        host_cols = f"{'host us':>7s}"
    print(f"{'K x N':11s} {'M':>4s} {'scheme':6s} {'out':>3s} {host_cols} {'FP16 host':>9s} {'FP16 ms':>8s} {hs_cols}")
    for sh in args.shapes.split(","):
        K, N = (int(v) for v in sh.split("x"))
        W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
        built = build_layers(W, schemes, outliers, torch.float16, dev, "cuda", gen_cpu)
        w16 = W.to(torch.float16)
        del W
        for M in (int(m) for m in args.m.split(",")):
            xs = _inputs(M, K, torch.float16, dev, gen_dev)
            fp16 = lambda x: F.linear(x, w16)  # noqa: E731
            fp_host = statistics.median(host_us(fp16, xs))
            fp_ms = timer(fp16, [(x,) for x in xs]).ms
            for b in built:
                if isinstance(b, tuple):
                    print(f"{sh:11s} {M:4d} {b[0]:6s} {b[1]:3d} failed: {b[2]}")
                    continue
                layer = b.layer
                if settings:
                    per, outs = [[] for _ in settings], []
                    for r in range(args.rounds):
                        for i in (range(len(settings)) if r % 2 == 0 else reversed(range(len(settings)))):
                            for k, v in {**shipped, **settings[i]}.items():
                                setattr(cuda, k, v)
                            per[i].append(statistics.median(host_us(layer, xs)))
                            if r == 0:
                                outs.append((i, layer(xs[0]).clone()))
                    outs.sort(key=lambda t: t[0])
                    same = all(torch.equal(o.view(torch.int16), outs[0][1].view(torch.int16)) for _, o in outs)
                    host = " ".join(f"{statistics.median(v):9.1f}" for v in per) + f" {str(same):>4s}"
                else:
                    host = f"{statistics.median(host_us(layer, xs)):7.1f}"
                meds, mins = {hs: [] for hs in head_starts}, {hs: [] for hs in head_starts}
                for r in range(args.rounds):  # the head starts alternate, in reversed order every other round
                    for hs in head_starts if r % 2 == 0 else head_starts[::-1]:
                        if hs == "auto":
                            t = timer(layer, [(x,) for x in xs])
                        else:
                            bench.HEAD_START_CYCLES = int(hs)
                            t = fixed(layer, [(x,) for x in xs])
                            bench.HEAD_START_CYCLES = base  # "auto" starts from the shipped floor
                        meds[hs].append(t.ms)
                        mins[hs].append(t.min_ms)
                cols = [f"{statistics.median(meds[hs]):.4f}/{min(mins[hs]):.4f}" for hs in head_starts]
                print(f"{sh:11s} {M:4d} {b.scheme:6s} {b.n_out:3d} {host} {fp_host:9.1f} {fp_ms:8.4f} "
                      + " ".join(f"{c:>22s}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
