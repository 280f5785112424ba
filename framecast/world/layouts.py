"""Noise layouts of the long-video schedules, for training as they sample.

A schedule shows the model windows whose frames sit at different noise levels in a fixed
pattern; a model trained only on other patterns has to generalise to it. These functions draw
the per-frame noise levels σ of a schedule's window, on the sampler's own grid
σ_0 = 1 > σ_1 > ... > σ_T = 0 (`sampler.sigmas` of the config the model is sampled with):

DualParal (schedulers/dualparal.py), block k at step s (s = 0..T−1) with `schedule.dualparal.
timesteps=frame`:

    [ C left-context frames | N own frames | up to C right-context frames ]
      σ_{s+1} (0 if s = T−1)   σ_s            σ_{s−1}  (the newer block, one step noisier; at s = 0
                                                        it has not started: pure noise, σ = 1)

The left context is block k − 1's last C frames, one step cleaner; the right context is block
k + 1's first C frames, whose cached K/V the block attends to. A training clip of F ≥ C + N
frames takes this layout on its first C + N + min(C, F − C − N) frames; frames after that (if
any) are at σ = 1. The step s is drawn uniformly, so every step of the schedule is trained alike.

Rollout (schedulers/rollout.py) needs no new layout: its window is K finished frames then a
chunk at one σ — `TrainOptions.prefix_prob` with `prefix_max` ≥ the rollout's `chunk_context`.
"""
from __future__ import annotations

import torch


def dualparal_sigmas(gen: torch.Generator, b: int, f: int, grid: torch.Tensor, context: int,
                     block: int) -> torch.Tensor:
    """(b, f) noise levels of b DualParal windows laid over clips of f frames (module docstring).
    `grid`: the sampler's σ_0..σ_T (descending, σ_T = 0); `context`: C; `block`: N."""
    if f < context + block:
        raise ValueError(f"a DualParal layout needs clips of at least context + block = {context + block} "
                         f"frames; got {f}")
    steps = len(grid) - 1
    s_B = torch.randint(0, steps, (b,), generator=gen)
    grid = grid.float()
    left_B = grid[s_B + 1]
    own_B = grid[s_B]
    right_B = torch.where(s_B > 0, grid[(s_B - 1).clamp(min=0)], torch.ones(b))
    i = torch.arange(f)[None]
    sigma_BF = torch.where(i < context, left_B[:, None], own_B[:, None].expand(b, f))
    sigma_BF = torch.where(i >= context + block, right_B[:, None], sigma_BF)
    return torch.where(i >= 2 * context + block, torch.ones(()), sigma_BF)
