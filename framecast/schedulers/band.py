"""An audio band denoised a few sampler steps behind its video, in the same loop (model.kind=avdit).

AV-DiT's latent carries an audio band of `rows` rows below each video frame (framecast/models/avdit.py).
With `model.avdit.audio_lag` = k > 0 the schedules' loop over one window takes steps + k model calls:
call i sees the video at the sampler's level i (clean, t = 0, once its steps are done) and the band at
level i − k (pure noise, the first level, before it starts). Two copies of the sampler step the two
parts: the video's copy takes the calls 0..steps−1, the band's copy the calls k..steps+k−1, and each
writes only its own rows. So the band's clicks form once the bounces that make them are visible; the
video is unchanged (its queries never see audio keys), only made k calls later. Samplers are
elementwise in the latent, so a copy stepping the whole latent and keeping its rows is exact.

Shape legend: C channels, F latent frames, H latent rows (video rows + band rows), W width.
"""
from __future__ import annotations

import copy

import torch


class BandLag:
    """The levels and the two samplers of one window's lagged loop (module docstring)."""

    def __init__(self, sampler, band: tuple[int, int], height: int, device):
        rows, self.lag = band
        if not 0 < rows < height or self.lag < 1:
            raise ValueError(f"BandLag: band (rows, lag)={band} does not fit a latent of {height} rows")
        self.video, self.audio = sampler, copy.deepcopy(sampler)  # a fresh sampler's copy: the band's own
        self.timesteps = list(sampler.timesteps)
        self.video_H = (torch.arange(height, device=device) < height - rows)[:, None]   # (H, 1) video rows

    @property
    def calls(self) -> int:
        """Model calls of the loop: the sampler's steps + the lag."""
        return len(self.timesteps) + self.lag

    def levels(self, i: int) -> tuple[float, float]:
        """(video t, band t) of call i."""
        n = len(self.timesteps)
        video_t = self.timesteps[i] if i < n else 0.0
        band_t = self.timesteps[i - self.lag] if i >= self.lag else self.timesteps[0]
        return video_t, band_t

    def step(self, v_1CFHW: torch.Tensor, i: int, lat_1CFHW: torch.Tensor, moving_F: torch.Tensor) -> torch.Tensor:
        """The latent after call i's prediction `v`: the video rows stepped by the video's sampler (its
        steps only), the band rows by the band's; frames outside `moving_F` [F] stay as they are."""
        n = len(self.timesteps)
        moving = moving_F.to(lat_1CFHW.device)[:, None, None]                          # (F, 1, 1)
        if i < n:
            stepped = self.video.step(v_1CFHW, self.timesteps[i], lat_1CFHW)
            lat_1CFHW = torch.where(moving & self.video_H, stepped, lat_1CFHW)
        if i >= self.lag:
            stepped = self.audio.step(v_1CFHW, self.timesteps[i - self.lag], lat_1CFHW)
            lat_1CFHW = torch.where(moving & ~self.video_H, stepped, lat_1CFHW)
        return lat_1CFHW

