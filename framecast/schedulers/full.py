"""The `full` schedule: the whole clip at one noise level, every step over all frames (what
diffusers' WanPipeline does). Its plan is just the sampler's timesteps.

With `lead_frames` = L > 0 (schedule.full.lead_frames) it runs in two passes of the sampler, as a
diffusion-forcing model allows (one noise level per latent frame):
1. the first L latent frames are denoised while the others stay pure noise (at the sampler's
   first timestep, where the initial latents are);
2. the other frames are denoised with the first L given clean (timestep 0) as context.
The motion then starts from a fixed first frame, where the caption's direction says exactly
where the object goes next (bench/research/text_sensitivity.py --clean-frames 1), instead of being
decided while every frame is still noise. Twice the model calls of L = 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Optional

import torch

from framecast.schedulers.band import BandLag
from framecast.schedulers.base import Schedule, check_cancel


@dataclass
class FullOptions:
    """schedule.full.*"""
    lead_frames: int = 0  # denoise the first L latent frames first, then the rest with them as clean context

    MINIMUM: ClassVar[dict] = {"lead_frames": 0}


class FullSchedule(Schedule):
    name = "full"
    Options = FullOptions
    takes_camera = True

    def max_frames(self, req):
        return self._noise_limit(req)

    def total_steps(self, req) -> int:
        return passes(req.latent_frames, self.options.lead_frames) * self.engine.loop_steps

    def latents(self, req, actions, progress, record=None, cancel=None) -> Iterator[torch.Tensor]:
        from tqdm.auto import tqdm

        engine = self.engine
        denoise = engine.denoiser(req.prompt, req.negative_prompt, camera=engine.camera_rays(req))
        lat = engine.initial_latents(req).to(engine.device)
        with tqdm(total=self.total_steps(req), desc="denoise", unit="step", disable=not progress) as bar:
            lat = denoise_full(denoise, lat, engine.make_sampler, lead_frames=self.options.lead_frames,
                               on_step=lambda i: (bar.update(), check_cancel(cancel)), band=denoise.band)
        for f in range(lat.shape[2]):  # hand out one latent frame at a time: decode streams
            yield lat[:, :, f:f + 1]


def passes(frames: int, lead_frames: int) -> int:
    """Sampler runs the full schedule makes over `frames` latent frames: 2 when `lead_frames`
    splits them, else 1."""
    return 2 if 0 < lead_frames < frames else 1


def denoise_full(denoise: Callable, lat_1CFHW: torch.Tensor, make_sampler: Callable,
                 on_step: Optional[Callable[[int], None]] = None, lead_frames: int = 0,
                 band: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Run a fresh `make_sampler()`'s timesteps over the clip; `denoise(lat, t, step=i, block=p)
    -> velocity`, `t` a scalar or one timestep per latent frame [F], `i` the sampler step and `p`
    the pass (0, or 1 for the second pass of `lead_frames`: a feature cache keeps one state per
    trajectory). on_step(i) after each of the steps (i counts on through both passes when
    `lead_frames` splits the clip). `band`: (rows, lag) of an audio band run `lag` steps behind the
    video (schedulers/band.py; (0, 0): none)."""
    f = lat_1CFHW.shape[2]
    if passes(f, lead_frames) == 1:
        if band[1]:  # the band's loop (schedulers/band.py) is denoise_part's
            return denoise_part(denoise, lat_1CFHW, make_sampler(), torch.ones(f, dtype=torch.bool), 0.0, on_step, 0,
                                band=band)
        sampler = make_sampler()
        for i, t in enumerate(sampler.timesteps):
            lat_1CFHW = sampler.step(denoise(lat_1CFHW, t, step=i, block=0, frames=range(f)), t, lat_1CFHW)
            if on_step is not None:
                on_step(i)
        return lat_1CFHW
    lead = torch.arange(f) < lead_frames                      # (F,) the frames denoised first
    sampler = make_sampler()
    lat_1CFHW = denoise_part(denoise, lat_1CFHW, sampler, lead, sampler.timesteps[0], on_step, 0, band=band)
    return denoise_part(denoise, lat_1CFHW, make_sampler(), ~lead, 0.0, on_step, len(sampler.timesteps) + band[1],
                        block=1, band=band)


def denoise_part(denoise: Callable, lat_1CFHW: torch.Tensor, sampler, moving_F: torch.Tensor, held_t,
                 on_step: Optional[Callable[[int], None]], first: int, block: int = 0,
                 start: int = 0, band: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Step the frames in `moving_F` through the sampler; the others stay as they are, seen by the
    model at timestep `held_t`. `block`: which trajectory this is (the feature cache's state key);
    `start`: the video's latent frame the window begins at (`frames=` of each call); `band`: (rows,
    lag) of an audio band run `lag` steps behind the video (schedulers/band.py): steps + lag calls."""
    frames = range(start, start + lat_1CFHW.shape[2])  # the video's frames this window holds
    if band[1]:
        loop = BandLag(sampler, band, lat_1CFHW.shape[3], lat_1CFHW.device)
        for i in range(loop.calls):
            video_t, band_t = loop.levels(i)
            v = denoise(lat_1CFHW, frame_levels(moving_F, video_t, held_t), step=i, block=block, frames=frames,
                        band_t=frame_levels(moving_F, band_t, held_t))
            lat_1CFHW = loop.step(v, i, lat_1CFHW, moving_F)
            if on_step is not None:
                on_step(first + i)
        return lat_1CFHW
    keep = ~moving_F.to(lat_1CFHW.device)[None, None, :, None, None]
    for i, t in enumerate(sampler.timesteps):
        stepped = sampler.step(denoise(lat_1CFHW, frame_levels(moving_F, t, held_t), step=i, block=block,
                                       frames=frames), t, lat_1CFHW)
        lat_1CFHW = torch.where(keep, lat_1CFHW, stepped)
        if on_step is not None:
            on_step(first + i)
    return lat_1CFHW


def frame_levels(moving_F: torch.Tensor, t, held_t) -> torch.Tensor:
    """[F] timesteps: `t` on the moving frames, `held_t` on the others."""
    return torch.where(moving_F, torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(held_t, dtype=torch.float32))
