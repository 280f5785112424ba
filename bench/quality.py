"""World metrics of generated videos, per schedule and length, beside the world's own clips.

    python bench/quality.py [--weights builtin:tiny] [--vin-weights builtin:tiny-vin] [--seconds 4 60]
                            [--schedules world full dualparal rollout vin ...] [--workers W]
                            [--prompts ...] [--seeds 0 1 ...] [--out FILE] [KEY=VALUE ...]

Generates with the tiny preset (the full schedule for short videos only: it attends over every
frame at once; DualParal and rollout for all lengths) and, for the `vin*` rows, with the tiny-vin
preset (ROWS below: learned interface tokens with each fusion setting, the same weights without
tokens, and the training-free pooled interface beside no tokens on the shipped tiny weights),
scores every video with
`framecast.world.metrics.evaluate_video` against its prompt, prints a table of means over prompts
and seeds with their spread (standard deviation over the videos) and writes JSON
(bench/results/quality.json). `world` is the reference row: the world's own clip of each prompt
and seed (`render_prompt_clip`), scored the same way.

Columns: `direction` (named way up to the first bounce; chance ≈ 0.25), `moving` (share of
16-frame windows in which the named object moves at least half the world's speed),
`moving_dir` (over those windows' steps, the share that go the expected way, bounces included),
`jumps` (share of steps longer than 3× the world's speed), `seam_jump` / `inner_jump` (largest
centroid step into a frame where the schedule's block or chunk begins / at any other step, px;
`Schedule.seams`), `wall_return` (shapes that reach a
wall and move off it again within 3 frames; over the videos where some shape reached a wall, `-`
when none did), `presence`, `colour_identity`, `max_jump` (px). Random weights (`--weights ""`)
give the floor. Not a test.

The 60-second check of both long-video schedules at several seeds (a regression shows in the
mean and spread): `python bench/quality.py --seconds 60 --schedules world rollout dualparal
--seeds 0 1 2`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

PROMPTS = ["a red circle moving right", "a blue square moving down", "a green triangle moving left",
           "a yellow circle moving up and a cyan square moving right"]
KEYS = ("adherence", "direction", "moving", "moving_direction", "jumps", "wall_return", "presence",
        "colour_identity", "max_jump", "seam_jump", "inner_jump")
SHOWN = ("direction", "moving", "moving_direction", "jumps", "presence", "colour_identity", "max_jump",
         "seam_jump", "inner_jump")
TINY_VIN = ["schedule.name=vin", "schedule.vin.chunk_frames=6", "schedule.vin.overlap_frames=2"]  # tiny-vin's chunks
ROWS = {  # name -> (preset, overrides); `world`: the world's own clips (the preset only sets the frame count)
    "world": ("tiny", []),
    "full": ("tiny", ["schedule.name=full"]),
    "dualparal": ("tiny", ["schedule.name=dualparal"]),
    "rollout": ("tiny", ["schedule.name=rollout"]),
    "vin": ("tiny-vin", []),                                        # learned tokens, early fusion (the preset)
    "vin-no-tokens": ("tiny-vin", ["schedule.vin.interface=none"]),  # the same weights, no interface
    **{f"vin-fuse-{f}": ("tiny-vin", [f"schedule.vin.fusion={f}"]) for f in ("none", "mid", "late", "always")},
    "vin-pooled": ("tiny", [*TINY_VIN, "schedule.vin.interface=pooled"]),  # training-free, shipped tiny weights
    "vin-base": ("tiny", [*TINY_VIN, "schedule.vin.interface=none"]),      # ... and without tokens
}
WORKER_SCHEDULES = ("dualparal", "vin")  # rows that take --workers


def make_engine(row: str, weights: str, vin_weights: str, workers: int, extra: list[str]):
    """The row's preset and schedule with these weights; one per row, reused for all its videos."""
    from framecast import Engine

    preset, overrides = ROWS[row]
    parallel = []
    if workers > 1 and row.split("-")[0] in WORKER_SCHEDULES:
        parallel = [f"parallel.workers={workers}", "parallel.launcher=ray"]
    return Engine.from_preset(preset, [f"model.weights={vin_weights if preset == 'tiny-vin' else weights}",
                                       *overrides, *parallel, *extra])


