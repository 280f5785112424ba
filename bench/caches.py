"""Feature caches: transformer evaluations saved, wall time and fidelity against the uncached video.

    python bench/caches.py [--models tiny wan-random] [--kinds fbcache teacache ...] [--prompts ...]
                           [--seeds 0 1] [--frames 16] [--steps 50] [--attn NAME] [--quick] [KEY=VALUE ...]
    python bench/caches.py --timing 3 [--kinds taylorseer ...] --out bench/results/caches-timing.json

For each model, prompt and seed it runs the full schedule (one pass, `schedule.full.lead_frames=0`)
uncached, then with every cache setting of the grid below, from the same seed. Per setting it
reports, as means over prompts x seeds: block evaluations (transformer blocks run, probes
included) and the reduction against uncached (`evals_x`), the denoising wall time and its speedup
(`wall_x`), and the same for the process's CPU time (`cpu_s`, `time_x`: one torch thread, so CPU
time is the wall time of an idle machine; on a shared machine wall time also counts the other
processes, so `time_x` is the speedup to read), PSNR and SSIM of the decoded uint8 video against
the uncached one, and the world's metrics (framecast.world.metrics: adherence, direction) beside
the uncached video's. Models: `tiny` (builtin:tiny, the trained pixel-space model) and
`wan-random` (random init, Wan-shaped blocks: patch 1x2x2, 12 layers, width 192; small enough for
CPU; world metrics mean nothing there). `--attn NAME` runs everything with model.attn_backend=NAME
(cache and sparse attention together; the baseline then is that backend uncached, and `psnr_dense`
is against the dense, uncached video).
Writes bench/results/caches.json and, when matplotlib is installed (`pip install
'framecast[bench]'`), bench/results/caches.png (PSNR against wall-time speedup, one line per
kind). Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROMPTS = ["a red circle moving right", "a blue square moving down", "a green triangle moving left"]
MODELS = {
    "tiny": [],
    "wan-random": ["model.weights=", "model.patch_size=[1,2,2]", "model.num_attention_heads=6",
                   "model.attention_head_dim=32", "model.ffn_dim=768", "model.num_layers=12", "model.freq_dim=256"],
}
# (kind, overrides): a range of settings per kind, from gentle to aggressive; each kind's defaults
# (framecast/models/caches/KIND.py) are among them: fbcache 0.1, teacache 0.15, magcache 0.15,
# taylorseer interval=5 order=1, cg_taylor 0.03, delta_dit interval=3
GRID = [
    ("fbcache", ["cache.fbcache.threshold=0.05"]), ("fbcache", ["cache.fbcache.threshold=0.1"]),
    ("fbcache", ["cache.fbcache.threshold=0.15"]),
    ("teacache", ["cache.teacache.threshold=0.1"]), ("teacache", ["cache.teacache.threshold=0.15"]),
    ("teacache", ["cache.teacache.threshold=0.3"]),
    ("magcache", ["cache.magcache.threshold=0.1"]), ("magcache", ["cache.magcache.threshold=0.15"]),
    ("magcache", ["cache.magcache.threshold=0.3", "cache.magcache.max_skips=6"]),
    ("taylorseer", ["cache.taylorseer.interval=3"]), ("taylorseer", ["cache.taylorseer.interval=5"]),
    ("taylorseer", ["cache.taylorseer.interval=5", "cache.taylorseer.order=1"]),
    ("taylorseer", ["cache.taylorseer.interval=6"]), ("taylorseer", ["cache.taylorseer.interval=8"]),
    ("cg_taylor", ["cache.cg_taylor.threshold=0.02"]), ("cg_taylor", ["cache.cg_taylor.threshold=0.03"]),
    ("cg_taylor", ["cache.cg_taylor.threshold=0.05", "cache.cg_taylor.order=2"]),
    ("delta_dit", ["cache.delta_dit.interval=2"]), ("delta_dit", ["cache.delta_dit.interval=3"]),
    ("delta_dit", ["cache.delta_dit.interval=4", "cache.delta_dit.cached_share=0.67"]),
]
QUICK = [("fbcache", []), ("teacache", []), ("magcache", []), ("taylorseer", []), ("cg_taylor", []),
         ("delta_dit", [])]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5) over frames and RGB channels."""
    x = torch.from_numpy(a).double().permute(0, 3, 1, 2).flatten(0, 1)[:, None]  # (F·3, 1, H, W)
    y = torch.from_numpy(b).double().permute(0, 3, 1, 2).flatten(0, 1)[:, None]
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None]) / g.sum() ** 2
    w = w[None, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx, syy, sxy = F.conv2d(x * x, w) - mx ** 2, F.conv2d(y * y, w) - my ** 2, F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def run(engine, prompt: str, seed: int, frames: int, make_cache, repeat: int = 1) -> dict:
    """One video through the full schedule's loop; its frames, wall and CPU time (the least of
    `repeat` runs: other processes only ever add time) and block evaluations. `make_cache()`: a
    fresh cache for each run, as each request gets (None: uncached)."""
    runs = [run_once(engine, prompt, seed, frames, make_cache()) for _ in range(repeat)]
    return {**runs[-1], "wall_s": min(r["wall_s"] for r in runs), "cpu_s": min(r["cpu_s"] for r in runs)}


def run_once(engine, prompt: str, seed: int, frames: int, cache) -> dict:
    from framecast.engine.video_io import to_uint8
    from framecast.schedulers.full import denoise_full

    req = engine.request(prompt, frames=frames, seed=seed)
    denoise = engine.denoiser(req.prompt, req.negative_prompt, cache=cache)
    lat = engine.initial_latents(req).to(engine.device)
    start, cpu = time.perf_counter(), time.process_time()
    lat = denoise_full(denoise, lat, engine.make_sampler)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    video = to_uint8(engine.vae.decoder().decode(lat)[0])
    steps, layers = engine.cfg.sampler.steps, engine.cfg.model.num_layers
    blocks = cache.stats["blocks"] if cache is not None else steps * layers
    reused = cache.stats["reused"] if cache is not None else 0
    return {"video": video, "wall_s": wall, "cpu_s": cpu, "blocks": blocks, "reused_steps": reused}


def world(video: np.ndarray, prompt: str) -> dict:
    from framecast.world.metrics import evaluate_video

    m = evaluate_video(video, prompt=prompt)
    directions = [v for k, v in m.items() if k.endswith(".direction")]
    return {"adherence": m.get("adherence"), "direction": statistics.mean(directions) if directions else None}


def bench_model(name: str, args) -> list[dict]:
    from framecast import Engine

    base = ["schedule.name=full", "schedule.full.lead_frames=0", f"sampler.steps={args.steps}", *MODELS[name],
            *([f"model.attn_backend={args.attn}"] if args.attn else []), *args.extra]
    grid = QUICK if args.quick or (name != "tiny" and not args.wan_grid) else GRID
    grid = [g for g in grid if not args.kinds or g[0] in args.kinds]
    engine = Engine.from_preset("tiny", base)
    videos = [(p, s) for p in args.prompts for s in args.seeds]
    frames = args.frames if name == "tiny" else args.wan_frames
    videos = videos if name == "tiny" else videos[:args.wan_videos]  # the bigger model: fewer, shorter
    run(engine, videos[0][0], videos[0][1], min(frames, 2), lambda: None)  # warm-up (first-call allocations)
    refs = {(p, s): run(engine, p, s, frames, lambda: None, args.repeat) for p, s in videos}
    dense = None
    if args.attn:  # the dense (sdpa) uncached video as well: what cache + sparse attention cost together
        d = Engine.from_preset("tiny", [*base, "model.attn_backend=sdpa"])
        d._parts["model"], d._parts["text"] = engine.model, engine.text
        dense = {key: run(d, key[0], key[1], frames, lambda: None) for key in refs}
    rows = [summarise(name, "none", [], refs, refs, args, dense)]
    print_row(rows[-1])
    for kind, overrides in grid:
        e = Engine.from_preset("tiny", [*base, f"cache.kind={kind}", *overrides])
        e._parts["model"] = engine.model  # the same weights, loaded once
        e._parts["text"] = engine.text
        if kind in ("teacache", "magcache") and name != "tiny":
            e.cfg.cache.calibration = str(calibration_for(e, kind, args, frames))
        outs = {key: run(e, key[0], key[1], frames, e.feature_cache, args.repeat) for key in refs}
        rows.append(summarise(name, kind, overrides, outs, refs, args, dense))
        print_row(rows[-1])
    return rows


def timing(args) -> list[dict]:
    """Speedup of each kind at its defaults on the tiny model, measured fairly on a shared machine:
    uncached and cached runs of one video alternate `--timing` times; the least time of each counts."""
    from framecast import Engine

    base = ["schedule.name=full", "schedule.full.lead_frames=0", f"sampler.steps={args.steps}",
            *([f"model.attn_backend={args.attn}"] if args.attn else []), *args.extra]
    plain = Engine.from_preset("tiny", base)
    prompt, seed = args.prompts[0], args.seeds[0]
    run(plain, prompt, seed, 2, lambda: None)  # warm-up
    rows = []
    for kind in args.kinds or [k for k, _ in QUICK]:
        e = Engine.from_preset("tiny", [*base, f"cache.kind={kind}"])
        e._parts["model"], e._parts["text"] = plain.model, plain.text
        ref, out = [], []
        for _ in range(args.timing):
            ref.append(run(plain, prompt, seed, args.frames, lambda: None))
            out.append(run(e, prompt, seed, args.frames, e.feature_cache))
        best = {k: (min(r[k] for r in ref), min(o[k] for o in out)) for k in ("wall_s", "cpu_s")}
        rows.append({"kind": kind, "setting": "defaults", "evals_x": ref[0]["blocks"] / out[0]["blocks"],
                     "wall_s": best["wall_s"][1], "wall_x": best["wall_s"][0] / best["wall_s"][1],
                     "cpu_s": best["cpu_s"][1], "time_x": best["cpu_s"][0] / best["cpu_s"][1],
                     "psnr": min(psnr(out[0]["video"], ref[0]["video"]), 99.0), "uncached_cpu_s": best["cpu_s"][0]})
        print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
              flush=True)
    return rows


