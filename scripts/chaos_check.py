"""Is a model-level backend difference explained by amplification of 1-ulp differences through 4-bit
activation rounding? Torch backend only (CPU): perturb the input embeddings by ~1 ulp (fp16-sized)
and compare how far the logits move, for the FP model and for its QUIK-4B (RTN) version.

    python scripts/chaos_check.py [--hidden 4096 --inter 11008 --layers 2 --seqlen 256 --trained PATH]
"""
import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quiktool import api
from quiktool.config import load_config

p = argparse.ArgumentParser()
p.add_argument("--hidden", type=int, default=4096)
p.add_argument("--inter", type=int, default=11008)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--seqlen", type=int, default=256)
p.add_argument("--trained", default=None, help="a real model folder instead of a random one")
a = p.parse_args()
torch.manual_seed(0)
if a.trained:
    from quiktool.models.loading import load_model

    model = load_model(a.trained)[0]
else:
    model = LlamaForCausalLM(LlamaConfig(hidden_size=a.hidden, intermediate_size=a.inter, num_hidden_layers=a.layers,
                                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)).eval()
V = model.config.vocab_size
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, V, (1, a.seqlen), generator=g)
emb = model.get_input_embeddings()(ids).detach()
noise = emb * (2 ** -11) * torch.randn(emb.shape, generator=g)  # ~1 fp16 ulp per element


def logits(m, e):
    with torch.no_grad():
        return m(inputs_embeds=e, use_cache=False).logits.float()


def rel(x, y):
    return ((x - y).norm() / y.norm()).item()


fp, fp_p = logits(model, emb), logits(model, emb + noise)
api.quantize_model(model, load_config("quik-4b").replace(algorithm="rtn"),
                   api.collect_channel_stats(model, torch.randint(0, V, (2, a.seqlen), generator=g)), None, progress=False)
q, q_p = logits(model, emb), logits(model, emb + noise)
print(f"FP model:        1-ulp input perturbation moves logits by {rel(fp_p, fp):.2e}")
print(f"QUIK-4B (torch): 1-ulp input perturbation moves logits by {rel(q_p, q):.2e}")
print(f"QUIK-4B vs FP:   logits differ by {rel(q, fp):.2e}")
