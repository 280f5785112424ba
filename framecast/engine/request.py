"""A generation request, validated before any model work.

Sizes follow diffusers' WanPipeline so the same arguments give the same video: the frame count is
moved to the VAE's grid (4k+1 for Wan: `frames // 4 * 4 + 1`) and height/width are floored to a
multiple of VAE stride x patch, each with a warning naming the old and new value. Everything else
that is wrong is a `RequestError` with one line naming the field, the value and what is allowed.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from framecast.config import Config


class RequestError(ValueError):
    """Bad request input; one line naming the field, the value and the allowed range."""


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str
    seed: int
    frames: int  # video frames written
    latent_frames: int
    height: int  # pixels
    width: int
    latent_height: int
    latent_width: int
    fps: int
    # VDT's tasks (schedule.name=task, docs/vdt.md); None / "" for every other schedule
    task: Optional[str] = None  # the task name; None: the schedule's default (schedule.task.task)
    condition: Optional[np.ndarray] = field(default=None, compare=False, repr=False)  # uint8 [F, H, W, 3]
    mask: str = ""  # the --mask SPEC of `complete` (framecast/models/vdt_tasks.py)
    # the camera path (framecast/models/camera_poses.Poses, one pose per video frame) or None: no camera
    camera: Optional[Any] = field(default=None, compare=False, repr=False)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a positive integer, got {value!r}")
    return value


def make_request(cfg: Config, prompt, *, frames: Optional[int] = None, seconds: Optional[float] = None,
                 seed: Optional[int] = None, negative_prompt: Optional[str] = None,
                 height: Optional[int] = None, width: Optional[int] = None,
                 allow_empty_prompt: bool = False, task: Optional[str] = None, condition=None,
                 mask: Optional[str] = None, condition_limit: int = 0, camera=None) -> Request:
    """`allow_empty_prompt`: an action model may run on "" (the play models are trained on it).
    `task`, `condition`, `mask`: a VDT task's inputs (framecast/engine/condition.py loads the
    condition, at most `condition_limit` + 1 frames; the schedule checks what the task needs).
    `camera`: a move ('pan-left:2'), a pose file (pathlib.Path) or Poses (framecast/models/camera_poses.py),
    resolved to one pose per video frame."""
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip() and not allow_empty_prompt:
        raise RequestError("prompt must not be empty")
    negative_prompt = cfg.negative_prompt if negative_prompt is None else negative_prompt
    if not isinstance(negative_prompt, str):
        raise RequestError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
    seed = cfg.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise RequestError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    fps = cfg.video.fps
    if frames is not None and seconds is not None:
        raise RequestError("give either frames or seconds, not both")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds <= 0:
            raise RequestError(f"seconds must be a positive number, got {seconds!r}")
        frames = max(1, round(seconds * fps))
    frames = _positive_int("frames", cfg.video.frames if frames is None else frames)

    ts = cfg.vae.temporal_stride
    if ts > 1 and frames % ts != 1:
        new = frames // ts * ts + 1  # diffusers' rule (moves to the 4k+1 grid, may round up)
        warnings.warn(f"frames={frames} is not of the form {ts}k+1 for this VAE; using {new}", UserWarning,
                      stacklevel=2)
        frames = new
    height = _positive_int("height", cfg.video.height if height is None else height)
    width = _positive_int("width", cfg.video.width if width is None else width)
    mh = cfg.vae.spatial_stride * cfg.model.patch_size[1]
    mw = cfg.vae.spatial_stride * cfg.model.patch_size[2]
    new_h, new_w = height // mh * mh, width // mw * mw
    if new_h == 0 or new_w == 0:
        raise RequestError(f"height x width = {height}x{width} is too small; each must be >= {mh} "
                           f"(VAE stride {cfg.vae.spatial_stride} x patch {cfg.model.patch_size[1]})")
    if (new_h, new_w) != (height, width):
        warnings.warn(f"height x width = {height}x{width} is not a multiple of {mh}x{mw} "
                      f"(VAE stride x patch); using {new_h}x{new_w}", UserWarning, stacklevel=2)
    latent_frames = (frames - 1) // ts + 1
    pt = cfg.model.patch_size[0]
    if latent_frames % pt:
        raise RequestError(f"frames={frames} gives {latent_frames} latent frames, not a multiple of the "
                           f"temporal patch {pt}")
    if task is not None and not isinstance(task, str):
        raise RequestError(f"task must be a string, got {type(task).__name__}")
    if mask is not None and not isinstance(mask, str):
        raise RequestError(f"mask must be a string (a --mask SPEC), got {type(mask).__name__}")
    if condition is not None:
        from framecast.engine.condition import load_condition

        condition = load_condition(condition, new_h, new_w, condition_limit)
    if camera is not None:
        from framecast.models.camera_poses import resolve_camera

        camera = resolve_camera(camera, frames, new_h, new_w)
    return Request(prompt=prompt, negative_prompt=negative_prompt, seed=seed, frames=frames,
                   latent_frames=latent_frames, height=new_h, width=new_w,
                   latent_height=new_h // cfg.vae.spatial_stride, latent_width=new_w // cfg.vae.spatial_stride,
                   fps=fps, task=task, condition=condition, mask=mask or "", camera=camera)
