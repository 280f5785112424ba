"""The guided model call shared by every schedule.

Classifier-free guidance runs both branches in ONE batch (cond first, uncond second) and combines
them as diffusers does: uncond + g * (cond - uncond). CFG is on when g > 1 (diffusers' rule).
The model runs through the one block loop (`framecast.models.blocks.run_model`) with the
configured attention runtime (backend, options, per-request state), so every schedule honours
`model.attn_backend`, and with the request's feature cache (`cache.kind`; None: every block every
step), keyed by the sampler step and the frame block each call names.
Shape legend: B batch, C channels, F latent frames, H/W latent height/width, S text tokens, D width.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from framecast.models.attention import AttentionRuntime, check_backend
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning


def guided(guidance: float) -> bool:
    """diffusers' rule: CFG is on when g > 1."""
    return guidance > 1.0


def cfg_prompts(prompt: str, negative_prompt: str, guidance: float) -> list[str]:
    """The prompts to encode, cond first: [prompt, negative_prompt] with CFG, else [prompt]."""
    return [prompt, negative_prompt] if guided(guidance) else [prompt]


def combine_cfg(out_BCFHW: torch.Tensor, guidance: float) -> torch.Tensor:
    """[cond; uncond] model outputs -> uncond + g * (cond - uncond)."""
    cond, uncond = out_BCFHW.chunk(2)
    return uncond + guidance * (cond - uncond)


class Denoiser:
    def __init__(self, model, cond_1SD: torch.Tensor, uncond_1SD: Optional[torch.Tensor], guidance: float,
                 dtype: torch.dtype, device: torch.device, attention: Optional[AttentionRuntime] = None,
                 cache=None, camera=None):
        # the request's camera rays (models/camera.py: CameraRays, Plücker per latent frame) or None;
        # each call makes the rays of the frames it names (`frames`) only, kept while calls name the same
        # frames (a chunk's or window's steps): (frames, rays on the device) of the last call
        self.camera, self.camera_window = camera, None
        self.cache = cache  # a feature cache (framecast.models.caches), fresh per request, or None
        self.attention = AttentionRuntime() if attention is None else attention
        check_backend(self.attention.backend)  # an unknown name fails here, before any model work
        self.model, self.guidance, self.dtype, self.device = model, guidance, dtype, device
        self.cfg = guided(guidance) and uncond_1SD is not None
        text = torch.cat([cond_1SD, uncond_1SD]) if self.cfg else cond_1SD
        self.text_BSD = text.to(device=device, dtype=dtype)
        # (rows, lag) of an audio band below the video rows (model.kind=avdit: model.avdit.band_rows and
        # audio_lag, the sampler steps the band runs behind the video); (0, 0) for a video-only model
        self.band = (model.band_rows, model.audio_lag) if model.produces_audio else (0, 0)

    @property
    def batch(self) -> int:
        return 2 if self.cfg else 1

    def inputs(self, lat_1CFHW: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_BCFHW, t_B or t_BF, text_BSD) for the model: the latents repeated per CFG branch.
        `t` is a scalar (whole clip at one level) or a [F] per-latent-frame tensor."""
        x = lat_1CFHW.to(device=self.device, dtype=self.dtype).expand(self.batch, -1, -1, -1, -1)
        return x, self.batch_timesteps(t), self.text_BSD

    def batch_timesteps(self, t) -> torch.Tensor:
        """A scalar or [F] timestep -> [B] or [B, F], one row per CFG branch."""
        t = torch.as_tensor(t, device=self.device)
        return t.expand(self.batch) if t.ndim == 0 else t[None].expand(self.batch, -1)

    def combine(self, out_BCFHW: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return out_BCFHW
        rows = self.band[0]  # an audio band below the video rows (model.kind=avdit)
        if not rows:
            return combine_cfg(out_BCFHW, self.guidance)
        # the band takes its own guidance: CFG's extrapolation overshoots log-mel levels (docs/avdit.md)
        return torch.cat([combine_cfg(out_BCFHW[..., :-rows, :], self.guidance),
                          combine_cfg(out_BCFHW[..., -rows:, :], self.model.audio_guidance)], dim=-2)

    def conditioning(self, text_BSD: torch.Tensor, frames: Optional[range]) -> Conditioning:
        """The conditioning of a pass over the video's latent frames `frames` (None: all of them)."""
        if self.camera is None:
            return Conditioning(text_BSD)
        frames = range(self.camera.frames) if frames is None else frames
        if self.camera_window is None or self.camera_window[0] != frames:
            self.camera_window = None  # the previous window's rays go before the next one's are made
            self.camera_window = frames, self.camera.window(frames).to(device=self.device, dtype=self.dtype)
        return Conditioning(text_BSD, camera_BRFHW=self.camera_window[1].expand(text_BSD.shape[0], -1, -1, -1, -1))

    @torch.no_grad()
    def __call__(self, lat_1CFHW: torch.Tensor, t, step: Optional[int] = None, block: int = 0,
                 frames: Optional[range] = None, band_t=None) -> torch.Tensor:
        """Guided prediction for latents [1, C, F, H, W] at `t` (scalar or [F]); `step` (the
        sampler step index, if known) and `block` (which frame block of the video this pass is)
        reach the attention backend's per-call metadata and key the feature cache's state.
        `frames`: the video's latent frames this pass holds, in order (None: the whole video);
        per-frame conditions (the camera) are read for them. `band_t`: the audio band's timesteps
        when it runs at its own level (`band`; scalar or [F]), None: the video's."""
        x, t, text = self.inputs(lat_1CFHW, t)
        if frames is not None and len(frames) != x.shape[2]:
            raise ValueError(f"frames={frames} names {len(frames)} latent frames; the pass holds {x.shape[2]}")
        cond = self.conditioning(text, frames)
        if band_t is not None:
            cond = replace(cond, audio_timesteps=self.batch_timesteps(band_t))
        out = run_model(self.model, x, t, cond, attention=self.attention, step=step,
                        block=block, cache=self.cache)
        return self.combine(out)