def calibration_for(engine, kind: str, args, frames: int) -> Path:
    """A calibration of the random model made on the fly (the shipped ones are builtin:tiny's)."""
    from framecast.engine.cache_calibration import calibrate

    path = Path(args.out).with_name(f"caches-wan-random.{kind}.json")
    if not path.is_file():
        engine.cfg.cache.kind = "none"
        data = calibrate(engine, kind, args.prompts[:2], [0], frames)
        engine.cfg.cache.kind = kind
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def summarise(model: str, kind: str, overrides: list[str], outs: dict, refs: dict, args,
              dense: dict | None = None) -> dict:
    per = []
    for key, out in outs.items():
        ref = refs[key]
        w, wr = world(out["video"], key[0]), world(ref["video"], key[0])
        per.append({"psnr_dense": min(psnr(out["video"], dense[key]["video"]), 99.0) if dense else None,
                    "blocks": out["blocks"], "evals_x": ref["blocks"] / out["blocks"], "wall_s": out["wall_s"],
                    "wall_x": ref["wall_s"] / out["wall_s"], "cpu_s": out["cpu_s"], "time_x": ref["cpu_s"] / out["cpu_s"],
                    "psnr": min(psnr(out["video"], ref["video"]), 99.0),
                    "ssim": ssim(out["video"], ref["video"]), "adherence": w["adherence"],
                    "adherence_ref": wr["adherence"], "direction": w["direction"], "direction_ref": wr["direction"]})

    def mean(k):
        vals = [p[k] for p in per if p[k] is not None]
        return round(statistics.mean(vals), 4) if vals else None

    setting = " ".join(o.split(".", 2)[-1] for o in overrides) or "defaults"
    return {"model": model, "kind": kind, "setting": setting if kind != "none" else "-",
            **{k: mean(k) for k in per[0]}, "videos": len(per)}


