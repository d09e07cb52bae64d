"""Diagnostic (issue 3, noticed item): is GPTQ W4A16 per-channel really worse than RTN on a model, layer by
layer? For chosen decoder blocks, each linear's FP inputs are captured from full-model forwards; the
Hessian comes from the calibration windows; RTN and GPTQ quantize the same weights; the relative output
error ||(W - Wq) X^T|| / ||W X^T|| is reported on the calibration windows (what GPTQ minimizes) and on
held-out windows (what perplexity sees). GPTQ worse on the calibration windows would mean a bug; worse
only on held-out ones means over-fitting a small calibration set.

    .venv/bin/python scripts/gptq_vs_rtn_layers.py --model smollm2-135m --data-dir ../shared/data \\
        [--blocks 0,15,29] [--nsamples 32] [--seqlen 512] [--packed DIR ...]

--packed: also report the same errors for the weights stored in packed checkpoints of this model
(e.g. the gptq-w4a16 and rtn-w4a16 folders that scripts/accuracy_table.sh wrote), to check that the
full layer-by-layer pipeline produced what the per-layer quantizers produce here.
"""
import argparse
import logging

import torch

from quiktool.algo.gptq import gptq_quantize
from quiktool.algo.stats import HessianAccumulator
from quiktool.data import calibration_windows, load_rows
from quiktool.models.adapters import adapter_for, get_module
from quiktool.models.loading import load_model

p = argparse.ArgumentParser()
p.add_argument("--model", default="smollm2-135m")
p.add_argument("--data-dir", default=None)
p.add_argument("--blocks", default="0,15,29")
p.add_argument("--nsamples", type=int, default=32)
p.add_argument("--heldout", type=int, default=8)
p.add_argument("--seqlen", type=int, default=512)
p.add_argument("--bits", type=int, default=4)
p.add_argument("--packed", nargs="*", default=[])
args = p.parse_args()
logging.basicConfig(level=logging.WARNING)
torch.manual_seed(0)

model, tok, _ = load_model(args.model, dtype="fp32")
rows = load_rows("c4", "calib", args.data_dir)
win = calibration_windows(tok, rows, args.nsamples + args.heldout, args.seqlen, seed=0)
calib, held = win[: args.nsamples], win[args.nsamples:]
ad = adapter_for(model)
blocks = get_module(model, ad.blocks)
names = [(b, path) for b in map(int, args.blocks.split(",")) for path, _ in ad.linears()]
caught: dict[tuple, list] = {k: [] for k in names}
hooks = [get_module(blocks[b], path).register_forward_hook(
    lambda mod, inp, out, k=(b, path): caught[k].append(inp[0].detach().reshape(-1, inp[0].shape[-1])))
    for b, path in names]


def inputs(windows):
    for k in caught:
        caught[k].clear()
    with torch.no_grad():
        for i in range(windows.shape[0]):
            model(windows[i:i + 1], use_cache=False)
    return {k: torch.cat(v) for k, v in caught.items()}


x_cal, x_held = inputs(calib), inputs(held)
for h in hooks:
    h.remove()


def rel(W, Wq, X):
    return float(((X @ (W - Wq).T).norm() / (X @ W.T).norm()))


print(f"{args.model}: {args.nsamples} calibration + {args.heldout} held-out C4 windows x {args.seqlen}, "
      f"W{args.bits} per output channel, relative output error (lower is better)")
packed = []
for d in args.packed:
    from quiktool.format.checkpoint import load_packed

    pm, _, _ = load_packed(d)
    packed.append((d.rstrip("/").split("/")[-1], get_module(pm, ad.blocks)))
extra = "".join(f" {n[:12] + ' held':>17s}" for n, _ in packed)
print(f"{'layer':28s} {'RTN cal':>8s} {'GPTQ cal':>8s} {'RTN held':>8s} {'GPTQ held':>9s}{extra}")
for b, path in names:
    W = get_module(blocks[b], path).weight.detach().float()
    acc = HessianAccumulator(W.shape[1])
    acc.add(x_cal[(b, path)])
    rtn = gptq_quantize(W, None, args.bits).dequantize()
    gq = gptq_quantize(W, acc.H, args.bits).dequantize()
    cols = "".join(f" {rel(W, get_module(pb[b], path).packed.dequantize().float(), x_held[(b, path)]):17.4f}"
                   for _, pb in packed)
    print(f"{b:2d}.{path:25s} {rel(W, rtn, x_cal[(b, path)]):8.4f} {rel(W, gq, x_cal[(b, path)]):8.4f} "
          f"{rel(W, rtn, x_held[(b, path)]):8.4f} {rel(W, gq, x_held[(b, path)]):9.4f}{cols}", flush=True)
