"""Seams of the window schedule: timestep-aware dynamic windows (TDW, windows that move between
steps) against fixed windows (shift 0), same seeds, on minute-long tiny-preset videos.

    python bench/window_seams.py [--seconds 60] [--prompts ...] [--seeds 0 1 2] [--jobs 2]
                                 [--out bench/results/window_seams.json] [KEY=VALUE ...]

Rows: `fixed` (schedule.window.shift_step=0: the same windows at every step), `tdw` (the
schedule.window defaults: shift 1, max offset 3, so the windows move back 0, 1, 2, 3 frames and
round again) and `world` (the world's own clip of each prompt and seed, the reference). Every
video is scored by `framecast.world.metrics.evaluate_video` twice:
- `seam_jump` / `inner_jump`: the largest centroid step into a frame at a window edge vs at every
  other step, px, with the edges of the row's OWN last step (`Schedule.seams`: where a window of
  the last step begins or where the one before it ended);
- `fixed_seam` / `fixed_inner`: the same at the FIXED windows' edges for every row (TDW's first
  step, α = 0, has exactly the fixed windows; the world row is measured there too): does moving
  the windows take the jump away from the places where fixed windows put it?
The largest step is one number per video and the tiny model's windows make jumps inside windows
too, so three means split at the same fixed edges go with it (`edge_split`): `fixed_seam_step` /
`fixed_inner_step` (mean centroid step, px), `fixed_seam_rate` / `fixed_inner_rate` (share of
steps longer than 3x the world's speed, motion.py's jump) and `fixed_seam_pixel` /
`fixed_inner_pixel` (mean absolute pixel change of the step, 0-255).
Plus the world's motion metrics (direction, moving, moving_direction, jumps, max_jump, presence,
colour_identity). Prints mean ± sd over prompts x seeds and the paired TDW − fixed differences
(same prompt and seed), writes JSON. `--jobs`: videos generated in parallel processes, one thread
each. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PROMPTS = ["a red circle moving right", "a blue square moving down", "a green triangle moving left",
           "a yellow circle moving up and a cyan square moving right"]
ROWS = {"world": None, "fixed": ["schedule.window.shift_step=0"], "tdw": []}
KEYS = ("seam_jump", "inner_jump", "fixed_seam", "fixed_inner", "fixed_seam_step", "fixed_inner_step",
        "fixed_seam_rate", "fixed_inner_rate", "fixed_seam_pixel", "fixed_inner_pixel", "direction", "moving",
        "moving_direction", "jumps", "max_jump", "presence", "colour_identity")
_ENGINES: dict = {}


def engine_for(row: str, extra: tuple[str, ...]):
    """One engine per row and worker process (built on first use)."""
    from framecast import Engine

    if row not in _ENGINES:
        _ENGINES[row] = Engine.from_preset("tiny", ["schedule.name=window", *(ROWS[row] or []), *extra])
    return _ENGINES[row]


def video_frames(engine, edges) -> list[int]:
    """Video frames where latent frames `edges` begin (latent frame k >= 1 starts at 1 + (k - 1)·stride)."""
    stride = engine.cfg.vae.temporal_stride
    return [1 + (k - 1) * stride for k in edges]


def edge_split(frames, seams: list[int]) -> dict:
    """Means over the steps t - 1 -> t into a seam frame t and over all other steps: the centroid
    step of each colour's largest object (both frames holding it), the share of those steps longer
    than JUMP x SPEED, and the mean absolute pixel change."""
    import numpy as np

    from framecast.world.metrics import detect_video
    from framecast.world.motion import JUMP
    from framecast.world.scenes import SPEED

    largest = [{d.colour: d for d in sorted(ds, key=lambda d: d.area)} for ds in detect_video(frames)]  # largest wins
    seam_set = {t for t in seams if t >= 1}
    steps = {True: [], False: []}
    pixels = {True: [], False: []}
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # (F - 1,)
    for t in range(1, len(frames)):
        pixels[t in seam_set].append(float(diff[t - 1]))
        for c, d in largest[t].items():
            if c in largest[t - 1]:
                steps[t in seam_set].append(float(np.linalg.norm(np.subtract(d.centroid, largest[t - 1][c].centroid))))
    scale = frames.shape[1] / 32  # the world's speed is per 32 px of frame
    out = {}
    for at, name in ((True, "seam"), (False, "inner")):
        if steps[at]:
            out[f"fixed_{name}_step"] = float(np.mean(steps[at]))
            out[f"fixed_{name}_rate"] = float(np.mean([s > JUMP * SPEED * scale for s in steps[at]]))
        if pixels[at]:
            out[f"fixed_{name}_pixel"] = float(np.mean(pixels[at]))
    return out


def run(row: str, prompt: str, seed: int, seconds: float, extra: tuple[str, ...]) -> dict:
    import numpy as np
    import torch

    from framecast.world.metrics import evaluate_video
    from framecast.world.scenes import render_prompt_clip

    torch.set_num_threads(1)
    engine = engine_for("fixed" if row == "world" else row, extra)
    req = engine.request(prompt, seconds=seconds, seed=seed)
    start = time.perf_counter()
    if row == "world":
        frames = render_prompt_clip(prompt, req.frames, seed).frames
        own = []
    else:
        frames = np.stack(list(engine.stream(prompt, seconds=seconds, seed=seed)))
        own = video_frames(engine, engine.schedule.seams(req))
    wall = time.perf_counter() - start
    fixed = video_frames(engine, engine_for("fixed", extra).schedule.seams(req))
    m = evaluate_video(frames, prompt=prompt, seams=own)
    f = evaluate_video(frames, prompt=prompt, seams=fixed)
    directions = [v for k, v in m.items() if k.endswith(".direction")]
    out = {"row": row, "prompt": prompt, "seed": seed, "frames": len(frames), "wall_s": wall,
           **{k: m.get(k) for k in KEYS},
           "direction": statistics.mean(directions) if directions else None,
           "fixed_seam": f.get("seam_jump"), "fixed_inner": f.get("inner_jump"), **edge_split(frames, fixed),
           "seams": len(own), "fixed_seams": len(fixed)}
    if row == "world":
        out["seam_jump"] = out["inner_jump"] = None  # no windows of its own
    return out


def mean_sd(vals: list) -> tuple:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="video length (the tiny preset: 8 fps)")
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes, 1 thread each")
    ap.add_argument("--out", default="bench/results/window_seams.json")
    ap.add_argument("extra", nargs="*", help="config overrides for both window rows")
    args = ap.parse_args()
    extra = tuple(args.extra)
    jobs = [(row, p, s) for row in args.rows for s in args.seeds for p in args.prompts]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, row, p, s, args.seconds, extra) for row, p, s in jobs]
        runs = []
        for fut in futures:
            runs.append(fut.result())
            r = runs[-1]
            print(f"  {r['row']:>5} seed {r['seed']} {r['prompt'][:36]:<36} {r['frames']} frames, {r['wall_s']:.0f} s",
                  flush=True)
    total = time.perf_counter() - start
    print(f"\nwindow seams: tiny preset, {args.seconds:g} s videos, mean ± sd over {len(args.prompts)} prompts x "
          f"seeds {' '.join(map(str, args.seeds))}; px; {total:.0f} s in all with {args.jobs} jobs")
    rows = []
    for row in args.rows:
        mine = [r for r in runs if r["row"] == row]
        stats = {k: mean_sd([r[k] for r in mine]) for k in KEYS + ("wall_s",)}
        rows.append({"row": row, **{k: v[0] for k, v in stats.items()}, **{f"{k}_sd": v[1] for k, v in stats.items()}})
    for title, keys in (("seams", KEYS[:10]), ("motion", KEYS[10:] + ("wall_s",))):
        print(f"{title}:\n{'row':>6} " + " ".join(f"{k.replace('fixed_', 'f.')[:13]:>13}" for k in keys))
        for r in rows:
            print(f"{r['row']:>6} " + " ".join(f"{r[k]:>6.2f}±{r[k + '_sd']:<6.2f}" if r[k] is not None
                                               else f"{'-':>13}" for k in keys))
    paired = {}
    if "tdw" in args.rows and "fixed" in args.rows:
        by = {(r["row"], r["prompt"], r["seed"]): r for r in runs}
        print("\npaired tdw − fixed (same prompt and seed): mean ± standard error")
        for k in KEYS:
            d = [by["tdw", p, s][k] - by["fixed", p, s][k] for p in args.prompts for s in args.seeds
                 if by["tdw", p, s][k] is not None and by["fixed", p, s][k] is not None]
            if d:
                se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
                paired[k] = {"mean": statistics.mean(d), "se": se, "n": len(d)}
                print(f"  {k:>16} {paired[k]['mean']:>+8.3f} ± {se:.3f} (n={len(d)})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python bench/window_seams.py " + " ".join(
            [f"--seconds {args.seconds:g}", "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs), *extra]),
        "seconds": args.seconds, "prompts": args.prompts, "seeds": args.seeds, "extra": list(extra),
        "total_s": total, "rows": rows, "paired_tdw_minus_fixed": paired, "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
