"""Wall time of DualParal with W=1 (local) vs W=2 (torchrun), one thread per worker, on a
Wan-shaped model large enough that compute dominates (~67M random parameters, pixel space 32x32).

    python bench/dualparal_speed.py [--latent-frames 64] [--steps 4] [--repeats 3]

The two configurations run alternately (W=1, W=2, W=1, ...) so machine noise hits both; medians
and their ratio are printed and written to bench/results/dualparal_speed.json. Not a test.
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

MODEL = ["model.weights=", "model.num_attention_heads=8", "model.attention_head_dim=64", "model.ffn_dim=2048",
         "model.num_layers=16", "sampler.guidance_scale=1.0"]


def run(workers: int, frames: int, steps: int, n: int, c: int) -> tuple[float, float]:
    """(whole-process wall seconds, generate seconds as reported by framecast — without interpreter
    start-up and, for torchrun, without launching the job)."""
    launcher = ["--launcher", "local"] if workers == 1 else ["--launcher", "torchrun", "--workers", str(workers)]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "framecast.launch.cli", "generate", "a red circle moving right", "--frames",
               str(frames), "--out", f"{tmp}/v.mp4", "--schedule", "dualparal", "--block-frames", str(n),
               "--context-frames", str(c), "--steps", str(steps), "--quiet", *launcher, *MODEL]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    reported = float(re.search(r"in ([\d.]+) s, peak RSS", proc.stdout).group(1))
    return wall, reported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent-frames", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--block-frames", type=int, default=8)
    ap.add_argument("--context-frames", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/dualparal_speed.json")
    args = ap.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    gen: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for w in (1, 2):
            wall, reported = run(w, args.latent_frames, args.steps, args.block_frames, args.context_frames)
            times[w].append(wall)
            gen[w].append(reported)
            print(f"W={w}: process {wall:.1f} s, generate {reported:.1f} s", flush=True)
    med = {w: statistics.median(v) for w, v in times.items()}
    med_gen = {w: statistics.median(v) for w, v in gen.items()}
    print(f"DualParal, {args.latent_frames} latent frames, N={args.block_frames} C={args.context_frames} "
          f"T={args.steps}, ~67M-param Wan-shaped model, 1 thread per worker, median of {args.repeats}")
    print(f"{'W':>3} {'process s':>10} {'speed-up':>9} {'generate s':>11} {'speed-up':>9}")
    for w in (1, 2):
        print(f"{w:>3} {med[w]:>10.1f} {med[1] / med[w]:>8.2f}x {med_gen[w]:>11.1f} {med_gen[1] / med_gen[w]:>8.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "process_s": times, "generate_s": gen,
                                          "median_process_s": med, "median_generate_s": med_gen,
                                          "speedup_process": med[1] / med[2],
                                          "speedup_generate": med_gen[1] / med_gen[2]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
