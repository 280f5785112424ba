"""Training-free feature caches (`cache.kind`): one state model (`state.py`) wrapping the one block
loop, one file per kind. Importing this package imports no kind; `cache_class` imports the one
asked for (the config imports each kind's `Options` to build `cache.*`).

    none        every block every step (the default; bit-identical to no cache)
    fbcache     step gate: block 0's residual change (ParaAttention First-Block Cache)
    teacache    step gate: change of block 0's timestep-modulated input, calibrated polynomial
    magcache    step gate: calibrated per-step residual magnitude ratios, accumulated error
    taylorseer  forecaster: Taylor series of the blocks' residual, refreshed every N steps
    cg_taylor   forecaster gated by block 0's own forecast error; the last block's output forecast
    delta_dit   forecaster: rear blocks' Δ cached early, front blocks' Δ late (boundary step b)

docs/caches.md: options, the state layout per worker and per frame block, measurements.
"""
from __future__ import annotations

import importlib
from typing import Optional

KINDS: dict[str, str] = {
    "none": "",
    "taylorseer": "framecast.models.caches.taylorseer:TaylorSeer",
    "cg_taylor": "framecast.models.caches.cg_taylor:CgTaylor",
    "delta_dit": "framecast.models.caches.delta_dit:DeltaDit",
    "fbcache": "framecast.models.caches.fbcache:FbCache",
    "teacache": "framecast.models.caches.teacache:TeaCache",
    "magcache": "framecast.models.caches.magcache:MagCache",
}

CALIBRATED = ("teacache", "magcache")  # kinds that need a calibration file (`framecast calibrate-cache`)


def cache_class(kind: str) -> Optional[type]:
    """The class of cache `kind` (None for "none"); an unknown name raises listing the kinds."""
    if kind not in KINDS:
        raise ValueError(f"cache.kind={kind!r} is not allowed; choose one of: {', '.join(KINDS)}")
    if not KINDS[kind]:
        return None
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def make_cache(cfg, calibration: Optional[dict] = None):
    """A fresh cache of `cfg.cache.kind` with its options (None for "none"): one per request
    and per stage. `calibration`: the loaded calibration of kinds that need one (teacache, magcache)."""
    cls = cache_class(cfg.cache.kind)
    if cls is None:
        return None
    return cls(getattr(cfg.cache, cfg.cache.kind), cfg.sampler.steps, calibration)
