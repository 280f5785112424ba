"""How well a model denoises the windows a long-video schedule shows it, per sampler step.

    python bench/research/layout_loss.py [--weights builtin:tiny] [--clips 256] [--seed 0] [--out FILE]

World clips of C + N + C frames (half of them from later in their video: shapes at walls and
bouncing), noised as DualParal lays a window out at step s (framecast/world/layouts.py: left
context one step cleaner, own block at σ_s, right context one step noisier), and the model's
velocity loss on the N own frames under:

  shared       every window frame at σ_s, embedded at σ_s (the layout of the clips trained with
               one σ; the reference a DualParal window is compared with)
  block        DualParal's layout, embedded at the block's timestep (schedule.dualparal.timesteps=block)
  frame        DualParal's layout, each frame embedded at its own level (timesteps=frame)
  no_context   as `frame`, with the context frames replaced by pure noise: what the context is worth
  shuffled     as `frame`, with the context frames from another clip of the batch (same levels):
               a model that reads motion from its context must do worse here

and the same for the rollout window (K clean frames, then a chunk at σ_s): `rollout_K` with K
finished frames, `rollout_0` with none. Prints a table (rows: steps) and writes JSON. Not a test.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def velocity_loss(nets, x0, noise, sigma_BF, t_BF, tokens, own: slice) -> float:
    from framecast.world.train import predict

    s = sigma_BF[:, None, :, None, None]
    v = predict(nets, (1 - s) * x0 + s * noise, t_BF * 1000, tokens)
    return float(((v - (noise - x0))[:, :, own] ** 2).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="builtin:tiny")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rollout-context", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--out", default="bench/results/layout_loss.json")
    args = ap.parse_args()

    from framecast.config import load_config
    from framecast.engine.components import sampler_factory
    from framecast.world.scenes import world_batches
    from framecast.world.train import load_nets

    torch.set_grad_enabled(False)
    cfg = load_config("tiny")
    grid = sampler_factory(cfg)().sigmas.float()
    T = len(grid) - 1
    C, N = cfg.schedule.dualparal.context_frames, cfg.schedule.dualparal.block_frames
    chunk = cfg.schedule.rollout.chunk_frames
    nets = load_nets(cfg, args.weights).eval()
    gen = torch.Generator().manual_seed(args.seed)
    frames = max(2 * C + N, max(args.rollout_context) + chunk)
    stream = world_batches(args.seed, args.batch, frames, size=cfg.video.height, offset_prob=0.5)
    names = ["shared", "block", "frame", "no_context", "shuffled"] + [f"rollout_{k}" for k in (0, *args.rollout_context)]
    sums = {n: [0.0] * T for n in names}
    batches = max(1, args.clips // args.batch)
    for _ in range(batches):
        clip = next(stream)
        x0_all, tokens = clip["video"], clip["tokens"]
        b = x0_all.shape[0]
        for s in range(T):
            x0 = x0_all[:, :, :2 * C + N]
            noise = torch.randn(x0.shape, generator=gen)
            left = grid[s + 1]
            right = grid[s - 1] if s > 0 else torch.tensor(1.0)
            levels = torch.cat([left.expand(C), grid[s].expand(N), right.expand(C)])[None].expand(b, -1)
            shared = grid[s].expand(b, 2 * C + N)
            own = slice(C, C + N)
            sums["shared"][s] += velocity_loss(nets, x0, noise, shared, shared, tokens, own)
            sums["block"][s] += velocity_loss(nets, x0, noise, levels, shared, tokens, own)
            sums["frame"][s] += velocity_loss(nets, x0, noise, levels, levels, tokens, own)
            blank = levels.clone()
            blank[:, :C] = 1.0
            sums["no_context"][s] += velocity_loss(nets, x0, noise, blank, blank, tokens, own)
            mixed = x0.clone()
            mixed[:, :, :C] = x0.roll(1, dims=0)[:, :, :C]
            sums["shuffled"][s] += velocity_loss(nets, mixed, noise, levels, levels, tokens, own)
            for k in (0, *args.rollout_context):
                x0r = x0_all[:, :, :k + chunk]
                noise_r = torch.randn(x0r.shape, generator=gen)
                sig = torch.cat([torch.zeros(k), grid[s].expand(chunk)])[None].expand(b, -1)
                sums[f"rollout_{k}"][s] += velocity_loss(nets, x0r, noise_r, sig, sig, tokens, slice(k, k + chunk))
    table = {n: [v / batches for v in vals] for n, vals in sums.items()}
    print(f"velocity loss on the own frames, weights {args.weights}, {batches * args.batch} world clips per step")
    print(f"{'step':>4} {'sigma':>6} " + " ".join(f"{n:>11}" for n in names))
    for s in range(T):
        print(f"{s:>4} {float(grid[s]):>6.3f} " + " ".join(f"{table[n][s]:>11.4f}" for n in names))
    print(f"{'mean':>11} " + " ".join(f"{sum(table[n]) / T:>11.4f}" for n in names))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"weights": args.weights, "clips": batches * args.batch, "grid": grid.tolist(),
                               "loss": table}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
