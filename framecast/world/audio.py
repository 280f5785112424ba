"""The built-in world's sound: 16 kHz mono, sample-exact with the frames.

- every shape hums a steady sine whose pitch is set by its colour (`COLOUR_HZ`): six pitches at
  the centres of mel bands 5 apart of the tiny-av codec (48 HTK mels over 0-8 kHz,
  framecast/engine/audio.py), so the codec hears each in its own band;
- every wall bounce (a frame where a shape's velocity component flips: `bounce_frames`) makes a
  short broadband click (a fixed noise burst with a 2.5 ms decay) starting at that frame's first
  sample.

Frame f owns samples [f·spf, (f + 1)·spf), spf = 16000 // fps (fps must divide 16000). Tone
phases follow the absolute sample index of the clip's video (`offset` frames before the clip), so
a window from later in a video sounds as that part of the video does.

    audio = clip_audio(clip.objects, frames, fps, offset)      # float32 [frames * spf]
    for batch in av_world_batches(seed, batch, frames, fps=8):  # video + audio + caption tokens
        ...
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from framecast.engine.audio import SAMPLE_RATE, hz_to_mel, mel_to_hz
from framecast.world.captions import COLOURS, tokenize
from framecast.world.scenes import ObjectTrack, _bounds, clip_batches, to_model_video

TONE_MELS, TONE_FMAX = 48, SAMPLE_RATE / 2  # the tiny-av codec's mel bands the pitches are placed on
TONE_BANDS = dict(zip(COLOURS, (8, 13, 18, 23, 28, 33)))  # colour -> mel band (5 apart: resolved by the codec)
COLOUR_HZ = {c: float(mel_to_hz((k + 1) * hz_to_mel(TONE_FMAX) / (TONE_MELS + 1))) for c, k in TONE_BANDS.items()}
TONE_AMPLITUDE = 0.1     # each shape's sine (-20 dB re full scale)
CLICK_AMPLITUDE = 0.6    # peak of a bounce click
CLICK_SAMPLES = 200      # 12.5 ms at 16 kHz: inside the first hop of the frame at any fps the codec takes
CLICK_DECAY = 40         # samples (2.5 ms) e-folding of the burst


def samples_per_frame(fps: int, sample_rate: int = SAMPLE_RATE) -> int:
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps < 1 or sample_rate % fps:
        raise ValueError(f"fps={fps!r} does not divide the audio sample rate {sample_rate} Hz: each video frame must "
                         f"own a whole number of samples (e.g. fps 8, 10, 16, 20, 25)")
    return sample_rate // int(fps)


def _click() -> np.ndarray:
    """The bounce click: a fixed white-noise burst with an exponential decay, (CLICK_SAMPLES,)."""
    noise = np.random.default_rng(20261206).standard_normal(CLICK_SAMPLES)
    burst = noise / np.abs(noise).max() * np.exp(-np.arange(CLICK_SAMPLES) / CLICK_DECAY)
    return (CLICK_AMPLITUDE * burst).astype(np.float32)


CLICK = _click()


def bounce_frames(track: ObjectTrack, offset: int = 0, size: int = 32) -> list[int]:
    """Frames of the clip where `track` bounces off a wall: its velocity turns on some axis at that
    frame (scenes._bounce: at the wall, the step away from it). At frame 0 of a window from later in
    its video (`offset` > 0) the turn is read off the position: at a wall, moving away from it
    (only a bounce brings a shape there after the video's first frame)."""
    pos, vel = track.positions, track.velocities
    out = [f for f in range(1, len(vel)) if np.any(vel[f] * vel[f - 1] < 0)]
    if offset > 0 and len(vel):
        _, _, lo, hi = _bounds(size)
        at_wall = ((pos[0] >= hi) & (vel[0] < 0)) | ((pos[0] <= lo) & (vel[0] > 0))
        if at_wall.any():
            out.insert(0, 0)
    return out


def clip_audio(tracks: Sequence[ObjectTrack], frames: int, fps: int, offset: int = 0, size: int = 32) -> np.ndarray:
    """float32 [frames · spf] in [-1, 1]: the tones of `tracks` and a click at each bounce (module
    docstring). `offset`: the clip's first frame in its video; `size`: its frame size (walls)."""
    spf = samples_per_frame(fps)
    n = np.arange(frames * spf, dtype=np.int64) + offset * spf                 # absolute sample index
    wave = np.zeros(frames * spf, dtype=np.float64)
    for t in tracks:
        cycles = (n * COLOUR_HZ[t.colour] / SAMPLE_RATE) % 1.0
        wave += TONE_AMPLITUDE * np.sin(2 * np.pi * cycles)
        for f in bounce_frames(t, offset, size):
            start = f * spf
            end = min(start + CLICK_SAMPLES, len(wave))
            wave[start:end] += CLICK[:end - start]
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def av_world_batches(seed: int, batch: int, frames: int, size: int = 32, fps: int = 8,
                     offset_prob: float = 0.0) -> Iterator[dict[str, torch.Tensor]]:
    """Infinite training batches with sound, deterministic for a given seed: the clips of
    `scenes.world_batches` (the same draws) plus their audio.

    yields {"video": float32 (B, 3, F, H, W) in [-1, 1], "offsets": int64 (B,),
            "tokens": int64 (B, 16), "audio": float32 (B, F · spf) in [-1, 1]}"""
    samples_per_frame(fps)  # a bad fps: one line here, not at the first batch
    return _av_batches(seed, batch, frames, size, fps, offset_prob)


def _av_batches(seed: int, batch: int, frames: int, size: int, fps: int, offset_prob: float):
    for clips, offsets in clip_batches(seed, batch, frames, size, offset_prob=offset_prob):
        yield {"video": torch.stack([to_model_video(c.frames) for c in clips]),
               "offsets": torch.tensor(offsets, dtype=torch.int64),
               "tokens": torch.tensor([tokenize(c.caption) for c in clips], dtype=torch.int64),
               "audio": torch.from_numpy(np.stack([clip_audio(c.objects, frames, fps, o, size)
                                                   for c, o in zip(clips, offsets)]))}
