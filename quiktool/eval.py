"""Perplexity over non-overlapping windows (GPTQ/QUIK protocol): ppl = exp(mean token NLL)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class PplResult:
    ppl: float
    nll: float
    windows: int
    tokens: int
    seqlen: int
    seconds: float


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device: str | torch.device = "cpu", progress: bool = True) -> PplResult:
    """``windows`` int64 [n, L]. Each window predicts its L - 1 next tokens; every window weighs the same."""
    t0 = time.perf_counter()
    n, L = windows.shape
    total = 0.0
    for i in tqdm(range(n), desc="perplexity", unit="win", disable=not progress, leave=False):
        ids = windows[i:i + 1].to(device)
        logits = model(ids, use_cache=False).logits[0, :-1].float()    # [L-1, V]
        total += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    tokens = n * (L - 1)
    nll = total / tokens
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    return PplResult(ppl=math.exp(nll), nll=nll, windows=n, tokens=tokens, seqlen=L, seconds=time.perf_counter() - t0)
