"""SLA against the same sparsity without its linear branch: fidelity to the dense model (PSNR) and
the world's metrics, on the same prompts and seeds.

    python bench/sla_quality.py --variant NAME=WEIGHTS:LINEAR ... [--seeds 4 5] [--seconds 4]

Each variant generates with the tiny-sla preset's sparsity (model.attn_backend=sla) from WEIGHTS
(builtin:NAME or a `framecast.world.sla_training --out` folder, used for the model and the SLA
projections alike) with the linear branch on (LINEAR=1) or off (0, plain block-sparse attention
over the critical blocks); the reference is the dense `tiny` model (sdpa). PSNR is over all frames
of a video against the dense video of the same prompt and seed (uint8 pixels, peak 255), averaged
over videos; the world metrics are `framecast.world.metrics.evaluate_video`'s. Prints a table,
writes JSON. Not a test.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

PROMPTS = ["a red circle moving right", "a blue square moving down", "a green triangle moving left",
           "a yellow circle moving up and a cyan square moving right"]
KEYS = ("adherence", "direction", "presence", "count_stability", "colour_identity")


def video(engine, prompt: str, seed: int, seconds: float):
    start = time.perf_counter()
    frames = np.stack(list(engine.stream(prompt, seconds=seconds, seed=seed)))
    return frames, time.perf_counter() - start


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def scores(frames: np.ndarray, prompt: str) -> dict:
    from framecast.world.metrics import evaluate_video

    m = evaluate_video(frames, prompt=prompt)
    directions = [v for k, v in m.items() if k.endswith(".direction")]
    m["direction"] = statistics.mean(directions) if directions else None
    return {k: m.get(k) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=WEIGHTS:LINEAR")
    ap.add_argument("--seeds", type=int, nargs="+", default=[4, 5])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--out", default="bench/results/sla_quality.json")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("extra", nargs="*", help="config overrides for every run (e.g. schedule.name=dualparal)")
    args = ap.parse_args()
    import torch

    from framecast import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {}
    for spec in args.variant:
        name, rest = spec.split("=", 1)
        weights, linear = rest.rsplit(":", 1)
        variants[name] = [f"model.weights={weights}", f"attention.sla.weights={weights if linear == '1' else ''}",
                          f"attention.sla.linear={'true' if linear == '1' else 'false'}", *args.extra]
    rows = {name: [] for name in ["dense", *variants]}
    engines = {"dense": Engine.from_preset("tiny", list(args.extra)),  # kept across videos: loaded once
               **{name: Engine.from_preset("tiny-sla", o) for name, o in variants.items()}}
    for seed in args.seeds:
        for prompt in args.prompts:
            ref, wall = video(engines["dense"], prompt, seed, args.seconds)
            rows["dense"].append({"prompt": prompt, "seed": seed, "psnr": None, "wall_s": wall, **scores(ref, prompt)})
            for name in variants:
                frames, wall = video(engines[name], prompt, seed, args.seconds)
                rows[name].append({"prompt": prompt, "seed": seed, "psnr": psnr(frames, ref), "wall_s": wall,
                                   **scores(frames, prompt)})
    table = {}
    for name, runs in rows.items():
        table[name] = {k: (statistics.mean(v) if v else None)
                       for k in ("psnr", "wall_s", *KEYS) for v in [[r[k] for r in runs if r[k] is not None]]}
        if name != "dense":
            ps = [r["psnr"] for r in runs]
            table[name]["psnr_se"] = statistics.stdev(ps) / math.sqrt(len(ps)) if len(ps) > 1 else None
    cols = ("psnr", "psnr_se", *KEYS, "wall_s")
    print(f"{len(args.prompts)} prompts x seeds {args.seeds}, {args.seconds:g} s, {' '.join(args.extra)}")
    print(f"{'variant':>14} " + " ".join(f"{c:>15}" for c in cols))
    for name, r in table.items():
        print(f"{name:>14} " + " ".join(f"{r.get(c):>15.3f}" if r.get(c) is not None else f"{'-':>15}" for c in cols))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"variants": variants, "seeds": args.seeds, "seconds": args.seconds,
                                          "extra": args.extra, "table": table, "runs": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
