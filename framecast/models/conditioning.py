"""What a video DiT is conditioned on besides the noisy latents and the timestep.

One small dataclass so a new signal (audio, camera, masks) is a new field, not a new positional
argument threaded through every caller of `embed` and of the block loop.

Shape legend: B batch, S text tokens, D text width, F latent frames (after temporal patching).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Conditioning:
    text_BSD: torch.Tensor                      # text encoder states [B, S, text_dim]
    actions_BF: Optional[torch.Tensor] = None   # discrete action ids per patched latent frame (play models)
    # positions [F] of the pass's latent frames in the video (None: 0..F-1). Read by the families whose
    # temporal positions are added to the hidden states (`absolute_positions`): a DualParal stage gives
    # them global frame indices, so K/V kept for another window carry positions consistent with it
    frame_positions: Optional[torch.Tensor] = None
    # camera rays of the pass's latent frames: Plücker embeddings at pixel (decoded-frame) resolution,
    # [B, R, F, H, W] with R = 6 x vae.temporal_stride (the video frames of each latent frame stacked on
    # channels), read by a camera adapter (framecast/models/camera.py); None: no camera
    camera_BRFHW: Optional[torch.Tensor] = None
    # timesteps (σ·1000) of an audio band below the video rows (model.kind=avdit), [B] or [B, F], when it
    # is denoised at its own level (the band a few sampler steps behind the video: docs/avdit.md);
    # None: the video's timesteps
    audio_timesteps: Optional[torch.Tensor] = None
