"""The block loop: `embed -> blocks -> head`, written once.

Every caller that runs a model — `WanModel.forward`, the guided `Denoiser`, a DualParal pipeline
stage, NFD's cached and uncached passes, training — goes through `run_model`, so a feature cache,
sequence parallelism or a profiler wraps this one function, never a copy of it.

The model contract it relies on (ARCHITECTURE.md "Contracts"):
    embed(lat_BCFHW, t, cond: Conditioning) -> (x_BLD, ctx)
    blocks: nn.ModuleList, block(x_BLD, ctx) -> x_BLD
    head(x_BLD, ctx) -> out_BCFHW
    place(ctx, query_frames, key_frames) -> ctx   positions of queries and of all keys, including
                                                   keys a kv_hook adds from outside (caches, windows)
and `ctx` carries the fields set from outside: `kv_hook`, `mask`, `attn_backend`, `step`, plus
the token grid `grid` = (F', H', W') it reads.

Shape legend: B batch, C channels, F latent frames, H/W latent size, L tokens, D width.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch

from framecast.models.conditioning import Conditioning


def run_model(model, lat_BCFHW: torch.Tensor, t, cond: Conditioning, *,
              layers: Optional[Iterable[int]] = None, x_BLD: Optional[torch.Tensor] = None, head: bool = True,
              attn_backend: str = "sdpa", step: Optional[int] = None,
              prepare: Optional[Callable[[Any], Any]] = None) -> torch.Tensor:
    """embed -> model.blocks[i] for i in `layers` (default: all, in order) -> head.

    lat_BCFHW: latents [B, C, F, H, W]; t: timesteps [B] or per latent frame [B, F'] (sigma·1000).
    x_BLD: hidden states received from an earlier pipeline stage; they replace the embedded ones
        (the embedding still builds the conditioning `ctx` from lat, t and cond).
    head: run the head (-> [B, C_out, F, H, W]) or return the hidden states [B, L, D].
    attn_backend, step: set on ctx before `prepare` (the backend name; the sampler step index,
        passed to attention backends in their per-call metadata).
    prepare(ctx) -> ctx: the caller's adjustments after embedding (kv hook, `model.place`, mask).
    """
    embedded_BLD, ctx = model.embed(lat_BCFHW, t, cond)
    x_BLD = embedded_BLD if x_BLD is None else x_BLD
    ctx.attn_backend, ctx.step = attn_backend, step
    if prepare is not None:
        ctx = prepare(ctx)
    for i in range(len(model.blocks)) if layers is None else layers:
        x_BLD = model.blocks[i](x_BLD, ctx)
    return model.head(x_BLD, ctx) if head else x_BLD
