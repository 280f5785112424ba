"""Δ-DiT — stage-adaptive Δ-Cache (arXiv 2406.01125): front blocks shape the outline, rear blocks
the details. Every `interval` steps all blocks run and the deviation Δ = output − input of two
block ranges is stored: the front range [0, N_c) and the rear range [L − N_c, L), N_c =
round(`cached_share` · L). In between, before the boundary step b = round(`boundary` · steps)
the rear range is cached (the front computed), after it the front range (the rear computed):
the cached range's output is its *current* input plus its stored Δ, so the computed blocks'
fresh information flows through (spec: accelerators.md A3).

State per frame block: (layer, "residual") for every layer of this stage (the cached range's Δ is
the sum of its layers' residuals, added layer after layer). The decision
depends on the step only; it is made on the stage with block 0 and sent, like every gate.
Shape legend: B batch (CFG branches), L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from framecast.models.caches.state import FeatureCache


@dataclass
class DeltaDitOptions:
    """cache.delta_dit.*"""
    interval: int = 3  # N: all blocks run every N-th step, the cached range is reused in between
    cached_share: float = 0.5  # N_c / L: share of the blocks in the cached range (at least one block)
    boundary: float = 0.5  # b / steps: cache the rear blocks before step b, the front ones from b on
    warmup: int = 2  # first sampler steps always computed
    tail: int = 1  # last sampler steps always computed

    MINIMUM: ClassVar[dict] = {"interval": 1, "cached_share": 0.0, "boundary": 0.0, "warmup": 1, "tail": 0}
    MAXIMUM: ClassVar[dict] = {"cached_share": 1.0, "boundary": 1.0}


class DeltaDit(FeatureCache):
    kind = "delta_dit"
    Options = DeltaDitOptions

    def ranges(self, num_layers: int) -> tuple[range, range]:
        n = min(num_layers, max(1, round(self.options.cached_share * num_layers)))
        return range(0, n), range(num_layers - n, num_layers)

    def cached_pass(self, model, x_BLD, ctx, layers, st, step, given):
        o = self.options
        front, rear = self.ranges(len(model.blocks))
        cached = rear if step < round(o.boundary * self.steps) else front
        mine = [i for i in layers if i in cached]

        def decide():
            if self.forced_full(step, o.warmup, o.tail) or not self.has_residuals(st, mine):
                return False
            return (step - o.warmup) % o.interval != 0

        if self.decide_here(layers, given, decide) and self.has_residuals(st, mine):
            x_BLD = self.compute(model, x_BLD, ctx, [i for i in layers if i < cached.start])
            x_BLD = self.add_residuals(x_BLD, st, mine)
            return self.compute(model, x_BLD, ctx, [i for i in layers if i >= cached.stop])
        self.decided = False
        return self.compute_residuals(model, x_BLD, ctx, layers, st)  # Δ of every layer: either range may be next
