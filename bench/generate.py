"""Wall time and peak RSS of `framecast generate` on the tiny preset at several lengths.

    python bench/generate.py [--frames 16 64 256] [--repeats 3] [--schedule full] [extra overrides...]

Each run is a fresh process (so peak RSS is that run's); prints a table of medians and writes
bench/results/generate.json. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUMMARY = re.compile(r"wrote (\d+) frames .* in ([\d.]+) s, peak RSS (\d+) MB")


def run_once(frames: int, schedule: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "framecast.launch.cli", "generate", "a red circle moving right", "--frames",
               str(frames), "--out", f"{tmp}/v.mp4", "--schedule", schedule, "--quiet", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    m = SUMMARY.search(proc.stdout)
    return {"frames": int(m.group(1)), "generate_s": float(m.group(2)), "process_s": wall,
            "peak_rss_mb": int(m.group(3))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schedule", default="full", choices=("full", "dualparal", "rollout"))
    ap.add_argument("--out", default="bench/results/generate.json")
    ap.add_argument("extra", nargs="*", help="config overrides passed to framecast generate")
    args = ap.parse_args()
    rows = []
    for frames in args.frames:
        runs = [run_once(frames, args.schedule, args.extra) for _ in range(args.repeats)]
        rows.append({"frames": frames, "schedule": args.schedule, "runs": runs,
                     "median_generate_s": statistics.median(r["generate_s"] for r in runs),
                     "median_process_s": statistics.median(r["process_s"] for r in runs),
                     "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)})
    print(f"framecast generate, preset tiny, schedule {args.schedule}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats}")
    print(f"{'frames':>7} {'generate s':>11} {'process s':>10} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['frames']:>7} {r['median_generate_s']:>11.2f} {r['median_process_s']:>10.2f} "
              f"{r['median_peak_rss_mb']:>12.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "extra": args.extra}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
