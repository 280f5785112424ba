"""The audio codec of the audio-video models (model.kind=avdit): a log-mel spectrogram packed
as extra latent rows below each video frame, and a streamable oscillator-bank vocoder.

    codec = codec_for(cfg)
    band = codec.encode(wave_N)            # float32 [N], N = F * spf  -> [C, F, band_rows, W] in [-1, 1]
    wave = codec.decode(band, first_frame)  # -> float32 [F * spf] in [-1, 1]

Engine-defined, not the AV-DiT paper's (shared/methods/model-zoo.md §4 leaves the audio
representation open; docs/avdit.md):
- analysis is frame-local: every hop of `hop = spf / hops_per_frame` samples is windowed on its
  own samples (a Hann window of the hop's length, zero-padded to `n_fft`), so the spectrum of a
  video frame depends only on that frame's audio and a click never leaks into the frame before;
- mel: an HTK mel filterbank (triangles between mel-spaced centres, peak 1) over `fmin..fmax`,
  each band calibrated so that a unit-amplitude sine at its centre frequency reads 0 dB; values
  are dB in [-db_range, 0] mapped linearly to [-1, 1] (-1 is silence, 0 is -db_range/2 dB);
- packing: one hop's `n_mels` = C·ph·pw values fill one ph×pw×C patch token of the band, hops
  run along the band's token columns (then token rows): band [C, F, band_rows, W];
- decoding: one sine oscillator per mel band at its centre frequency, whose phase is a function
  of the ABSOLUTE sample index (`first_frame·spf + n`) and whose amplitude is the band's linear
  magnitude, interpolated between hop centres inside the frame and held at the frame's edges. So a
  frame decodes from its own band alone: decoding frames [a, b) gives exactly samples
  [a·spf, b·spf) of decoding the whole video (streamable, sample-exact). No phase retrieval:
  the tones the world hums sit at band centres, and clicks come back as broadband bursts in
  their frame.

Shape legend: B batch, C latent channels, F latent frames, R band rows, W latent width,
T hops, M mel bands, N samples.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from einops import rearrange

SAMPLE_RATE = 16000  # Hz, mono


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float,
                   fmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(filters [M, n_fft // 2 + 1] float64 triangles with peak 1, centre frequencies [M] Hz)."""
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin)), float(hz_to_mel(fmax)), n_mels + 2))
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (centre - lo)
    down = (hi - freqs[None]) / (hi - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0), edges[1:-1]


