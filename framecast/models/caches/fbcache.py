"""FBCache — First-Block Cache (ParaAttention; diffusers' FirstBlockCacheConfig): block 0 always
runs; when its residual changed little since the last computed step (relative L1 below
`threshold`, largest over the CFG rows), the other blocks are skipped and their residual from that
step is added to block 0's output (spec: accelerators.md C4).

State per frame block: "probe" = block 0's residual at the last computed step (compared against,
as ParaAttention does, so small changes accumulate until the gate opens); (layer, "residual") =
the residual of each of this stage's layers after block 0. Under DualParal the stage with
block 0 decides and the later stages reuse their own residual span when told.
Shape legend: B batch (CFG branches), L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from framecast.models.caches.state import FeatureCache, rel_l1


@dataclass
class FbCacheOptions:
    """cache.fbcache.*"""
    threshold: float = 0.1  # skip while block 0's residual moved less than this (relative L1) since last computed
    warmup: int = 3  # first sampler steps always computed (the layout forms there)
    tail: int = 1  # last sampler steps always computed
    max_skips: int = 0  # most consecutive skipped steps (0 = no limit)

    MINIMUM: ClassVar[dict] = {"threshold": 0.0, "warmup": 1, "tail": 0, "max_skips": 0}


class FbCache(FeatureCache):
    kind = "fbcache"
    Options = FbCacheOptions

    def cached_pass(self, model, x_BLD, ctx, layers, st, step, given):
        o = self.options
        if self.holds_probe(layers):
            h_BLD = self.compute(model, x_BLD, ctx, layers[:1])
            probe_BLD, rest = h_BLD - x_BLD, layers[1:]
        else:
            h_BLD, probe_BLD, rest = x_BLD, None, layers

        def decide():
            if self.forced_full(step, o.warmup, o.tail) or not self.has_residuals(st, rest):
                return False
            if o.max_skips and st.get("skips", 0) >= o.max_skips:
                return False
            return rel_l1(probe_BLD, st.get("probe")) < o.threshold

        if self.decide_here(layers, given, decide) and self.has_residuals(st, rest):
            st["skips"] = st.get("skips", 0) + 1
            return self.add_residuals(h_BLD, st, rest)
        self.decided = False
        st["skips"] = 0
        if probe_BLD is not None:
            st["probe"] = probe_BLD
        return self.compute_residuals(model, h_BLD, ctx, rest, st)
