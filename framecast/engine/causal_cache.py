"""The NFD KV cache: per-layer K/V of COMMITTED frames, a bounded window of the newest ones.

A pass over the current frames attends to [window | current]: the model calls
`hook.extend(layer_id, k, v)` after q/k norm and head split and BEFORE RoPE, so the cache holds
un-roped keys and the caller ropes the whole key sequence with window-local positions
0 .. window_frames + current − 1 (`model.place`). Positions therefore never grow with the
rollout: frame 5,000 sees the same position range as frame 40 ("relativistic RoPE", FastVideo
PR #1454; the unbounded-RoPE crash is Causal-Forcing #2). Spec: shared/methods/nfd-vin-streaming.md
§2.3, §7.1.

    cache = CausalKVCache(window=32)
    ctx.kv_hook = cache.reader()          # attend to the window, keep nothing (a denoising step)
    ctx.kv_hook = hook = cache.writer()   # attend to the window and record this pass's K/V
    cache.commit(hook, frames=n)          # append them; frames beyond the window are dropped
    hook = cache.writer(tokens=p * T)     # fused: record only the first p frames of the pass
    mark = cache.snapshot()               # speculation: keep what a rollback needs ...
    cache.rollback(k); cache.release()    # ... discard the last k frames exactly, then let go

Eviction is logical first: the oldest frames leave the window at once but stay in memory while a
snapshot taken before them is held, so `rollback` can restore the exact window tensors.

Shape legend: B batch (CFG branches), S key tokens, T tokens per frame, N heads, H head dim.
"""
from __future__ import annotations

from typing import Optional

import torch


class CacheHook:
    """What a model pass sees as `ctx.kv_hook`: prepends the cache window; a writer also records
    the pass's own (un-roped) K/V per layer for `CausalKVCache.commit`."""

    def __init__(self, cache: "CausalKVCache", record: bool, record_tokens: Optional[int] = None):
        self.cache, self.record, self.record_tokens = cache, record, record_tokens
        self.window_frames = cache.window_frames  # fixed for the pass: the rope/mask were built for it
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def extend(self, layer_id: int, k_BSNH: torch.Tensor, v_BSNH: torch.Tensor):
        if self.record:
            # the pass is over: nothing else holds these; a fused pass keeps only its first tokens
            n = self.record_tokens
            self.kv[layer_id] = (k_BSNH, v_BSNH) if n is None else (k_BSNH[:, :n], v_BSNH[:, :n])
        old = self.cache.window_kv(layer_id, self.window_frames)
        if old is None:
            return k_BSNH, v_BSNH
        k_old, v_old = old
        if k_old.shape[0] != k_BSNH.shape[0] or k_old.shape[2:] != k_BSNH.shape[2:]:
            raise ValueError(f"CausalKVCache layer {layer_id}: cached K/V {tuple(k_old.shape)} do not fit "
                             f"this pass's {tuple(k_BSNH.shape)} (batch, heads and head dim must agree)")
        return torch.cat([k_old, k_BSNH], dim=1), torch.cat([v_old, v_BSNH], dim=1)


