"""Peak RSS vs video length: DualParal (memory flat) vs the full schedule (grows with length);
and the load memory of each DualParal stage (sharded loading).

    python bench/dualparal_memory.py [--latent-frames 64 256 1024] [--full-max 256] [--repeats 1]
                                     [--parts generate load] [--load-workers 1 2 4] [--layers 30]

generate: `framecast generate` on the tiny preset (pixel space: latent frames = video frames) in a
fresh process per point, W=1 local (the whole worker is that process), PNG-free mp4 output.
load: a Wan2.1-T2V-1.3B-shaped transformer folder with random bf16 weights (diffusers layout and
config, one safetensors file as the real folder has, ~2.8 GB, written tensor by tensor so this
bench never holds more than one block) is written once to a temp dir; then for each W every
stage r is built in a fresh process (`build_model(cfg, folder, layers=split_layers(L, W)[r])`,
model.dtype=bfloat16, CPU), one after the other. Measured per stage: the process's VmHWM, and the
sampled peak of RSS summed over its process tree, minus the process's RSS after importing torch and
framecast (the baseline); the target is the stage's own weights: its blocks (total blocks ÷ W for
an even split) plus the shared modules (patch/condition embedders and head, which every stage
holds: each runs `embed` every pass, see engine/components.py). `--layers` shrinks the model.
Prints tables, writes bench/results/dualparal_memory.json (`rows`: generate; `load`: load). Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generate import run_once


# ---- load memory per stage ---------------------------------------------------------------------

# diffusers' WanTransformer3DModel config of Wan2.1-T2V-1.3B
WAN_1_3B = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 12,
            "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096,
            "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "eps": 1e-06, "image_dim": None, "added_kv_proj_dim": None,
            "rope_max_seq_len": 1024, "pos_embed_seq_len": None}
MB = 2**20


def _shapes(layers: int) -> dict:
    """{key: shape} of the transformer (built on the meta device: no memory)."""
    import torch

    from framecast.models.wan import WanModel

    with torch.device("meta"):
        model = WanModel(**{**WAN_1_3B, "num_layers": layers})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_random_checkpoint(folder: Path, layers: int, seed: int = 0) -> Path:
    """folder/transformer/{config.json, diffusion_pytorch_model.safetensors}: random bf16 weights,
    streamed tensor by tensor into one safetensors file (header first, then the data)."""
    import torch

    t = folder / "transformer"
    t.mkdir(parents=True, exist_ok=True)
    shapes = _shapes(layers)
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = 2 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    g = torch.Generator().manual_seed(seed)
    with open(t / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, shape in shapes.items():
            x = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
            f.write(x.view(torch.int16).numpy().tobytes())
    (t / "config.json").write_text(json.dumps({**WAN_1_3B, "num_layers": layers}, indent=1))
    return folder


STAGE_CHILD = r"""
import json, sys, time
import torch
from framecast.config import load_config
from framecast.engine.components import build_model
from framecast.parallel.stage import prune_blocks, split_layers
import safetensors, framecast.engine.wan_checkpoint, framecast.models.wan  # imported before the baseline
with torch.device("meta"):  # the first meta-device model imports ~70 MB of torch modules: code, not weights
    framecast.models.wan.WanModel(num_layers=1)

