"""The `rollout` schedule: the clip made chunk after chunk, as diffusion forcing rolls out a model
trained with one noise level per latent frame. Each chunk of `chunk_frames` latent frames runs
through a fresh sampler's timesteps with the last `context_frames` finished frames before it
(schedule.rollout.chunk_context) given clean, at timestep 0; the chunk's frames are final when its sampler
ends and leave at once. With `lead_frames` = L > 0 the first chunk is the first L frames alone,
so the next chunk starts from a fixed first frame, where the caption's direction says where the
object goes (bench/research/text_sensitivity.py --clean-frames 1).

Every model call sees at most context + chunk frames: the model's memory and time per frame do not
grow with the video's length (the full schedule attends over all frames at once). A chunk goes on
from frames that are already final instead of every frame's motion being decided while all of them
are noise (the tiny model's full-schedule videos jump between places; docs/tiny-training.md). Cost:
about F / chunk sampler runs over windows of at most context + chunk frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Optional

import torch

from framecast.schedulers.base import Schedule, check_cancel
from framecast.schedulers.full import denoise_part


@dataclass
class RolloutOptions:
    """schedule.rollout.*"""
    chunk_frames: int = 4  # latent frames made per chunk
    chunk_context: int = 4  # finished latent frames before a chunk that it is given clean
    lead_frames: int = 0  # > 0: the first chunk is the first L latent frames alone

    MINIMUM: ClassVar[dict] = {"chunk_frames": 1, "chunk_context": 0, "lead_frames": 0}


class RolloutSchedule(Schedule):
    name = "rollout"
    Options = RolloutOptions
    takes_camera = True

    def max_frames(self, req):
        return self._noise_limit(req)

    def total_steps(self, req) -> int:
        o = self.options
        return len(chunks(req.latent_frames, o.chunk_frames, o.lead_frames)) * self.engine.loop_steps

    def seams(self, req) -> tuple[int, ...]:
        o = self.options
        return tuple(c.start for c in chunks(req.latent_frames, o.chunk_frames, o.lead_frames)[1:])

    def latents(self, req, actions, progress, record=None, cancel=None) -> Iterator[torch.Tensor]:
        from tqdm.auto import tqdm

        engine, o = self.engine, self.options
        denoise = engine.denoiser(req.prompt, req.negative_prompt, camera=engine.camera_rays(req))
        lat = engine.initial_latents(req).to(engine.device)
        with tqdm(total=self.total_steps(req), desc="denoise", unit="step", disable=not progress) as bar:
            for done in rollout(denoise, lat, engine.make_sampler, o.chunk_frames, o.chunk_context,
                                on_step=lambda i: (bar.update(), check_cancel(cancel)), lead_frames=o.lead_frames,
                                band=denoise.band):
                for f in range(done.shape[2]):  # each chunk leaves as soon as it is finished
                    yield done[:, :, f:f + 1]


def chunks(frames: int, chunk_frames: int, lead_frames: int = 0) -> list[range]:
    """The latent frames of each chunk, oldest first: the first `lead_frames` (if > 0), then
    `chunk_frames` at a time (the last may be shorter)."""
    first = [range(0, min(lead_frames, frames))] if lead_frames > 0 else []
    start = first[0].stop if first else 0
    return first + [range(s, min(s + chunk_frames, frames)) for s in range(start, frames, chunk_frames)]


def rollout(denoise: Callable, lat_1CFHW: torch.Tensor, make_sampler: Callable, chunk_frames: int,
            context_frames: int, on_step: Optional[Callable[[int], None]] = None,
            lead_frames: int = 0, band: tuple[int, int] = (0, 0)) -> Iterator[torch.Tensor]:
    """Yield each chunk's finished latents [1, C, f, H, W], oldest first. `lat_1CFHW`: the initial
    noise of the whole clip (each chunk starts from its own frames of it); `denoise(lat, t_F, step=i,
    block=k)`: the velocity of a window, `t_F` one timestep per frame, `k` the chunk (a feature
    cache keeps one state per chunk). on_step(i) after each step (i counts on
    through the chunks). `band`: (rows, lag) of an audio band run `lag` steps behind the video
    (schedulers/band.py)."""
    context = lat_1CFHW[:, :, :0]                    # the last `context_frames` finished frames
    first = 0
    for k, chunk in enumerate(chunks(lat_1CFHW.shape[2], chunk_frames, lead_frames)):
        window = torch.cat([context, lat_1CFHW[:, :, chunk.start:chunk.stop]], dim=2)
        moving_F = torch.arange(window.shape[2]) >= context.shape[2]
        sampler = make_sampler()
        window = denoise_part(denoise, window, sampler, moving_F, 0.0, on_step, first, block=k,
                              start=chunk.start - context.shape[2], band=band)  # the window: context + chunk
        first += len(sampler.timesteps) + band[1]
        done = window[:, :, context.shape[2]:]
        yield done
        context = window[:, :, max(0, window.shape[2] - context_frames):]  # empty for context_frames = 0
