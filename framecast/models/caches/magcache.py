"""MagCache — magnitude-aware cache (diffusers' MagCacheConfig; Zehong-Ma/MagCache): the norm of
the blocks' residual changes between steps by a ratio that depends on the step, not on the prompt,
so one calibration (`framecast calibrate-cache --kind magcache`: per-step ratios
mean‖R_t‖/‖R_{t−1}‖) predicts the error of reusing a residual. While the accumulated error
Σ|1 − Π ratios| stays below `threshold` (and at most `max_skips` steps in a row) every block is
skipped and the last computed residual is added to the input; a computed step resets it. The
first `retention` share of steps is always computed (spec: accelerators.md C2).

The decision depends on the step only, so every stage could make it; it is still made once (on
the stage with block 0) and sent, like every gate. State per frame block: "ratio", "err",
"skips" (accumulators), (layer, "residual") = each of this stage's layers' residual.
Shape legend: B batch (CFG branches), L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from framecast.models.caches.state import FeatureCache


@dataclass
class MagCacheOptions:
    """cache.magcache.*"""
    threshold: float = 0.15  # skip while the accumulated magnitude error stays below this
    max_skips: int = 4  # most consecutive skipped steps (MagCache's K)
    retention: float = 0.1  # share of the first steps always computed (MagCache's retention ratio)
    tail: int = 1  # last sampler steps always computed

    MINIMUM: ClassVar[dict] = {"threshold": 0.0, "max_skips": 1, "retention": 0.0, "tail": 0}
    MAXIMUM: ClassVar[dict] = {"retention": 1.0}


class MagCache(FeatureCache):
    kind = "magcache"
    Options = MagCacheOptions
    needs_calibration = True

    def cached_pass(self, model, x_BLD, ctx, layers, st, step, given):
        o = self.options
        ratios = self.calibration["ratios"]

        def decide():
            warmup = max(1, int(round(o.retention * self.steps)))
            if not self.forced_full(step, warmup, o.tail) and self.has_residuals(st, layers):
                ratio = st.get("ratio", 1.0) * ratios[step]
                err = st.get("err", 0.0) + abs(1.0 - ratio)
                skips = st.get("skips", 0) + 1
                if err < o.threshold and skips <= o.max_skips:
                    st.update(ratio=ratio, err=err, skips=skips)
                    return True
            st.update(ratio=1.0, err=0.0, skips=0)
            return False

        if self.decide_here(layers, given, decide) and self.has_residuals(st, layers):
            return self.add_residuals(x_BLD, st, layers)
        self.decided = False
        return self.compute_residuals(model, x_BLD, ctx, layers, st)
