"""Initial noise: the whole video's (`video_noise`) and coordinated noise for DualParal blocks
(spec: shared/methods/dualparal.md §2.6).

One pool of N + C Gaussian base frames is drawn once from `torch.Generator("cpu").manual_seed(seed)`.
Every block's initial noise is a selection of pool frames:
- block 0: pool frames 0 .. n−1 (it has no left context);
- block k > 0: a random permutation of the N pool indices that are NOT used by the last C frames of
  block k − 1 (block k's left context), first n of them. The permutation comes from its own
  generator seeded with a 64-bit hash of (seed, k) (blake2b of "dualparal-noise:{seed}:{k}"),
  so it does not depend on any global or shared RNG state.

Properties (tested in tests/test_noise_pool.py):
- every noise frame of the video is a row of the same pool (shared pool → global consistency);
- inside any [left context C | own n] window no pool frame repeats;
- a pure function of (seed, k): independent of call order, of other blocks' lengths, of W,
  launcher and device; a shorter (last) block gets a prefix of what a full block would get;
- dtype only rounds: the pool is drawn in float32 and then cast.
This is the reference's rotating N + C template, minus its extra C frames on block 0: the
reference's block k > 0 is also a permutation of the template without block k − 1's last C frames.

Shape legend: F frames, C channels, H/W latent height/width (`frame_shape` = (C, H, W)).
"""
from __future__ import annotations

import hashlib

import torch


def video_noise(seed: int, shape_1CFHW: tuple) -> torch.Tensor:
    """The whole video's initial noise, float32 on the CPU: `torch.randn(shape, generator=
    torch.Generator("cpu").manual_seed(seed))`, exactly diffusers' WanPipeline latents (the full,
    rollout and vin schedules; a VIN worker slices its chunks' frames out of it, so it does not
    depend on the worker count)."""
    return torch.randn(tuple(shape_1CFHW), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def window_noise(seed: int, k: int, shape_1CFHW: tuple) -> torch.Tensor:
    """The initial noise of window k of a chained schedule (schedule.name=task): window 0's is
    `video_noise(seed, shape)` (so one window is what the full schedule draws), window k > 0's is
    drawn from its own generator seeded with a 64-bit hash of (seed, k): a pure function of
    (seed, k), whatever the other windows' lengths."""
    if k == 0:
        return video_noise(seed, shape_1CFHW)
    digest = hashlib.blake2b(f"window-noise:{seed}:{k}".encode(), digest_size=8).digest()
    return video_noise(int.from_bytes(digest, "little"), shape_1CFHW)


def band_noise(seed: int, shape_1CFRW: tuple) -> torch.Tensor:
    """The initial noise of the audio band of models that make sound (the rows below the video in
    the AV latent), from its own generator seeded with a 64-bit hash of the seed: the video rows
    keep `video_noise(seed, ...)`, the noise the video-only model draws for the same seed."""
    digest = hashlib.blake2b(f"band-noise:{seed}".encode(), digest_size=8).digest()
    return video_noise(int.from_bytes(digest, "little"), shape_1CFRW)


def block_seed(seed: int, k: int) -> int:
    """A 64-bit seed for block k's permutation; distinct (seed, k) pairs do not collide in practice."""
    digest = hashlib.blake2b(f"dualparal-noise:{seed}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class NoisePool:
    def __init__(self, seed: int, N: int, C: int, frame_shape: tuple, dtype: torch.dtype = torch.float32):
        for name, value, low, high in (("seed", seed, 0, 2**64 - 1), ("N", N, 1, None), ("C", C, 0, N)):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
            if not ok:
                allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ValueError(f"NoisePool {name} must be an integer {allowed}, got {value!r}")
        self.seed, self.N, self.C = seed, N, C
        self.frame_shape = tuple(frame_shape)
        g = torch.Generator("cpu").manual_seed(seed)
        self.pool_FCHW = torch.randn((N + C, *self.frame_shape), generator=g, dtype=torch.float32).to(dtype)
        self._full: list[list[int]] = []  # full-length (N) index lists of blocks 0, 1, ... computed so far

    @property
    def pool(self) -> torch.Tensor:
        """The N + C base frames, [N + C, *frame_shape]."""
        return self.pool_FCHW

    def _full_indices(self, k: int) -> list[int]:
        # Iterate from the last block computed (block 0 on the first call): O(k) once, O(1) after.
        # Only the last block of a video can be short and nothing follows it, so the chain runs on
        # full blocks and the result for k does not depend on which lengths were asked before.
        while len(self._full) <= k:
            j = len(self._full)
            if j == 0:
                self._full.append(list(range(self.N)))
                continue
            tail = set(self._full[-1][self.N - self.C:])  # block j − 1's last C frames = j's left context
            free = [i for i in range(self.N + self.C) if i not in tail]  # exactly N indices
            g = torch.Generator("cpu").manual_seed(block_seed(self.seed, j))
            self._full.append([free[p] for p in torch.randperm(self.N, generator=g).tolist()])
        return self._full[k]

    def block_indices(self, k: int, n: int) -> list[int]:
        """Pool indices of block k's n frames (1 <= n <= N), oldest frame first."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"block index k must be an integer >= 0, got {k!r}")
        if not isinstance(n, int) or not 1 <= n <= self.N:
            raise ValueError(f"block frame count n must be an integer in [1, {self.N}], got {n!r}")
        return self._full_indices(k)[:n]

    def block_noise(self, k: int, n: int) -> torch.Tensor:
        """Initial noise of block k: [n, *frame_shape], a fresh tensor (rows of the pool)."""
        return self.pool_FCHW[torch.tensor(self.block_indices(k, n))]  # advanced indexing copies
