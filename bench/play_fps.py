"""Frames per second of NFD play: KV cache on/off, speculation on/off, loop-only and end-to-end.

    python bench/play_fps.py [--frames 96] [--repeats 3] [--speculate 4 ...] [--repeat-prob 0.8]
                             [--gpu-model] [--out bench/results/play_fps.json]

CPU part (the shipped `tiny-play` preset, 32x32, 4 steps): for each variant, median FPS over
`repeats` runs of `frames` frames under one random action sequence in which each action repeats
the previous one with probability `repeat_prob` (the world's play clips use 0.8):
  - loop-only FPS: frames / seconds inside the model (denoising, commits, drafts);
  - end-to-end FPS: frames / wall seconds of the whole loop including VAE decode and the socket
    encoding of `framecast serve` (PNG + 8-byte header) — the number a viewer sees (spec §7.3).
Variants: KV cache (NfdRollout) vs recompute-the-window (NfdRolloutNoCache); separate vs fused
commit passes (`fuse_commit`: a frame's commit rides on the next chunk's first step); speculation
off vs `--speculate K` joint drafts (reporting drafted / accepted / discarded frames).

GPU part (`--gpu-model`, CUDA only): a 310M-parameter NFD-shaped Wan DiT with random weights
(dim 1024, 18 layers, 16 heads, 16 latent channels, patch 1x2x2) at 384x224 (latent 48x28: an 8x
image VAE, 336 tokens per frame), 4 steps, window 32, bf16 with the flash backend when flash-attn
imports (else sdpa); loop-only FPS, KV cache on/off, speculation off/on — beside NFD+'s 31 FPS
(310M, A100, 4 steps + speculation + KV cache). No VAE decode: the model has no trained VAE.
Prints a table and writes JSON; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framecast.engine.engine import Engine  # noqa: E402
from framecast.launch.protocol import encode_frame  # noqa: E402
from framecast.schedulers.nfd import NfdRollout, NfdRolloutNoCache  # noqa: E402
from framecast.schedulers.speculative import SpeculativeRollout  # noqa: E402
from framecast.world.captions import ACTIONS  # noqa: E402
from framecast.world.scenes import random_actions  # noqa: E402


def action_sequence(frames: int, repeat_prob: float, seed: int) -> list[int]:
    """Action ids under the world's play-clip rule (`scenes.random_actions`)."""
    return [ACTIONS.index(a) for a in random_actions(np.random.default_rng(seed), frames, repeat_prob)]


def make_rollout(engine: Engine, cache: bool, shape, window: int, context_sigma: float, fuse: bool):
    cls = NfdRollout if cache else NfdRolloutNoCache
    return cls(engine.model, engine.denoiser("", ""), engine.make_sampler, shape, seed=0, window=window,
               context_sigma=context_sigma, fuse_commit=fuse)


def run_once(engine: Engine, actions: list[int], cache: bool, speculate: int, fuse: bool, shape, window: int,
             context_sigma: float, decode: bool) -> dict:
    rollout = make_rollout(engine, cache, shape, window, context_sigma, fuse)
    spec = SpeculativeRollout(rollout, speculate, "joint", total=len(actions)) if speculate > 1 else None
    decoder = engine.vae.decoder() if decode else None
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    model_s = 0.0
    start = time.perf_counter()
    for f, a in enumerate(actions):
        t0 = time.perf_counter()
        if spec is not None:
            lat = spec.push(a)
        else:
            lat = rollout.denoise(f, [a])
            rollout.commit(f, lat, [a])
        sync()
        model_s += time.perf_counter() - t0
        if decoder is not None:
            from framecast.engine.video_io import to_uint8

            encode_frame(f, a, to_uint8(decoder.decode(lat)[0])[0])
    wall = time.perf_counter() - start
    row = {"loop_fps": len(actions) / model_s, "e2e_fps": len(actions) / wall if decode else None,
           "forwards": rollout.forwards}
    if spec is not None:
        s = spec.stats
        row.update(drafted=s.drafted, accepted=s.accepted, discarded=s.discarded, drafts=s.drafts)
    return row


