"""Teacher-forced next-frame accuracy of a play model: the player given the TRUE past.

    python bench/research/play_next_frame.py [--weights builtin:tiny-play] [--clips 32] [--frames 4]
                                             [--steps 4] [--out bench/results/play_next_frame.json]

Each world play clip's frames 1 .. F−1 are generated at once, frame i on the clean frames < i (at
the preset's context noise), exactly as the model was trained (`causal_training.predict_on_context`),
with `steps` Euler steps on the sampler's grid. A rollout (bench/research/play_quality.py) feeds the
model its own frames and so adds drift; this isolates what the model can do in one step. Per frame: is
a white player found, and is its centroid within 1 px of the true one. Prints a table, writes
JSON; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framecast.config import load_config  # noqa: E402
from framecast.engine.components import sampler_factory  # noqa: E402
from framecast.engine.video_io import to_uint8  # noqa: E402
from framecast.world.captions import ACTIONS, tokenize  # noqa: E402
from framecast.world.causal_training import predict_on_context  # noqa: E402
from framecast.world.metrics import find_objects  # noqa: E402
from framecast.world.scenes import sample_play_clip, to_model_video  # noqa: E402
from framecast.world.train import load_nets  # noqa: E402


@torch.no_grad()
def next_frames(nets, clips, steps: int, context_sigma: float, grid: torch.Tensor, seed: int) -> np.ndarray:
    """uint8 (N, F, H, W, 3): frame i of each clip generated on the clip's true frames < i."""
    x0 = torch.stack([to_model_video(c.frames) for c in clips])                     # (N, 3, F, H, W)
    n, f = x0.shape[0], x0.shape[2]
    actions = torch.tensor([[ACTIONS.index(a) for a in c.actions] for c in clips])
    tokens = torch.tensor([tokenize("")]).expand(n, -1)
    g = torch.Generator().manual_seed(seed)
    ctx = (1 - context_sigma) * x0 + context_sigma * torch.randn(x0.shape, generator=g)
    ctx_sigma = torch.full((n, f), context_sigma)
    x = torch.randn(x0.shape, generator=g)
    for k in range(steps):
        v = predict_on_context(nets, ctx, ctx_sigma, x, torch.full((n, f), float(grid[k])), tokens, actions)
        x = x + (grid[k + 1] - grid[k]) * v.float()
    return np.stack([to_uint8(v) for v in x])


def score(clips, frames_NFHWC: np.ndarray) -> dict:
    present, near, errors, total = 0, 0, [], 0
    for clip, video in zip(clips, frames_NFHWC):
        for i in range(1, len(video)):
            total += 1
            whites = [d for d in find_objects(video[i]) if d.colour == "white"]
            if not whites:
                continue
            present += 1
            d = max(whites, key=lambda d: d.area)
            truth = clip.player[i] + (clip.player_side - 1) / 2
            err = float(np.abs(np.array(d.centroid) - truth).max())
            errors.append(err)
            near += err <= 1.0
    return {"frames_scored": total, "player_present": present / total, "player_within_1px": near / total,
            "median_error_px": float(np.median(errors)) if errors else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=["builtin:tiny-play"])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=4, help="frames per clip (<= the model's trained clip length)")
    ap.add_argument("--steps", type=int, nargs="+", default=[4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/play_next_frame.json")
    args = ap.parse_args()
    cfg = load_config("tiny-play")
    clips = [sample_play_clip(10_000 + i, args.frames) for i in range(args.clips)]
    rows = []
    for weights in args.weights:
        nets = load_nets(cfg, weights).eval()
        for steps in args.steps:
            grid = sampler_factory(load_config("tiny-play", [f"sampler.steps={steps}"]))().sigmas
            video = next_frames(nets, clips, steps, cfg.schedule.nfd.context_sigma, grid, args.seed)
            rows.append({"weights": weights, "steps": steps, **score(clips, video)})
    print(f"teacher-forced next frame, {args.clips} play clips of {args.frames} frames")
    print(f"{'weights':<44} {'steps':>5} {'present':>8} {'<=1px':>8} {'median px':>10}")
    for r in rows:
        med = f"{r['median_error_px']:.2f}" if r["median_error_px"] is not None else "-"
        print(f"{r['weights']:<44} {r['steps']:>5} {r['player_present']:>8.2f} {r['player_within_1px']:>8.2f} {med:>10}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "clips": args.clips, "frames": args.frames}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