def status():
    s = open("/proc/self/status").read()
    return {k: int(s.split(k + ":")[1].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

folder, layers, world, rank, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = load_config("wan2.1-t2v-1.3b", ["model.dtype=bfloat16", "device=cpu", f"model.num_layers={layers}"])
keep = split_layers(layers, world)[rank]
base = status()
print("BASELINE", flush=True)
sys.stdin.readline()  # the parent has read the baseline tree RSS
start = time.perf_counter()
if mode == "stage":
    model = build_model(cfg, folder, layers=keep)
else:  # the engine's full build, then pruned: what a worker did before sharded loading
    model = build_model(cfg, folder)
    prune_blocks(model, keep)
seconds = time.perf_counter() - start
held = sum(p.numel() * p.element_size() for p in model.parameters())
print("RESULT " + json.dumps({"baseline_rss": base["VmRSS"], "baseline_hwm": base["VmHWM"], "hwm": status()["VmHWM"],
                              "held_bytes": held, "load_s": seconds, "layers": [keep.start, keep.stop]}), flush=True)
"""


def _tree_rss(pid: int) -> int:
    """RSS of process `pid` plus all its descendants (from /proc), bytes; 0 once it is gone."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0]) * 1024 if "VmRSS:" in status else 0
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measure_stage(folder: Path, layers: int, world: int, rank: int, mode: str = "stage") -> dict:
    """Build one stage in a fresh process; its VmHWM and the sampled peak RSS of its process tree."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", STAGE_CHILD, str(folder), str(layers), str(world), str(rank), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("BASELINE"):
        proc.kill()
        raise SystemExit(f"stage child failed: {line}{proc.stderr.read()[-2000:]}")
    base_tree = _tree_rss(proc.pid)
    proc.stdin.write("\n")
    proc.stdin.flush()
    peak_tree = base_tree
    import threading

    done = threading.Event()

    def sample():
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"stage child failed (rc {proc.returncode}):\n{err[-3000:]}")
    r = json.loads(m.group(1))
    return {**r, "world": world, "rank": rank, "mode": mode,
            "peak_minus_baseline_bytes": r["hwm"] - r["baseline_rss"],
            "tree_sampled_peak_minus_baseline_bytes": peak_tree - base_tree}


def stage_targets(layers: int, world: int) -> list[dict]:
    """Per stage: bytes of its blocks and of the shared modules, in bf16 with the KEEP_FP32 tensors fp32."""
    import math

    import torch

    from framecast.engine.wan_checkpoint import tensor_dtype
    from framecast.parallel.stage import split_layers

    def nbytes(key, shape):
        return math.prod(shape) * tensor_dtype(key, torch.bfloat16).itemsize

    shapes = _shapes(layers)
    shared = sum(nbytes(k, s) for k, s in shapes.items() if not k.startswith("blocks."))
    blocks = [sum(nbytes(k, s) for k, s in shapes.items() if k.startswith(f"blocks.{i}.")) for i in range(layers)]
    total = shared + sum(blocks)
    return [{"blocks_bytes": sum(blocks[i] for i in r), "shared_bytes": shared, "total_bytes": total,
             "total_blocks_over_w_bytes": sum(blocks) / world, "target_bytes": sum(blocks[i] for i in r) + shared}
            for r in split_layers(layers, world)]


def load_table(args) -> list[dict]:
    tmp = Path(args.load_dir) if args.load_dir else Path(tempfile.mkdtemp(prefix="wan13b-"))
    folder = tmp / "wan-1.3b-random"
    if not (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file():
        start = time.perf_counter()
        write_random_checkpoint(folder, args.layers)
        print(f"wrote {folder} ({(folder / 'transformer' / 'diffusion_pytorch_model.safetensors').stat().st_size / 1e9:.2f} GB, "
              f"{args.layers} layers, bf16) in {time.perf_counter() - start:.0f} s")
    rows = []
    for world in args.load_workers:
        targets = stage_targets(args.layers, world)
        for rank in range(world):
            r = measure_stage(folder, args.layers, world, rank)
            rows.append({**r, **targets[rank]})
    if args.compare_full:
        targets = stage_targets(args.layers, args.compare_full)
        rows.append({**measure_stage(folder, args.layers, args.compare_full, 0, mode="full-then-prune"), **targets[0]})
    t = rows[0]
    print(f"\nload memory per stage: Wan-1.3B-shaped random checkpoint ({args.layers} layers, "
          f"{t['total_bytes'] / MB:.0f} MB in bf16, shared embed/head {t['shared_bytes'] / MB:.0f} MB), "
          f"model.dtype=bfloat16, CPU, one fresh process per stage")
    print(f"{'W':>2} {'rank':>4} {'layers':>8} {'target MB':>10} {'held MB':>8} {'peak-base MB':>13} "
          f"{'tree peak MB':>13} {'peak/target':>12} {'load s':>7}  mode")
    for r in rows:
        ratio = r["peak_minus_baseline_bytes"] / r["target_bytes"]
        r["peak_over_target"] = ratio
        r["within_10pct"] = abs(ratio - 1) <= 0.10
        print(f"{r['world']:>2} {r['rank']:>4} {str(r['layers']):>8} {r['target_bytes'] / MB:>10.0f} "
              f"{r['held_bytes'] / MB:>8.0f} {r['peak_minus_baseline_bytes'] / MB:>13.0f} "
              f"{r['tree_sampled_peak_minus_baseline_bytes'] / MB:>13.0f} {ratio:>12.3f} {r['load_s']:>7.1f}  {r['mode']}")
    if not args.load_dir and not args.keep_folder:
        import shutil

        shutil.rmtree(tmp)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent-frames", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--full-max", type=int, default=256,
                    help="longest full-schedule run (full attention over the whole clip is slow)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--parts", nargs="+", default=["generate", "load"], choices=("generate", "load"))
    ap.add_argument("--load-workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--layers", type=int, default=30, help="transformer blocks of the load checkpoint (30 = Wan-1.3B)")
    ap.add_argument("--load-dir", default="", help="where to write (and reuse) the random checkpoint; default a temp dir")
    ap.add_argument("--keep-folder", action="store_true", help="keep the temp checkpoint folder")
    ap.add_argument("--compare-full", type=int, default=0, metavar="W",
                    help="also measure rank 0 of W built the old way (full build, then prune)")
    ap.add_argument("--out", default="bench/results/dualparal_memory.json")
    args = ap.parse_args()
    result: dict = {"steps": args.steps}
    if "generate" in args.parts:
        result.update(generate_table(args))
    if "load" in args.parts:
        result["load"] = load_table(args)
        result["load_layers"] = args.layers
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


def generate_table(args) -> dict:
    extra = [f"sampler.steps={args.steps}", "schedule.dualparal.block_frames=8", "schedule.dualparal.context_frames=4"]
    rows = []
    for schedule in ("dualparal", "full"):
        for frames in args.latent_frames:
            if schedule == "full" and frames > args.full_max:
                rows.append({"schedule": schedule, "frames": frames, "skipped": f"> --full-max {args.full_max}"})
                continue
            runs = [run_once(frames, schedule, extra) for _ in range(args.repeats)]
            rows.append({"schedule": schedule, "frames": frames, "runs": runs,
                         "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                         "generate_s": statistics.median(r["generate_s"] for r in runs)})
    print(f"peak RSS per worker (W=1), tiny preset, {args.steps} steps, N=8 C=4")
    print(f"{'schedule':>10} {'frames':>7} {'peak RSS MB':>12} {'vs shortest':>12} {'generate s':>11}")
    for schedule in ("dualparal", "full"):
        measured = [r for r in rows if r["schedule"] == schedule and "peak_rss_mb" in r]
        base = measured[0]["peak_rss_mb"] if measured else None
        for r in (r for r in rows if r["schedule"] == schedule):
            if "skipped" in r:
                print(f"{schedule:>10} {r['frames']:>7} {'skipped (' + r['skipped'] + ')':>36}")
                continue
            print(f"{schedule:>10} {r['frames']:>7} {r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] / base:>11.2f}x "
                  f"{r['generate_s']:>11.1f}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