COLUMNS = [("model", 10), ("kind", 10), ("setting", 34), ("evals_x", 7), ("wall_s", 7), ("wall_x", 6),
           ("cpu_s", 6), ("time_x", 6),
           ("psnr", 6), ("ssim", 6), ("psnr_dense", 10), ("adherence", 9), ("adherence_ref", 9)]


def print_row(row: dict) -> None:
    def fmt(v, w):
        return f"{v:>{w}.3g}" if isinstance(v, float) else f"{str(v):>{w}}"
    print("  ".join(fmt(row.get(k), w) for k, w in COLUMNS), flush=True)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for kind in dict.fromkeys(r["kind"] for r in rows if r["kind"] != "none"):
            pts = sorted((r["time_x"], r["psnr"]) for r in rows if r["model"] == model and r["kind"] == kind)
            ax.plot(*zip(*pts), marker="o", label=kind)
        ax.axhline(30, color="grey", ls="--", lw=0.8)
        ax.axvline(2.5, color="grey", ls=":", lw=0.8)
        ax.set(title=f"{model} ({rows[0].get('steps', '')} steps)", xlabel="time speedup (x, process CPU time)",
               ylabel="PSNR vs uncached (dB)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--kinds", nargs="+", default=[], help="only these cache kinds (default: all)")
    ap.add_argument("--prompts", nargs="+", default=PROMPTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--frames", type=int, default=16, help="video frames (latent frames on the tiny model)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps")
    ap.add_argument("--wan-frames", type=int, default=4, help="video frames on the wan-random model")
    ap.add_argument("--wan-videos", type=int, default=1, help="(prompt, seed) pairs on the wan-random model")
    ap.add_argument("--wan-grid", action="store_true", help="the whole grid on wan-random too (default: each "
                    "kind at its defaults)")
    ap.add_argument("--attn", default="", help="model.attn_backend for every run (cache + sparse attention)")
    ap.add_argument("--quick", action="store_true", help="each kind at its defaults only")
    ap.add_argument("--repeat", type=int, default=1, help="runs per video and setting; the least time counts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (timings on a shared machine)")
    ap.add_argument("--out", default="bench/results/caches.json")
    ap.add_argument("extra", nargs="*", help="config overrides for every run")
    ap.add_argument("--timing", type=int, default=0, help="instead: alternate uncached and cached runs of one "
                    "tiny video N times per kind at its defaults, the least time of each counting")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.timing:
        rows = timing(args)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")
        return
    print("  ".join(f"{k:>{w}}" for k, w in COLUMNS))
    rows = []
    for model in args.models:
        rows += bench_model(model, args)
    for r in rows:
        r["steps"] = args.steps
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": rows}, indent=1) + "\n")
    png = out.with_suffix(".png")
    print(f"wrote {out}" + (f" and {png}" if plot(rows, png) else " (no plot: matplotlib is not installed)"))


if __name__ == "__main__":
    main()
