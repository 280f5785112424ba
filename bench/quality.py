"""World metrics of generated videos, per schedule and length, beside the world's own clips.

    python bench/quality.py [--weights builtin:tiny] [--seconds 4 60] [--schedules world full dualparal rollout]
                            [--prompts ...] [--seeds 0 1 ...] [--out FILE] [KEY=VALUE ...]

Generates with the tiny preset (the full schedule for short videos only: it attends over every
frame at once; DualParal and rollout for all lengths), scores every video with
`framecast.world.metrics.evaluate_video` against its prompt, prints a table of means over prompts
and seeds with their spread (standard deviation over the videos) and writes JSON
(bench/results/quality.json). `world` is the reference row: the world's own clip of each prompt
and seed (`render_prompt_clip`), scored the same way.

Columns: `direction` (named way up to the first bounce; chance ≈ 0.25), `moving` (share of
16-frame windows in which the named object moves at least half the world's speed),
`moving_dir` (over those windows' steps, the share that go the expected way, bounces included),
`jumps` (share of steps longer than 3× the world's speed), `wall_return` (shapes that reach a
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
        "colour_identity", "max_jump")
SHOWN = ("direction", "moving", "moving_direction", "jumps", "wall_return", "presence", "colour_identity", "max_jump")
SCHEDULES = ("world", "full", "dualparal", "rollout")


def make_engine(weights: str, schedule: str, extra: list[str]):
    """The tiny preset with these weights and this schedule (`world`: the default one, only for the
    request's frame count); one per schedule, reused for all its videos."""
    from framecast import Engine

    return Engine.from_preset("tiny", [f"model.weights={weights}", *extra] +
                              ([f"schedule.name={schedule}"] if schedule != "world" else []))


def frames_of(engine, schedule: str, seconds: float, prompt: str, seed: int) -> np.ndarray:
    """The video of one prompt and seed: generated, or the world's own clip (`world`)."""
    if schedule == "world":
        from framecast.world.scenes import render_prompt_clip

        return render_prompt_clip(prompt, engine.request(prompt, seconds=seconds).frames, seed).frames
    return np.stack(list(engine.stream(prompt, seconds=seconds, seed=seed)))


def run(engine, schedule: str, seconds: float, prompt: str, seed: int) -> dict:
    from framecast.world.metrics import evaluate_video

    start = time.perf_counter()
    frames = frames_of(engine, schedule, seconds, prompt, seed)
    wall = time.perf_counter() - start
    metrics = evaluate_video(frames, prompt=prompt)
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
    ap.add_argument("--weights", default="builtin:tiny")
    ap.add_argument("--seconds", type=float, nargs="+", default=[4, 60])
    ap.add_argument("--full-max-seconds", type=float, default=8, help="longest full-schedule video")
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one video per prompt and seed")
    ap.add_argument("--out", default="bench/results/quality.json")
    ap.add_argument("extra", nargs="*", help="config overrides")
    args = ap.parse_args()
    print(f"world metrics, weights {args.weights or 'random'}, mean ± sd over {len(args.prompts)} prompts "
          f"x seeds {' '.join(map(str, args.seeds))}", flush=True)
    print(f"{'schedule':>10} {'seconds':>7} " + " ".join(f"{k[:16]:>16}" for k in SHOWN) + f" {'wall s':>7}",
          flush=True)
    rows = []
    for schedule in args.schedules:
        with make_engine(args.weights, schedule, args.extra) as engine:
            for seconds in args.seconds:
                if schedule == "full" and seconds > args.full_max_seconds:
                    continue
                runs = [run(engine, schedule, seconds, p, seed) for seed in args.seeds for p in args.prompts]
                row = {"schedule": schedule, "seconds": seconds, **summarize(runs), "runs": runs}
                rows.append(row)
                cells = " ".join(f"{row[k]:>8.3f} ±{row[k + '_sd']:>6.3f}" if row[k] is not None else f"{'-':>16}"
                                 for k in SHOWN)
                print(f"{schedule:>10} {seconds:>7g} {cells} {row['wall_s']:>7.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"weights": args.weights, "seeds": args.seeds, "extra": args.extra,
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
