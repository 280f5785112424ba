"""Where VIN's jumps go: across the named direction or along it, and into which frame of a chunk.

    python bench/research/vin_jump_axes.py [--vin-weights builtin:tiny-vin] [--interfaces learned none]
                                           [--prompts ...] [--seeds 0 1] [--seconds 60] [--out FILE.json]

For each interface setting (`schedule.vin.interface`, the tiny-vin preset and its chunks of 6 + 2) and
the world's own clips, every single-object prompt and seed: the named object's track (its colour's
largest component per frame, `metrics.detect_video`), and
- `across` / `along`: jumps (steps longer than `motion.JUMP` x the world's speed, 3 px at 32 x 32: the
  `jumps` of bench/quality.py) whose larger component is across the named direction / along it;
- `into`: where those jumps land — the first owned frame of a chunk (`seam`), the k-th frame of an
  overlap (`overlap k`: frames two chunks denoise and cross-fade), or any other frame (`inner`);
- `across_sd`: the standard deviation of the coordinate across the named direction over the video (px).
  A world shape never leaves its row (or column): 0. It is the one thing about a shape that holds for
  the whole video and that the prompt does not fix — what global interface tokens could carry.
Prints a table (sums over videos; mean across_sd), writes JSON. Not a test; research only (docs/vin.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np

PROMPTS = ["a red circle moving right", "a blue square moving down", "a green triangle moving left"]


def frame_roles(plan) -> dict[int, str]:
    """Latent frame -> "seam" | "overlap k"; frames not listed are "inner"."""
    roles = {}
    for c in plan.chunks[1:]:
        roles[c.own_start] = "seam"
        for k, f in enumerate(range(c.start, c.own_start)):
            roles[f] = f"overlap {k}"
    return roles


def jump_axes(frames: np.ndarray, colour: str, direction: str, roles: dict[int, str]) -> dict:
    from framecast.world.metrics import _largest_by_colour, detect_video
    from framecast.world.motion import JUMP
    from framecast.world.scenes import BASE_SIZE, DIRECTION_VECTORS, SPEED

    axis = 0 if DIRECTION_VECTORS[direction][0] else 1  # (y, x): the axis the named direction moves along
    jump = JUMP * SPEED * frames.shape[2] / BASE_SIZE
    track = [getattr(_largest_by_colour(dets).get(colour), "centroid", None) for dets in detect_video(frames)]
    across = [c[1 - axis] for c in track if c is not None]
    out = {"across": 0, "along": 0, "into": Counter(), "across_sd": float(np.std(across)) if across else None}
    for t in range(len(track) - 1):
        if track[t] is None or track[t + 1] is None:
            continue
        d = np.subtract(track[t + 1], track[t])
        if np.linalg.norm(d) > jump:
            out["along" if abs(d[axis]) >= abs(d[1 - axis]) else "across"] += 1
            out["into"][roles.get(t + 1, "inner")] += 1
    return out


def main() -> None:
    from framecast import Engine
    from framecast.world.captions import parse_prompt
    from framecast.world.scenes import render_prompt_clip

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vin-weights", default="builtin:tiny-vin", help="weights of the tiny-vin preset")
    ap.add_argument("--interfaces", nargs="+", default=["learned", "none"], choices=("learned", "pooled", "none"))
    ap.add_argument("--prompts", nargs="+", default=PROMPTS, help="single-object prompts")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--out", default="bench/results/vin_jump_axes.json")
    args = ap.parse_args()
    specs = {p: parse_prompt(p) for p in args.prompts}
    bad = [p for p, s in specs.items() if len(s) != 1]
    if bad:
        ap.error(f"--prompts: one object per prompt (got {bad})")
    rows = {}
    for name in ["world", *args.interfaces]:
        interface = "none" if name == "world" else name
        overrides = [f"model.weights={args.vin_weights}", f"schedule.vin.interface={interface}"]
        with Engine.from_preset("tiny-vin", overrides) as engine:
            videos = []
            for p in args.prompts:
                spec = specs[p][0]
                req = engine.request(p, seconds=args.seconds)
                roles = {} if name == "world" else frame_roles(engine.schedule.plan(req))
                for seed in args.seeds:
                    frames = (render_prompt_clip(p, req.frames, seed).frames if name == "world"
                              else np.stack(list(engine.stream(p, seconds=args.seconds, seed=seed))))
                    videos.append({"prompt": p, "seed": seed,
                                   **jump_axes(frames, spec.colour, spec.direction, roles)})
        into = sum((v["into"] for v in videos), Counter())
        sds = [v["across_sd"] for v in videos if v["across_sd"] is not None]
        rows[name] = {"across": sum(v["across"] for v in videos), "along": sum(v["along"] for v in videos),
                      "into": dict(sorted(into.items())), "across_sd": statistics.mean(sds) if sds else None,
                      "videos": [{**v, "into": dict(v["into"])} for v in videos]}
        r = rows[name]
        print(f"{name:>8}: jumps across {r['across']:>4}, along {r['along']:>4}; into "
              f"{', '.join(f'{k} {n}' for k, n in r['into'].items()) or '-'}; across sd {r['across_sd']:.2f} px",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**vars(args), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
