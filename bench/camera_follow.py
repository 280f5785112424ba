"""Camera following: tiny-camera against the frozen tiny model without the adapter, with the world's
own clips as the ceiling.

    python bench/camera_follow.py                                  # the shipped adapter, ~5 min on 2 cores
    python bench/camera_follow.py --weights /tmp/fc_tiny_camera --seeds 0 1

Every (move, seed): one prompt of still shapes in the world's vocabulary (PROMPTS[seed % 4]) and a
`--frames` video from each model with the same prompt and seed: `tiny-camera` with `camera=move`;
`tiny`, the frozen model the adapter was trained on, with no camera (what the adapter adds); and
`world`, the world's own clip of that prompt and move (camera_scenes.prompt_camera_clip, placement
from the seed): the ceiling. Each video is scored against the requested move's poses with
framecast/world/camera_metrics.py: direction (share of steps where the still objects move within
45 degrees of the camera's image motion), speed_err and epe (px/frame), measured (share of object
steps that could be measured: objects leave the view under a pan, a model may lose them).
Prints a table (per move, then the mean over moves) and writes bench/results/camera_follow.json.
Never asserts anything.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("a red circle still", "a blue square still and a green triangle still", "a yellow triangle still",
           "a magenta circle still and a cyan square still")
MOVES = ("pan-left:2", "pan-right:2", "pan-up:2", "pan-down:2", "zoom-in:1", "zoom-out:1", "still")
KEYS = ("direction", "speed_err", "epe", "measured")


def mean(rows: list[dict], key: str):
    vals = [r[key] for r in rows if key in r]
    return round(float(np.mean(vals)), 3) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="camera.weights for tiny-camera: a `framecast train --camera` run's "
                    "weights.safetensors")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="tiny-camera config override (e.g. camera.lora_targets=all for an adapter trained with it)")
    ap.add_argument("--moves", nargs="+", default=list(MOVES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "camera_follow.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    from framecast import Engine
    from framecast.models.camera_poses import trajectory
    from framecast.world.camera_metrics import camera_follow
    from framecast.world.camera_scenes import prompt_camera_clip

    engines = {"tiny-camera": Engine.from_preset("tiny-camera", [f"camera.weights={args.weights}", *args.set]),
               "tiny": Engine.from_preset("tiny")}
    runs, t0 = [], time.perf_counter()
    for move in args.moves:
        poses = trajectory(move, args.frames, 32, 32)
        for seed in args.seeds:
            prompt = PROMPTS[seed % len(PROMPTS)]
            n = len(prompt.split(" and "))
            videos = {"world": prompt_camera_clip(prompt, move, args.frames, seed).frames}
            videos["tiny-camera"] = np.stack(list(engines["tiny-camera"].stream(prompt, frames=args.frames, seed=seed,
                                                                                camera=move)))
            videos["tiny"] = np.stack(list(engines["tiny"].stream(prompt, frames=args.frames, seed=seed)))
            for model, video in videos.items():
                runs.append({"move": move, "seed": seed, "prompt": prompt, "model": model,
                             **{k: v for k, v in camera_follow(video, poses, objects=n).items()}})
        print(f"{move}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    rows = []
    for move in [*args.moves, "all"]:
        for model in ("tiny-camera", "tiny", "world"):
            sel = [r for r in runs if r["model"] == model and (move == "all" or r["move"] == move)]
            rows.append({"move": move, "model": model, **{k: mean(sel, k) for k in KEYS}})
    print(f"{'move':<12} {'model':<12} {'direction':>9} {'speed_err':>9} {'epe':>6} {'measured':>8}")
    for r in rows:
        cells = [("-" if r[k] is None else f"{r[k]:.3f}") for k in KEYS]
        print(f"{r['move']:<12} {r['model']:<12} {cells[0]:>9} {cells[1]:>9} {cells[2]:>6} {cells[3]:>8}")
    record = {"command": "python bench/camera_follow.py " + " ".join(sys.argv[1:]), "weights": args.weights,
              "frames": args.frames, "seeds": args.seeds, "prompts": list(PROMPTS), "schedule": "rollout (tiny presets)",
              "legend": "direction: share of steps with the still objects moving within 45 deg of the camera's image "
                        "motion (undefined for still); speed_err = mean ||m| - |e||, epe = mean |m - e|, px/frame; "
                        "measured: share of object steps measured",
              "rows": rows, "runs": runs, "wall_s": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
