"""VIN against the full schedule and DualParal: counted FLOPs, wall time and peak memory per worker.

    python bench/vin.py                       # defaults: a few minutes on 2 CPU cores
    python bench/vin.py --repeats 5 --tiny-seconds 4 8 16 32 --wan-frames 81 257 513 1025

1. FLOPs, counted by torch's FlopCounterMode on meta tensors (nothing is computed or allocated;
   every matmul, convolution and attention of the real model code is counted) for one video:
   Wan2.1-1.3B shapes at 480x832 (30 layers, width 1536, 50 steps, CFG: batch 2) and the tiny
   preset, at growing lengths. full = one pass over all frames per step; vin = one pass per chunk
   window per step (+ the interface module); dualparal = one pass per block-pass of its plan
   (context + own frames as queries, the newer neighbour's cached frames as extra keys). W does
   not change the total; the per-worker column is the busiest worker at W=2 (VIN's interface is
   computed on every worker).
2. Wall time and peak memory: `framecast generate` as a subprocess (start-up and model load
   included), median of --repeats runs, W=1 (local) and W=2 (torchrun), on the tiny preset and
   on a Wan-shaped random model (width 1536 = 12 x 128, ffn 8960, 2 layers, 16x16 frames; one
   run per cell: tens of seconds each); peak
   memory is the largest process's peak RSS (the kernel's high-water mark of the job's
   processes, driver included at W=1 and in rank 0 under torchrun).
Prints tables and writes JSON (bench/results/vin.json). Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
PAPER = "VIN paper: 25-40% fewer FLOPs than full-attention generation (arXiv 2503.17539, via notes)"
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
           text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30)
WAN_SHAPED = ["model.weights=", "model.num_attention_heads=12", "model.attention_head_dim=128", "model.ffn_dim=8960",
              "model.num_layers=2", "model.patch_size=[1,2,2]", "video.height=16", "video.width=16", "vin.heads=12"]


# ---- counted FLOPs ---------------------------------------------------------------------------------
class ExtraKeys:
    """A kv_hook adding `frames` frames of (meta) keys: DualParal's cached right context."""

    def __init__(self, frames: int, tokens: int):
        self.extra_frames, self.tokens = frames, tokens

    def extend(self, layer_id, k_BSNH, v_BSNH):
        z = k_BSNH.new_empty(k_BSNH.shape[0], self.tokens, *k_BSNH.shape[2:])
        return torch.cat([k_BSNH, z], 1), torch.cat([v_BSNH, z], 1)


