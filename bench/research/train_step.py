"""Seconds per training step of the world's tiny models: fp32 vs bf16 autocast (`train --bf16`).

    python bench/research/train_step.py [--steps 10] [--repeats 3] [--out bench/results/train_step.json]

Each variant runs exactly what `framecast train` runs per step (`train.train_step`: loss under
autocast with --bf16, backward, grad clip, AdamW, EMA) on the shipped recipes' batch shapes, from the same seed:
  - tiny (text):   batch 8 x 8 frames, --prefix-prob 0.9 --offset-prob 0.3; and the same with
                   model.num_layers=4 (what a smaller tiny model would save; docs/tiny-experiments.json ->
                   four_layer_chain_not_shipped);
  - tiny-play:     batch 8 x 4 frames, --draft-prob 0.3 --fg-weight 4 --offset-prob 0.5; and the
                   same batch with every clip drafted (all on the dense mask: what every batch
                   with a draft paid before the drafted clips ran apart from the plain ones).
Variants run interleaved, `repeats` rounds of `steps` timed steps (after 3 warm-up steps), so
the ratios are measured side by side; the table gives the median seconds per step and the
bf16 / fp32 ratio. Prints a table and writes JSON; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framecast.config import load_config  # noqa: E402
from framecast.world.captions import tokenize  # noqa: E402
from framecast.world.scenes import world_batches  # noqa: E402
from framecast.world.train import TrainOptions, build, step_generator, train_step  # noqa: E402

VARIANTS = {  # name: (preset, batch, frames, options, config overrides)
    "tiny": ("tiny", 8, 8, TrainOptions(prefix_prob=0.9, offset_prob=0.3), []),
    "tiny, 4 layers": ("tiny", 8, 8, TrainOptions(prefix_prob=0.9, offset_prob=0.3), ["model.num_layers=4"]),
    "tiny-play": ("tiny-play", 8, 4, TrainOptions(play=True, draft_prob=0.3, fg_weight=4, offset_prob=0.5), []),
    "tiny-play, every clip drafted": ("tiny-play", 8, 4, TrainOptions(play=True, draft_prob=1.0, fg_weight=4,
                                                                      offset_prob=0.5), []),
}


class Stepper:
    """One variant's model, optimizer, EMA and data stream, stepped as `train` steps them."""

    def __init__(self, preset: str, batch: int, frames: int, opt: TrainOptions, overrides: list[str], bf16: bool):
        cfg = load_config(preset, overrides)
        self.opt, self.step_n = replace(opt, bf16=bf16), 0
        self.nets = build(cfg, 0).train()
        self.ema = build(cfg, 0).eval().requires_grad_(False)
        self.optim = torch.optim.AdamW(self.nets.parameters(), lr=1e-3)
        self.data = world_batches(0, batch, frames, size=cfg.video.height, play=opt.play,
                                  offset_prob=opt.offset_prob)
        self.empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])

    def step(self) -> float:
        batch = next(self.data)
        t0 = time.perf_counter()
        train_step(self.nets, self.ema, self.optim, batch, step_generator(0, self.step_n), self.opt, self.empty,
                   "cpu", self.opt.ema_decay)
        self.step_n += 1
        return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (variants interleaved)")
    ap.add_argument("--out", default="bench/results/train_step.json")
    args = ap.parse_args(argv)
    steppers = {(name, prec): Stepper(*VARIANTS[name], bf16=prec == "bf16")
                for name in VARIANTS for prec in ("fp32", "bf16")}
    for s in steppers.values():
        for _ in range(3):
            s.step()
    times = {key: [] for key in steppers}
    for _ in range(args.repeats):
        for key, s in steppers.items():
            times[key] += [s.step() for _ in range(args.steps)]
    rows = []
    for name in VARIANTS:
        fp32, bf16 = (statistics.median(times[(name, p)]) for p in ("fp32", "bf16"))
        rows.append({"variant": name, "fp32_s": round(fp32, 4), "bf16_s": round(bf16, 4),
                     "bf16_over_fp32": round(bf16 / fp32, 3)})
    print(f"{'variant':32s} {'fp32 s/step':>12s} {'bf16 s/step':>12s} {'bf16/fp32':>10s}")
    for r in rows:
        print(f"{r['variant']:32s} {r['fp32_s']:12.3f} {r['bf16_s']:12.3f} {r['bf16_over_fp32']:10.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
