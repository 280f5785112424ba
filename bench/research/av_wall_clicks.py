"""Where does AV-DiT click? Clicks in frames where a shape touches a wall, and in the others.

    python bench/research/av_wall_clicks.py [--av-weights builtin:tiny-av] [--set KEY=VALUE ...]
                                            [--seconds 6] [--seeds 0 1 2] [--out FILE.json]

For the prompts of bench/av_sync.py and each seed: tiny-av's video with its sound (`Engine.stream(...,
audio=True)`), and the world's own clip with its own sound. Every frame is marked "a shape touches a
wall" (some colour's largest component within 2 px of a border per 32 px: metrics._near_wall, the margin
of the sync metric's bounces) or not; the table counts those frames and the clicks in them
(av_metrics.click_frames). In the world a shape at a wall is always bouncing; a video model whose shapes
stay at walls gets clicks there that the sync metric, which needs a turn, does not count. Prints a table,
writes JSON. Not a test; research only (docs/avdit.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the prompts of av_sync.py

from av_sync import PROMPTS  # noqa: E402


def wall_frames(frames: np.ndarray) -> np.ndarray:
    """bool [F]: some colour's largest component touches a wall in the frame."""
    from framecast.world.metrics import _largest_by_colour, _near_wall, detect_video

    _, h, w, _ = frames.shape
    return np.array([any(_near_wall(d, axis, side, extent) for d in _largest_by_colour(dets).values()
                         for axis, extent in ((0, h), (1, w)) for side in (-1, 1))
                     for dets in detect_video(frames)])


def count(frames: np.ndarray, audio: np.ndarray, fps: int) -> np.ndarray:
    """[frames at a wall, clicks there, other frames, clicks there]."""
    from framecast.world.av_metrics import click_frames

    wall = wall_frames(frames)
    clicks = np.zeros(len(frames), dtype=bool)
    clicks[click_frames(audio, fps)] = True
    return np.array([wall.sum(), (clicks & wall).sum(), (~wall).sum(), (clicks & ~wall).sum()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--av-weights", default="builtin:tiny-av")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tiny-av config override")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None)
    a = p.parse_args()

    from framecast import Engine
    from framecast.world.audio import clip_audio
    from framecast.world.scenes import render_prompt_clip

    engine = Engine.from_preset("tiny-av", [f"model.weights={a.av_weights}", *a.set])
    fps = engine.cfg.video.fps
    n = round(a.seconds * fps)
    totals = {"tiny-av": np.zeros(4, dtype=int), "world": np.zeros(4, dtype=int)}
    for prompt in PROMPTS:
        for seed in a.seeds:
            pairs = list(engine.stream(prompt, frames=n, seed=seed, audio=True))
            totals["tiny-av"] += count(np.stack([f for f, _ in pairs]), np.concatenate([c for _, c in pairs]), fps)
            clip = render_prompt_clip(prompt, n, seed)
            totals["world"] += count(clip.frames, clip_audio(clip.objects, n, fps), fps)
    print(f"{len(PROMPTS)} prompts x {len(a.seeds)} seeds, {n} frames")
    print(f"{'video':<8} {'at a wall':>9} {'clicks':>7} {'share':>6} {'other':>6} {'clicks':>7} {'share':>6}")
    rows = {}
    for name, (wall, wall_clicks, other, other_clicks) in totals.items():
        rows[name] = {"wall_frames": int(wall), "wall_clicks": int(wall_clicks), "other_frames": int(other),
                      "other_clicks": int(other_clicks)}
        print(f"{name:<8} {wall:>9} {wall_clicks:>7} {wall_clicks / max(wall, 1):>6.3f} {other:>6} {other_clicks:>7} "
              f"{other_clicks / max(other, 1):>6.3f}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"av_weights": a.av_weights, "set": a.set, "frames": n, "seeds": a.seeds, "rows": rows}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
