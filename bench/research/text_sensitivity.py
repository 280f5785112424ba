"""Which words of a caption the text model uses: its flow-matching loss on world clips with the
true caption vs. the same caption with one attribute swapped (direction, colour or shape) or empty.

    python bench/research/text_sensitivity.py [--weights builtin:tiny ...] [--clips 16] [--frames 8]
                                              [--sigmas 0.5 0.8 0.9] [--clean-frames 0 1]
                                              [--out bench/results/text_sensitivity.json]

For each weights file, each σ and each single-object clip ("a COLOUR SHAPE moving DIRECTION",
placement from the clip's seed), the loss ‖v̂ − (ε − x0)‖² at one noise level for all frames, with
the same noise for every caption variant. With `--clean-frames K` the first K frames are given clean
(σ = 0, the context `schedule.rollout.lead_frames` samples with) and the loss is taken over the
other frames: there the direction word says exactly where the object goes next, so a model that
can follow it gains much. A model that uses a word has a higher loss when that
word is wrong: the table shows loss(variant) / loss(true caption) − 1 in percent (0 = the word is
ignored). Prints a table and writes JSON; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framecast.config import load_config  # noqa: E402
from framecast.world.captions import COLOURS, DIRECTIONS, SHAPES, tokenize  # noqa: E402
from framecast.world.scenes import render_prompt_clip, to_model_video  # noqa: E402
from framecast.world.train import load_nets, predict  # noqa: E402

VARIANTS = ("true", "direction", "colour", "shape", "empty")


def captions(colour: str, shape: str, direction: str) -> dict[str, str]:
    """The true caption and one wrong variant per attribute (the next value in the vocabulary)."""
    def other(values, v):
        return values[(values.index(v) + 1) % len(values)]

    return {"true": f"a {colour} {shape} moving {direction}",
            "direction": f"a {colour} {shape} moving {other(DIRECTIONS, direction)}",
            "colour": f"a {other(COLOURS, colour)} {shape} moving {direction}",
            "shape": f"a {colour} {other(SHAPES, shape)} moving {direction}",
            "empty": ""}


@torch.no_grad()
def losses(nets, clips: int, frames: int, sigma: float, max_len: int, clean: int = 0) -> dict[str, float]:
    total = dict.fromkeys(VARIANTS, 0.0)
    for i in range(clips):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)]
        direction = DIRECTIONS[(i // len(SHAPES)) % len(DIRECTIONS)]
        clip = render_prompt_clip(f"a {colour} {shape} moving {direction}", frames, seed=i)
        x0 = to_model_video(clip.frames)[None]                                  # (1, 3, F, H, W)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i))
        sigma_F = torch.full((frames,), sigma)
        sigma_F[:clean] = 0.0
        s = sigma_F[None, None, :, None, None]
        x_t = (1 - s) * x0 + s * noise
        for name, text in captions(colour, shape, direction).items():
            v = predict(nets, x_t, sigma_F[None] * 1000, torch.tensor([tokenize(text, max_len=max_len)]))
            total[name] += ((v - (noise - x0))[:, :, clean:] ** 2).mean().item() / clips
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=["builtin:tiny"])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.8, 0.9])
    ap.add_argument("--clean-frames", type=int, nargs="+", default=[0],
                    help="first frames given clean (sigma 0); the loss is over the rest")
    ap.add_argument("--out", default="bench/results/text_sensitivity.json")
    args = ap.parse_args()
    if not all(0 <= k < args.frames for k in args.clean_frames):
        ap.error(f"--clean-frames must lie in [0, --frames - 1] = [0, {args.frames - 1}], got {args.clean_frames}")
    cfg = load_config("tiny")
    rows = []
    for weights in args.weights:
        nets = load_nets(cfg, weights).eval()
        for clean in args.clean_frames:
            for sigma in args.sigmas:
                loss = losses(nets, args.clips, args.frames, sigma, cfg.text.max_length, clean)
                rows.append({"weights": weights, "clean_frames": clean, "sigma": sigma, "loss": loss,
                             "increase_pct": {k: 100 * (loss[k] / loss["true"] - 1) for k in VARIANTS[1:]}})
    print(f"loss increase (%) when one caption word is wrong; {args.clips} clips of {args.frames} frames")
    print(f"{'weights':<40} {'clean':>5} {'sigma':>5} {'loss':>8} " + " ".join(f"{k:>10}" for k in VARIANTS[1:]))
    for r in rows:
        print(f"{r['weights']:<40} {r['clean_frames']:>5} {r['sigma']:>5.2f} {r['loss']['true']:>8.4f} "
              + " ".join(f"{r['increase_pct'][k]:>10.2f}" for k in VARIANTS[1:]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"clips": args.clips, "frames": args.frames, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
