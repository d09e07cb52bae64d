"""In-process layer A/B of small-M kernel variants (issue 5, decode), including software-pipelined ones.

Extra entry points are instantiated from kernels/quik_gemm.cu's own template (QUIK_GEMV_P lines appended to
the source before it is compiled; the shipped entry points are untouched) and the launcher is pointed at
one of them at a time (cuda._gemv_plan), so each variant runs exactly as the layer runs it (programmatic
dependent launch after the quantizer). For each LLaMA-2 shape and M: one W4A4 layer (as `quiktool bench
layer` builds it), every variant timed in alternating rounds in the same process (bench.Timer: L2 flushed,
GPU head start, median), the median over rounds reported with its ratio to the shipped choice, and every
variant's output compared bit for bit with the shipped kernel's.

    PYTHONPATH=$PWD python3 scripts/device_gemv_variants.py [--m 1,16] [--rounds 4] [--reps 100]
      [--variants "m8:p32u2=2,2,1;..."]   (MT:name=NTW,U,PIPE; MT = 8 or 16)
"""
import argparse
import statistics

import torch

from quiktool.bench import DEFAULT_SHAPES, Timer, _inputs, build_layers
from quiktool.runtime import cuda

DEFAULT_VARIANTS = ("m8:r32=2,4,0;m8:r64=4,2,0;m8:p32u2=2,2,1;m8:p32u4=2,4,1;m8:p64u1=4,1,1;m8:p64u2=4,2,1;"
                    "m8:p16u4=1,4,1;m16:r16=1,4,0;m16:r32=2,2,0;m16:p16u2=1,2,1;m16:p32u1=2,1,1;"
                    "m16:p32u2=2,2,1;m16:p64u1=4,1,1")
p = argparse.ArgumentParser()
p.add_argument("--m", default="1,16")
p.add_argument("--rounds", type=int, default=4)
p.add_argument("--reps", type=int, default=100)
p.add_argument("--variants", default=DEFAULT_VARIANTS)
args = p.parse_args()

variants: dict[int, dict[str, tuple[int, int, int]]] = {8: {}, 16: {}}
for item in args.variants.split(";"):
    mt_name, _, cfg = item.partition("=")
    mt, name = mt_name.split(":")
    variants[int(mt[1:])][name] = tuple(int(v) for v in cfg.split(","))

lines = []
for mt, vs in variants.items():
    for name, (ntw, u, pipe) in vs.items():
        lines.append(f"QUIK_GEMV_P(quik_gemv_f16_w4_x{mt}_{name}, 4, {mt}, 1, {ntw}, {u}, {'true' if pipe else 'false'})")
base_source = cuda._source


def source(filename: str) -> str:
    text = base_source(filename)
    return text + "\n" + "\n".join(lines) + "\n" if filename == "quik_gemm.cu" else text


cuda._source = source
cuda.KERNELS["quik_gemm.cu"] = cuda.KERNELS["quik_gemm.cu"] + tuple(
    f"quik_gemv_f16_w4_x{mt}_{name}" for mt, vs in variants.items() for name in vs)
shipped_plan = cuda._gemv_plan
choice: dict = {"name": None}


def plan(M, N, w_bits, ep, rows=None, sms=132):
    if choice["name"] is None:
        return shipped_plan(M, N, w_bits, ep, rows, sms)
    mt, name = choice["name"]
    ntw = variants[mt][name][0]
    return f"quik_gemv_{ep}_w{w_bits}_x{mt}_{name}", -(-N // (16 * ntw)), 256, 0


cuda._gemv_plan = plan
dev = torch.device("cuda")
sms = torch.cuda.get_device_properties(dev).multi_processor_count
timer = Timer(dev, args.reps, 10, 0.5)
gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
print(torch.cuda.get_device_name(0), torch.__version__, flush=True)
for K, N in DEFAULT_SHAPES:
    W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
    layer = build_layers(W, ["w4a4"], [0], torch.float16, dev, "cuda", gen_cpu)[0].layer
    del W
    for M in map(int, args.m.split(",")):
        mt = 8 if M <= 8 else 16
        xs = _inputs(M, K, torch.float16, dev, gen_dev)
        choice["name"] = None
        ref = layer(xs[0])
        shipped = shipped_plan(M, N, 4, "f16", None, sms)[0]
        names = list(variants[mt])
        same, t = {}, {n: [] for n in names}
        for n in names:
            choice["name"] = (mt, n)
            same[n] = torch.equal(layer(xs[0]), ref)
        for r in range(args.rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                choice["name"] = (mt, n)
                t[n].append(timer(layer, [(x,) for x in xs]).ms)
        choice["name"] = None
        med = {n: statistics.median(v) for n, v in t.items()}
        rows = {"r16": 16, "r64": 64}.get(shipped.rsplit("_", 1)[1], 32)
        base = f"r{rows}" if f"r{rows}" in names else names[0]
        cells = "  ".join(f"{n} {med[n]:.4f} ({med[n] / med[base]:.3f}){'' if same[n] else ' DIFFERENT'}"
                          for n in names)
        print(f"{K}x{N:<6d} M={M:2d} shipped {shipped} (= {base})  {cells}", flush=True)
