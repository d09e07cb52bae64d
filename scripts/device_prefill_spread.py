"""Why does the LLaMA-2-7B QUIK-4B prefill differ between processes (issue 5, ninth session: 69-94 ms)?

Runs PROCS child processes one after another. Each builds the model of `quiktool bench model` (random weights,
RTN, random outliers, fused groups), times its FP16 prefill first, quantizes it, then times the prefill of
2048 tokens under each of SETTINGS (quiktool.runtime.cuda attributes, as in device_gemv_rule_ab.py) in
alternating rounds, three ways per run:
  event:  CUDA events around one forward after bench.Timer's 0.15 ms GPU head start (what `bench model` reports)
  gpu:    the same after a 100 ms head start, so the host has enqueued the whole forward before the GPU reaches
          it: device time only
  host:   host seconds to enqueue the forward (no sync inside): the host's part
and, once per setting, a torch.profiler trace of one forward: per-kernel-name GPU time, top rows written.
If `event` is slow while `gpu` is not, the host fell behind the GPU; if `gpu` is slow, a kernel is, and the
profile names it.

    PYTHONPATH=$PWD python3 scripts/device_prefill_spread.py --out DIR [--procs 6] [--rounds 3] [--reps 4]
      [--settings "|WGMMA_FP8_FIRST=None"] [--config quik-4b] [--arch llama2-7b]
A setting names quiktool.runtime.cuda attributes, quiktool.runtime.quik_linear's with a "ql." prefix (e.g.
ql.PREPARED=0: every layer call through cuda.quik_linear, all operands checked per call) or
quiktool.runtime.fuse's with "fuse." (fuse.BLOCKS=0: fused members as column slices).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--procs", type=int, default=6)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--reps", type=int, default=4)
p.add_argument("--settings", default="|WGMMA_FP8_FIRST=None",
               help="'|'-separated settings, each a space-separated NAME=VALUE list ('' = the defaults)")
p.add_argument("--config", default="quik-4b")
p.add_argument("--arch", default="llama2-7b")
p.add_argument("--seqlen", type=int, default=2048)
p.add_argument("--cprofile", type=int, default=0, help="also print the host's top N functions (cProfile, tottime) "
               "of one forward per setting")
p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
args = p.parse_args()
os.makedirs(args.out, exist_ok=True)

if args.child is None:
    procs, logs = [], []  # one JSON and one log for all processes (a device call returns few files)
    for i in range(args.procs):
        t0 = time.time()
        r = subprocess.run([sys.executable, *sys.argv, "--child", str(i)], capture_output=True, text=True, timeout=400)
        logs.append(f"== proc {i}: exit {r.returncode}, {time.time() - t0:.0f} s\n{r.stderr}")
        print(f"== proc {i}: exit {r.returncode}, {time.time() - t0:.0f} s", flush=True)
        for ln in r.stdout.splitlines():
            if ln.startswith("JSON "):
                procs.append(json.loads(ln[5:]))
            else:
                print(ln, flush=True)
    with open(os.path.join(args.out, "spread.json"), "w") as f:
        json.dump({"argv": sys.argv, "procs": procs}, f, indent=1)
    with open(os.path.join(args.out, "spread_stderr.log"), "w") as f:
        f.write("\n".join(logs))
    sys.exit(0)

import torch  # noqa: E402
from ab_settings import parse  # noqa: E402 - this folder: python3 puts a script's own folder on sys.path

from quiktool.bench import HEAD_START_CYCLES, _prefill_fn, build_llama, quantize_random  # noqa: E402
from quiktool.config import load_config  # noqa: E402
from quiktool.runtime import cuda, fuse, quik_linear  # noqa: E402
from quiktool.runtime.fuse import fuse_shared_inputs  # noqa: E402





dev = torch.device("cuda:0")
LONG_HEAD = 200_000_000  # GPU spin cycles: ~100 ms at the H100's 1.98 GHz


class GcClock:
    """Host time spent in Python's garbage collector (gc.callbacks), and collections per generation."""

    def __init__(self):
        import gc
        self.ms, self.n, self._t = 0.0, [0, 0, 0], None
        gc.callbacks.append(self)

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            self.ms += (time.perf_counter() - self._t) * 1e3
            self.n[info["generation"]] += 1

    def take(self):
        out = (self.ms, list(self.n))
        self.ms, self.n = 0.0, [0, 0, 0]
        return out


GC = GcClock()


def time_once(fn, ids, head_cycles):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(head_cycles)
    s.record()
    t = time.perf_counter()
    fn(ids)
    host = (time.perf_counter() - t) * 1e3
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e), host


def measure(fn, ids):
    ev, gpu, host = [], [], []
    GC.take()
    for _ in range(args.reps):
        a, h = time_once(fn, ids, HEAD_START_CYCLES)
        ev.append(a)
        host.append(h)
        b, _ = time_once(fn, ids, LONG_HEAD)
        gpu.append(b)
    gc_ms, gc_n = GC.take()
    measure.gc.append((gc_ms / (2 * args.reps), gc_n))  # per forward; collections per generation in all
    return ev, gpu, host


