"""A pipeline stage: a contiguous shard of the model's blocks plus the stage's feature cache.

Every stage rebuilds the per-item conditioning (timestep modulation, text projection, RoPE) with
`model.embed` — cheap next to the blocks — so only the hidden states travel between stages. The
first stage feeds real latents; later stages feed zeros of the same shape (only `ctx` is used).
Shape legend: B batch (CFG branches), L tokens, D width, C channels, F frames, H/W latent size.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from framecast.parallel.kv_cache import ContextKVCache


def split_layers(num_layers: int, workers: int, explicit: list[int] | None = None) -> list[range]:
    """Contiguous layer ranges per worker; by default as even as possible, the remainder one each
    to the lowest ranks."""
    if explicit:
        counts = list(explicit)
    else:
        base, extra = divmod(num_layers, workers)
        counts = [base + (1 if r < extra else 0) for r in range(workers)]
    if len(counts) != workers or sum(counts) != num_layers or min(counts) < 1:
        raise ValueError(f"layer split {counts} must give {workers} workers >= 1 layer each, "
                         f"summing to {num_layers}")
    starts = [sum(counts[:r]) for r in range(workers)]
    return [range(s, s + c) for s, c in zip(starts, counts)]


def prune_blocks(model: nn.Module, keep: range) -> None:
    """Free the blocks this stage does not run (the module tree keeps its indices)."""
    for i in range(len(model.blocks)):
        if i not in keep:
            model.blocks[i] = nn.Identity()


class StageRunner:
    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool):
        self.model, self.layers, self.first, self.last = model, layers, first, last
        self.cache = ContextKVCache()

    @torch.no_grad()
    def run(self, x_BCFHW: torch.Tensor, t, text_BSD: torch.Tensor, *, context_frames: int,
            keep_frames: int, use_cache: bool, x_BLD: torch.Tensor | None = None) -> torch.Tensor:
        """One block-pass through this stage's layers. The window is [context | own frames];
        returns hidden states (not last) or the model output for the whole window (last)."""
        embedded, ctx = self.model.embed(x_BCFHW, t, text_BSD)
        if self.first:
            x_BLD = embedded
        f, h, w = ctx.grid
        hw = h * w
        hook = self.cache.for_item(context_frames * hw, keep_frames * hw, keep_frames, use_cache)
        keys = torch.arange(f + hook.extra_frames, device=x_BLD.device)
        rope_k = self.model.rope_table(keys, h, w, device=x_BLD.device) if hook.extra_frames else ctx.rope_k
        ctx = dataclasses.replace(ctx, kv_hook=hook, rope_k=rope_k)
        for i in self.layers:
            x_BLD = self.model.blocks[i](x_BLD, ctx)
        return self.model.head(x_BLD, ctx) if self.last else x_BLD
