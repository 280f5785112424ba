"""World metrics of generated videos, per schedule and length.

    python bench/research/quality.py [--weights builtin:tiny] [--seconds 4 60] [--schedules full dualparal rollout]
                                     [--prompts ...] [--seeds 0 1 ...] [KEY=VALUE ...]

Generates with the tiny preset (the full schedule for short videos only: it attends over every
frame at once; DualParal and rollout for all lengths), scores
every video with `framecast.world.metrics.evaluate_video` against its prompt, prints a table of
means over prompts and writes bench/results/quality.json. `direction` is the mean over the named
objects of how often they move the named way; `wall_return` (shapes that reach a wall and move
off it again within 3 frames: bounces) is averaged over the videos where some shape reached a
wall, `-` when none did. Random weights (`--weights ""`) give
the floor. Not a test.
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
KEYS = ("adherence", "direction", "wall_return", "presence", "count_stability", "colour_identity", "max_jump")


def run(weights: str, schedule: str, seconds: float, prompt: str, seed: int, extra: list[str]) -> dict:
    from framecast import Engine
    from framecast.world.metrics import evaluate_video

    engine = Engine.from_preset("tiny", [f"model.weights={weights}", f"schedule.name={schedule}", *extra])
    start = time.perf_counter()
    frames = np.stack(list(engine.stream(prompt, seconds=seconds, seed=seed)))
    wall = time.perf_counter() - start
    metrics = evaluate_video(frames, prompt=prompt)
    directions = [v for k, v in metrics.items() if k.endswith(".direction")]  # one per named object
    metrics["direction"] = statistics.mean(directions) if directions else None
    return {"wall_s": wall, "frames": len(frames), "prompt": prompt, "seed": seed,
            **{k: metrics.get(k) for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="builtin:tiny")
    ap.add_argument("--seconds", type=float, nargs="+", default=[4, 60])
    ap.add_argument("--full-max-seconds", type=float, default=8, help="longest full-schedule video")
    ap.add_argument("--schedules", nargs="+", default=["full", "dualparal", "rollout"],
                    choices=("full", "dualparal", "rollout"))
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one video per prompt and seed")
    ap.add_argument("--out", default="bench/results/quality.json")
    ap.add_argument("extra", nargs="*", help="config overrides")
    args = ap.parse_args()
    rows = []
    for schedule in args.schedules:
        for seconds in args.seconds:
            if schedule == "full" and seconds > args.full_max_seconds:
                continue
            runs = [run(args.weights, schedule, seconds, p, seed, args.extra)
                    for seed in args.seeds for p in args.prompts]
            row = {"schedule": schedule, "seconds": seconds, "runs": runs}
            for k in KEYS + ("wall_s",):
                vals = [r[k] for r in runs if r.get(k) is not None]
                row[k] = statistics.mean(vals) if vals else None
            rows.append(row)
    print(f"world metrics, weights {args.weights or 'random'}, mean over {len(args.prompts)} prompts "
          f"x seeds {' '.join(map(str, args.seeds))}")
    print(f"{'schedule':>10} {'seconds':>8} " + " ".join(f"{k:>15}" for k in KEYS) + f" {'wall s':>8}")
    for r in rows:
        cells = " ".join(f"{r[k]:>15.3f}" if r[k] is not None else f"{'-':>15}" for k in KEYS)
        print(f"{r['schedule']:>10} {r['seconds']:>8g} {cells} {r['wall_s']:>8.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"weights": args.weights, "seeds": args.seeds, "extra": args.extra,
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
