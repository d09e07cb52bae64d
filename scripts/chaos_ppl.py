"""How much does the perplexity of a packed checkpoint move when its input embeddings are perturbed by
about one fp16 ulp (relative 2^-11, random sign)? Runs the exact torch reference on CPU (or any device).
If this moves the perplexity as much as two backends disagree, the disagreement is explained by the
network amplifying rounding differences, not by a wrong kernel.

    python scripts/chaos_ppl.py PACKED_DIR --seqlen 2048 --max-windows 10 --data-dir ../shared/data [--seeds 0,1]
"""
import argparse

import torch

from quiktool.data import eval_windows, load_rows, tokenize_stream
from quiktool.eval import perplexity
from quiktool.format.checkpoint import load_packed

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--seqlen", type=int, default=2048)
p.add_argument("--max-windows", type=int, default=10)
p.add_argument("--data-dir", default=None)
p.add_argument("--seeds", default="0,1")
p.add_argument("--device", default="cpu")
a = p.parse_args()
dtype = torch.float32 if a.device == "cpu" else torch.float16
model, tok, _ = load_packed(a.model, dtype=dtype, device=a.device, backend="torch")
windows = eval_windows(tokenize_stream(tok, load_rows("wikitext2", "test", a.data_dir)), a.seqlen, a.max_windows)
base = perplexity(model, windows, device=a.device, progress=False).ppl
print(f"unperturbed ppl {base:.4f}")
emb = model.get_input_embeddings()
for s in map(int, a.seeds.split(",")):
    g = torch.Generator(device=a.device).manual_seed(s)
    h = emb.register_forward_hook(
        lambda _m, _i, out: out * (1 + 2 ** -11 * torch.randn(out.shape, generator=g, device=out.device, dtype=out.dtype)))
    r = perplexity(model, windows, device=a.device, progress=False).ppl
    h.remove()
    print(f"seed {s}: perturbed ppl {r:.4f} ({(r - base) / base * 100:+.3f}%)")