class MelCodec:
    """Wave <-> audio band of the AV latent (module docstring). One instance per geometry."""

    def __init__(self, fps: int, channels: int, width: int, band_rows: int, patch: tuple[int, int],
                 sample_rate: int = SAMPLE_RATE, n_fft: int = 512, fmin: float = 0.0, fmax: Optional[float] = None,
                 db_range: float = 80.0):
        ph, pw = patch
        if fps < 1 or sample_rate % fps:
            raise ValueError(f"video.fps={fps} does not divide the audio sample rate {sample_rate} Hz: each video "
                             f"frame must own a whole number of samples (e.g. fps 8, 10, 16, 20, 25)")
        if band_rows < 1 or band_rows % ph or width % pw:
            raise ValueError(f"audio band of {band_rows} rows x {width} columns does not tile into {ph}x{pw} patches: "
                             f"model.avdit.band_rows must be a positive multiple of {ph}")
        self.sample_rate, self.fps, self.channels = sample_rate, fps, channels
        self.width, self.band_rows = width, band_rows
        self.patch = (ph, pw)
        self.samples_per_frame = sample_rate // fps
        self.hops_per_frame = (band_rows // ph) * (width // pw)   # one patch token per hop
        self.n_mels = channels * ph * pw                          # one hop's spectrum fills one token
        if self.samples_per_frame % self.hops_per_frame:
            raise ValueError(f"{self.samples_per_frame} samples per frame (sample rate {sample_rate} / fps {fps}) "
                             f"do not split into {self.hops_per_frame} hops (one per band token)")
        self.hop = self.samples_per_frame // self.hops_per_frame
        self.n_fft = max(n_fft, self.hop)
        self.db_range = db_range
        fmax = sample_rate / 2 if fmax is None else fmax
        fb, centres = mel_filterbank(self.n_mels, self.n_fft, sample_rate, fmin, fmax)
        self.centres_hz = centres.float()                         # (M,) oscillator frequencies
        self.window = torch.hann_window(self.hop, periodic=False, dtype=torch.float64)
        # calibration: the mel magnitude a unit sine at each band's centre reads (so it decodes to 1)
        n = torch.arange(4 * self.hop, dtype=torch.float64)
        probe = torch.sin(2 * math.pi * centres[:, None] * n[None] / sample_rate)          # (M, 4·hop)
        power = self._power(probe)                                                          # (M, 4, K)
        gain = torch.einsum("mtk,mk->mt", power, fb).mean(1).sqrt()                          # (M,)
        self.filters = (fb / gain[:, None] ** 2).float()                                    # (M, K)

    # ---- analysis ---------------------------------------------------------------------------

    def _power(self, wave_BN: torch.Tensor) -> torch.Tensor:
        """|rfft|² of every hop, windowed on its own samples: (..., N) -> (..., T, n_fft // 2 + 1)."""
        hops = wave_BN.unflatten(-1, (-1, self.hop)) * self.window.to(wave_BN.dtype)
        return torch.fft.rfft(hops, n=self.n_fft).abs() ** 2

    def mel_db(self, wave_N: torch.Tensor) -> torch.Tensor:
        """float [..., N] -> mel magnitude in dB re a unit sine [..., T, M] (floored at -db_range)."""
        wave = torch.as_tensor(wave_N, dtype=torch.float32)
        if wave.shape[-1] % self.samples_per_frame:
            raise ValueError(f"audio of {wave.shape[-1]} samples is not a whole number of video frames "
                             f"({self.samples_per_frame} samples each)")
        mel = self._power(wave.double()).float() @ self.filters.T                          # (..., T, M)
        return 10 * torch.log10(mel.clamp_min(10 ** (-self.db_range / 10)))

    def encode(self, wave_N: torch.Tensor) -> torch.Tensor:
        """float32 [N] (or [B, N]), N = F·spf -> band [C, F, band_rows, W] (or [B, ...]) in [-1, 1]."""
        return self.pack(self.to_latent(self.mel_db(wave_N)))

    def pack(self, x_TM: torch.Tensor) -> torch.Tensor:
        """Per-hop values [..., F·hops_per_frame, M] -> band [..., C, F, band_rows, W] (`unpack` inverts it)."""
        ph, pw = self.patch
        return rearrange(x_TM, "... (f r w) (c ph pw) -> ... c f (r ph) (w pw)", r=self.band_rows // ph,
                         w=self.width // pw, c=self.channels, ph=ph, pw=pw).contiguous()

    def to_latent(self, db: torch.Tensor) -> torch.Tensor:
        """dB [-db_range, 0] -> [-1, 1] (clamped)."""
        return (db / (self.db_range / 2) + 1.0).clamp(-1.0, 1.0)

    def to_db(self, x: torch.Tensor) -> torch.Tensor:
        return (x.clamp(-1.0, 1.0) - 1.0) * (self.db_range / 2)

    # ---- synthesis --------------------------------------------------------------------------

    def unpack(self, band_CFHW: torch.Tensor) -> torch.Tensor:
        """band [..., C, F, R, W] -> [..., F, hops_per_frame, M] (encode's packing, inverted)."""
        ph, pw = self.patch
        self.check_band(band_CFHW)
        return rearrange(band_CFHW, "... c f (r ph) (w pw) -> ... f (r w) (c ph pw)", ph=ph, pw=pw)

    def check_band(self, band) -> None:
        want = (self.channels, self.band_rows, self.width)
        got = tuple(band.shape[-4:-3]) + tuple(band.shape[-2:]) if band.ndim >= 4 else tuple(band.shape)
        if band.ndim < 4 or got != want:
            raise ValueError(f"audio band of shape {tuple(band.shape)} does not match the codec: expected "
                             f"[C={want[0]}, F, band_rows={want[1]}, W={want[2]}]")

    def decode(self, band_CFHW: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """band [C, F, band_rows, W] (or [B, ...]) of video frames first_frame.. -> float32 [F·spf]
        (or [B, F·spf]) in [-1, 1]. Frame-local: any split of the frames decodes to the same samples."""
        x = self.unpack(band_CFHW.detach().float().cpu())                                  # (..., F, T, M)
        amp = (10 ** (self.to_db(x) / 20) - 10 ** (-self.db_range / 20)).clamp_min(0.0)     # 0 at the floor
        f, spf, last = x.shape[-3], self.samples_per_frame, self.hops_per_frame - 1
        # amplitude per sample: linear between hop centres within the frame, held at its edges
        pos = ((torch.arange(spf, dtype=torch.float64) + 0.5) / self.hop - 0.5).clamp(0, last)  # in hops
        i0 = pos.floor().long()
        frac = (pos - i0).float()[:, None]
        a0, a1 = amp[..., i0, :], amp[..., (i0 + 1).clamp(max=last), :]                     # (..., F, spf, M)
        env = a0 + (a1 - a0) * frac
        n = first_frame * spf + torch.arange(f * spf, dtype=torch.int64)                     # absolute sample index
        # phase in float64 from the exact rational cycle count modulo 1: identical for any split
        cycles = (n[:, None].double() * self.centres_hz.double()[None] / self.sample_rate) % 1.0
        osc = torch.sin(2 * math.pi * cycles).float()                                        # (F·spf, M)
        wave = (env.flatten(-3, -2) * osc).sum(-1)
        return wave.clamp(-1.0, 1.0)


def codec_for(cfg) -> MelCodec:
    """The codec of config `cfg`: its latent geometry (model.in_channels, the latent width,
    model.patch_size, model.avdit.band_rows), video.fps and the audio.* settings."""
    a = cfg.audio
    _, ph, pw = cfg.model.patch_size
    return MelCodec(fps=cfg.video.fps, channels=cfg.model.in_channels, width=cfg.video.width // cfg.vae.spatial_stride,
                    band_rows=cfg.model.avdit.band_rows, patch=(ph, pw), sample_rate=a.sample_rate, n_fft=a.n_fft,
                    fmin=a.fmin, fmax=a.fmax or None, db_range=a.db_range)
