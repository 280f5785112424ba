"""`framecast calibrate-cache`: run the full schedule uncached on a few prompts and write a feature
cache's calibration (framecast.engine.cache_calibration) as versioned JSON."""
from __future__ import annotations

import json
from pathlib import Path

from framecast.models.caches import CALIBRATED  # names only: imports no torch

PROMPTS = ("a red circle moving right", "a blue square moving down", "a green triangle moving left")


def add_calibrate_arguments(p) -> None:
    p.description = ("Run the full schedule uncached on a few prompts and write the calibration of a feature "
                     "cache (teacache: polynomial, magcache: per-step ratios) as versioned JSON. It belongs to "
                     "this model, step count and sampler; put it next to the weights and name it with "
                     "cache.calibration=PATH. Trailing KEY=VALUE items override config fields.")
    p.add_argument("--preset", default="tiny", help="config preset (default: tiny)")
    p.add_argument("--checkpoint", default=None, help="local Wan checkpoint folder (diffusers layout)")
    p.add_argument("--kind", required=True, choices=CALIBRATED, help="which cache to calibrate")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS), help="prompts to run (one clip each per seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per prompt")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides in dotlist form")


def run_calibrate(args) -> int:
    from framecast.engine.cache_calibration import calibrate
    from framecast.engine.engine import Engine

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {str(out)!r} exists; pass --overwrite to replace it")
    overrides = [*args.overrides, "cache.kind=none"]  # the calibration run is the uncached one
    engine = (Engine.from_checkpoint(args.checkpoint, overrides, preset=args.preset) if args.checkpoint
              else Engine.from_preset(args.preset, overrides))
    data = calibrate(engine, args.kind, args.prompts, args.seeds, args.frames)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}: {args.kind} calibration for {data['steps']} steps ({data['sampler']['name']}), "
          f"model {data['model']['fingerprint']}")
    return 0
