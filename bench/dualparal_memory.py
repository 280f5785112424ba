"""Peak RSS vs video length: DualParal (memory flat) vs the full schedule (grows with length).

    python bench/dualparal_memory.py [--latent-frames 64 256 1024] [--full-max 256] [--repeats 1]

Runs `framecast generate` on the tiny preset (pixel space: latent frames = video frames) in a
fresh process per point, W=1 local (the whole worker is that process), PNG-free mp4 output.
Prints a table, writes bench/results/dualparal_memory.json. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from generate import run_once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent-frames", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--full-max", type=int, default=256,
                    help="longest full-schedule run (full attention over the whole clip is slow)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="bench/results/dualparal_memory.json")
    args = ap.parse_args()
    extra = [f"sampler.steps={args.steps}", "schedule.dualparal.block_frames=8", "schedule.dualparal.context_frames=4"]
    rows = []
    for schedule in ("dualparal", "full"):
        for frames in args.latent_frames:
            if schedule == "full" and frames > args.full_max:
                rows.append({"schedule": schedule, "frames": frames, "skipped": f"> --full-max {args.full_max}"})
                continue
            runs = [run_once(frames, schedule, extra) for _ in range(args.repeats)]
            rows.append({"schedule": schedule, "frames": frames, "runs": runs,
                         "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                         "generate_s": statistics.median(r["generate_s"] for r in runs)})
    print(f"peak RSS per worker (W=1), tiny preset, {args.steps} steps, N=8 C=4")
    print(f"{'schedule':>10} {'frames':>7} {'peak RSS MB':>12} {'vs shortest':>12} {'generate s':>11}")
    for schedule in ("dualparal", "full"):
        measured = [r for r in rows if r["schedule"] == schedule and "peak_rss_mb" in r]
        base = measured[0]["peak_rss_mb"] if measured else None
        for r in (r for r in rows if r["schedule"] == schedule):
            if "skipped" in r:
                print(f"{schedule:>10} {r['frames']:>7} {'skipped (' + r['skipped'] + ')':>36}")
                continue
            print(f"{schedule:>10} {r['frames']:>7} {r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] / base:>11.2f}x "
                  f"{r['generate_s']:>11.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "steps": args.steps}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
