"""Audio-visual metrics for videos of the built-in world with a soundtrack (world/audio.py).

The sound is read through the world's mel analysis (the tiny-av codec's: 48 HTK mels over
0-8 kHz, 8 frame-local hops per frame at 8 fps; framecast/engine/audio.py), the video through
`metrics.detect_video` (objects by colour). Levels are the codec's latent scale: -1 silence,
0 = -40 dB, 1 = 0 dB re a unit sine; a world tone reads 0.5 in its band.

Events
  click      a hop whose mean level over the bands above 5 kHz (no world tone reaches there)
             crosses CLICK_LEVEL from below: a broadband onset; its frame is the hop's frame
  bounce     a frame t where a tracked colour's centroid step into t and the step out of t
             reverse on an axis (each >= 0.25 px) with the shape at that wall at t (bounding box
             within 2 px per 32 px of frame): a wall bounce seen in the video (needs frames t - 1
             and t + 1, so never the first or last frame)
  heard      the colours whose tone band's median level over a frame's hops is >= TONE_LEVEL
  seen       the world colours detected in the frame

`evaluate_av(frames, audio, fps)` -> flat dict of floats:
  sync.bounces, sync.clicks      counts (clicks in frames 1 .. F-2: where a bounce could be seen)
  sync.hit_rate                  bounces with a click within ±1 frame / bounces (only with bounces)
  sync.false_click_rate          clicks with no bounce within ±1 frame / clicks (only with clicks)
  sync.f1                        2·P·R / (P + R) with R = hit_rate, P = 1 - false_click_rate
                                 (0 with bounces and no clicks; only with bounces or clicks)
  pitch.accuracy                 fraction of frames whose heard set equals the seen set
  pitch.recall, pitch.precision  seen colours heard / seen; heard colours seen / heard (pooled)
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from framecast.world.audio import COLOUR_HZ, TONE_BANDS, samples_per_frame
from framecast.world.captions import COLOURS
from framecast.world.metrics import MIN_STEP, _largest_by_colour, _near_wall, detect_video

CLICK_LEVEL = -0.5     # -60 dB: silence reads -1, a world click about -0.1 above 5 kHz
CLICK_MIN_HZ = 5000.0  # bands above every world tone (the highest is COLOUR_HZ["cyan"] ≈ 3.3 kHz)
TONE_LEVEL = 0.0       # -40 dB: a world tone reads 0.5 in its band, a neighbouring tone < -0.6 there


@lru_cache(maxsize=None)
def world_codec(fps: int):
    """The mel analysis the metrics hear through (the tiny-av codec's geometry)."""
    from framecast.engine.audio import MelCodec

    return MelCodec(fps=fps, channels=3, width=32, band_rows=4, patch=(4, 4))


def _levels(audio: np.ndarray, fps: int) -> np.ndarray:
    """float [F·spf] -> band levels [F, hops, 48] on the codec's latent scale."""
    codec = world_codec(fps)
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    return codec.unpack(codec.encode(wave)).numpy()


def click_frames(audio: np.ndarray, fps: int) -> list[int]:
    """Frames where a broadband click starts (module docstring)."""
    levels = _levels(audio, fps)
    high = world_codec(fps).centres_hz.numpy() > CLICK_MIN_HZ
    loud = (levels[..., high].mean(-1) >= CLICK_LEVEL).reshape(-1)          # (F·hops,)
    onsets = np.flatnonzero(loud & ~np.r_[False, loud[:-1]])
    return sorted({int(i) // levels.shape[1] for i in onsets})


def heard_colours(audio: np.ndarray, fps: int) -> list[frozenset]:
    """Per frame, the colours whose tone is heard (module docstring)."""
    median = np.median(_levels(audio, fps), axis=1)                          # (F, M)
    return [frozenset(c for c, k in TONE_BANDS.items() if row[k] >= TONE_LEVEL) for row in median]


def bounce_frames_seen(frames: np.ndarray, dets: Optional[list] = None) -> list[int]:
    """Frames where some tracked colour is seen bouncing off a wall (module docstring)."""
    F, H, W, _ = np.asarray(frames).shape
    dets = detect_video(frames) if dets is None else dets
    by_colour = [_largest_by_colour(d) for d in dets]
    out = set()
    for colour in COLOURS:
        track = [b.get(colour) for b in by_colour]
        for t in range(1, F - 1):
            a, b, c = track[t - 1], track[t], track[t + 1]
            if a is None or b is None or c is None:
                continue
            d_in, d_out = np.subtract(b.centroid, a.centroid), np.subtract(c.centroid, b.centroid)
            for axis, extent in ((0, H), (1, W)):
                if abs(d_in[axis]) >= MIN_STEP and abs(d_out[axis]) >= MIN_STEP and d_in[axis] * d_out[axis] < 0 \
                        and _near_wall(b, axis, np.sign(d_in[axis]), extent):
                    out.add(t)
    return sorted(out)


def evaluate_av(frames: np.ndarray, audio: np.ndarray, fps: int) -> dict[str, float]:
    """uint8 frames [F, H, W, 3] and their audio float [F·spf] -> the metrics in the module docstring."""
    frames = np.asarray(frames)
    F = frames.shape[0]
    spf = samples_per_frame(fps)
    if np.asarray(audio).shape != (F * spf,):
        raise ValueError(f"audio of shape {np.asarray(audio).shape} for {F} frames at {fps} fps: expected "
                         f"({F * spf},) ({spf} samples a frame)")
    dets = detect_video(frames)
    bounces = bounce_frames_seen(frames, dets)
    clicks = [f for f in click_frames(audio, fps) if 1 <= f <= F - 2]
    near = lambda f, events: any(abs(f - e) <= 1 for e in events)  # noqa: E731
    out = {"sync.bounces": float(len(bounces)), "sync.clicks": float(len(clicks))}
    if bounces:
        out["sync.hit_rate"] = sum(near(b, clicks) for b in bounces) / len(bounces)
    if clicks:
        out["sync.false_click_rate"] = sum(not near(c, bounces) for c in clicks) / len(clicks)
    if bounces or clicks:
        r, p = out.get("sync.hit_rate", 1.0), 1.0 - out.get("sync.false_click_rate", 0.0 if not bounces else 1.0)
        out["sync.f1"] = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    seen = [frozenset(d.colour for d in fd if d.colour in COLOUR_HZ) for fd in dets]
    heard = heard_colours(audio, fps)
    out["pitch.accuracy"] = sum(h == s for h, s in zip(heard, seen)) / F
    n_seen, n_heard = sum(len(s) for s in seen), sum(len(h) for h in heard)
    if n_seen:
        out["pitch.recall"] = sum(len(h & s) for h, s in zip(heard, seen)) / n_seen
    if n_heard:
        out["pitch.precision"] = sum(len(h & s) for h, s in zip(heard, seen)) / n_heard
    return {k: float(v) for k, v in out.items()}
