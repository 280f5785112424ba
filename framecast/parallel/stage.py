"""A pipeline stage: a contiguous shard of the model's blocks plus the stage's feature cache.

Every stage runs the one block loop (`framecast.models.blocks.run_model`) over its own layers:
it rebuilds the per-item conditioning (timestep modulation, text projection, positions) with
`model.embed` — cheap next to the blocks — so only the hidden states travel between stages. The
first stage feeds real latents; later stages feed zeros of the same shape (only `ctx` is used)
and the received hidden states. The stage owns the feature cache; the model places the cached
keys (`model.place`), so the stage knows no model family's position tables.

With a step cache (`features`, framecast/models/caches) the stage keeps that cache's state for its
own layers, per live frame block (each block is at its own step). A pass that skips layers does
not record their right-context K/V; the older neighbour then attends to the K/V those layers
kept at the block's last computed pass (`kv_kept`, per block and layer), the same staleness
as the reused residual, instead of another block's.
Shape legend: B batch (CFG branches), L tokens, D width, C channels, F frames, H/W latent size.
"""
from __future__ import annotations

import torch
from torch import nn

from framecast.models.attention import AttentionRuntime, check_backend
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
    runs the head; attention through `attention` (the worker's runtime; `new_request` gives it a
    fresh per-request state)."""

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool,
                 attention: AttentionRuntime | None = None, features=None):
        self.attention = AttentionRuntime() if attention is None else attention
        check_backend(self.attention.backend)
        self.model, self.layers, self.first, self.last = model, layers, first, last
        self.cache = ContextKVCache()
        self.features = features  # the feature cache of this stage's layers (None: cache.kind=none)
        self.kv_kept: dict[int, dict] = {}  # frame block -> layer -> right-context (k, v) of its last computed pass

    def new_request(self) -> None:
        """Forget the previous request's backend and feature-cache state."""
        self.attention = self.attention.for_request()
        self.kv_kept.clear()
        if self.features is not None:
            self.features.new_request()

    @torch.no_grad()
    def run(self, x_BCFHW: torch.Tensor, t, text_BSD: torch.Tensor, *, context_frames: int,
            keep_frames: int, use_cache: bool, x_BLD: torch.Tensor | None = None,
            step: int | None = None, block: int = 0, given: bool | None = None,
            first_frame: int = 0) -> torch.Tensor:
        """One block-pass through this stage's layers. The window is [context | own frames];
        returns hidden states (not last) or the model output for the whole window (last).
        step, block: the block's sampler step and index (attention metadata, state keys).
        given: the feature cache's decision for this pass, received from the first stage (later
        stages); the first stage's own decision is `features.decided` afterwards.
        first_frame: the window's first latent frame in the video; a family with `absolute_positions`
        embeds the window at those global positions (so the right-context K/V it keeps for the older
        neighbour carry the positions that neighbour sees them at), a rotary one at 0.. (its keys are
        placed by `model.place`, after the window's own)."""
        if not self.first and x_BLD is None:
            raise ValueError("StageRunner.run: a stage after the first needs the received hidden states x_BLD")

        def prepare(ctx):
            f, h, w = ctx.grid
            hook = self.cache.for_item(context_frames * h * w, keep_frames * h * w, keep_frames, use_cache)
            ctx.kv_hook = hook if self.features is None else _Recording(hook, seen)
            if hook.extra_frames or absolute:  # the right context is appended after the window's own keys
                frames = torch.arange(f + hook.extra_frames, device=x_BCFHW.device) + (first_frame if absolute else 0)
                ctx = self.model.place(ctx, frames[:f], frames)
            return ctx

        seen: set[int] = set()  # layers whose K/V this pass recorded
        if self.features is not None:
            self.features.given = given
        absolute = getattr(self.model, "absolute_positions", False)
        positions = torch.arange(x_BCFHW.shape[2]) + first_frame if absolute else None
        out = run_model(self.model, x_BCFHW, t, Conditioning(text_BSD, frame_positions=positions), layers=self.layers,
                        x_BLD=None if self.first else x_BLD, head=self.last, attention=self.attention,
                        step=step, block=block, prepare=prepare, cache=self.features)
        if self.features is not None:
            self._keep_kv(block, step, seen)
        return out

    def _keep_kv(self, block: int, step: int | None, seen: set[int]) -> None:
        """Remember the right-context K/V of the layers this pass computed; for the layers it skipped,
        put back what they kept at the block's last computed pass."""
        kept = self.kv_kept.setdefault(block, {})
        for layer in self.layers:
            if layer in seen:
                kept[layer] = self.cache.kv.get(layer)
            elif kept.get(layer) is not None:
                self.cache.kv[layer] = kept[layer]
            else:
                self.cache.kv.pop(layer, None)
        if step is not None and step >= self.features.steps - 1:
            self.kv_kept.pop(block, None)  # the block's last step: nothing reads its K/V state again


class _Recording:
    """A kv_hook that notes which layers called it (the others were skipped by the feature cache)."""

    def __init__(self, hook, seen: set[int]):
        self.hook, self.seen, self.extra_frames = hook, seen, hook.extra_frames

    def extend(self, layer_id: int, k_BSNH: torch.Tensor, v_BSNH: torch.Tensor):
        self.seen.add(layer_id)
        return self.hook.extend(layer_id, k_BSNH, v_BSNH)
