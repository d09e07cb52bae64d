"""Localize a backend mismatch: run a randomly initialised LLaMA-2-7B-shaped model (QUIK-4B, RTN), capture
every QuikLinear's real input, and compare the two backends layer by layer on that same input:
activation codes (exact), int32 accumulators (exact), and the layer output (how many elements differ,
which must be 0 since the epilogue is bit-identical, and the relative error).

    PYTHONPATH=$PWD python3 scripts/device_layer_diff.py [--layers 2] [--seqlen 2048]
    PYTHONPATH=$PWD python3 scripts/device_layer_diff.py --packed DIR --data-dir D [--seqlen 2048] [--window 0]
        (a packed checkpoint on a real WikiText-2 window instead of the random model)
"""
import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quiktool import api
from quiktool.config import load_config
from quiktool.runtime import cuda, reference
from quiktool.runtime.quik_linear import QuikLinear, set_backend

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=2)
p.add_argument("--seqlen", type=int, default=2048)
p.add_argument("--packed", default=None, help="packed quiktool checkpoint folder (real model, real text)")
p.add_argument("--data-dir", default=None)
p.add_argument("--window", type=int, default=0)
args = p.parse_args()
if args.packed:
    from quiktool.data import eval_windows, load_rows, tokenize_stream
    from quiktool.format.checkpoint import load_packed

    model, tok, _ = load_packed(args.packed, dtype=torch.float16, device="cuda", backend="torch")
    ids = eval_windows(tokenize_stream(tok, load_rows("wikitext2", "test", args.data_dir)), args.seqlen)
    ids = ids[args.window:args.window + 1].cuda()
else:
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16).eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, cfg.vocab_size, (2, args.seqlen), generator=g)
    ids = torch.randint(0, cfg.vocab_size, (1, args.seqlen), generator=g).cuda()
    api.quantize_model(model, load_config("quik-4b").replace(algorithm="rtn"), api.collect_channel_stats(model, calib),
                       None, device="cuda", progress=False)
inputs = {}
hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: inputs.__setitem__(n, inp[0].detach().clone()))
         for n, m in model.named_modules() if isinstance(m, QuikLinear)]
set_backend(model, "torch")
with torch.no_grad():
    lt = model(ids, use_cache=False).logits.float()
for h in hooks:
    h.remove()
set_backend(model, "cuda")
with torch.no_grad():
    lc = model(ids, use_cache=False).logits.float()
    lc2 = model(ids, use_cache=False).logits.float()
print(f"logits: std torch {lt.std():.4f} cuda {lc.std():.4f}; rel diff {((lc - lt).norm() / lt.norm()):.3e}; "
      f"identical {torch.equal(lc, lt)}; "
      f"cuda run-to-run {((lc - lc2).norm() / lc.norm()):.3e}")
print(f"{'layer':42s} {'M':>5s} {'K':>6s} {'N':>6s} W A  codes  acc   n_diff  rel_out   max|d|")
worst, total_diff = 0.0, 0
for n, m in model.named_modules():
    if not isinstance(m, QuikLinear) or n not in inputs:
        continue
    x = inputs[n].reshape(-1, m.in_features).to(m.dtype).contiguous()
    at = reference.quantize_activations(x, m.keep_idx.long(), m.outlier_idx.long(), m.act_bits)
    ac = cuda.quantize_split(x, m.outlier_idx, m.act_bits)  # what the layer runs
    codes_ok = torch.equal(at.codes, ac.codes) and torch.equal(at.scale, ac.scale) and torch.equal(at.zero, ac.zero)
    acc_ok = torch.equal(reference.int_gemm(at.codes, m.w_rt, m.weight_bits), cuda.int_gemm(at.codes, m.w_rt, m.weight_bits))
    m.backend = "torch"
    yt = m(x).float()
    m.backend = "cuda"
    yc = m(x).float()
    rel = ((yc - yt).norm() / yt.norm()).item()
    n_diff = int((yc != yt).sum())
    worst, total_diff = max(worst, rel), total_diff + n_diff
    if ".layers.0." in n or n_diff or not (codes_ok and acc_ok):
        print(f"{n:42s} {x.shape[0]:5d} {m.in_features:6d} {m.out_features:6d} {m.weight_bits} {m.act_bits}  "
              f"{'ok' if codes_ok else 'DIFF':5s} {'ok' if acc_ok else 'DIFF':5s} {n_diff:6d}  {rel:.2e}  "
              f"{(yc - yt).abs().max():.3e}")
print(f"worst layer rel error {worst:.2e}; differing output elements over all layers: {total_diff}")
