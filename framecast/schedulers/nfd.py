"""NFD: next-frame diffusion for interactive play (spec: shared/methods/nfd-vin-streaming.md §2).

A block is ONE latent frame. Frame f is denoised with the sampler's few steps (4 by default) on
top of a KV cache of committed frames (block-causal: it sees itself and the cached window, never
later frames), conditioned on its discrete action (`actions[f]` moves the player INTO frame f,
as in `framecast.world.scenes`). Timesteps are per frame (`t_BF`): the chunk being denoised sits
at the sampler's level while its context sits in the cache at the context level.

Design choices
- Commit = one extra clean pass. After the last step a frame's K/V are recorded by running the
  model once more on the finished frame at t = context_sigma·1000 (Self-Forcing's scheme).
  Recording the last denoising step instead would save that pass but cache K/V of a frame at
  sigma_{T−1} (≈ 0.3-0.6 with 4 shifted steps), which the model never saw as context in training.
- Fused commits (`fuse_commit`): a finished frame's commit pass can instead ride on the next
  chunk's first denoising step — one pass over [finished frames at σc | new frames at σ_0],
  block-causal, recording only the finished frames' K/V. The new frames see exactly the K/V the
  separate pass would have written (same inputs, same mask; equal to float rounding), so the
  video is the same while a frame costs T passes instead of T + 1 (the first one wider).
  Finished frames wait in `pending` until then; a speculative rollback drops pending drafts
  without touching the cache.
- Context noise (`context_sigma`, default 0.0): the commit pass sees
  (1 − σc)·x + σc·ε_ctx(seed, f) at timestep σc·1000 (GameNGen / NFD anti-drift trick). 0 means
  clean context, the identity choice until the trained tiny-play model says it needs noise; a
  model trained with context noise wants the same small σc (e.g. 0.02-0.1) here.
- Noise is a pure function of (seed, frame index): `frame_noise`, drawn from a generator seeded
  with a hash of both. Chunking, speculation and rollback therefore never change a frame's noise.
- Positions are window-local (see `framecast.engine.causal_cache`): rollouts have no length limit.

The plan (`nfd_plan`) is data: chunks of frames denoised together, tested without a model. Plain
NFD is one frame per chunk; speculative drafting (`schedulers/speculative.py`) drafts `draft`
frames under one action and keeps the prefix the real actions confirm.

Shape legend: B batch (CFG branches), C latent channels, F frames in the chunk, H/W latent size,
L tokens, S text tokens, D width; lat_* latents, t_BF timesteps (sigma·1000).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from framecast.engine.causal_cache import CacheHook, CausalKVCache
from framecast.models.attention import BlockCausal
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NfdChunk:
    start: int    # absolute index of the chunk's first frame
    frames: int   # frames denoised together (drafted); each gets the sampler's T steps + 1 commit pass
    keep: int     # frames kept (a prefix); frames[keep:] are discarded and rolled back
    action: int   # action id every frame of the chunk is denoised with
    context: int  # committed frames the chunk attends to (<= window)


def nfd_plan(actions: Sequence[int], window: int = 32, draft: int = 1) -> list[NfdChunk]:
    """Chunks for a rollout of len(actions) frames. Each chunk drafts min(draft, frames left)
    frames under the action of its first frame and keeps them while the real actions repeat it;
    the next chunk starts at the first frame not kept. draft=1 is plain next-frame diffusion."""
    if draft < 1 or window < 1:
        raise ValueError(f"nfd_plan: draft and window must be >= 1, got draft={draft}, window={window}")
    chunks, f, total = [], 0, len(actions)
    while f < total:
        n = min(draft, total - f)
        keep = 1
        while keep < n and actions[f + keep] == actions[f]:
            keep += 1
        chunks.append(NfdChunk(start=f, frames=n, keep=keep, action=int(actions[f]), context=min(window, f)))
        f += keep
    return chunks


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------

def frame_seed(seed: int, frame: int, stream: str = "noise") -> int:
    """A 64-bit generator seed for one frame's noise; `stream` separates independent draws."""
    digest = hashlib.blake2b(f"nfd-{stream}:{seed}:{frame}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def frame_noise(seed: int, frame: int, shape_CHW: Sequence[int], stream: str = "noise") -> torch.Tensor:
    """Gaussian noise [C, H, W] float32 of one frame: a function of (seed, frame, stream) only."""
    g = torch.Generator("cpu").manual_seed(frame_seed(seed, frame, stream))
    return torch.randn(tuple(shape_CHW), generator=g, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# One model pass on top of the cache
# ---------------------------------------------------------------------------------------------

def forward_on_cache(model, lat_BCFHW: torch.Tensor, t_BF: torch.Tensor, text_BSD: torch.Tensor,
                     actions_BF: Optional[torch.Tensor], hook: CacheHook, attention=None,
                     step: Optional[int] = None, block: int = 0):
    """The model's prediction [B, C, F, H, W] for F frames placed after the hook's cache window:
    block-causal among themselves, keys placed at window-local positions 0 .. window + F − 1, and
    each frame sees at most the cache's `window` frames before it (a chunk of drafts sees, frame
    by frame, what plain NFD would: relative offsets stay within the trained range). `step`: the
    sampler step index (None for a commit pass), for the attention backend's metadata."""
    if model.patch_size[0] != 1:
        raise ValueError(f"NFD needs one latent frame per token frame (patch_size[0] = 1), got {model.patch_size}")

    def prepare(ctx):
        f, h, w = ctx.grid
        c = hook.window_frames
        frames = torch.arange(c + f, device=lat_BCFHW.device)  # [cached window | this chunk]
        ctx = model.place(ctx, frames[c:], frames)
        ctx.mask = BlockCausal(frame_tokens=h * w, q_start_frame=c, window=hook.cache.window)
        ctx.kv_hook = hook
        return ctx

    return run_model(model, lat_BCFHW, t_BF, Conditioning(text_BSD, actions_BF), attention=attention,
                     step=step, block=block, prepare=prepare)


# ---------------------------------------------------------------------------------------------
# Rollout
# ---------------------------------------------------------------------------------------------

class NfdRollout:
    """Frame-by-frame generation state: the model, the conditioning, the KV cache and the seed.

    model: a WanModel (contract embed/blocks/head) with num_actions > 0; denoiser: an
    `engine.denoise.Denoiser` (text conditioning, CFG batching and combination); new_sampler: a
    function returning a fresh sampler with its timesteps set (`components.sampler_factory`);
    frame_shape: latent (C, H, W)."""

    def __init__(self, model, denoiser, new_sampler: Callable, frame_shape: Sequence[int], *, seed: int = 0,
                 window: int = 32, context_sigma: float = 0.0,
                 num_train_timesteps: int = 1000, fuse_commit: bool = False):
        if not 0.0 <= context_sigma < 1.0:
            raise ValueError(f"context_sigma must be in [0, 1), got {context_sigma}")
        self.model, self.denoiser, self.new_sampler = model, denoiser, new_sampler
        self.frame_shape = tuple(frame_shape)
        self.seed, self.context_sigma = seed, float(context_sigma)
        self.num_train_timesteps = num_train_timesteps
        self.cache = CausalKVCache(window)  # validates window
        self.window = window
        self.fuse_commit = bool(fuse_commit)
        self.pending: list[tuple[torch.Tensor, int]] = []  # fused: (latents [1, C, 1, H, W] at σc, action id)
        self.forwards = 0  # model passes run (denoising steps + commit passes), for FPS accounting

    @property
    def next_frame(self) -> int:
        """Absolute index of the next frame: committed frames plus those pending a fused commit."""
        return self.cache.frames + len(self.pending)

    def _noise(self, start: int, n: int, stream: str) -> torch.Tensor:
        frames = [frame_noise(self.seed, start + i, self.frame_shape, stream) for i in range(n)]
        return torch.stack(frames, dim=1)[None].to(self.denoiser.device)  # (1, C, n, H, W)

    @torch.no_grad()
    def _predict(self, lat_1CFHW: torch.Tensor, t_F: torch.Tensor, actions: Sequence[int], hook,
                 step: Optional[int] = None) -> torch.Tensor:
        x, t_BF, text = self.denoiser.inputs(lat_1CFHW, t_F)
        actions_BF = self._actions_BF(actions, x)
        self.forwards += 1
        out = forward_on_cache(self.model, x, t_BF, text, actions_BF, hook, self.denoiser.attention, step=step,
                               block=self.next_frame)
        return self.denoiser.combine(out).float()

    def _actions_BF(self, actions: Sequence[int], x_BCFHW: torch.Tensor) -> Optional[torch.Tensor]:
        """Action ids [B, F] per CFG branch; None for a model without actions (num_actions=0),
        which runs NFD on its prompt alone."""
        if self.model.action_embedder is None:
            return None
        return torch.tensor(list(actions), device=x_BCFHW.device)[None].expand(x_BCFHW.shape[0], -1)

    def denoise(self, start: int, actions: Sequence[int]) -> torch.Tensor:
        """Denoise frames start .. start + len(actions) − 1 together on top of the cache (which,
        with the pending frames, must hold exactly the frames before `start`); returns their
        latents [1, C, n, H, W] float32. Pending frames are committed in the first pass; the new
        frames are not."""
        if start != self.next_frame:
            raise RuntimeError(f"denoise: frame {start} requested but the next frame is {self.next_frame} "
                               f"({self.cache.frames} committed, {len(self.pending)} pending)")
        n = len(actions)
        lat = self._noise(start, n, "noise")
        sampler = self.new_sampler()
        for i, t in enumerate(sampler.timesteps):
            if i == 0 and self.pending:
                velocity = self._predict_committing(lat, t.expand(n), actions)
            else:
                velocity = self._predict(lat, t.expand(n), actions, self.cache.reader(), step=i)
            lat = sampler.step(velocity, t, lat)
        return lat

    def commit(self, start: int, lat_1CFHW: torch.Tensor, actions: Sequence[int]) -> None:
        """Record the K/V of finished frames (one pass at the context noise level) into the cache;
        with fuse_commit, queue them for the next pass instead."""
        n = len(actions)
        if start != self.next_frame or lat_1CFHW.shape[2] != n:
            raise RuntimeError(f"commit: frames {start}..{start + n - 1} do not follow the {self.next_frame} "
                               f"frames so far (or the latents are not {n} frames)")
        lat_1CFHW = self._as_context(start, lat_1CFHW)
        if self.fuse_commit:
            self.pending += [(lat_1CFHW[:, :, i:i + 1], int(a)) for i, a in enumerate(actions)]
            return
        self._commit_pass(lat_1CFHW, actions)

    def flush(self) -> None:
        """Commit the pending frames now, in a pass of their own (fuse_commit; else nothing to do)."""
        if self.pending:
            self._commit_pass(torch.cat([p for p, _ in self.pending], dim=2), [a for _, a in self.pending])
            self.pending = []

    def _commit_pass(self, ctx_1CFHW: torch.Tensor, actions: Sequence[int]) -> None:
        """One pass over frames already at the context level, recording their K/V into the cache."""
        n = ctx_1CFHW.shape[2]
        t_F = torch.full((n,), self.context_sigma * self.num_train_timesteps, device=ctx_1CFHW.device)
        hook = self.cache.writer()
        self._predict(ctx_1CFHW, t_F, actions, hook)
        self.cache.commit(hook, frames=n)

    def rollback(self, n: int) -> None:
        """Discard the newest n frames: pending ones first (never committed), then the cache's."""
        if not isinstance(n, int) or not 0 <= n <= self.next_frame:
            raise ValueError(f"rollback: n must be an integer in [0, {self.next_frame}], got {n!r}")
        dropped = min(n, len(self.pending))
        self.pending = self.pending[:len(self.pending) - dropped]
        if n > dropped:
            self.cache.rollback(n - dropped)

    def _as_context(self, start: int, lat_1CFHW: torch.Tensor) -> torch.Tensor:
        """Finished frames as the cache sees them: (1 − σc)·x + σc·ε_ctx(seed, f)."""
        sc = self.context_sigma
        if sc == 0:
            return lat_1CFHW
        return (1 - sc) * lat_1CFHW + sc * self._noise(start, lat_1CFHW.shape[2], "context")

    def _predict_committing(self, lat_1CFHW: torch.Tensor, t_F: torch.Tensor, actions: Sequence[int]) -> torch.Tensor:
        """One fused pass: the pending frames at σc (their K/V recorded and committed) followed by
        the chunk at t_F, block-causal; returns the chunk's velocity."""
        ctx = torch.cat([p for p, _ in self.pending], dim=2)
        p = ctx.shape[2]
        ph, pw = self.model.patch_size[1:]
        frame_tokens = (lat_1CFHW.shape[3] // ph) * (lat_1CFHW.shape[4] // pw)
        t_ctx = torch.full((p,), self.context_sigma * self.num_train_timesteps, device=t_F.device)
        hook = self.cache.writer(tokens=p * frame_tokens)
        out = self._predict(torch.cat([ctx, lat_1CFHW], dim=2), torch.cat([t_ctx, t_F.to(t_ctx.dtype)]),
                            [a for _, a in self.pending] + list(actions), hook, step=0)
        self.cache.commit(hook, frames=p)
        self.pending = []
        return out[:, :, p:]

    def run(self, plan: Sequence[NfdChunk]) -> Iterator[torch.Tensor]:
        """Execute a plan without speculation: only the kept frames of each chunk are computed.
        Yields each frame's latents [1, C, 1, H, W] in order."""
        for chunk in plan:
            actions = [chunk.action] * chunk.keep
            lat = self.denoise(chunk.start, actions)
            self.commit(chunk.start, lat, actions)
            for i in range(chunk.keep):
                yield lat[:, :, i:i + 1]

    def generate(self, actions: Sequence[int]) -> Iterator[torch.Tensor]:
        """Plain NFD: one frame at a time, frame f under actions[f]."""
        return self.run(nfd_plan(actions, self.window, draft=1))


class NfdRolloutNoCache(NfdRollout):
    """The same rollout without a KV cache (the baseline the cache is measured against): it keeps
    the committed frames' latents (at the context noise level) and every denoising pass recomputes
    [window | new frame] under the block-causal mask; a commit costs no pass. Until the window
    first slides this makes the cached rollout's frames (a committed frame's K/V then come from the
    same context either way); after that each window frame is re-encoded on the truncated window
    only. No rollback: speculation needs `NfdRollout`; commits cost no pass, so there is nothing
    to fuse (fuse_commit is ignored)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = None
        self._window: list[tuple[torch.Tensor, int]] = []  # (latents [1, C, 1, H, W] at σc, action id)
        self._frames = 0

    def denoise(self, start: int, actions: Sequence[int]) -> torch.Tensor:
        if start != self._frames:
            raise RuntimeError(f"denoise: frame {start} requested but {self._frames} frames are committed")
        n, c = len(actions), len(self._window)
        sc_t = self.context_sigma * self.num_train_timesteps
        lat = self._noise(start, n, "noise")
        sampler = self.new_sampler()
        for i, t in enumerate(sampler.timesteps):
            both = torch.cat([w for w, _ in self._window] + [lat], dim=2)
            t_F = torch.cat([torch.full((c,), sc_t), t.float().cpu().expand(n)]).to(lat.device)
            velocity = self._predict_window(both, t_F, [a for _, a in self._window] + list(actions), c, step=i)
            lat = sampler.step(velocity, t, lat)
        return lat

    @torch.no_grad()
    def _predict_window(self, lat_1CFHW, t_F, actions, c: int, step: Optional[int] = None) -> torch.Tensor:
        x, t_BF, text = self.denoiser.inputs(lat_1CFHW, t_F)
        actions_BF = self._actions_BF(actions, x)
        self.forwards += 1

        def prepare(ctx):
            ctx.mask = BlockCausal(frame_tokens=ctx.grid[1] * ctx.grid[2], window=self.window)
            return ctx

        out = run_model(self.model, x, t_BF, Conditioning(text, actions_BF), attention=self.denoiser.attention,
                        step=step, block=self._frames, prepare=prepare)
        return self.denoiser.combine(out[:, :, c:]).float()

    def commit(self, start: int, lat_1CFHW: torch.Tensor, actions: Sequence[int]) -> None:
        n, sc = len(actions), self.context_sigma
        if start != self._frames or lat_1CFHW.shape[2] != n:
            raise RuntimeError(f"commit: frames {start}..{start + n - 1} do not follow the {self._frames} "
                               f"committed frames (or the latents are not {n} frames)")
        if sc > 0:
            lat_1CFHW = (1 - sc) * lat_1CFHW + sc * self._noise(start, n, "context")
        for i, a in enumerate(actions):
            self._window.append((lat_1CFHW[:, :, i:i + 1], int(a)))
        self._window = self._window[-self.window:]
        self._frames += n
