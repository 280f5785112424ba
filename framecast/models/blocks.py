"""The block loop: `embed -> blocks -> head`, written once.

Every caller that runs a model — `WanModel.forward`, the guided `Denoiser`, a DualParal pipeline
stage, NFD's cached and uncached passes, training — goes through `run_model`, so a feature cache,
sequence parallelism or a profiler wraps this one function, never a copy of it.

The model contract it relies on (ARCHITECTURE.md "Contracts"):
    embed(lat_BCFHW, t, cond: Conditioning) -> (x_BLD, ctx)
    blocks: nn.ModuleList (or a tuple of wrappers: models/camera.py), block(x_BLD, ctx) -> x_BLD
    head(x_BLD, ctx) -> out_BCFHW
    place(ctx, query_frames, key_frames) -> ctx   positions of queries and of all keys, including
                                                   keys a kv_hook adds from outside (caches, windows)
and `ctx` carries the fields set from outside: `kv_hook`, `mask`, `attention` (the
`AttentionRuntime`), `step`, `block`, `interface` (VIN's global tokens, read as extra keys and values:
framecast/models/vin.py), plus the token grid `grid` = (F', H', W') it reads.

A feature cache (`cache`) wraps the loop over the blocks: it is given the blocks to run and decides,
per block, to compute, reuse or forecast (framecast/models/caches*).

Shape legend: B batch, C channels, F latent frames, H/W latent size, L tokens, D width.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch

from framecast.models.attention import AttentionRuntime
from framecast.models.conditioning import Conditioning


def run_model(model, lat_BCFHW: torch.Tensor, t, cond: Conditioning, *,
              layers: Optional[Iterable[int]] = None, x_BLD: Optional[torch.Tensor] = None, head: bool = True,
              attention: Optional[AttentionRuntime] = None, step: Optional[int] = None, block: int = 0,
              prepare: Optional[Callable[[Any], Any]] = None, cache: Any = None) -> torch.Tensor:
    """embed -> model.blocks[i] for i in `layers` (default: all, in order) -> head.

    lat_BCFHW: latents [B, C, F, H, W]; t: timesteps [B] or per latent frame [B, F'] (sigma·1000).
    x_BLD: hidden states received from an earlier pipeline stage; they replace the embedded ones
        (the embedding still builds the conditioning `ctx` from lat, t and cond).
    head: run the head (-> [B, C_out, F, H, W]) or return the hidden states [B, L, D].
    attention, step, block: set on ctx before `prepare` (the attention runtime, default plain sdpa;
        the sampler step index and the frame block, passed to attention backends in their per-call
        metadata and to the cache as its state key).
    prepare(ctx) -> ctx: the caller's adjustments after embedding (kv hook, `model.place`, mask).
    cache: a feature cache with `run_blocks(model, x_BLD, ctx, layers) -> x_BLD` (None: compute
        every block).
    """
    embedded_BLD, ctx = model.embed(lat_BCFHW, t, cond)
    x_BLD = embedded_BLD if x_BLD is None else x_BLD
    ctx.attention = AttentionRuntime() if attention is None else attention
    ctx.step, ctx.block = step, block
    if prepare is not None:
        ctx = prepare(ctx)
    layers = range(len(model.blocks)) if layers is None else layers
    if cache is not None:
        x_BLD = cache.run_blocks(model, x_BLD, ctx, layers)
    else:
        for i in layers:
            x_BLD = run_block(model, i, x_BLD, ctx)
    return model.head(x_BLD, ctx) if head else x_BLD


def run_block(model, i: int, x_BLD: torch.Tensor, ctx) -> torch.Tensor:
    """Block `i` on x_BLD: the one place a block is called (the loop above and a feature cache,
    which decides per block whether to call it)."""
    return model.blocks[i](x_BLD, ctx)
