"""In-process layer A/B (issue 5): two settings of quiktool.runtime.cuda (e.g. the small-M rule, QUANT_CLUSTER; at
large M WGMMA_MIN_TILES, WGMMA_FP8_FIRST, ACT_MANY_ROWS), at decode sizes by default.

For each shape and M: one QUIK layer (as `quiktool bench layer` builds it), timed under setting A and
setting B in alternating rounds in the same process (ABBA...), each round a bench.Timer point (L2 flushed,
GPU head start, median of its runs); reported: the median over rounds of each, their ratio, the kernel
each setting ran, x FP16 (F.linear), and whether the two outputs are the same bits. Separate processes
gave same-kernel ratios of 1.01-1.04 on the H100 (order effects), too much for a few-% decision.
A setting is a space-separated list of module attributes, NAME=VALUE (ints, comma-separated int tuples, None, or
strings): quiktool.runtime.cuda's, or reference's with a "ref." prefix (e.g. ref.FUSED_OUTLIER_MAX_M=0: the
outlier product through F.linear at decode sizes, as before the fused kernels; the two settings then give
different bits by design). SOURCE=old runs the kernels compiled from --old-kernels DIR (e.g. `git show
REV:kernels/X.cu` copies; files missing there come from the working tree), SOURCE=new (the default) the
working tree's, or those of --new-kernels DIR: a kernel change A/B in one process, both module sets loaded
once, the sm_90a wgmma kernels included (the launcher is the working tree's for both: it must size what both
kernels need).

    PYTHONPATH=$PWD python3 scripts/device_gemv_rule_ab.py [--a "GEMV_RULE=m"] [--b ""]
      [--m 1,16] [--rounds 6] [--reps 100] [--what layer|quant]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from ab_settings import parse  # this folder: python3 puts a script's own folder on sys.path

from quiktool.bench import DEFAULT_SHAPES, Timer, _inputs, build_layers
from quiktool.runtime import cuda, reference

p = argparse.ArgumentParser()
p.add_argument("--a", default="GEMV_RULE=m", help="setting A (default: the earlier rule)")
p.add_argument("--b", default="", help="setting B (default: the shipped defaults)")
p.add_argument("--m", default="1,16")
p.add_argument("--rounds", type=int, default=6)
p.add_argument("--reps", type=int, default=100)
p.add_argument("--scheme", default="w4a4")
p.add_argument("--outliers", type=int, default=0)
p.add_argument("--old-kernels", default=None, help="folder of older kernel sources for SOURCE=old")
p.add_argument("--new-kernels", default=None, help="folder of kernel sources for SOURCE=new (default: the tree's)")
p.add_argument("--shapes", default="", help="K x N list, e.g. 4096x4096,8192x8192 (default: the nine LLaMA-2 shapes)")
p.add_argument("--what", choices=("layer", "quant", "quant+outl"), default="layer",
               help="time the whole layer (default), only its activation quantizer (cuda.quantize_layer), or the "
                    "quantizer and then the outlier product (reference.outlier_base, as quik_linear runs it)")
args = p.parse_args()


def target(name: str) -> tuple:
    return (reference, name[4:]) if name.startswith("ref.") else (cuda, name)


defaults = {k: getattr(*target(k)) for k in {"GEMV_RULE", "GEMV_ROWS", *parse(args.a), *parse(args.b)} - {"SOURCE"}}
settings = {"a": {**defaults, "SOURCE": "new", **parse(args.a)}, "b": {**defaults, "SOURCE": "new", **parse(args.b)}}
modules = {}  # SOURCE -> {kernel name: handle}, each set compiled and loaded once
wgmma = {}    # SOURCE -> the wgmma kernels built (nvcc) from that folder's quik_wgmma.cu
if any(s["SOURCE"] == "old" for s in settings.values()):
    if not args.old_kernels:
        raise SystemExit("SOURCE=old needs --old-kernels DIR")
    import os
    import shutil
    import tempfile
    from pathlib import Path
    tree = Path(cuda.__file__).resolve().parents[2] / "kernels"
    arch = cuda._device_info(0)[0]
    for which, folder in (("old", args.old_kernels), ("new", args.new_kernels)):
        d = Path(tempfile.mkdtemp())
        for f in tree.iterdir():  # every source and header, the folder's copy where it has one
            src = Path(folder) / f.name if folder else f
            shutil.copy(src if src.is_file() else f, d / f.name)
        os.environ["QUIKTOOL_KERNELS_DIR"] = str(d)
        modules[which] = cuda._kernels.__wrapped__(0, arch)
        cuda._WGMMA.pop(0, None)
        wgmma[which] = cuda._wgmma_kernels(0)
        print(f"SOURCE={which}: kernels from {folder or tree}", flush=True)
    del os.environ["QUIKTOOL_KERNELS_DIR"]


def use(which: str) -> None:
    for k, v in settings[which].items():
        if k == "SOURCE":
            if modules:
                cuda._kernels = lambda index, arch, h=modules[v]: h
                cuda._WGMMA[0] = wgmma[v]
        else:
            setattr(*target(k), v)


def kernel_name(layer, M: int) -> str:
    """The integer GEMM the layer runs at M tokens under the current setting (short name)."""
    d = dev.index or 0
    kp = layer.w_rt.shape[1] * (8 // layer.weight_bits)
    path = cuda.gemm_path(M, layer.out_features, kp, layer.weight_bits, 1 << (layer.act_bits - 1), d)
    if path == "wgmma":
        bn, splits = cuda._wgmma_shape(M, layer.out_features, kp, layer.weight_bits, d)
        return (cuda._wgmma_plan(M, layer.out_features, "f16", layer.weight_bits, kp=kp, bn=bn)[0].replace("_f16", "")
                + (f"/sk{splits}" if splits > 1 else ""))
    if path != "mma":
        return path
    splits = cuda.mma_splits(M, layer.out_features, kp, layer.weight_bits, d)
    name = cuda._plan(M, layer.out_features, layer.weight_bits, "f16", d)[0]
    return name.replace("quik_gemv_f16_", "").replace("quik_gemm_f16_", "") + (f"/sk{splits}" if splits > 1 else "")


def quant_name(layer, M: int) -> str:
    """The quantizer cuda.quantize_layer runs for this layer at M tokens under the current setting."""
    K, n_out = layer.in_features, layer.outlier_idx.numel()
    plan = cuda._rows_plan(M, K, cuda.padded_k(K - n_out), n_out)
    if plan is not None:
        return f"rows_c{plan[0]}_t{plan[1]}"
    if M <= cuda.SPLIT_MAX_M:
        return "split_cl" if cuda._cluster_quant(K, cuda._device_info(0)[2]) else "split"
    return "gather"


def same(a, b) -> bool:
    """Bit equality of two layer outputs or two ActCodes (NaN bits included)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a.view(torch.int16), b.view(torch.int16)) if a.dtype == torch.float16 else torch.equal(a, b)
    return all(same(getattr(a, f), getattr(b, f)) for f in a._fields)