class Counter:
    """FLOPs of one pass of `model` (on meta) by shape, memoised."""

    def __init__(self, model, vin, channels: int, h: int, w: int, batch: int, text: int, text_dim: int):
        self.model, self.vin, self.shape, self.batch = model, vin, (channels, h, w), batch
        self.text = torch.empty(batch, text, text_dim, device="meta")
        ph, pw = model.patch_size[1:]
        self.tokens_per_frame = (h // ph) * (w // pw)
        self.memo: dict = {}

    def count(self, fn) -> int:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()

    def dit(self, frames: int, extra_frames: int = 0, tokens: int = 0, layers=None) -> int:
        key = ("dit", frames, extra_frames, tokens, layers)
        if key not in self.memo:
            from framecast.models.blocks import run_model
            from framecast.models.conditioning import Conditioning
            from framecast.models.vin import InterfaceTokens

            x = torch.empty(self.batch, self.shape[0], frames, *self.shape[1:], device="meta")
            z = torch.empty(self.batch, tokens, self.model.blocks[0].attn1.to_q.in_features, device="meta")

            def prepare(ctx):
                if extra_frames:
                    ctx.kv_hook = ExtraKeys(extra_frames, extra_frames * self.tokens_per_frame)
                    pos = torch.arange(frames + extra_frames)
                    ctx = self.model.place(ctx, pos[:frames], pos)
                ctx.interface = InterfaceTokens(z, layers) if tokens else None
                return ctx
            t = torch.empty(self.batch, device="meta")
            self.memo[key] = self.count(lambda: run_model(self.model, x, t, Conditioning(self.text), prepare=prepare))
        return self.memo[key]

    def interface(self, keyframes: int) -> int:
        key = ("vin", keyframes)
        if key not in self.memo:
            kf = torch.empty(1, self.shape[0], keyframes, *self.shape[1:], device="meta")
            t = torch.empty(self.batch, device="meta")
            self.memo[key] = self.count(lambda: self.vin(kf, t, self.text))
        return self.memo[key]


def vin_flops(c: Counter, frames: int, steps: int, chunk: int, overlap: int, every: int, tokens: int, workers: int):
    from framecast.schedulers.vin import make_plan

    plan = make_plan(frames, chunk, overlap, steps, 1, "early", 0.6, every)
    per_chunk = [c.dit(len(ch), tokens=tokens) for ch in plan.chunks]
    module = c.interface(len(plan.keyframes))
    groups = [range(g.start, g.stop) for g in make_plan(frames, chunk, overlap, steps, min(workers, len(plan.chunks)),
                                                        "early", 0.6, every).workers]
    busiest = max(sum(per_chunk[i] for i in g) for g in groups) + module
    return steps * (sum(per_chunk) + module), steps * busiest


def dualparal_flops(c: Counter, frames: int, steps: int, n: int, ctx: int, workers: int):
    from framecast.schedulers.dualparal import make_plan

    plan = make_plan(frames, n, ctx, steps)
    total = sum(c.dit(it.query_frames, extra_frames=len(it.right_context)) for it in plan.iter_items())
    return total, total / workers  # layer shards: each worker runs 1/W of every pass (embed/head aside)


def flop_rows(name: str, model, vin, shape, text, lengths, steps, chunk, overlap, every, tokens, dp, fps, stride):
    c = Counter(model, vin, *shape, batch=2, text=text[0], text_dim=text[1])
    rows = []
    for video_frames in lengths:
        f = (video_frames - 1) // stride + 1
        full = steps * c.dit(f)
        v_total, v_busy = vin_flops(c, f, steps, min(chunk, f), min(overlap, min(chunk, f) - 1), every, tokens, 2)
        d_total, d_busy = dualparal_flops(c, f, steps, dp[0], dp[1], 2)
        rows.append({"model": name, "frames": video_frames, "latent_frames": f, "full_TFLOP": full / 1e12,
                     "vin_TFLOP": v_total / 1e12, "vin_W2_busiest_TFLOP": v_busy / 1e12,
                     "dualparal_TFLOP": d_total / 1e12, "dualparal_W2_per_worker_TFLOP": d_busy / 1e12,
                     "vin_vs_full": v_total / full - 1, "dualparal_vs_full": d_total / full - 1})
    return rows


def all_flops(args) -> list[dict]:
    from framecast.config import load_config
    from framecast.models.vin import VinConfig, VinInterface
    from framecast.models.wan import WanModel

    rows = []
    with torch.device("meta"):
        wan = WanModel(**WAN)
        wan_vin = VinInterface(1536, 16, (1, 2, 2), 4096, 256, tokens=512, heads=12, blocks=4)
        rows += flop_rows("wan2.1-1.3b 480x832", wan, wan_vin, (16, 60, 104), (512, 4096), args.wan_frames, 50,
                          20, 12, 4, 512, (8, 4), 16, 4)
        cfg = load_config("tiny-vin")
        from framecast.engine.components import model_kwargs

        tiny = WanModel(**model_kwargs(cfg))
        tiny_vin = VinInterface.for_model(cfg.model, VinConfig(tokens=64, heads=4, blocks=2))
        rows += flop_rows("tiny 32x32", tiny, tiny_vin, (3, 32, 32), (16, 64), [8 * s for s in args.tiny_seconds] +
                          [480], 10, 6, 2, 8, 64, (8, 4), 8, 1)
    return rows


# ---- bytes moved per step ------------------------------------------------------------------------
def bytes_per_step(frames: int = 1025, h: int = 60, w: int = 104, channels: int = 16, stride: int = 4,
                   fps: int = 16, chunk: int = 20, overlap: int = 12, workers: int = 8, dtype_bytes: int = 2) -> dict:
    """What the VIN workers exchange per denoising step (parallel/vin_worker.py), from the plan:
    the keyframe all-reduce (every step) and the overlap exchange (fused steps), per rank."""
    from framecast.schedulers.vin import make_plan

    f = (frames - 1) // stride + 1
    plan = make_plan(f, chunk, overlap, 50, workers, "early", 0.6, max(1, round(fps / stride)))
    frame = channels * h * w * dtype_bytes
    keyframes = len(plan.keyframes) * frame
    ring = 2 * (workers - 1) / workers * keyframes  # a ring all-reduce sends this much from every rank
    overlap_msg = overlap * frame                   # one direction of one boundary
    return {"latent_frames": f, "chunks": len(plan.chunks), "workers": workers, "keyframes": len(plan.keyframes),
            "keyframe_tensor_MiB": keyframes / 2**20, "all_reduce_sent_per_rank_MiB": ring / 2**20,
            "overlap_message_MiB": overlap_msg / 2**20, "overlap_sent_per_inner_rank_MiB": 2 * overlap_msg / 2**20,
            "fused_steps": sum(plan.fuse), "steps": plan.steps,
            "per_rank_MiB_fused_step": (ring + 2 * overlap_msg) / 2**20, "per_rank_MiB_other_step": ring / 2**20,
            "z_broadcast_avoided_MiB": 512 * 1536 * dtype_bytes / 2**20}


# ---- wall time and memory -------------------------------------------------------------------------
WRAP = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(p.stderr[-2000:] if p.returncode else ''); "
        "print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ''); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")


