"""Peak RSS vs video length: the window schedule (model calls of at most window_frames latent frames)
against the full schedule (every call over the whole video).

    python bench/window_memory.py [--frames 64 256 1024] [--full-frames 64 128] [KEY=VALUE ...]

Each point is `framecast generate` on the tiny preset (pixel space: latent frames = video frames) in
a fresh process (bench/generate.py `run_once`; the CLI reports the process's VmHWM), mp4 output.
`latent MB` is what the window schedule holds for the whole video besides the model: the latent, the
merged prediction and the initial noise, 3 x F x C x h x w float32 (the tiny preset: 12 KiB a
frame each) — O(length), but small beside the model's activations, which a window bounds.
Prints a table, writes bench/results/window_memory.json. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from generate import run_once

MB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 256, 1024], help="window schedule lengths")
    ap.add_argument("--full-frames", type=int, nargs="*", default=[64, 128], help="full schedule lengths")
    ap.add_argument("--out", default="bench/results/window_memory.json")
    ap.add_argument("extra", nargs="*", help="config overrides for every run")
    args = ap.parse_args()
    from framecast.config import load_config

    cfg = load_config("tiny", ["schedule.name=window", *args.extra])
    per_frame = cfg.model.in_channels * cfg.video.height * cfg.video.width * 4 / cfg.vae.spatial_stride ** 2
    rows = []
    for schedule, lengths in (("window", args.frames), ("full", args.full_frames)):
        for frames in lengths:
            extra = ["schedule.full.lead_frames=0"] if schedule == "full" else []
            r = run_once(frames, schedule, [*extra, *args.extra])
            call = min(frames, cfg.schedule.window.window_frames) if schedule == "window" else frames
            rows.append({"schedule": schedule, "frames": frames, "frames_per_call": call,
                         "latent_mb": 3 * frames * per_frame / MB, **r})
            print(f"  {schedule} {frames} frames: {r['peak_rss_mb']} MB, {r['generate_s']:.1f} s", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS", "-")
    print(f"\nframecast generate, preset tiny, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}")
    print(f"{'schedule':>8} {'frames':>7} {'frames/call':>11} {'peak RSS MB':>12} {'latent MB':>10} {'generate s':>11}")
    for r in rows:
        print(f"{r['schedule']:>8} {r['frames']:>7} {r['frames_per_call']:>11} {r['peak_rss_mb']:>12} "
              f"{r['latent_mb']:>10.1f} {r['generate_s']:>11.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"window": asdict(cfg.schedule.window), "extra": args.extra, "rows": rows},
                                         indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