def seams(engine, row: str, seconds: float, prompt: str) -> list[int]:
    """Video frames where the row's schedule begins a block or chunk (none for the world's clips)."""
    if row == "world":
        return []
    req = engine.request(prompt, seconds=seconds)
    stride = engine.cfg.vae.temporal_stride  # latent frame k >= 1 starts at video frame 1 + (k - 1)·stride
    return [1 + (k - 1) * stride for k in engine.schedule.seams(req)]


def frames_of(engine, row: str, seconds: float, prompt: str, seed: int) -> np.ndarray:
    """The video of one prompt and seed: generated, or the world's own clip (`world`)."""
    if row == "world":
        from framecast.world.scenes import render_prompt_clip

        return render_prompt_clip(prompt, engine.request(prompt, seconds=seconds).frames, seed).frames
    return np.stack(list(engine.stream(prompt, seconds=seconds, seed=seed)))


def run(engine, row: str, seconds: float, prompt: str, seed: int) -> dict:
    from framecast.world.metrics import evaluate_video

    start = time.perf_counter()
    frames = frames_of(engine, row, seconds, prompt, seed)
    wall = time.perf_counter() - start
    metrics = evaluate_video(frames, prompt=prompt, seams=seams(engine, row, seconds, prompt))
    directions = [v for k, v in metrics.items() if k.endswith(".direction")]  # one per named object
    metrics["direction"] = statistics.mean(directions) if directions else None
    return {"wall_s": wall, "frames": len(frames), "prompt": prompt, "seed": seed,
            **{k: metrics.get(k) for k in KEYS}}


def summarize(runs: list[dict]) -> dict:
    """Mean and spread (standard deviation over the videos; 0 for one video) of each key."""
    out = {}
    for k in KEYS + ("wall_s",):
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = statistics.mean(vals) if vals else None
        out[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="builtin:tiny", help="weights of the tiny-preset rows")
    ap.add_argument("--vin-weights", default="builtin:tiny-vin", help="weights of the tiny-vin rows")
    ap.add_argument("--workers", type=int, default=1, help="workers (Ray actors on this machine) of the dualparal and vin rows")
    ap.add_argument("--seconds", type=float, nargs="+", default=[4, 60])
    ap.add_argument("--full-max-seconds", type=float, default=8, help="longest full-schedule video")
    ap.add_argument("--schedules", nargs="+", default=["world", "full", "dualparal", "rollout"], choices=ROWS,
                    help="rows of the table (ROWS)")
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one video per prompt and seed")
    ap.add_argument("--out", default="bench/results/quality.json")
    ap.add_argument("extra", nargs="*", help="config overrides")
    args = ap.parse_args()
    print(f"world metrics, weights {args.weights or 'random'}, mean ± sd over {len(args.prompts)} prompts "
          f"x seeds {' '.join(map(str, args.seeds))}", flush=True)
    print(f"{'schedule':>16} {'seconds':>7} " + " ".join(f"{k[:16]:>16}" for k in SHOWN) + f" {'wall s':>7}",
          flush=True)
    rows = []
    for name in args.schedules:
        with make_engine(name, args.weights, args.vin_weights, args.workers, args.extra) as engine:
            for seconds in args.seconds:
                if name == "full" and seconds > args.full_max_seconds:
                    continue
                runs = [run(engine, name, seconds, p, seed) for seed in args.seeds for p in args.prompts]
                row = {"schedule": name, "seconds": seconds, **summarize(runs), "runs": runs}
                rows.append(row)
                cells = " ".join(f"{row[k]:>8.3f} ±{row[k + '_sd']:>6.3f}" if row[k] is not None else f"{'-':>16}"
                                 for k in SHOWN)
                print(f"{name:>16} {seconds:>7g} {cells} {row['wall_s']:>7.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"weights": args.weights, "vin_weights": args.vin_weights,
                                          "workers": args.workers, "seeds": args.seeds, "extra": args.extra,
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