def one_run(argv: list[str], workers: int, launcher: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", WRAP, sys.executable, "-m", "framecast.launch.cli", "generate",
               "a red circle moving right", "--out", f"{tmp}/v/", "--quiet", "--launcher", launcher,
               "--workers", str(workers), *argv]
        env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr[-1500:]}")
        wall = float(re.search(r" in ([\d.]+) s", proc.stdout).group(1))
        rss = int(re.search(r"MAXRSS (\d+)", proc.stdout).group(1)) / 1024
        return wall, rss


SCHEDULES = {
    "full": ["--schedule", "full", "schedule.full.lead_frames=0"],
    "vin": ["--schedule", "vin", "schedule.vin.interface=pooled"],
    "dualparal": ["--schedule", "dualparal", "--block-frames", "8", "--context-frames", "4"],
}


def wall_rows(name: str, preset_args: list[str], lengths: list[int], steps: int, repeats: int, chunk: int,
              overlap: int) -> list[dict]:
    rows = []
    for frames in lengths:
        for sched, extra in SCHEDULES.items():
            for workers in ((1,) if sched == "full" else (1, 2)):
                if sched == "vin":
                    extra = [*SCHEDULES["vin"], "--chunk-frames", str(chunk), "--overlap-frames", str(overlap)]
                argv = [*preset_args, "--frames", str(frames), "--steps", str(steps), *extra]
                runs = [one_run(argv, workers, "local" if workers == 1 else "torchrun") for _ in range(repeats)]
                row = {"model": name, "frames": frames, "schedule": sched, "W": workers,
                       "wall_s": statistics.median(r[0] for r in runs), "peak_rss_mb": max(r[1] for r in runs),
                       "runs_s": [round(r[0], 2) for r in runs]}
                print(f"  {name:12} {frames:5d} frames  {sched:9} W={workers}  {row['wall_s']:7.2f} s  "
                      f"{row['peak_rss_mb']:6.0f} MB", flush=True)
                rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wan-frames", type=int, nargs="+", default=[81, 257, 513, 1025], help="video frames, Wan FLOPs")
    p.add_argument("--tiny-seconds", type=int, nargs="+", default=[4, 8], help="tiny video lengths (s, 8 fps)")
    p.add_argument("--wan-wall-frames", type=int, nargs="*", default=[16], help="Wan-shaped random model, wall time")
    p.add_argument("--repeats", type=int, default=3, help="runs per wall-time cell (median reported)")
    p.add_argument("--no-wall", action="store_true", help="FLOPs only")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "vin.json"))
    args = p.parse_args(argv)

    print("counted FLOPs per video (CFG on: batch 2); negative = fewer than full")
    flops = all_flops(args)
    print(f"{'model':22} {'frames':>6} {'full TF':>10} {'vin TF':>10} {'vin/full':>9} {'dualparal TF':>13} "
          f"{'dp/full':>8} {'vin W2 busiest':>15} {'dp W2 each':>11}")
    for r in flops:
        print(f"{r['model']:22} {r['frames']:6d} {r['full_TFLOP']:10.3g} {r['vin_TFLOP']:10.3g} "
              f"{100 * r['vin_vs_full']:+8.0f}% {r['dualparal_TFLOP']:13.3g} {100 * r['dualparal_vs_full']:+7.0f}% "
              f"{r['vin_W2_busiest_TFLOP']:15.3g} {r['dualparal_W2_per_worker_TFLOP']:11.3g}")
    print(PAPER)
    comm = bytes_per_step()
    print("bytes per step, Wan-1.3B 480x832, 1,025 frames, bf16, W=8: " + ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in comm.items()))
    result = {"paper": PAPER, "flops": flops, "bytes_per_step": comm, "wall": [],
              "settings": {"wan": "Wan2.1-1.3B shapes, 480x832, 50 steps, vin chunk 20 + overlap 12, keyframe every "
                                  "4 latent frames (1 s), 512 tokens / 4 blocks at every layer; dualparal N=8, C=4",
                           "tiny": "tiny-vin shapes, 10 steps, vin chunk 6 + overlap 2, 64 tokens / 2 blocks; "
                                   "dualparal N=8, C=4"}}
    if not args.no_wall:
        print(f"wall time (median of {args.repeats}; start-up and load included) and peak RSS of the largest process")
        result["wall"] += wall_rows("tiny", ["--preset", "tiny", "sampler.guidance_scale=3.0"],
                                    [8 * s for s in args.tiny_seconds], 10, args.repeats, 6, 2)
        if args.wan_wall_frames:
            result["wall"] += wall_rows("wan-shaped", ["--preset", "tiny", *WAN_SHAPED, "sampler.guidance_scale=1.0"],
                                        args.wan_wall_frames, 2, 1, 6, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
