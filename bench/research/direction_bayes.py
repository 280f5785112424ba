"""What the caption's direction word is worth to the Bayes-optimal denoiser of the built-in world.

    python bench/research/direction_bayes.py [--frames 8] [--clean-frames 0 1] [--sigmas 0.8 0.9 0.95 0.97 1.0]
                                             [--clips 24] [--out bench/results/direction_bayes.json]

A single-object clip ("a red circle moving D") is fixed by its direction D and start position: the
world has a few thousand such clips, so the exact posterior over them given a noisy clip x_t =
(1 − σ)·x0 + σ·ε is a softmax over all of them, and E[x0 | x_t] is the best any denoiser can do.
The table shows the loss ‖v̂ − (ε − x0)‖² (mean per element, as train and
bench/research/text_sensitivity.py measure it) of that optimum when the caption names the
direction ("known") and when it does not ("unknown"): the gap is what a model gains, at most, from reading the word. With `--clean-frames K`
the first K frames are given clean and the loss is over the rest. Compare with the trained model's
loss in bench/research/text_sensitivity.py. Prints a table and writes JSON; asserts nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framecast.world.captions import DIRECTIONS, ObjectSpec  # noqa: E402
from framecast.world.scenes import place_track, render_tracks, start_lattice, to_model_video  # noqa: E402


def every_clip(frames: int, colour: str = "red", shape: str = "circle") -> tuple[torch.Tensor, np.ndarray]:
    """All single-object clips of the world for this colour and shape, one per direction and
    start point: videos (N, 3, F, H, W) and their directions (N,)."""
    videos, directions = [], []
    for d in DIRECTIONS:
        rows, cols = start_lattice(d)
        for start in itertools.product(rows, cols):
            track = place_track(ObjectSpec(colour, shape, d), start, frames)
            videos.append(to_model_video(render_tracks([track], frames, 32)))
            directions.append(d)
    return torch.stack(videos), np.array(directions)


def optimal_losses(videos: torch.Tensor, directions: np.ndarray, sigma: float, clean: int, clips: int,
                   seed: int = 0) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    f = videos.shape[2]
    s_F = torch.full((f,), sigma)
    s_F[:clean] = 0.0
    s = s_F[None, :, None, None]
    flat = videos.flatten(1)
    total = {"known": 0.0, "unknown": 0.0}
    for _ in range(clips):
        j = int(torch.randint(len(videos), (1,), generator=g))
        x0 = videos[j]
        x_t = (1 - s) * x0 + s * torch.randn(x0.shape, generator=g)
        # log-likelihood of every candidate clip: clean frames must match, noisy ones are Gaussian
        log_p = torch.zeros(len(videos))
        if clean:
            same = (videos[:, :, :clean] == x0[:, :clean]).flatten(1).all(dim=1)
            log_p = torch.where(same, log_p, torch.tensor(-float("inf")))
        if sigma < 1:
            noisy = (x_t[None, :, clean:] - (1 - sigma) * videos[:, :, clean:]).flatten(1)
            log_p = log_p - (noisy ** 2).sum(dim=1) / (2 * sigma ** 2)
        for name, allowed in (("unknown", torch.ones(len(videos), dtype=torch.bool)),
                              ("known", torch.from_numpy(directions == directions[j]))):
            w = torch.softmax(torch.where(allowed, log_p, torch.tensor(-float("inf"))), dim=0)
            x0_hat = (w @ flat).view_as(x0)
            # v = (x_t − x0)/σ on the noisy frames, so the velocity error is the x0 error / σ
            total[name] += ((x0_hat - x0)[:, clean:] ** 2).mean().item() / sigma ** 2 / clips
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--clean-frames", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.8, 0.9, 0.95, 0.97, 1.0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--out", default="bench/results/direction_bayes.json")
    args = ap.parse_args()
    if not all(0 <= k < args.frames for k in args.clean_frames):
        ap.error(f"--clean-frames must lie in [0, --frames - 1] = [0, {args.frames - 1}], got {args.clean_frames}")
    if not all(0 < s <= 1 for s in args.sigmas):
        ap.error(f"--sigmas must lie in (0, 1], got {args.sigmas}")
    videos, directions = every_clip(args.frames)
    rows = []
    for clean in args.clean_frames:
        for sigma in args.sigmas:
            if clean == 0 and sigma == 1.0:
                continue  # pure noise everywhere: nothing to infer, both are the prior mean
            loss = optimal_losses(videos, directions, sigma, clean, args.clips)
            rows.append({"clean_frames": clean, "sigma": sigma, **loss})
    print(f"Bayes-optimal loss, {len(videos)} candidate clips of {args.frames} frames, {args.clips} noisy clips")
    print(f"{'clean':>5} {'sigma':>5} {'known':>8} {'unknown':>8} {'gain':>8}")
    for r in rows:
        print(f"{r['clean_frames']:>5} {r['sigma']:>5.2f} {r['known']:>8.4f} {r['unknown']:>8.4f} "
              f"{r['unknown'] - r['known']:>8.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"frames": args.frames, "clips": args.clips,
                                          "candidates": len(videos), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
