"""Does AV-DiT's event cue see the bounces? Its per-frame reading on world clips, by the video's noise level.

    python bench/research/event_cue_probe.py --av-weights DIR_OR_FILE [--clips 64] [--frames 8]
                                             [--sigmas 0 0.2 0.5 0.8] [--out FILE.json]

Held-out world clips (av_world_batches from a seed no training run uses) with their sound; the video rows
noised to each σ, the band at pure noise (what a band meets when it runs behind the video,
model.avdit.audio_lag). The cue's logit per frame (framecast/models/event_cue.py) against the frames
that click: AUC (chance 0.5), and recall / precision with the logit > 0. Prints a table, writes JSON.
Not a test; research only (the cue is engine-defined: docs/avdit.md).
"""
from __future__ import annotations

import argparse
import json

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def main() -> None:
    from framecast.config import load_config
    from framecast.engine.audio import codec_for
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning
    from framecast.world.audio import av_world_batches
    from framecast.world.avdit_training import click_hops
    from framecast.world.train import load_nets

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--av-weights", required=True)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.2, 0.5, 0.8])
    p.add_argument("--seed", type=int, default=90210, help="the clips' seed (held out: not a training seed)")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    cfg = load_config("tiny-av", ["model.avdit.event_cue=true"])
    nets = load_nets(cfg, a.av_weights)
    model, text_encoder, codec = nets["transformer"].eval(), nets["text_encoder"].eval(), codec_for(cfg)
    batch = next(av_world_batches(a.seed, a.clips, a.frames, offset_prob=0.5))
    band = codec.encode(batch["audio"])
    lab = click_hops(codec, band).any(-1).flatten()                           # (B·F,) the frames that click
    x0 = torch.cat([batch["video"], band], dim=3)
    (b, _, f, h), rows = x0.shape[:4], band.shape[3]
    gen = torch.Generator().manual_seed(a.seed)
    noise = torch.randn(x0.shape, generator=gen)
    rows_out = []
    with torch.no_grad():
        text = text_encoder(batch["tokens"])
        for sigma in a.sigmas:
            s = torch.cat([torch.full((1, 1, 1, h - rows, 1), sigma), torch.ones(1, 1, 1, rows, 1)], dim=3)
            x_t = (1 - s) * x0 + s * noise
            ctxs = []
            run_model(model, x_t, torch.full((b, f), sigma * 1000), Conditioning(text, audio_timesteps=torch.full((b, f), 1000.0)),
                      prepare=lambda c: ctxs.append(c) or c)
            logits = ctxs[0].event_logits_BF.flatten()
            hit = (logits > 0) & lab
            rows_out.append({"video_sigma": sigma, "auc": auc(logits, lab), "recall": float(hit.sum() / lab.sum().clamp_min(1)),
                             "precision": float(hit.sum() / (logits > 0).sum().clamp_min(1)),
                             "events": int(lab.sum()), "frames": int(lab.numel())})
    print(f"{'video σ':>8} {'AUC':>6} {'recall':>7} {'precision':>9}  events/frames")
    for r in rows_out:
        print(f"{r['video_sigma']:8.2f} {r['auc']:6.3f} {r['recall']:7.3f} {r['precision']:9.3f}  {r['events']}/{r['frames']}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"weights": a.av_weights, "clips": a.clips, "frames": a.frames, "seed": a.seed, "rows": rows_out},
                      fh, indent=1)


if __name__ == "__main__":
    main()