class CausalKVCache:
    def __init__(self, window: int = 32):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"CausalKVCache window must be an integer >= 1 (frames), got {window!r}")
        self.window = window  # committed frames a pass attends to (NFD: 32)
        self.frames = 0  # frames committed so far = absolute index of the next frame
        self.frame_tokens: Optional[int] = None  # T, fixed by the first commit
        self._first = 0  # absolute index of the oldest frame held in memory
        self._k: dict[int, torch.Tensor] = {}  # layer -> (B, (frames − _first)·T, N, H)
        self._v: dict[int, torch.Tensor] = {}
        self._holds: list[int] = []  # frame counts of snapshots not yet released

    # ---- reading ------------------------------------------------------------------------------

    @property
    def window_frames(self) -> int:
        """Committed frames the next pass attends to (<= window)."""
        return min(self.window, self.frames)

    @property
    def window_start(self) -> int:
        """Absolute index of the oldest frame in the window."""
        return self.frames - self.window_frames

    @property
    def held_frames(self) -> int:
        """Frames held in memory (the window plus what open snapshots keep for a rollback)."""
        return self.frames - self._first

    def window_kv(self, layer_id: int, frames: Optional[int] = None):
        """(k_BSNH, v_BSNH) views of the newest `frames` (default: the window) committed frames of a
        layer, or None when nothing is committed."""
        frames = self.window_frames if frames is None else frames
        if frames == 0 or layer_id not in self._k:
            if frames and self._k:
                raise KeyError(f"CausalKVCache: no K/V for layer {layer_id}; cached layers: {sorted(self._k)}")
            return None
        start = (self.frames - frames - self._first) * self.frame_tokens
        return self._k[layer_id][:, start:], self._v[layer_id][:, start:]

    def reader(self) -> CacheHook:
        return CacheHook(self, record=False)

    def writer(self, tokens: Optional[int] = None) -> CacheHook:
        """A hook that records the pass's K/V for `commit`: all of them, or only the first `tokens`
        (a fused pass: frames to commit first, then frames denoised on top of them)."""
        if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
            raise ValueError(f"writer: tokens must be a positive integer or None, got {tokens!r}")
        return CacheHook(self, record=True, record_tokens=tokens)

    # ---- writing ------------------------------------------------------------------------------

    def commit(self, hook: CacheHook, frames: int) -> None:
        """Append the `frames` frames a writer pass recorded (its whole query chunk, oldest first)."""
        if not hook.record or hook.cache is not self:
            raise ValueError("commit needs a writer() hook of this cache")
        if hook.window_frames != self.window_frames:
            raise RuntimeError("commit: the cache changed between the writer pass and its commit")
        if not hook.kv:
            raise ValueError("commit: the writer hook recorded nothing (was it passed as ctx.kv_hook?)")
        if self._k and set(hook.kv) != set(self._k):
            raise ValueError(f"commit: recorded layers {sorted(hook.kv)} differ from cached {sorted(self._k)}")
        tokens = next(iter(hook.kv.values()))[0].shape[1]
        if frames < 1 or tokens % frames:
            raise ValueError(f"commit: {tokens} recorded tokens do not split into {frames} frames")
        if self.frame_tokens is None:
            self.frame_tokens = tokens // frames
        elif tokens != frames * self.frame_tokens:
            raise ValueError(f"commit: {tokens} tokens for {frames} frames; the cache holds "
                             f"{self.frame_tokens} tokens per frame")
        for layer, (k, v) in hook.kv.items():
            if layer in self._k:
                k, v = torch.cat([self._k[layer], k], dim=1), torch.cat([self._v[layer], v], dim=1)
            self._k[layer], self._v[layer] = k, v
        self.frames += frames
        hook.kv = {}
        self._trim()

    def _trim(self) -> None:
        # Keep the window, and for each open snapshot the window a rollback to it would need.
        keep_from = min([self.frames, *self._holds]) - self.window
        drop = keep_from - self._first
        if drop > 0:
            cut = drop * self.frame_tokens
            for layer in self._k:
                # a view: the next commit's cat copies only what is kept
                self._k[layer], self._v[layer] = self._k[layer][:, cut:], self._v[layer][:, cut:]
            self._first = keep_from

    # ---- speculation --------------------------------------------------------------------------

    def snapshot(self) -> int:
        """Mark a restore point; until `release()`, frames it needs are not evicted. Returns the
        committed frame count at this point."""
        self._holds.append(self.frames)
        return self.frames

    def release(self) -> None:
        """Drop the newest snapshot (its frames may now be evicted)."""
        if not self._holds:
            raise RuntimeError("release: no snapshot is held")
        self._holds.pop()
        self._trim()

    def rollback(self, n: int) -> None:
        """Discard the newest n committed frames; the window is then exactly what it was before
        they were committed (needs a snapshot taken before them if they pushed frames out)."""
        if not isinstance(n, int) or not 0 <= n <= self.frames:
            raise ValueError(f"rollback: n must be an integer in [0, {self.frames}], got {n!r}")
        target = self.frames - n
        if max(0, target - self.window) < self._first:
            raise ValueError(f"rollback({n}): frames from {max(0, target - self.window)} were evicted (oldest "
                             f"held: {self._first}); take snapshot() before committing frames to roll back")
        end = (target - self._first) * (self.frame_tokens or 0)
        for layer in self._k:
            self._k[layer], self._v[layer] = self._k[layer][:, :end], self._v[layer][:, :end]
        self.frames = target
        self._holds = [min(h, target) for h in self._holds]
        if target == 0:
            self._k.clear(), self._v.clear()

    def window_state(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """layer -> (k, v) of the window, for comparisons (views; clone to keep)."""
        return {layer: self.window_kv(layer) for layer in self._k} if self.window_frames else {}
