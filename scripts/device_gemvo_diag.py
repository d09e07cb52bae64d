"""Where the decode outlier product's time goes (issue 5, thirteenth session): kernel-level A/B of DIAGNOSTIC
builds of the outlier-fused small-M kernel (quik_gemvo_*), in one process, variants interleaved round by round.

The outlier-fused kernel takes ~2x the time its extra bytes explain (sixth / eighth sessions'
device_gemvo_probe.py: 8192 x 28672 at M = 1, 57 -> 72 us for 12.5% more bytes). Each variant below patches one
part of it out of kernels/quik_gemm.cu (a temporary copy; the tree is untouched) and is timed on the same inputs:

  shipped  the tree's kernels
  notile   the outlier weight tile is never copied to shared memory (the chains read whatever is there)
  nochain  the chains are skipped (the tile and x_out are still copied and waited for)
  none     both: what is left is the fused kernel's structure (its shared memory, registers, barriers)
  gemv     not a build: the plain small-M kernel of the same layer without outliers (quik_gemm), the floor

Only `shipped` computes the right sums ("same" against it: the diagnostic builds differ by design); only the time
means something. Inputs as a W4A4 layer has them; L2 flushed before every run (bench.Timer), ordinary launches.
It ran at 911eb9a (s13a), where the chains ran after the main loop only; `nochain` now patches
OutlierProduct::part, so it drops the chains wherever they run (inside the main loop in the gemvo_inter kernels).

    PYTHONPATH=$PWD python3 scripts/device_gemvo_diag.py [--shapes 8192x28672,28672x8192] [--m 1,16]
      [--variants shipped,notile,nochain,none] [--rounds 5] [--reps 100] [--n-out 256]
"""
import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from quiktool.bench import Timer
from quiktool.runtime import cuda, reference

# name -> [(text in kernels/quik_gemm.cu, replacement)]; each text must occur exactly once
NO_TILE = ("        if (vec) load_tile(ol, N, n0, 0, smem);\n", "        (void)N; (void)n0; (void)smem;  // DIAG notile\n")
NO_CHAIN = ("        if (n0 + nl >= N || ni == 0 || nj <= 0) return;\n", "        return;  // DIAG nochain\n")
PATCHES = {"shipped": [], "notile": [NO_TILE], "nochain": [NO_CHAIN], "none": [NO_TILE, NO_CHAIN]}

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="8192x28672,28672x8192,4096x11008")
p.add_argument("--m", default="1,16")
p.add_argument("--variants", default="shipped,notile,nochain,none")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--reps", type=int, default=100)
p.add_argument("--n-out", type=int, default=256)
args = p.parse_args()

tree = Path(cuda.__file__).resolve().parents[2] / "kernels"
arch = cuda._device_info(0)[0]
names = args.variants.split(",")
modules = {}
for name in names:
    d = Path(tempfile.mkdtemp())
    for f in tree.iterdir():
        shutil.copy(f, d / f.name)
    src = (tree / "quik_gemm.cu").read_text()
    for old, new in PATCHES[name]:
        assert src.count(old) == 1, f"{name}: kernels/quik_gemm.cu changed, update the patch {old!r}"
        src = src.replace(old, new)
    (d / "quik_gemm.cu").write_text(src)
    os.environ["QUIKTOOL_KERNELS_DIR"] = str(d)
    modules[name] = cuda._kernels.__wrapped__(0, arch)
del os.environ["QUIKTOOL_KERNELS_DIR"]


def use(name: str) -> None:
    cuda._kernels = lambda index, arch, h=modules[name]: h  # occupancy is cached per function: each build's own


dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
timer = Timer(dev, args.reps, 10, 0.5)
print(torch.cuda.get_device_name(0), torch.__version__, "variants:", ", ".join(names), flush=True)
print(f"{'K x N':12s} {'M':>2s} " + " ".join(f"{v:>9s}" for v in names + ["gemv"]) + "  (us, median of rounds)"
      + "  x shipped ...  same")
for shape in args.shapes.split(","):
    K, N = map(int, shape.split("x"))
    n_out, kq = args.n_out, K - args.n_out
    kp = reference.padded_k(kq)
    w = cuda.prepare_weight(torch.randint(-8, 8, (N, kq), generator=g, device=dev, dtype=torch.int8), 4)
    w_scale = torch.rand(N, generator=g, device=dev) * 0.02 + 0.002
    wsum = torch.randn(N, generator=g, device=dev)
    w_out = (torch.randn(N, n_out, generator=g, device=dev) * 0.02).half()
    for M in map(int, args.m.split(",")):
        a = reference.pad_columns(torch.randint(-8, 8, (M, kq), generator=g, device=dev, dtype=torch.int8), kp)
        a_scale = torch.rand(M, generator=g, device=dev) * 0.05 + 0.005
        a_zero = torch.randn(M, generator=g, device=dev)
        x_out = torch.randn(M, n_out, generator=g, device=dev).half()
        common = (a, w, 4, a_scale, a_zero, 8, w_scale, wsum)
        fns = {v: (lambda: cuda.quik_gemm_outliers(*common, x_out, w_out, None, torch.float16)) for v in names}
        fns["gemv"] = lambda: cuda.quik_gemm(*common, None, torch.float16)
        times = {v: [] for v in fns}
        outs = {}
        for _ in range(args.rounds):
            for v, fn in fns.items():
                use(v if v in modules else "shipped")
                times[v].append(timer(fn, [()]).ms)
                outs[v] = fn()
        med = {v: statistics.median(t) for v, t in times.items()}
        base = med.get("shipped", med[names[0]])
        same = " ".join(f"{v}={torch.equal(outs[v], outs['shipped'])}" for v in names if v != "shipped"
                        and "shipped" in outs)
        print(f"{shape:12s} {M:2d} " + " ".join(f"{1e3 * med[v]:9.1f}" for v in fns) + "  "
              + " ".join(f"{med[v] / base:5.3f}" for v in fns) + f"  {same}", flush=True)
use("shipped")
