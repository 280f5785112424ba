"""Calibration of the gates that need one (TeaCache's polynomial, MagCache's magnitude ratios):
a recording pass (`Recorder`, a cache that computes every block and measures), the fits, and the
versioned file format. Running a model for it and matching files to models is the engine's
(`framecast.engine.cache_calibration`).

File (JSON, `FORMAT`, `VERSION`): kind, model {fingerprint, weights}, steps, sampler {name,
shift}, made_with {prompts, seeds, frames}, and `coefficients` (teacache: poly4, highest power
first, mapping block 0's modulated-input change to the residual's change) or `ratios` (magcache:
one per step, mean‖R_t‖/‖R_{t−1}‖ of the blocks' residual R, 1.0 at step 0).
Shape legend: B batch (CFG branches), L tokens, D width.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from framecast.models.caches.state import FeatureCache, rel_l1
from framecast.models.caches.teacache import modulated_input

FORMAT = "framecast.cache-calibration"
VERSION = 1


class Recorder(FeatureCache):
    """Computes every block and records, per (frame block, step): the relative change of block 0's
    modulated input and of the blocks' residual since the previous step, and the residual's
    magnitude ratio (token norms over D, mean over rows and tokens)."""

    kind = "recorder"

    def __init__(self, steps: int):
        super().__init__(None, steps)
        self.samples: list[tuple[float, float]] = []  # (input change, residual change)
        self.ratios: dict[int, list[float]] = defaultdict(list)  # step -> ratios seen

    def run_blocks(self, model, x_BLD, ctx, layers):
        layers = list(layers)
        out_BLD = self.compute(model, x_BLD, ctx, layers)
        if ctx.step is None:
            return out_BLD
        st = self.state.setdefault(ctx.block, {})
        probe, res = modulated_input(model.blocks[0], x_BLD, ctx), (out_BLD - x_BLD).float()
        if "res" in st and st["res"].shape == res.shape:
            self.samples.append((rel_l1(probe, st["probe"]), rel_l1(res, st["res"])))
            ratio = res.norm(dim=-1) / st["res"].norm(dim=-1).clamp_min(1e-12)
            self.ratios[ctx.step].append(float(ratio.mean()))
        st.update(probe=probe, res=res)
        if ctx.step >= self.steps - 1:
            self.state.pop(ctx.block, None)
        return out_BLD


def fit(kind: str, recorder: Recorder) -> dict:
    """The calibration payload of `kind` from what `recorder` saw."""
    if kind == "teacache":
        x, y = np.array(recorder.samples).T
        return {"coefficients": [float(c) for c in np.polyfit(x, y, 4)]}
    ratios = [1.0] + [float(np.mean(recorder.ratios[s])) if recorder.ratios[s] else 1.0
                      for s in range(1, recorder.steps)]
    return {"ratios": ratios}


def check_payload(data: dict, kind: str, where: str) -> None:
    """One-line ValueError for a file that is not a well-formed calibration of `kind`."""
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{where}: not a {FORMAT} file of version {VERSION} "
                         f"(format={data.get('format')!r}, version={data.get('version')!r})")
    if data.get("kind") != kind:
        raise ValueError(f"{where}: a calibration for cache.kind={data.get('kind')}, not {kind}")
    if kind == "teacache" and len(data.get("coefficients", [])) != 5:
        raise ValueError(f"{where}: teacache needs 5 polynomial coefficients")
    if kind == "magcache" and len(data.get("ratios", [])) != data.get("steps"):
        raise ValueError(f"{where}: magcache needs one ratio per step ({data.get('steps')}), "
                         f"found {len(data.get('ratios', []))}")


