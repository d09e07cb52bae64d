"""The generic layer-by-layer runner: capture the inputs of block 0 once, then run one block at a time.

Only one decoder block needs to sit on the compute device at a time, so calibration and GPTQ fit
models far larger than the device. Usage:

    runner = LayerRunner(model, adapter, windows, device)
    for i, block in runner:          # block i is on `device`, runner.inps are its inputs
        runner.forward(block)        # run block i over all windows (forward hooks fire)
        ...                          # quantize / swap linears inside the block
    # leaving the loop body advances: the block's outputs become block i+1's inputs
    # (set runner.next_inps = runner.forward(block) when the body already ran the final block)

Assumption: every window has the same length and no padding, so the extra arguments the model
passes to its blocks (masks, rotary embeddings, positions) are the same for each window and are
captured once.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from quiktool.models.adapters import Adapter, blocks as get_blocks, set_module


class _Stop(Exception):
    pass


class LayerRunner:
    def __init__(self, model: nn.Module, adapter: Adapter, windows: torch.Tensor, device: str | torch.device = "cpu",
                 store_device: str | torch.device = "cpu"):
        self.model, self.adapter, self.device = model, adapter, torch.device(device)
        self.store = torch.device(store_device)
        self.blocks = get_blocks(model, adapter)
        self.inps, self.kwargs = self._capture(windows)   # inps [n, L, H]

    @torch.no_grad()
    def _capture(self, windows: torch.Tensor):
        model, blocks = self.model, self.blocks
        # everything but the blocks onto the device (embeddings, rotary, norms, head)
        set_module(model, self.adapter.blocks, nn.ModuleList())
        model.to(self.device)
        set_module(model, self.adapter.blocks, blocks)
        captured: list[torch.Tensor] = []
        kwargs: dict = {}

        def hook(_mod, args, kw):
            hs = args[0] if args else kw["hidden_states"]
            captured.append(hs.detach().to(self.store))
            if not kwargs:
                kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
            raise _Stop

        h = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for w in windows:
                try:
                    model(w[None].to(self.device), use_cache=False)
                except _Stop:
                    pass
        finally:
            h.remove()
        return torch.cat(captured), kwargs

    @torch.no_grad()
    def forward(self, block: nn.Module) -> torch.Tensor:
        """Run ``block`` over every captured window -> outputs [n, L, H] on the store device."""
        outs = torch.empty_like(self.inps)
        for j in range(self.inps.shape[0]):
            out = block(self.inps[j:j + 1].to(self.device), **self.kwargs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            outs[j:j + 1] = out.to(self.store)
        return outs

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self):
        for i, block in enumerate(self.blocks):
            block.to(self.device)
            self.next_inps = None
            yield i, block
            # the body may hand over outputs it already computed with an unchanged block
            self.inps = self.next_inps if self.next_inps is not None else self.forward(block)
            if self.device.type != "cpu":
                block.to("cpu")
