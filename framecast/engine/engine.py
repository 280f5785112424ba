"""What a user calls: `Engine.generate(...)` writes a video file, `Engine.stream(...)` yields frames.

    from framecast import Engine
    engine = Engine.from_preset("tiny")                       # built-in default, no download
    engine = Engine.from_checkpoint("Wan2.1-T2V-1.3B-Diffusers", ["model.dtype=bfloat16"])
    path = engine.generate("a red circle moving right", seconds=4, out="circle.mp4")
    for frame in engine.stream("a red circle moving right", frames=32):   # uint8 [H, W, 3]
        ...

The request is validated and the output path checked before any model work; weights load on
first use. With `seed=S` the initial latents are `torch.randn(shape, generator=
torch.Generator("cpu").manual_seed(S))`, exactly those of diffusers' WanPipeline.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from framecast.config import Config, load_config
from framecast.engine.request import Request, make_request


class Engine:
    def __init__(self, cfg: Config, checkpoint: str | os.PathLike | None = None,
                 user_overrides: Sequence[str] = ()):
        self.cfg = cfg
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.checkpoint is not None:
            from framecast.engine.components import apply_checkpoint_config, inspect_checkpoint

            keep = {o.split("=", 1)[0].split(".", 1)[1] for o in user_overrides if o.startswith("sampler.")}
            apply_checkpoint_config(cfg, inspect_checkpoint(self.checkpoint), keep)
        self._parts: dict = {}
        self.last_request: Optional[Request] = None

    @classmethod
    def from_preset(cls, preset: str = "tiny", overrides: Sequence[str] = ()) -> "Engine":
        return cls(load_config(preset, overrides), user_overrides=overrides)

    @classmethod
    def from_checkpoint(cls, folder: str | os.PathLike, overrides: Sequence[str] = (),
                        preset: str = "wan2.1-t2v-1.3b") -> "Engine":
        return cls(load_config(preset, overrides), checkpoint=folder, user_overrides=overrides)

    # Components load on first use, each on its own: a DualParal driver needs only the VAE.
    def _part(self, name: str, build):
        if name not in self._parts:
            self._parts[name] = build(self.cfg, self.checkpoint)
        return self._parts[name]

    @property
    def model(self):
        from framecast.engine.components import build_model
        return self._part("model", build_model)

    @property
    def text(self):
        from framecast.engine.components import build_text
        return self._part("text", build_text)

    @property
    def vae(self):
        from framecast.engine.components import build_vae
        return self._part("vae", build_vae)

    def make_sampler(self):
        from framecast.engine.components import sampler_factory
        return self._part("sampler", lambda cfg, ckpt: sampler_factory(cfg))()

    @property
    def device(self) -> torch.device:
        from framecast.engine.components import resolve_device
        return resolve_device(self.cfg.device)

    @property
    def dtype(self) -> torch.dtype:
        from framecast.engine.components import DTYPES
        return DTYPES[self.cfg.model.dtype]

    def request(self, prompt, **kwargs) -> Request:
        # NFD play models are trained on the empty prompt: only that schedule accepts "".
        kwargs.setdefault("allow_empty_prompt", self.cfg.schedule.name == "nfd")
        return make_request(self.cfg, prompt, **kwargs)

    def play_session(self, prompt: str = "", seed: Optional[int] = None, total: Optional[int] = None,
                     speculate: Optional[int] = None, start: Optional[np.ndarray] = None):
        """An interactive NFD rollout (`PlaySession.push(action) -> uint8 [H, W, 3]`). `total`: frames
        the caller will ask for, if known (drafts never run past it); `speculate`: draft length
        (default schedule.speculate); `start`: uint8 [H, W, 3] frame 0 (default per
        schedule.first_frame)."""
        from framecast.engine.play_session import PlaySession

        return PlaySession(self, prompt, seed, total, speculate, start)

    # ----------------------------------------------------------------------------------- stream
    def stream(self, prompt, *, frames: Optional[int] = None, seconds: Optional[float] = None,
               seed: Optional[int] = None, negative_prompt: Optional[str] = None,
               actions: Optional[Sequence] = None, progress: bool = False) -> Iterator[np.ndarray]:
        """Yield uint8 frames [H, W, 3] as they are decoded, for every schedule. `actions`
        (schedule.name=nfd only): one action per frame (names in `world.captions.ACTIONS` or ids);
        default "none" throughout."""
        req = self.request(prompt, frames=frames, seconds=seconds, seed=seed, negative_prompt=negative_prompt)
        self.check_prompt(req)
        ids = self._actions(req, actions)
        return self._stream(req, progress, actions=ids)

    def _actions(self, req: Request, actions: Optional[Sequence]) -> Optional[list[int]]:
        """Validated action ids for an NFD request (None for the other schedules)."""
        from framecast.engine.play_session import action_id

        if self.cfg.schedule.name != "nfd":
            if actions is not None:
                raise ValueError(f"actions are taken by schedule.name=nfd only, not {self.cfg.schedule.name!r}")
            return None
        if actions is None:
            return [0] * req.frames
        ids = [action_id(a) for a in actions]
        if len(ids) != req.frames:
            raise ValueError(f"actions: {len(ids)} given for {req.frames} frames; give one per frame")
        return ids

    def _stream(self, req: Request, progress: bool, record=None, sink=None,
                actions: Optional[list[int]] = None) -> Iterator[np.ndarray]:
        from framecast.engine.video_io import to_uint8

        if self.cfg.schedule.name == "nfd":
            yield from self._nfd(req, actions, progress)
            return
        decoder = self.vae.decoder()
        for lat in self._latent_blocks(req, progress, record):
            if sink is not None:
                sink.append(lat.float().cpu())
            video = decoder.decode(lat)[0]  # (3, f, H, W)
            yield from to_uint8(video)

    def check_prompt(self, req: Request) -> None:
        """Fail before any work on prompts the text encoder cannot take (the built-in encoder's
        closed vocabulary: unknown words are named)."""
        if self.checkpoint is None and self.cfg.text.kind == "builtin":
            from framecast.world.captions import tokenize

            for p in (req.prompt, req.negative_prompt):
                tokenize(p, max_len=self.cfg.text.max_length)

    def denoiser(self, prompt: str, negative_prompt: str):
        """The guided model call for these prompts (CFG per sampler.guidance_scale)."""
        from framecast.engine.denoise import Denoiser, cfg_prompts

        g = self.cfg.sampler.guidance_scale
        text = self.text.encode(cfg_prompts(prompt, negative_prompt, g))
        uncond = text[1:] if len(text) > 1 else None
        return Denoiser(self.model, text[:1], uncond, g, self.dtype, self.device)

    def initial_latents(self, req: Request) -> torch.Tensor:
        shape = (1, self.cfg.model.in_channels, req.latent_frames, req.latent_height, req.latent_width)
        return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(req.seed), dtype=torch.float32)

    def _latent_blocks(self, req: Request, progress: bool, record=None) -> Iterator[torch.Tensor]:
        """Finished latents [1, C, f, h, w], oldest first, as the schedule releases them."""
        name = self.cfg.schedule.name
        if name == "full":
            yield from self._full(req, progress)
        elif name == "rollout":
            yield from self._rollout(req, progress)
        else:
            from framecast.launch.executors import run_schedule

            yield from run_schedule(self, req, progress, record)

    def _nfd(self, req: Request, actions: list[int], progress: bool) -> Iterator[np.ndarray]:
        session = self.play_session(req.prompt, req.seed, total=req.frames)
        try:
            with tqdm(total=req.frames, desc="nfd", unit="frame", disable=not progress) as bar:
                for a in actions:
                    yield session.push(a)
                    bar.update()
        finally:
            session.close()

    def _full(self, req: Request, progress: bool) -> Iterator[torch.Tensor]:
        from framecast.schedulers.full import denoise_full, passes

        denoise = self.denoiser(req.prompt, req.negative_prompt)
        lat = self.initial_latents(req).to(self.device)
        lead = self.cfg.schedule.lead_frames
        total = passes(lat.shape[2], lead) * self.cfg.sampler.steps
        with tqdm(total=total, desc="denoise", unit="step", disable=not progress) as bar:
            lat = denoise_full(denoise, lat, self.make_sampler, on_step=lambda i: bar.update(), lead_frames=lead)
        for f in range(lat.shape[2]):  # hand out one latent frame at a time: decode streams
            yield lat[:, :, f:f + 1]

    def _rollout(self, req: Request, progress: bool) -> Iterator[torch.Tensor]:
        from framecast.schedulers.rollout import chunks, rollout

        s = self.cfg.schedule
        denoise = self.denoiser(req.prompt, req.negative_prompt)
        lat = self.initial_latents(req).to(self.device)
        total = len(chunks(lat.shape[2], s.chunk_frames, s.lead_frames)) * self.cfg.sampler.steps
        with tqdm(total=total, desc="denoise", unit="step", disable=not progress) as bar:
            for done in rollout(denoise, lat, self.make_sampler, s.chunk_frames, s.chunk_context,
                                on_step=lambda i: bar.update(), lead_frames=s.lead_frames):
                for f in range(done.shape[2]):  # each chunk leaves as soon as it is finished
                    yield done[:, :, f:f + 1]

    # --------------------------------------------------------------------------------- generate
    def generate(self, prompt, *, out: str | os.PathLike, frames: Optional[int] = None,
                 seconds: Optional[float] = None, seed: Optional[int] = None,
                 negative_prompt: Optional[str] = None, overwrite: bool = False,
                 progress: bool = False, resume: bool = False,
                 latents_out: str | os.PathLike | None = None, actions: Optional[Sequence] = None) -> Path:
        """Write the video to `out` (NAME.mp4, or a folder of PNGs for `DIR/`); return its path.
        `latents_out`: also save the final latents [1, C, F, h, w] there (torch.save; for checks —
        it holds the whole video's latents in memory). `actions`: as in `stream` (nfd only)."""
        from framecast.engine.video_io import open_video_writer

        req = self.request(prompt, frames=frames, seconds=seconds, seed=seed, negative_prompt=negative_prompt)
        self.last_request = req
        self.check_prompt(req)
        ids = self._actions(req, actions)
        if latents_out is not None and ids is not None:
            raise ValueError("latents_out is not available for schedule.name=nfd (frames leave the rollout as pixels)")
        record = None
        if self.cfg.schedule.name == "dualparal":
            from framecast.launch.resume import ResumeRecord

            record = ResumeRecord.for_request(self, req, out)
            if resume:
                record.check()
        elif resume:
            raise ValueError("--resume needs schedule.name=dualparal (the full schedule has no resume points)")
        writer = open_video_writer(out, fps=req.fps, overwrite=overwrite or resume)
        if record is not None and not resume:
            record.create()
        sink = [] if latents_out is not None else None
        try:
            with tqdm(total=req.frames, desc="frames", unit="frame", disable=not progress) as bar:
                for frame in self._stream(req, progress, record, sink, ids):
                    writer.write(frame)
                    bar.update()
        except BaseException:
            writer.abort()
            if record is not None and not record.has_state():
                record.remove()  # nothing to resume from
            raise
        writer.close()
        if record is not None:
            record.remove()
        if sink is not None:
            torch.save(torch.cat(sink, dim=2), latents_out)
        if writer.frames_written != req.frames:
            raise RuntimeError(f"wrote {writer.frames_written} frames, expected {req.frames}")
        return Path(writer.path)
