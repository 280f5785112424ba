"""What the learned interface tokens are worth to the model that was trained with them: the chunked
velocity loss (framecast/world/vin_training.py `vin_loss`, the training objective) on held-out world
clips, for the trained tiny-vin weights with and without its tokens, and for the shipped tiny
weights without tokens (the start of the fine-tune); differences paired by batch (same clips, noise
levels and noise), mean ± standard error. Not a test.

    python bench/research/vin_token_loss.py --weights /tmp/fc_tiny_vin [--batches 32] [--batch 8]
                                            [--frames 18] [--vin-windows N]

`--frames 126 --vin-windows 3` scores as `framecast train --vin --frames 126 --vin-windows 3` trains:
three windows of each clip under keyframes of the whole 126-frame clip.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


def main() -> None:
    from safetensors.torch import load_file

    from framecast.config import load_config
    from framecast.engine.components import configured_weights_path
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches
    from framecast.world.train import TrainOptions, step_generator
    from framecast.world.vin_training import build_vin_nets, vin_loss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="builtin:tiny-vin", help="trained tiny-vin weights (as model.weights)")
    ap.add_argument("--batches", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=18)
    ap.add_argument("--vin-windows", type=int, default=0, help="windows of each clip scored (0 = all)")
    ap.add_argument("--seed", type=int, default=999, help="held out: no training run used it")
    ap.add_argument("--out", default="bench/results/vin_token_loss.json")
    args = ap.parse_args()

    cfg = load_config("tiny-vin", [f"model.weights={args.weights}"])
    trained = build_vin_nets(cfg, "builtin:tiny", 0).eval()
    trained.load_state_dict(load_file(str(configured_weights_path(cfg)[0])))
    base = build_vin_nets(cfg, "builtin:tiny", 0).eval()
    opt = TrainOptions(caption_dropout=0.0, logit_mean=0.5, logit_std=1.0)
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])
    rows = {"tiny-vin, tokens": [], "tiny-vin, no tokens": [], "tiny (shipped), no tokens": []}
    stream = world_batches(args.seed, args.batch, args.frames, size=cfg.video.height, offset_prob=0.3)
    with torch.no_grad():
        for i in range(args.batches):
            clips = next(stream)
            for (name, nets, tokens) in (("tiny-vin, tokens", trained, True), ("tiny-vin, no tokens", trained, False),
                                         ("tiny (shipped), no tokens", base, False)):
                loss = vin_loss(nets, cfg, clips, step_generator(args.seed, i), opt, empty, interface=tokens,
                                windows_per_clip=args.vin_windows)
                rows[name].append(loss.item())
    ref = rows["tiny-vin, tokens"]
    print(f"chunked velocity loss on {args.batches} held-out batches of {args.batch} clips x {args.frames} frames "
          f"(seed {args.seed}, windows per clip: {args.vin_windows or 'all'}); minus 'tiny-vin, tokens', "
          f"paired by batch, mean ± s.e.")
    out = {}
    for name, losses in rows.items():
        diff = [a - b for a, b in zip(losses, ref)]
        se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
        out[name] = {"loss": statistics.mean(losses), "minus_tokens": statistics.mean(diff), "se": se}
        print(f"{name:>28} {statistics.mean(losses):.5f}   {statistics.mean(diff):+.5f} ± {se:.5f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**vars(args), "rows": out}, indent=1))


if __name__ == "__main__":
    main()
