"""World metrics of NFD play rollouts: the few-step student vs its many-step teacher (and random).

    python bench/research/play_quality.py [--teacher DIR/weights.safetensors] [--student builtin:tiny-play]
                                          [--frames 64 240] [--sequences 4] [--teacher-steps 16] [--speculate 2 3 4]
                                          [--out bench/results/play_quality.json] [KEY=VALUE ...]

Each variant rolls out `sequences` random action sequences (the world's rule: each action repeats
the previous one with probability 0.8) of each length with the tiny-play preset, and scores every
video with `framecast.world.metrics.evaluate_video(frames, actions=...)`: how often the white
player moves one step the pressed way (action_follow), player presence / duplicates, object count
stability and colour identity, and the largest centroid jump. For long rollouts the last 32 frames
are also scored alone (drift). Variants: the few-step student (`--student`, default the shipped
builtin:tiny-play, 4 steps), the student with joint speculative drafts of each `--speculate` K,
the teacher at `teacher-steps` and at 4 steps, and random weights. Prints a table of means and
writes JSON. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framecast.world.scenes import random_actions  # noqa: E402

KEYS = ("action_follow", "player.presence", "player.duplicates", "count_stability", "colour_identity",
        "max_jump")


def score(engine, frames: int, seed: int) -> dict:
    from framecast.world.metrics import evaluate_video

    names = random_actions(np.random.default_rng(seed), frames, 0.8)
    t0 = time.perf_counter()
    video = np.stack(list(engine.stream("", frames=frames, seed=seed, actions=names)))
    wall = time.perf_counter() - t0
    m = evaluate_video(video, actions=names)
    row = {"wall_s": wall, **{k: m.get(k) for k in KEYS}}
    if frames > 64:
        tail = evaluate_video(video[-32:], actions=["none"] + names[-31:])
        row.update({f"last32.{k}": tail.get(k) for k in KEYS})
    return row


def main() -> None:
    from framecast import Engine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="", help="teacher weights (.safetensors); omitted: no teacher rows")
    ap.add_argument("--student", default="builtin:tiny-play", help="few-step weights (default: the shipped ones)")
    ap.add_argument("--teacher-steps", type=int, default=16)
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 240])
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--speculate", type=int, nargs="*", default=[2, 3, 4], help="joint draft sizes K to score")
    ap.add_argument("--out", default="bench/results/play_quality.json")
    ap.add_argument("extra", nargs="*", help="config overrides for every variant (e.g. schedule.nfd.window=3)")
    args = ap.parse_args()
    variants = [("student 4 steps", [f"model.weights={args.student}"])] + [
        (f"student 4 steps, speculate {k}", [f"model.weights={args.student}", f"schedule.nfd.speculate={k}"])
        for k in args.speculate]
    if args.teacher:
        variants += [(f"teacher {args.teacher_steps} steps", [f"model.weights={args.teacher}",
                                                              f"sampler.steps={args.teacher_steps}"]),
                     ("teacher 4 steps", [f"model.weights={args.teacher}"])]
    variants.append(("random weights", ["model.weights="]))
    rows = []
    for label, overrides in variants:
        engine = Engine.from_preset("tiny-play", [*overrides, *args.extra])
        for frames in args.frames:
            runs = [score(engine, frames, seed) for seed in range(args.sequences)]
            row = {"variant": label, "frames": frames, "runs": runs}
            for k in runs[0]:
                vals = [r[k] for r in runs if r.get(k) is not None]
                row[k] = statistics.mean(vals) if vals else None
            rows.append(row)
            print(f"{label:<30} {frames:>5} frames: " + ", ".join(
                f"{k} {row[k]:.3f}" for k in ("action_follow", "player.presence", "count_stability")
                if row.get(k) is not None), flush=True)
    cols = KEYS + ("last32.action_follow", "wall_s")
    print(f"\nNFD play, tiny-play preset, mean over {args.sequences} action sequences (repeat p=0.8)")
    print(f"{'variant':<30} {'frames':>6} " + " ".join(f"{c.replace('player.', 'p.'):>16}" for c in cols))
    for r in rows:
        cells = " ".join(f"{r[c]:>16.3f}" if r.get(c) is not None else f"{'-':>16}" for c in cols)
        print(f"{r['variant']:<30} {r['frames']:>6} {cells}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "teacher": args.teacher, "student": args.student,
                                          "overrides": args.extra}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
