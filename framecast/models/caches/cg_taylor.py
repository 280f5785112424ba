"""CG-Taylor — "Forecasting When to Forecast" (arXiv 2508.02240): block 0 always runs; its output
is also forecast from its own Taylor factors (order `probe_order`); when the forecast is close
(relative L1 below `threshold`) the forecaster is trusted for this step: the other blocks are
skipped and the output of the last block is forecast (order `order`) from its factors. Otherwise
every block runs and both factor sets are refreshed (spec: accelerators.md A2; the first
`warmup` steps and the last `tail` are always computed).

State per frame block: "probe" = block 0's output factors (stage with block 0), "output" = the
last block's output factors (the last stage only). Under DualParal the stage with block 0
decides and sends the decision; on a forecast step the middle stages pass their input through
untouched and the last stage replaces it with its forecast, so W stages give exactly the W = 1
output.
Shape legend: B batch (CFG branches), L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from framecast.models.caches.state import FeatureCache, TaylorFactors, rel_l1


@dataclass
class CgTaylorOptions:
    """cache.cg_taylor.*"""
    threshold: float = 0.03  # forecast the step when block 0's forecast is within this relative L1 (Wan: 0.36)
    probe_order: int = 3  # Taylor order of block 0's output (the gate)
    order: int = 1  # Taylor order of the last block's output (the forecast)
    warmup: int = 6  # first sampler steps always computed
    tail: int = 1  # last sampler steps always computed

    MINIMUM: ClassVar[dict] = {"threshold": 0.0, "probe_order": 0, "order": 0, "warmup": 1, "tail": 0}


class CgTaylor(FeatureCache):
    kind = "cg_taylor"
    Options = CgTaylorOptions

    def cached_pass(self, model, x_BLD, ctx, layers, st, step, given):
        o = self.options
        last = layers[-1] == len(model.blocks) - 1
        if self.holds_probe(layers):
            h_BLD, rest = self.compute(model, x_BLD, ctx, layers[:1]), layers[1:]
        else:
            h_BLD, rest = x_BLD, layers

        def decide():
            if self.forced_full(step, o.warmup, o.tail) or "probe" not in st or last and "output" not in st:
                return False
            return rel_l1(TaylorFactors.forecast(st["probe"], step), h_BLD) < o.threshold

        if self.decide_here(layers, given, decide) and (not last or "output" in st):
            return TaylorFactors.forecast(st["output"], step) if last else h_BLD
        self.decided = False
        if self.holds_probe(layers):
            st["probe"] = TaylorFactors.update(st.get("probe"), h_BLD, step, o.probe_order)
        out_BLD = self.compute(model, h_BLD, ctx, rest)
        if last:
            st["output"] = TaylorFactors.update(st.get("output"), out_BLD, step, o.order)
        return out_BLD
