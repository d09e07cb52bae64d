"""Does the FP16 baseline's time depend on when it is timed? (issue 5, twenty-second session)

`quiktool bench layer` times FP16 (F.linear, cuBLAS) first for each shape and M, right after the layers are built
(the GPU idle for seconds), then the QUIK layers. The in-process A/B script times FP16 last, after minutes of QUIK
runs, and its FP16 times for the same 70B shape at M = 2048 ranged 1.39-1.61 ms in three processes of one call
(s21l), against 1.27 ms in the bench (s21d), while the QUIK layer took 0.82-0.83 ms in both. This script looks for
the cause in the GPU's clock: after IDLE seconds of rest it times FP16 and each QUIK scheme in alternating rounds
(each a bench.Timer point: L2 flushed, GPU head start, median of its runs), and samples the SM clock, power and
throttle reasons with `nvidia-smi -lms` meanwhile; each timed block gets the mean clock and power of the samples
inside it.

    PYTHONPATH=$PWD python3 scripts/device_fp16_drift.py [--shapes 8192x28672] [--m 2048] [--schemes w4a4,w8a8]
      [--rounds 8] [--idle 10] [--reps 100] [--log out/smi.csv]
"""
import argparse
import datetime as dt
import shutil
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from quiktool.bench import Timer, _inputs, build_layers

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="8192x28672,28672x8192")
p.add_argument("--m", default="2048")
p.add_argument("--schemes", default="w4a4,w8a8")
p.add_argument("--outliers", type=int, default=0)
p.add_argument("--rounds", type=int, default=8)
p.add_argument("--idle", type=float, default=10.0, help="seconds of rest before each shape and M (as the bench's build)")
p.add_argument("--reps", type=int, default=100)
p.add_argument("--max-point-s", type=float, default=0.25, help="as the bench's --max-point-s in device_bench.sh")
p.add_argument("--log", default="smi.csv", help="where nvidia-smi's samples go")
args = p.parse_args()

FIELDS = "timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"


def smi_start(path: str):
    """nvidia-smi sampling every 20 ms into path, or None where nvidia-smi is missing."""
    if shutil.which("nvidia-smi") is None:
        return None
    f = open(path, "w")  # noqa: SIM115 (closed with the process at the end)
    return subprocess.Popen(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits", "-lms", "20"],
                            stdout=f, stderr=subprocess.DEVNULL), f


def smi_samples(path: str) -> list[tuple[float, float, float, float, str]]:
    """(unix time, SM MHz, W, deg C, throttle reasons) of each sample."""
    out = []
    for line in open(path):
        parts = [s.strip() for s in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            t = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((t, float(parts[1]), float(parts[2]), float(parts[3]), parts[4]))
        except ValueError:
            continue
    return out


dev = torch.device("cuda")
timer = Timer(dev, args.reps, 10, args.max_point_s)
gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
schemes = args.schemes.split(",")
smi = smi_start(args.log)
blocks = []  # (shape, M, round, what, ms, t0, t1)
print(torch.cuda.get_device_name(0), torch.__version__, f"rounds {args.rounds}, idle {args.idle} s", flush=True)
with torch.no_grad():
    for sh in args.shapes.split(","):
        K, N = (int(v) for v in sh.split("x"))
        W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
        w16 = W.to(torch.float16)
        built = {b.scheme: b.layer for b in build_layers(W, schemes, [args.outliers], torch.float16, dev, "cuda",
                                                           gen_cpu)}
        del W
        for M in map(int, args.m.split(",")):
            xs = _inputs(M, K, torch.float16, dev, gen_dev)
            fns = {"fp16": lambda x: F.linear(x, w16), **{s: built[s] for s in schemes}}
            for f in fns.values():  # compile / plan once outside the timed blocks
                f(xs[0])
            torch.cuda.synchronize()
            time.sleep(args.idle)
            order = list(fns)
            for r in range(args.rounds):
                for what in order if r % 2 == 0 else order[::-1]:
                    t0 = time.time()
                    ms = timer(fns[what], [(x,) for x in xs]).ms
                    blocks.append((sh, M, r, what, ms, t0, time.time()))
            del xs
if smi is not None:
    smi[0].terminate()
    smi[0].wait()
    smi[1].close()
samples = smi_samples(args.log) if smi is not None else []


def inside(t0: float, t1: float) -> tuple[str, str, str]:
    s = [x for x in samples if t0 <= x[0] <= t1]
    if not s:
        return "-", "-", "-"
    reasons = sorted({x[4] for x in s})
    return f"{statistics.mean(x[1] for x in s):.0f}", f"{statistics.mean(x[2] for x in s):.0f}", "|".join(reasons)


print(f"{'shape':11s} {'M':>5s} {'rnd':>3s} {'what':6s} {'ms':>8s} {'SM MHz':>7s} {'W':>5s} throttle reasons")
for sh, M, r, what, ms, t0, t1 in blocks:
    mhz, w, why = inside(t0, t1)
    print(f"{sh:11s} {M:5d} {r:3d} {what:6s} {ms:8.4f} {mhz:>7s} {w:>5s} {why}")
print("\nper shape and M: first round's FP16 ms, median over rounds of each, x FP16 (median over rounds)")
for sh in args.shapes.split(","):
    for M in map(int, args.m.split(",")):
        sel = [b for b in blocks if b[0] == sh and b[1] == M]
        med = {w: statistics.median(b[4] for b in sel if b[3] == w) for w in ["fp16", *schemes]}
        first = next(b[4] for b in sel if b[3] == "fp16")
        ratios = "  ".join(f"{s} {med[s]:.4f} ms x{med['fp16'] / med[s]:.2f} (first-round FP16: x{first / med[s]:.2f})"
                           for s in schemes)
        print(f"{sh:11s} {M:5d} fp16 first {first:.4f} median {med['fp16']:.4f}  {ratios}")
