"""Can AV-DiT's audio parts hear a bounce they see? The sound for the world's OWN videos.

    python bench/research/av_v2a.py --av-weights DIR_OR_FILE [--seconds 6] [--seeds 0 1 2] [--chunk 8]
                                    [--set KEY=VALUE ...]

Splits what bench/av_sync.py measures: there the sound follows a generated video, whose bounces the
tiny model draws loosely. Here the video rows are the world's own clip, held clean (video timestep 0)
chunk by chunk (`--chunk` frames, the length the AV parts were trained on), and only the band is
denoised, through the preset's sampler from its noise: what the sound of a perfectly drawn video would
be. Rows: `v2a` (that sound), `shuffled` (the sound made for the next seed's clip of the same prompt:
chance), each with the sync columns of framecast/world/av_metrics.py, medians over prompts x seeds,
and pooled counts (clicks, bounces, hits). Not a test; research only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the prompts of av_sync.py

from av_sync import PROMPTS  # noqa: E402


def sound_for(engine, frames: np.ndarray, prompt: str, seed: int, chunk: int) -> np.ndarray:
    """float32 [F·spf]: the band denoised under the clean video `frames` (uint8 [F, H, W, 3])."""
    from framecast.engine.vae import IdentityVAE
    from framecast.parallel.noise import band_noise

    codec, rows = engine.audio_codec, engine.audio_codec.band_rows
    video = IdentityVAE.encode(frames)                                                # (1, 3, F, H, W)
    f, w = video.shape[2], video.shape[4]
    band = band_noise(seed, (1, 3, f, rows, w))
    den = engine.denoiser(prompt, "")
    out = []
    for s in range(0, f, chunk):
        lat = torch.cat([video[:, :, s:s + chunk], band[:, :, s:s + chunk]], dim=3)
        sampler = engine.make_sampler()
        n = lat.shape[2]
        for t in sampler.timesteps:
            v = den(lat, torch.zeros(n), frames=range(s, s + n), band_t=torch.full((n,), float(t)))
            stepped = sampler.step(v, t, lat)
            lat = torch.cat([lat[:, :, :, :-rows], stepped[:, :, :, -rows:]], dim=3)
        out.append(lat[0, :, :, -rows:])
    return codec.decode(torch.cat(out, dim=1), 0).numpy().astype(np.float32).reshape(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--av-weights", default="builtin:tiny-av")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--prompts", nargs="+", default=PROMPTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="tiny-av config override (e.g. model.avdit.fusion_positions=true for weights trained with it)")
    args = p.parse_args()

    from framecast import Engine
    from framecast.world.av_metrics import evaluate_av
    from framecast.world.scenes import render_prompt_clip

    engine = Engine.from_preset("tiny-av", [f"model.weights={args.av_weights}", *args.set])
    fps = engine.cfg.video.fps
    frames = round(args.seconds * fps)
    rows = {"v2a": [], "shuffled": []}
    for prompt in args.prompts:
        made = []
        for seed in args.seeds:
            clip = render_prompt_clip(prompt, frames, seed)
            made.append((clip.frames, sound_for(engine, clip.frames, prompt, seed, args.chunk)))
            rows["v2a"].append(evaluate_av(*made[-1], fps))
            print(f"{prompt!r} seed {seed}: " + " ".join(f"{k} {v:.2f}" for k, v in rows["v2a"][-1].items()
                                                         if k.startswith("sync.")), flush=True)
        for i, (video, _) in enumerate(made):
            rows["shuffled"].append(evaluate_av(video, made[(i + 1) % len(made)][1], fps))
    print(f"\n{len(args.prompts)} prompts x {len(args.seeds)} seeds, {frames} frames, the world's own videos")
    for name, runs in rows.items():
        med = {k: statistics.median([r[k] for r in runs if k in r and r[k] == r[k]] or [float("nan")])
               for k in ("sync.hit_rate", "sync.false_click_rate", "sync.f1", "pitch.accuracy")}
        pooled = {k: int(sum(r[k] for r in runs)) for k in ("sync.bounces", "sync.clicks")}
        print(f"{name:<9} " + "  ".join(f"{k.split('.')[1]} {v:.3f}" for k, v in med.items()) + f"  pooled {pooled}")


if __name__ == "__main__":
    main()
