"""A pipeline stage: a contiguous shard of the model's blocks plus the stage's feature cache.

Every stage runs the one block loop (`framecast.models.blocks.run_model`) over its own layers:
it rebuilds the per-item conditioning (timestep modulation, text projection, positions) with
`model.embed` — cheap next to the blocks — so only the hidden states travel between stages. The
first stage feeds real latents; later stages feed zeros of the same shape (only `ctx` is used)
and the received hidden states. The stage owns the feature cache; the model places the cached
keys (`model.place`), so the stage knows no model family's position tables.
Shape legend: B batch (CFG branches), L tokens, D width, C channels, F frames, H/W latent size.
"""
from __future__ import annotations

import torch
from torch import nn

from framecast.models.attention import check_backend
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.parallel.kv_cache import ContextKVCache


def split_layers(num_layers: int, workers: int, explicit: list[int] | None = None) -> list[range]:
    """Contiguous layer ranges per worker; by default as even as possible, the remainder one each
    to the lowest ranks."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"layer split: workers must be an integer >= 1, got {workers!r}")
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
    """Layers `layers` of `model` (the others may be pruned); `first` embeds the latents, `last`
    runs the head; attention through the backend named `attn_backend`."""

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool, attn_backend: str = "sdpa"):
        check_backend(attn_backend)
        self.model, self.layers, self.first, self.last = model, layers, first, last
        self.attn_backend = attn_backend
        self.cache = ContextKVCache()

    @torch.no_grad()
    def run(self, x_BCFHW: torch.Tensor, t, text_BSD: torch.Tensor, *, context_frames: int,
            keep_frames: int, use_cache: bool, x_BLD: torch.Tensor | None = None) -> torch.Tensor:
        """One block-pass through this stage's layers. The window is [context | own frames];
        returns hidden states (not last) or the model output for the whole window (last)."""
        if not self.first and x_BLD is None:
            raise ValueError("StageRunner.run: a stage after the first needs the received hidden states x_BLD")

        def prepare(ctx):
            f, h, w = ctx.grid
            hook = self.cache.for_item(context_frames * h * w, keep_frames * h * w, keep_frames, use_cache)
            ctx.kv_hook = hook
            if hook.extra_frames:  # the right context is appended after the window's own keys
                frames = torch.arange(f + hook.extra_frames, device=x_BCFHW.device)
                ctx = self.model.place(ctx, frames[:f], frames)
            return ctx

        return run_model(self.model, x_BCFHW, t, Conditioning(text_BSD), layers=self.layers,
                         x_BLD=None if self.first else x_BLD, head=self.last,
                         attn_backend=self.attn_backend, prepare=prepare)