measure.gc = []


def profile(fn, ids, top=14):
    from torch.profiler import ProfilerActivity, profile as tprof

    torch.cuda.synchronize()
    with tprof(activities=[ProfilerActivity.CUDA]) as prof:
        fn(ids)
        torch.cuda.synchronize()
    tot = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            k = evt.name[:60]
            n, us = tot.get(k, (0, 0.0))
            tot[k] = (n + 1, us + evt.device_time)
    total = sum(us for _, us in tot.values())
    rows = sorted(tot.items(), key=lambda kv: -kv[1][1])[:top]
    return total / 1e3, [(k, n, round(us / 1e3, 3)) for k, (n, us) in rows]


def host_profile(fn, ids, label):
    import cProfile
    import io
    import pstats

    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    fn(ids)
    pr.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(args.cprofile)
    print(f"-- host profile [{label}] (one forward, enqueue only)")
    print("\n".join(ln for ln in buf.getvalue().splitlines() if ln.strip())[:12000])


torch.manual_seed(0)
ids = torch.randint(0, 32000, (1, args.seqlen), generator=torch.Generator().manual_seed(1)).to(dev)
settings_text = args.settings.split("|")
settings = [parse(s) for s in settings_text]


def target(name: str) -> tuple:  # "ql.NAME" / "fuse.NAME": quik_linear's / fuse's attribute, else cuda's
    if name.startswith("ql."):
        return quik_linear, name[3:]
    return (fuse, name[5:]) if name.startswith("fuse.") else (cuda, name)


defaults = [{k: getattr(*target(k)) for k in st} for st in settings]
out = {"proc": args.child, "settings": args.settings.split("|")}
with torch.no_grad():
    model = build_llama(args.arch, torch.float16, dev, 0)
    fn = _prefill_fn(model)
    for _ in range(2):
        fn(ids)
    ev, gpu, host = measure(fn, ids)
    out["fp16"] = {"event": statistics.median(ev), "gpu": statistics.median(gpu), "host": statistics.median(host)}
    out["fp16"]["profile_total_ms"], out["fp16"]["profile_top"] = profile(fn, ids, top=20)
    if args.cprofile:
        host_profile(fn, ids, "fp16")
    quantize_random(model, load_config(args.config), torch.float16, dev, "cuda", torch.Generator().manual_seed(2))
    fuse_shared_inputs(model)
    torch.cuda.empty_cache()
    out["fp16"]["gc_ms_per_forward"], out["fp16"]["gc_collections"] = measure.gc[-1]
    res = {i: {"event": [], "gpu": [], "host": [], "gc": []} for i in range(len(settings))}
    for r in range(args.rounds):
        order = range(len(settings)) if r % 2 == 0 else reversed(range(len(settings)))
        for i in order:
            for d in defaults:
                for k, v in d.items():
                    setattr(*target(k), v)
            for k, v in settings[i].items():
                setattr(*target(k), v)
            if r == 0:
                fn(ids)  # warm-up under this setting (first calls compile / pick algorithms)
            ev, gpu, host = measure(fn, ids)
            res[i]["event"] += ev
            res[i]["gpu"] += gpu
            res[i]["host"] += host
            res[i]["gc"].append(measure.gc[-1])
    for i in range(len(settings)):
        for d in defaults:
            for k, v in d.items():
                setattr(*target(k), v)
        for k, v in settings[i].items():
            setattr(*target(k), v)
        tot, rows = profile(fn, ids, top=20)
        res[i]["profile_total_ms"] = tot
        res[i]["profile_top"] = rows
        if args.cprofile:
            host_profile(fn, ids, settings_text[i] or "default")
    out["quik"] = res

print("JSON " + json.dumps(out))
f16 = out["fp16"]
print("  top kernels [fp16]: " + "; ".join(f"{k} x{n} {ms}" for k, n, ms in f16["profile_top"][:10]))
line = [f"fp16 gc/fwd {f16['gc_ms_per_forward']:.2f} ms, prof {f16['profile_total_ms']:.2f} event {f16['event']:.2f} gpu {f16['gpu']:.2f} host {f16['host']:.2f}"]
for i, s in enumerate(out["settings"]):
    r = out["quik"][i]
    md = {k: statistics.median(r[k]) for k in ("event", "gpu", "host")}
    gcs = r["gc"]
    line.append(f"[{s or 'default'}] event {md['event']:.2f} (min {min(r['event']):.2f} max {max(r['event']):.2f}) "
                f"gpu {md['gpu']:.2f} (max {max(r['gpu']):.2f}) host {md['host']:.2f} prof {r['profile_total_ms']:.2f} "
                f"gc/fwd {max(g[0] for g in gcs):.2f} ms max, gen2 {sum(g[1][2] for g in gcs)}")
print(" | ".join(line))
for i, s in enumerate(out["settings"]):
    print(f"  top kernels [{s or 'default'}]: " + "; ".join(f"{k} x{n} {ms}" for k, n, ms in out["quik"][i]["profile_top"][:8]))