def bench(engine: Engine, variants, actions, shape, window, context_sigma, repeats, decode, label) -> list[dict]:
    rows = []
    run_once(engine, actions[:4], True, 1, False, shape, window, context_sigma, decode)  # warm-up
    for cache, speculate, fuse in variants:
        runs = [run_once(engine, actions, cache, speculate, fuse, shape, window, context_sigma, decode)
                for _ in range(repeats)]
        row = {"setup": label, "kv_cache": cache, "speculate": speculate, "fuse_commit": fuse, "frames": len(actions),
               "loop_fps": statistics.median(r["loop_fps"] for r in runs),
               "e2e_fps": statistics.median(r["e2e_fps"] for r in runs) if decode else None,
               "forwards_per_frame": runs[0]["forwards"] / len(actions), "runs": runs}
        for k in ("drafted", "accepted", "discarded", "drafts"):
            if k in runs[0]:
                row[k] = runs[0][k]
        rows.append(row)
    return rows


def gpu_engine(attn: str) -> Engine:
    overrides = ["model.weights=", "model.patch_size=[1,2,2]", "model.num_attention_heads=16",
                 "model.attention_head_dim=64", "model.in_channels=16", "model.out_channels=16",
                 "model.text_dim=64", "model.freq_dim=256", "model.ffn_dim=4096", "model.num_layers=18",
                 "model.dtype=bfloat16", f"model.attn_backend={attn}", "video.height=224", "video.width=384",
                 "vae.spatial_stride=8", "device=cuda"]
    return Engine.from_preset("tiny-play", overrides)


def print_table(rows: list[dict]) -> None:
    print(f"{'setup':<34} {'KV cache':>8} {'fused':>5} {'spec K':>6} {'loop FPS':>9} {'e2e FPS':>8} "
          f"{'fwd/frame':>9} {'drafted/accepted/discarded':>27}")
    for r in rows:
        e2e = f"{r['e2e_fps']:.1f}" if r["e2e_fps"] is not None else "-"
        spec = f"{r['drafted']}/{r['accepted']}/{r['discarded']}" if "drafted" in r else "-"
        print(f"{r['setup']:<34} {'on' if r['kv_cache'] else 'off':>8} {'yes' if r['fuse_commit'] else 'no':>5} "
              f"{r['speculate']:>6} {r['loop_fps']:>9.1f} {e2e:>8} {r['forwards_per_frame']:>9.2f} {spec:>27}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speculate", type=int, nargs="+", default=[4], help="draft sizes K to measure")
    ap.add_argument("--repeat-prob", type=float, default=0.8)
    ap.add_argument("--gpu-model", action="store_true", help="also the 310M NFD-shaped model on CUDA")
    ap.add_argument("--gpu-frames", type=int, default=64)
    ap.add_argument("--out", default="bench/results/play_fps.json")
    args = ap.parse_args()
    actions = action_sequence(args.frames, args.repeat_prob, seed=0)
    ks = args.speculate
    variants = [(True, 1, False), (True, 1, True), (False, 1, False)] + [
        v for k in ks for v in ((True, k, False), (True, k, True))]

    engine = Engine.from_preset("tiny-play")
    cfg = engine.cfg
    shape = (cfg.model.in_channels, cfg.video.height, cfg.video.width)
    label = f"tiny-play {cfg.video.width}x{cfg.video.height}, {cfg.sampler.steps} steps"
    rows = bench(engine, variants, actions, shape, cfg.schedule.nfd.window, cfg.schedule.nfd.context_sigma,
                 args.repeats, True, label)
    hardware = f"{os.cpu_count()} CPU threads (torch {torch.get_num_threads()})"
    if args.gpu_model:
        if not torch.cuda.is_available():
            print("--gpu-model: no CUDA device here; skipped")
        else:
            try:
                import flash_attn  # noqa: F401
                attn = "flash"
            except ImportError:
                attn = "sdpa"
            g = gpu_engine(attn)
            n = sum(p.numel() for p in g.model.parameters())
            gshape = (16, 224 // 8, 384 // 8)
            gactions = action_sequence(args.gpu_frames, args.repeat_prob, seed=0)
            rows += bench(g, variants, gactions, gshape, 32, 0.0, args.repeats, False,
                          f"NFD-shaped {n / 1e6:.0f}M 384x224 bf16 {attn}")
            hardware += f"; {torch.cuda.get_device_name()}"
    print(f"NFD play FPS, median of {args.repeats}; {hardware}; actions repeat with p={args.repeat_prob}")
    print_table(rows)
    print("NFD+ (paper): 310M, 384x224, A100, 4 steps + speculation + KV cache: 31.14 FPS")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"hardware": hardware, "repeat_prob": args.repeat_prob, "rows": rows},
                                         indent=1))


if __name__ == "__main__":
    main()
