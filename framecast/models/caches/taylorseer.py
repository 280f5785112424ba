"""TaylorSeer — "From Reusing to Forecasting" (ICCV 2025, arXiv 2503.06923): every `interval`
steps (after `warmup` computed steps, and for the last `tail` steps) the blocks run and the
finite-difference derivatives of their output are refreshed up to `order`; in between the
output is forecast by the Taylor series Σ F(i)·k^i/i! (spec: accelerators.md A1).

What is forecast: each block's residual, (layer, "residual") = output − input, the forecasts
added to the pass's own (exact) input layer after layer. TaylorSeer forecasts each module (self-
and cross-attention, FFN) inside a block; the block is the unit the model contract exposes without
touching the model, so here the unit is the block. The decision is a function of the step alone;
it is still made on the stage with block 0 and sent, like every gate.
Shape legend: B batch (CFG branches), L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from framecast.models.caches.state import FeatureCache, TaylorFactors


@dataclass
class TaylorSeerOptions:
    """cache.taylorseer.*"""
    interval: int = 5  # N: compute every N-th step, forecast the N − 1 between (TaylorSeer's fresh_threshold)
    order: int = 1  # m: highest finite-difference order (TaylorSeer's max_order)
    warmup: int = 3  # first sampler steps always computed (first_enhance)
    tail: int = 1  # last sampler steps always computed

    MINIMUM: ClassVar[dict] = {"interval": 1, "order": 0, "warmup": 1, "tail": 0}


class TaylorSeer(FeatureCache):
    kind = "taylorseer"
    Options = TaylorSeerOptions

    def cached_pass(self, model, x_BLD, ctx, layers, st, step, given):
        o = self.options

        def decide():
            if self.forced_full(step, o.warmup, o.tail) or not self.has_residuals(st, layers):
                return False
            return (step - o.warmup) % o.interval != 0

        if self.decide_here(layers, given, decide) and self.has_residuals(st, layers):
            return self.add_residuals(x_BLD, st, layers, lambda held: TaylorFactors.forecast(held, step))
        self.decided = False
        return self.compute_residuals(model, x_BLD, ctx, layers, st,
                                      lambda held, r: TaylorFactors.update(held, r, step, o.order))
