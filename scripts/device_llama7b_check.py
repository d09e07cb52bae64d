"""GPU check: a randomly initialised LLaMA-2-7B-shaped model, QUIK-4B (RTN weights, outliers from
its own activations), perplexity on random-token windows through the torch reference backend and
through the CUDA kernels, on the same GPU in the same process. Exit 1 if they differ by > 0.1%.

    PYTHONPATH=$PWD python3 scripts/device_llama7b_check.py [--layers 32] [--windows 4] [--seqlen 2048]
        [--cpu-reference DIR]

--cpu-reference DIR: also write the quantized model as a packed checkpoint to DIR, load it back on the
GPU (cuda backend) and on the CPU (fp32, torch backend: the CPU reference of the issue) and measure the
same windows with both; the exit status then also requires GPU vs CPU within 0.1%. The CPU run needs
about 27 GB of RAM for the fp32 model (it is meant for the device machine, not a 24 GB CPU box).
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quiktool import api
from quiktool.config import load_config
from quiktool.eval import perplexity
from quiktool.runtime.quik_linear import set_backend

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=32)
p.add_argument("--windows", type=int, default=4)
p.add_argument("--seqlen", type=int, default=2048)
p.add_argument("--config", default="quik-4b")
p.add_argument("--cpu-reference", default=None, metavar="DIR")
args = p.parse_args()

t0 = time.time()
cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg).to(torch.float16).eval()
model.config.use_cache = False
g = torch.Generator().manual_seed(1)
windows = torch.randint(0, cfg.vocab_size, (args.windows, args.seqlen), generator=g)
calib = torch.randint(0, cfg.vocab_size, (2, args.seqlen), generator=g)
print(f"built in {time.time() - t0:.1f} s", flush=True)

fp = perplexity(model, windows, device="cuda", progress=False)
print(f"fp16 ppl {fp.ppl:.4f}", flush=True)
# outlier statistics from the model's own activations (what `calibrate` records)
stats = api.collect_channel_stats(model, calib)
qcfg = load_config(args.config).replace(algorithm="rtn")
t1 = time.time()
api.quantize_model(model, qcfg, stats, None, device="cuda", progress=False)
print(f"quantized ({args.config}, RTN) in {time.time() - t1:.1f} s", flush=True)
res = {}
for be in ("torch", "cuda"):
    set_backend(model, be)
    r = perplexity(model, windows, device="cuda", progress=False)
    res[be] = r
    print(f"{be:5s} backend ppl {r.ppl:.4f}  ({r.seconds:.1f} s, {r.windows} windows x {r.seqlen})", flush=True)
rel = abs(res["cuda"].ppl - res["torch"].ppl) / res["torch"].ppl
print(f"relative difference cuda vs torch: {rel:.2e} (bound 1e-3)")
out = {"device": torch.cuda.get_device_name(0), "layers": args.layers, "windows": args.windows, "seqlen": args.seqlen,
       "config": args.config, "fp16_ppl": fp.ppl, "torch_ppl": res["torch"].ppl, "cuda_ppl": res["cuda"].ppl,
       "rel_diff": rel, "versions": api.versions(), "date": time.strftime("%Y-%m-%d")}
ok = rel <= 1e-3
if args.cpu_reference:
    from quiktool.format.checkpoint import load_packed, save_packed

    t2 = time.time()
    save_packed(args.cpu_reference, model, None, qcfg.to_dict(), overwrite=True)
    del model
    torch.cuda.empty_cache()
    print(f"saved the packed checkpoint in {time.time() - t2:.1f} s", flush=True)
    gpu_model, _, _ = load_packed(args.cpu_reference, dtype=torch.float16, device="cuda", backend="cuda")
    r_gpu = perplexity(gpu_model, windows, device="cuda", progress=False)
    print(f"packed, GPU fp16 cuda backend: ppl {r_gpu.ppl:.4f}", flush=True)
    del gpu_model
    torch.cuda.empty_cache()
    t3 = time.time()
    cpu_model, _, _ = load_packed(args.cpu_reference, dtype=torch.float32, device="cpu", backend="torch")
    print(f"loaded on CPU (fp32) in {time.time() - t3:.1f} s", flush=True)
    r_cpu = perplexity(cpu_model, windows, device="cpu", progress=False)
    rel_cpu = abs(r_gpu.ppl - r_cpu.ppl) / r_cpu.ppl
    print(f"packed, CPU fp32 torch backend (the CPU reference): ppl {r_cpu.ppl:.4f} ({r_cpu.seconds:.0f} s, "
          f"{torch.get_num_threads()} threads)")
    print(f"relative difference GPU cuda vs CPU reference: {rel_cpu:.2e} (bound 1e-3)")
    out.update({"packed_gpu_cuda_ppl": r_gpu.ppl, "packed_cpu_fp32_ppl": r_cpu.ppl, "rel_diff_gpu_vs_cpu": rel_cpu,
                "cpu_seconds": r_cpu.seconds})
    ok = ok and rel_cpu <= 1e-3
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "llama7b_check.json"), "w") as f:
        json.dump(out, f, indent=2)
sys.exit(0 if ok else 1)
