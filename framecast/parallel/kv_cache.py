"""The DualParal feature cache: a stage keeps, per layer, the K/V of the first C own frames of the
block it just ran, and the next block it runs — the older neighbour — attends to them as right
context (DualParal spec §2.5). The cache belongs to the stage, not to the model: the model only
sees `ctx.kv_hook.extend(layer_id, k, v) -> (k, v)`, called after q/k norm and head split and
before RoPE, so cached keys are un-roped and take window-local positions in the reader's window
(the stage sets them with `model.place`, after the window's own keys). Families whose temporal
positions are added to the hidden states (Latte, VDT: `absolute_positions`) cannot be re-placed: the
stage embeds their windows at global frame positions instead (docs/model-zoo.md).

Shape legend: B batch (CFG branches), S key tokens, N heads, H head dim.
"""
from __future__ import annotations

from typing import Optional

import torch


class ContextKVCache:
    """Per-stage store: layer_id -> (k_BSNH, v_BSNH) of the last block's kept frames."""

    def __init__(self):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.frames = 0  # frames held (the keep count of the block that filled it)

    def for_item(self, keep_start_token: int, keep_tokens: int, keep_frames: int, use: bool) -> "ItemHook":
        """A hook for one block-pass. `use`: attend to what the previous block-pass left (it was the
        newer neighbour); the pass then replaces the store with its own frames
        [keep_start_token, keep_start_token + keep_tokens)."""
        extra = self.frames if use else 0
        return ItemHook(self, keep_start_token, keep_tokens, keep_frames, use, extra)

    def clear(self) -> None:
        self.kv.clear()
        self.frames = 0


class ItemHook:
    def __init__(self, cache: ContextKVCache, start: int, tokens: int, frames: int, use: bool, extra: int):
        self.cache, self.start, self.tokens, self.frames, self.use = cache, start, tokens, frames, use
        self.extra_frames = extra  # right-context frames appended to the keys (for the RoPE table)
        cache.frames = frames

    def extend(self, layer_id: int, k_BSNH: torch.Tensor, v_BSNH: torch.Tensor):
        old: Optional[tuple] = self.cache.kv.pop(layer_id, None)
        if self.tokens:
            end = self.start + self.tokens
            # clone: a slice would keep the whole window's K/V alive
            self.cache.kv[layer_id] = (k_BSNH[:, self.start:end].clone(), v_BSNH[:, self.start:end].clone())
        if self.use and old is not None:
            k_BSNH = torch.cat([k_BSNH, old[0]], dim=1)
            v_BSNH = torch.cat([v_BSNH, old[1]], dim=1)
        return k_BSNH, v_BSNH
