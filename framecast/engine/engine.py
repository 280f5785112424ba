"""What a user calls: `Engine.generate(...)` writes a video file, `Engine.stream(...)` yields frames
(with their audio chunks, for models that make sound).

    from framecast import Engine
    engine = Engine.from_preset("tiny")                       # built-in default, no download
    engine = Engine.from_checkpoint("Wan2.1-T2V-1.3B-Diffusers", ["model.dtype=bfloat16"])
    path = engine.generate("a red circle moving right", seconds=4, out="circle.mp4")
    for frame in engine.stream("a red circle moving right", frames=32):   # uint8 [H, W, 3]
        ...

The request is validated and the output path checked before any model work; weights load on
first use. The configured schedule (`schedule.name`, framecast/schedulers/registry.py) makes the
finished latents; the Engine decodes and writes them the same way for every schedule. Workers
that a schedule asks for (`executor`) live, with their weights, until `close()` (or the end of a
`with Engine... as engine:` block). With `seed=S` the initial latents are `torch.randn(shape, generator=
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
from framecast.engine.request import Request, RequestError, make_request


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
                        preset: Optional[str] = None) -> "Engine":
        """preset None: `latte-1` for a LattePipeline folder, else `wan2.1-t2v-1.3b`."""
        from framecast.engine.components import checkpoint_preset

        preset = checkpoint_preset(folder) if preset is None else preset
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
        from framecast.engine.components import DTYPES, build_text

        # in the model dtype, as diffusers' WanPipeline and the DualParal workers run it
        return self._part("text", lambda cfg, ckpt: build_text(cfg, ckpt, dtype=DTYPES[cfg.model.dtype]))

    @property
    def vae(self):
        from framecast.engine.components import build_vae
        return self._part("vae", build_vae)

    @property
    def produces_audio(self) -> bool:
        """Whether the model family makes a soundtrack (its latents carry an audio band below the
        video rows; framecast/engine/audio.py)."""
        from framecast.models.registry import model_class
        return model_class(self.cfg.model.kind).produces_audio

    @property
    def loop_steps(self) -> int:
        """Model calls of one denoising loop over a window: sampler.steps, + model.avdit.audio_lag for a
        model whose audio band runs behind its video (framecast/schedulers/band.py)."""
        lag = self.cfg.model.avdit.audio_lag if self.produces_audio else 0
        return self.cfg.sampler.steps + lag

    @property
    def audio_codec(self):
        """The codec of the audio band (families that make sound), built once."""
        from framecast.engine.audio import codec_for
        return self._part("audio_codec", lambda cfg, ckpt: codec_for(cfg))

    def decoder(self, audio: bool = False):
        """A fresh decode state for one video (framecast/engine/vae.py SoundDecoder): `decode(lat)`
        -> (video, audio [F, samples_per_frame] or None); `audio` False drops a sound model's band."""
        from framecast.engine.vae import SoundDecoder

        return SoundDecoder(self.vae.decoder(), self.audio_codec if self.produces_audio else None, audio)

    def _audio(self, audio: Optional[bool]) -> bool:
        """The request's audio flag (None: the model's default, sound for the families that make it),
        checked before any model work or output."""
        if audio is not None and not isinstance(audio, bool):
            raise RequestError(f"audio must be True, False or None, got {audio!r}")
        if audio and not self.produces_audio:
            from framecast.models.registry import FAMILIES, model_class

            makers = [k for k in FAMILIES if model_class(k).produces_audio]
            raise RequestError(f"audio was asked for but model.kind={self.cfg.model.kind} makes no sound; the families "
                               f"that do: {', '.join(makers) or 'none'} (e.g. --preset tiny-av)")
        if self.produces_audio:
            self.audio_codec  # noqa: B018 - a codec that does not fit the latent fails here, before any work
        return self.produces_audio if audio is None else audio

    @property
    def attention(self):
        """The attention runtime of `model.attn_backend` (options and assets loaded once); each
        request uses `.for_request()`, so backend state never outlives a request."""
        from framecast.engine.components import make_attention
        return self._part("attention", lambda cfg, ckpt: make_attention(cfg))

    def interface_weights(self) -> dict:
        """The learned VIN interface module's weights (the `vin.*` tensors of model.weights), read
        once; a one-line ConfigError when the weights have none (models/vin.py)."""
        from framecast.engine.components import interface_weights
        return self._part("interface_weights", interface_weights)

    def make_sampler(self):
        from framecast.engine.components import sampler_factory
        return self._part("sampler", lambda cfg, ckpt: sampler_factory(cfg, ckpt))()

    @property
    def device(self) -> torch.device:
        from framecast.engine.components import resolve_device
        return resolve_device(self.cfg.device)

    @property
    def dtype(self) -> torch.dtype:
        from framecast.engine.components import DTYPES
        return DTYPES[self.cfg.model.dtype]

    @property
    def schedule(self):
        """The configured schedule (`schedule.name`, found in framecast.schedulers.registry)."""
        if "schedule" not in self._parts:
            from framecast.schedulers.registry import schedule_class

            cls = schedule_class(self.cfg.schedule.name)
            self._parts["schedule"] = cls(self, getattr(self.cfg.schedule, cls.name))
        return self._parts["schedule"]

    def request(self, prompt, **kwargs) -> Request:
        # Action models (NFD play) are trained on the empty prompt: only their schedules accept "".
        kwargs.setdefault("allow_empty_prompt", self.schedule.allows_empty_prompt)
        kwargs.setdefault("condition_limit", self.schedule.condition_limit())
        return make_request(self.cfg, prompt, **kwargs)

    def play_session(self, prompt: str = "", seed: Optional[int] = None, total: Optional[int] = None,
                     speculate: Optional[int] = None, start: Optional[np.ndarray] = None):
        """An interactive NFD rollout (`PlaySession.push(action) -> uint8 [H, W, 3]`). `total`: frames
        the caller will ask for, if known (drafts never run past it); `speculate`: draft length
        (default schedule.nfd.speculate); `start`: uint8 [H, W, 3] frame 0 (default per
        schedule.nfd.first_frame)."""
        from framecast.engine.play_session import PlaySession

        return PlaySession(self, prompt, seed, total, speculate, start)

    # --------------------------------------------------------------------------------- workers
    def executor(self, worker: str, dims):
        """The executor running `worker` (an import string) on the layout `dims` (ParallelDims) with
        parallel.launcher; started on first use and kept, with its workers and their weights, until
        `close()` (or `drop_executor`)."""
        key = ("executor", worker, dims)
        if key not in self._parts:
            from framecast.parallel.executors import make_executor

            self._parts[key] = make_executor(self.cfg, self.checkpoint, worker, dims)
        return self._parts[key]

    def drop_executor(self, worker: str) -> None:
        """Shut down the executors of `worker` (a run that failed mid-call may leave messages in flight)."""
        for key in [k for k in self._parts if isinstance(k, tuple) and k[:2] == ("executor", worker)]:
            self._parts.pop(key).shutdown()

    def close(self) -> None:
        """Release the workers (processes, actors, their weights); the engine can still be used and
        starts them again when needed."""
        for key in [k for k in self._parts if isinstance(k, tuple) and k[0] == "executor"]:
            self._parts.pop(key).shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- stream
    def stream(self, prompt, *, frames: Optional[int] = None, seconds: Optional[float] = None,
               seed: Optional[int] = None, negative_prompt: Optional[str] = None,
               actions: Optional[Sequence] = None, progress: bool = False, cancel=None,
               task: Optional[str] = None, condition=None, mask: Optional[str] = None,
               camera=None, audio: Optional[bool] = None) -> Iterator:
        """Yield uint8 frames [H, W, 3] as they are decoded, for every schedule; for models that make
        sound (`produces_audio`) and `audio` None or True, (frame, audio chunk float32 [spf]) pairs,
        spf = audio sample rate / fps samples of mono sound per frame (audio=False: frames only;
        True on a model without sound: a one-line RequestError before any work). `actions`
        (schedules with actions, e.g. nfd): one action per frame (names in
        `world.captions.ACTIONS` or ids); fewer than `frames`: the last one holds for the rest;
        default "none" throughout. `cancel`: a threading.Event; once set, the schedule stops
        between denoising steps (DualParal: between worker calls) and the stream raises
        `framecast.schedulers.base.Cancelled`. `task`, `condition`, `mask` (schedule.name=task, VDT's
        tasks; docs/vdt.md): the task name (default schedule.task.task), its given frames (an .mp4
        path, a folder of numbered PNGs, or a uint8 array [F, H, W, 3] of video.height x video.width)
        and, for `complete`, the generated region as a --mask SPEC. `camera` (models with a camera
        adapter, camera.weights; docs/camera.md): a move ('pan-left:2'), a pose file (pathlib.Path) or
        Poses (framecast/models/camera_poses.py), at least one pose per frame."""
        req = self.request(prompt, frames=frames, seconds=seconds, seed=seed, negative_prompt=negative_prompt,
                           task=task, condition=condition, mask=mask, camera=camera)
        ids = self._check(req, actions)
        return self._stream(req, progress, ids, cancel=cancel, audio=self._audio(audio))

    def _check(self, req: Request, actions: Optional[Sequence]) -> Optional[list[int]]:
        """Everything about a request that can fail before any model work; the action ids."""
        self.check_prompt(req)
        self.cache_calibration()  # a missing or mismatched calibration fails here, before model work
        self.attention  # so does an attention backend's file (a head plan, trained projections)
        ids = None
        if actions is not None:
            from framecast.engine.play_session import action_id

            ids = [action_id(a) for a in actions]
        if req.camera is not None and not self.cfg.camera.weights:
            raise ValueError("a camera was given but the model has no camera adapter (camera.weights is empty): "
                             "set camera.weights to a trained adapter (framecast train --camera; docs/camera.md)")
        self.schedule.check(req, ids)
        return ids

    def _stream(self, req: Request, progress: bool, actions: Optional[list[int]], record=None,
                sink=None, cancel=None, audio: bool = False) -> Iterator:
        from framecast.engine.video_io import to_uint8

        decoder = self.decoder(audio)
        for lat in self.schedule.latents(req, actions, progress, record, cancel):
            if sink is not None:
                sink.append(lat.float().cpu())
            video, wave = decoder.decode(lat)  # (1, 3, f, H, W), (f, spf) or None
            frames = to_uint8(video[0])
            yield from frames if wave is None else zip(frames, wave.numpy())

    def check_prompt(self, req: Request) -> None:
        """Fail before any work on prompts the text encoder cannot take (the built-in encoder's
        closed vocabulary: unknown words are named)."""
        if self.checkpoint is None and self.cfg.text.kind == "builtin":
            from framecast.world.captions import tokenize

            for p in (req.prompt, req.negative_prompt):
                tokenize(p, max_len=self.cfg.text.max_length)

    def denoiser(self, prompt: str, negative_prompt: str, cache="configured", camera=None):
        """The guided model call for these prompts (CFG per sampler.guidance_scale), with a fresh
        feature cache of `cache.kind` (or the `cache` given: an object, or None for none) and the
        request's camera rays `camera` (`camera_rays`; None: no camera)."""
        from framecast.engine.denoise import Denoiser, cfg_prompts

        g = self.cfg.sampler.guidance_scale
        text = self.text.encode(cfg_prompts(prompt, negative_prompt, g))
        uncond = text[1:] if len(text) > 1 else None
        if isinstance(cache, str):  # "configured"
            cache = self.feature_cache()
        return Denoiser(self.model, text[:1], uncond, g, self.dtype, self.device,
                        attention=self.attention.for_request(), cache=cache, camera=camera)

    def camera_rays(self, req: Request):
        """The request's Plücker camera rays per latent frame (models/camera.py: CameraRays, made per
        window as the model reads them), or None when it has no camera."""
        if req.camera is None:
            return None
        from framecast.models.camera import CameraRays

        return CameraRays(req.camera, self.cfg.vae.temporal_stride, req.height, req.width)

    def cache_calibration(self):
        """The checked calibration of cache.kind (teacache, magcache; None for the others), loaded
        once; a missing or mismatched file is a one-line ConfigError."""
        from framecast.engine.cache_calibration import load_calibration
        return self._part("cache_calibration", load_calibration)

    def feature_cache(self):
        """A fresh feature cache of cache.kind for one request (None for kind none)."""
        from framecast.models.caches import make_cache
        return make_cache(self.cfg, self.cache_calibration())

    def initial_latents(self, req: Request) -> torch.Tensor:
        """[1, C, F, h, w] noise; for models that make sound the AV latent [1, C, F, h + band_rows, w],
        its band rows below the video from a noise stream of their own (parallel/noise.py)."""
        from framecast.parallel.noise import band_noise, video_noise

        shape = (1, self.cfg.model.in_channels, req.latent_frames, req.latent_height, req.latent_width)
        lat = video_noise(req.seed, shape)
        if self.produces_audio:
            band = band_noise(req.seed, shape[:3] + (self.audio_codec.band_rows, shape[4]))
            lat = torch.cat([lat, band], dim=3)
        return lat

    # --------------------------------------------------------------------------------- generate
    def generate(self, prompt, *, out: str | os.PathLike, frames: Optional[int] = None,
                 seconds: Optional[float] = None, seed: Optional[int] = None,
                 negative_prompt: Optional[str] = None, overwrite: bool = False,
                 progress: bool = False, resume: bool = False,
                 latents_out: str | os.PathLike | None = None, actions: Optional[Sequence] = None,
                 task: Optional[str] = None, condition=None, mask: Optional[str] = None, camera=None,
                 audio: Optional[bool] = None) -> Path:
        """Write the video to `out` (NAME.mp4, or a folder of PNGs for `DIR/`); return its path.
        `latents_out`: also save the final latents [1, C, F, h, w] there (torch.save; for checks —
        it holds the whole video's latents in memory). `actions`, `task`, `condition`, `mask`, `camera`:
        as in `stream` (all checked before the output is opened). `audio` (None: the model's default):
        the soundtrack of a model that makes sound, as the mp4's AAC track or DIR/audio.wav."""
        from framecast.engine.video_io import open_video_writer

        req = self.request(prompt, frames=frames, seconds=seconds, seed=seed, negative_prompt=negative_prompt,
                           task=task, condition=condition, mask=mask, camera=camera)
        self.last_request = req
        ids = self._check(req, actions)
        audio = self._audio(audio)
        record = None
        if self.schedule.resumable:
            from framecast.engine.resume import ResumeRecord

            record = ResumeRecord.for_request(self, req, out)
        elif resume:
            raise ValueError(f"--resume needs a schedule with resume points (dualparal), not "
                             f"schedule.name={self.cfg.schedule.name!r}")
        try:
            # A resume holds its record from here on (another live run for this output: refused) and
            # never removes it unless the video completes: whatever fails, the record still holds
            # its resume point (or a later one this run saved) for another --resume.
            if resume:
                record.check()
            writer = open_video_writer(out, fps=req.fps, overwrite=overwrite or resume,
                                       audio_rate=self.audio_codec.sample_rate if audio else None)
            if record is not None and not resume:
                record.create()
            sink = [] if latents_out is not None else None
            try:
                with tqdm(total=req.frames, desc="frames", unit="frame", disable=not progress) as bar:
                    for item in self._stream(req, progress, ids, record, sink, audio=audio):
                        frame, chunk = item if audio else (item, None)
                        writer.write(frame, chunk)
                        bar.update()
            except BaseException:
                writer.abort()
                if record is not None and not resume and not record.has_state():
                    record.remove()  # a new run that failed before its first resume point
                raise
            writer.close()
            if record is not None:
                record.remove()
        finally:
            if record is not None:
                record.release()
        if sink is not None:
            torch.save(torch.cat(sink, dim=2), latents_out)
        if writer.frames_written != req.frames:
            raise RuntimeError(f"wrote {writer.frames_written} frames, expected {req.frames}")
        return Path(writer.path)