dev = torch.device("cuda")
timer = Timer(dev, args.reps, 10, 0.5)
gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
sms = torch.cuda.get_device_properties(dev).multi_processor_count
print(torch.cuda.get_device_name(0), torch.__version__, f"A: {args.a!r}  B: {args.b!r}")
print(f"{'K x N':11s} {'M':>3s} {'kernel A':>26s} {'kernel B':>26s} {'A ms':>8s} {'B ms':>8s} {'B/A':>6s} "
      f"{'FP16 ms':>8s} {'xFP16 A':>7s} {'xFP16 B':>7s} same")
shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")] if args.shapes else DEFAULT_SHAPES
for K, N in shapes:
    W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
    layer = build_layers(W, [args.scheme], [args.outliers], torch.float16, dev, "cuda", gen_cpu)[0].layer
    w16 = W.to(torch.float16)
    del W
    for M in map(int, args.m.split(",")):
        xs = _inputs(M, K, torch.float16, dev, gen_dev)
        kernel, outs, t = {}, {}, {"a": [], "b": []}
        if args.what == "quant":  # the layer's quantizer alone; "kernel" = which quantizer ran
            def fn(x, L=layer):
                return cuda.quantize_layer(x, L.keep_idx, L.outlier_idx, L.act_bits)
        elif args.what == "quant+outl":  # and the outlier product that follows it at M > 16
            def fn(x, L=layer):
                a = cuda.quantize_layer(x, L.keep_idx, L.outlier_idx, L.act_bits)
                return reference.outlier_base(a.x_outlier, L.outlier_weight, L.bias, x.shape[0])
        else:
            fn = layer
        for which in ("a", "b"):
            use(which)
            outs[which] = fn(xs[0])
            kernel[which] = quant_name(layer, M) if args.what.startswith("quant") else kernel_name(layer, M)
        for r in range(args.rounds):
            for which in ("a", "b") if r % 2 == 0 else ("b", "a"):
                use(which)
                t[which].append(timer(fn, [(x,) for x in xs]).ms)
        use("b")
        fp = timer(lambda x: F.linear(x, w16), [(x,) for x in xs]).ms
        a, b = statistics.median(t["a"]), statistics.median(t["b"])
        print(f"{K}x{N:<6d} {M:3d} {kernel['a']:>26s} {kernel['b']:>26s} {a:8.4f} {b:8.4f} {b / a:6.3f} {fp:8.4f} "
              f"{fp / a:7.2f} {fp / b:7.2f} {same(outs['a'], outs['b'])}", flush=True)
