"""Kernel timeline of one eager QUIK layer call (issue 5): which kernels a layer runs, how long each takes on the
GPU, and the gaps between them, from a torch.profiler (CUPTI) trace.

Each traced call is timed as bench.Timer times it: the L2 overwritten, then a GPU spin, then the call, so the
kernels after the spin are the call's own. For each shape, scheme, outlier count and M it prints the median over
--calls calls of: the span from the first kernel's start to the last one's end, each kernel's duration (by
position in the call), and the idle gap before each kernel.

    PYTHONPATH=$PWD python3 scripts/device_layer_trace.py [--shapes 4096x4096,5120x5120] [--m 128,512]
      [--schemes w4a4] [--outliers 0,256] [--calls 20]
"""
import argparse
import json
import os
import statistics
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from quiktool import bench
from quiktool.bench import _inputs, build_layers

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="4096x4096,5120x5120,11008x4096")
p.add_argument("--m", default="128,512")
p.add_argument("--schemes", default="w4a4")
p.add_argument("--outliers", default="0,256")
p.add_argument("--calls", type=int, default=20)
args = p.parse_args()

dev = torch.device("cuda")
gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
flush = torch.empty(4 * bench.l2_bytes(dev) // 4, dtype=torch.float32, device=dev)


def short(name: str) -> str:
    for key in ("quik_", "spin", "gemm", "Kernel", "kernel"):
        i = name.find(key)
        if i >= 0:
            return name[i:i + 40].split("(")[0].split("<")[0]
    return name[:40]


def trace(fn, xs) -> list[list[dict]]:
    """The kernels of each call: [[{name, ts, dur}, ...] per call]."""
    for x in xs:
        fn(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(args.calls):
            flush.zero_()
            torch.cuda._sleep(2_000_000)  # ~1 ms: the call's launches are all queued before the GPU reaches them
            fn(xs[i % len(xs)])
        torch.cuda.synchronize()
    path = os.path.join(tempfile.mkdtemp(), "trace.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    events.sort(key=lambda e: e["ts"])
    calls, cur = [], None
    for e in events:
        if "spin" in e["name"]:
            cur = []
            calls.append(cur)
        elif cur is not None and not ("fill" in e["name"].lower() or "FillFunctor" in e["name"]):
            cur.append({"name": short(e["name"]), "ts": e["ts"], "dur": e["dur"]})
    return [c for c in calls if c]


print(torch.cuda.get_device_name(0), torch.__version__)
for sh in args.shapes.split(","):
    K, N = (int(v) for v in sh.split("x"))
    W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
    built = build_layers(W, args.schemes.split(","), [int(o) for o in args.outliers.split(",")], torch.float16, dev,
                         "cuda", gen_cpu)
    w16 = W.to(torch.float16)
    del W
    for M in (int(m) for m in args.m.split(",")):
        xs = _inputs(M, K, torch.float16, dev, gen_dev)
        runs = [("fp16", lambda x: torch.nn.functional.linear(x, w16))]
        runs += [(f"{b.scheme}/{b.n_out}", b.layer) for b in built if not isinstance(b, tuple)]
        for label, fn in runs:
            calls = trace(fn, xs)
            n = statistics.mode(len(c) for c in calls)
            calls = [c for c in calls if len(c) == n]
            span = statistics.median(c[-1]["ts"] + c[-1]["dur"] - c[0]["ts"] for c in calls)
            parts = []
            for k in range(n):
                dur = statistics.median(c[k]["dur"] for c in calls)
                gap = statistics.median(c[k]["ts"] - (c[k - 1]["ts"] + c[k - 1]["dur"]) for c in calls) if k else 0.0
                parts.append(f"{'+' + format(gap, '.1f') + ' ' if k else ''}{calls[0][k]['name']} {dur:.1f}")
            print(f"{sh:11s} {M:4d} {label:9s} span {span:6.1f} us ({len(calls)} calls): " + " | ".join(parts),
                  flush=True)
