"""The `full` schedule: the whole clip at one noise level, every step over all frames (what
diffusers' WanPipeline does). Its plan is just the sampler's timesteps."""
from __future__ import annotations

from typing import Callable, Optional

import torch


def denoise_full(denoise: Callable, lat_1CFHW: torch.Tensor, sampler,
                 on_step: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Run `sampler`'s timesteps over the whole clip; `denoise(lat, t) -> velocity`."""
    for i, t in enumerate(sampler.timesteps):
        velocity = denoise(lat_1CFHW, t)
        lat_1CFHW = sampler.step(velocity, t, lat_1CFHW)
        if on_step is not None:
            on_step(i)
    return lat_1CFHW
