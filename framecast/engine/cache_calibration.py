"""Calibration files of the feature caches that need one (teacache, magcache): made by
`framecast calibrate-cache` from a short uncached run, saved as versioned JSON beside the weights
they belong to, found by name (`cache.calibration=builtin:NAME` → framecast/weights/NAME.KIND.json,
or a path), and refused in one line when made for another model, step count or sampler.

The model fingerprint hashes the model's shape config and its weights file(s) (size plus the
first and last MiB: enough to tell two checkpoints apart without reading gigabytes), so every
pipeline stage can check it from the files alone.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path
from typing import Optional, Sequence

from framecast.config import Config, ConfigError
from framecast.models.caches import CALIBRATED
from framecast.models.caches.calibration import FORMAT, VERSION, Recorder, check_payload, fit

MIB = 1 << 20


def model_fingerprint(cfg: Config, checkpoint: Optional[str | Path] = None) -> str:
    """A short hash of the model's shapes and weights (see the module docstring)."""
    from framecast.engine.components import configured_weights_path, model_kwargs

    h = hashlib.sha256(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                   for k, v in model_kwargs(cfg).items()}, sort_keys=True).encode())
    if checkpoint is not None:
        files = sorted((Path(checkpoint) / "transformer").glob("*.safetensors"))
    elif cfg.model.weights:
        files = [configured_weights_path(cfg)[0]]
    else:
        files = []
        h.update(f"random init_seed={cfg.model.init_seed}".encode())
    for path in files:
        size = path.stat().st_size
        h.update(str(size).encode())
        with open(path, "rb") as f:
            h.update(f.read(MIB))
            f.seek(max(0, size - MIB))
            h.update(f.read(MIB))
    return h.hexdigest()[:16]


def calibration_path(cfg: Config) -> tuple[Path, str]:
    """(file, the name used in errors) of cache.calibration for cache.kind."""
    kind, name = cfg.cache.kind, cfg.cache.calibration
    if not name and cfg.model.weights.startswith("builtin:"):
        name = cfg.model.weights  # the shipped weights' own calibration
    if not name:
        raise ConfigError(f"cache.kind={kind} needs cache.calibration=builtin:NAME or a file "
                          f"(make one with `framecast calibrate-cache --kind {kind}`)")
    if name.startswith("builtin:"):
        base = name.split(":", 1)[1]
        path = Path(str(importlib.resources.files("framecast.weights").joinpath(f"{base}.{kind}.json")))
        if not path.is_file():
            raise ConfigError(f"cache.calibration={name!r}: no shipped {kind} calibration named {base!r} "
                              f"(framecast/weights/{base}.{kind}.json)")
        return path, f"cache.calibration={name!r}"
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"cache.calibration={name!r}: no such file")
    return path, f"cache.calibration={name!r}"


def load_calibration(cfg: Config, checkpoint: Optional[str | Path] = None) -> Optional[dict]:
    """The checked calibration of cfg.cache.kind (None for kinds without one); ConfigError (one
    line) for a missing file or one made for another model, step count or sampler."""
    if cfg.cache.kind not in CALIBRATED:
        return None
    path, where = calibration_path(cfg)
    try:
        data = json.loads(path.read_text())
        check_payload(data, cfg.cache.kind, where)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: malformed JSON ({e.__class__.__name__})") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if data["steps"] != cfg.sampler.steps:
        raise ConfigError(f"{where} was made for sampler.steps={data['steps']}, this run has "
                          f"sampler.steps={cfg.sampler.steps}")
    sampler = {"name": cfg.sampler.name, "shift": cfg.sampler.shift}
    if data["sampler"] != sampler:
        raise ConfigError(f"{where} was made for sampler {data['sampler']}, this run has {sampler}")
    mine = model_fingerprint(cfg, checkpoint)
    if data["model"]["fingerprint"] != mine:
        raise ConfigError(f"{where} was made for another model (fingerprint {data['model']['fingerprint']}, "
                          f"this model {mine}): run `framecast calibrate-cache`")
    return data


def calibrate(engine, kind: str, prompts: Sequence[str], seeds: Sequence[int], frames: int) -> dict:
    """Run the full schedule uncached over `prompts` × `seeds` (clips of `frames` frames) and fit
    `kind`'s calibration; returns the file's content."""
    from framecast.schedulers.full import denoise_full

    if kind not in CALIBRATED:
        raise ConfigError(f"calibrate-cache --kind {kind!r} is not allowed; choose one of: {', '.join(CALIBRATED)}")
    cfg = engine.cfg
    recorder = Recorder(cfg.sampler.steps)
    for prompt in prompts:
        for seed in seeds:
            req = engine.request(prompt, frames=frames, seed=seed)
            denoise = engine.denoiser(req.prompt, req.negative_prompt, cache=recorder)
            denoise_full(denoise, engine.initial_latents(req).to(engine.device), engine.make_sampler)
    return {"format": FORMAT, "version": VERSION, "kind": kind,
            "model": {"fingerprint": model_fingerprint(cfg, engine.checkpoint),
                      "weights": str(engine.checkpoint) if engine.checkpoint else cfg.model.weights},
            "steps": cfg.sampler.steps, "sampler": {"name": cfg.sampler.name, "shift": cfg.sampler.shift},
            "made_with": {"prompts": list(prompts), "seeds": list(seeds), "frames": frames,
                          "schedule": "full", "guidance_scale": cfg.sampler.guidance_scale},
            **fit(kind, recorder)}

