"""`framecast tune-attention`: tune a Sparse-vDiT plan on a short generation of a preset's model.

The model denoises one clip (the `full` schedule's loop: every step over all frames) with the
`sparse_vdit` backend running every head `full` — so the trajectory is the dense one — and the
search's `ModeMeter` in the request state measures every mode on each self-attention call's real
q/k/v (framecast/models/sparse_vdit_search.py). Warm-up steps and dense layers
(`attention.dense_steps/dense_layers`) go to sdpa as they will at run time and are not measured.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence


DEFAULT_THRESHOLD = 0.2  # per-head error bound (see sparse_vdit_search's error definition)


def tune_attention(preset: str, out: str | os.PathLike, *, prompt: str, frames: Optional[int] = None,
                   steps: Optional[int] = None, seed: int = 0, threshold: float = DEFAULT_THRESHOLD,
                   overrides: Sequence[str] = (), overwrite: bool = False) -> dict:
    """Capture, search, write the plan JSON to `out`; return the plan."""
    import dataclasses

    from framecast.config import ConfigError, load_config
    from framecast.engine.engine import Engine
    from framecast.schedulers.full import denoise_full
    from framecast.models.sparse_vdit_attention import SparseVditPlan, model_fingerprint
    from framecast.models.sparse_vdit_search import ModeMeter, plan_json

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists; pass --overwrite to replace it")
    if not 0 < threshold < 1:
        raise ConfigError(f"--threshold={threshold} is out of range; must be in (0, 1)")
    overrides = [*overrides, *([f"sampler.steps={steps}"] if steps is not None else [])]
    cfg = load_config(preset, overrides)
    engine = Engine(cfg, user_overrides=overrides)
    req = engine.request(prompt, frames=frames, seed=seed)
    engine.check_prompt(req)
    meter = ModeMeter(cfg.attention.sparse_vdit)
    denoise = engine.denoiser(req.prompt, req.negative_prompt, cache=None)  # every block runs: all are measured
    # the configured runtime (steps, dense warm-up, dense layers) running sparse_vdit with every head
    # full — the trajectory is the dense one — and the meter seeing each call's q/k/v
    denoise.attention = dataclasses.replace(denoise.attention, backend="sparse_vdit", options=cfg.attention.sparse_vdit,
                                            assets=SparseVditPlan((), "full"), state={"capture": meter})
    start = time.perf_counter()
    denoise_full(denoise, engine.initial_latents(req).to(engine.device), engine.make_sampler)
    if not meter.errors:
        raise ConfigError("tune-attention measured no self-attention call: every layer or step is dense "
                          "(attention.dense_layers / attention.dense_steps)")
    capture = {"preset": preset, "weights": cfg.model.weights, "prompt": req.prompt, "frames": req.frames,
               "steps": cfg.sampler.steps, "seed": req.seed, "overrides": list(overrides),
               "seconds": round(time.perf_counter() - start, 2)}
    plan = plan_json(meter, model_fingerprint(cfg), threshold, capture)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(plan, indent=1) + "\n")
    tmp.replace(out)  # a plan file is whole or absent
    return plan


def add_tune_arguments(p) -> None:
    p.add_argument("--preset", default="tiny", help="config preset whose model is tuned (default: tiny)")
    p.add_argument("--out", required=True, help="plan JSON to write (attention.sparse_vdit.plan=FILE uses it)")
    p.add_argument("--prompt", default="a red circle moving right", help="prompt of the tuning generation")
    p.add_argument("--frames", type=int, default=8, help="video frames of the tuning generation (default 8)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's sampler.steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tuning generation")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"per-head error bound a mode must meet (default {DEFAULT_THRESHOLD}); full always does")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. attention.sparse_vdit.block=16 (recorded in the plan)")


def run_tune(args) -> int:
    from framecast.models.sparse_vdit_search import summary

    start = time.perf_counter()
    plan = tune_attention(args.preset, args.out, prompt=args.prompt, frames=args.frames, steps=args.steps,
                          seed=args.seed, threshold=args.threshold, overrides=args.overrides,
                          overwrite=args.overwrite)
    print(f"framecast: wrote {args.out} ({summary(plan)}) in {time.perf_counter() - start:.1f} s")
    return 0
