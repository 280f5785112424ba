"""TeaCache — timestep-embedding-aware cache (arXiv 2411.19108; ali-vilab/TeaCache): the probe is
block 0's timestep-modulated input (norm1(x)·(1 + scale) + shift, which sees both the hidden
states and the step's timestep); its relative L1 change since the previous step, rescaled by a
calibrated polynomial (`framecast calibrate-cache --kind teacache`), is added to an accumulator;
while the accumulator stays below `threshold` every block is skipped and the residual of the last
computed step is added to the input; a computed step resets it (spec: accelerators.md C3).

State per frame block: "probe" = the modulated input of the previous step (updated every step, as
TeaCache does), "acc" = the accumulated rescaled change, (layer, "residual") = each of this stage's
layers' residual. The stage with block 0 decides; later stages reuse their own residual.
Shape legend: B batch (CFG branches), F latent frames, L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from framecast.models.caches.state import FeatureCache, rel_l1


@dataclass
class TeaCacheOptions:
    """cache.teacache.*"""
    threshold: float = 0.15  # skip while the accumulated rescaled change stays below this (TeaCache's rel_l1_thresh)
    warmup: int = 3  # first sampler steps always computed
    tail: int = 1  # last sampler steps always computed

    MINIMUM: ClassVar[dict] = {"threshold": 0.0, "warmup": 1, "tail": 0}


def modulated_input(block, x_BLD: torch.Tensor, ctx) -> torch.Tensor:
    """Block 0's adaLN-modulated input, read from outside the block (the model stays untouched):
    the Wan block contract `norm1`, `scale_shift_table` and the context's per-frame modulation."""
    if not (hasattr(block, "norm1") and hasattr(block, "scale_shift_table") and hasattr(ctx, "mod_BF6D")):
        raise ValueError("cache.kind=teacache needs adaLN blocks (norm1, scale_shift_table, ctx.mod_BF6D) "
                         "like model.kind=wan; use fbcache or magcache for other families")
    f = ctx.mod_BF6D.shape[1]
    mod = (block.scale_shift_table + ctx.mod_BF6D.float()).unsqueeze(3)  # (B, F, 6, 1, D)
    shift, scale = mod[:, :, 0], mod[:, :, 1]
    return (block.norm1(x_BLD.float()).unflatten(1, (f, -1)) * (1 + scale) + shift).flatten(1, 2)


class TeaCache(FeatureCache):
    kind = "teacache"
    Options = TeaCacheOptions
    needs_calibration = True

    @classmethod
    def check_config(cls, cfg):
        from framecast.models.registry import model_class  # imports the one family

        if not model_class(cfg.model.kind).adaln_probe:
            return (f"cache.kind=teacache cannot run with model.kind={cfg.model.kind} (any schedule): its probe reads "
                    f"Wan's adaLN block internals (norm1, scale_shift_table, ctx.mod_BF6D); use fbcache or magcache")
        return None

    def cached_pass(self, model, x_BLD, ctx, layers, st, step, given):
        o = self.options

        def decide():
            probe = modulated_input(model.blocks[0], x_BLD, ctx)
            change = rel_l1(probe, st.get("probe"))
            st["probe"] = probe
            fresh = not np.isfinite(change) or not self.has_residuals(st, layers)
            if self.forced_full(step, o.warmup, o.tail) or fresh:
                st["acc"] = 0.0
                return False
            st["acc"] = st.get("acc", 0.0) + float(np.polyval(self.calibration["coefficients"], change))
            if st["acc"] < o.threshold:
                return True
            st["acc"] = 0.0
            return False

        if self.decide_here(layers, given, decide) and self.has_residuals(st, layers):
            return self.add_residuals(x_BLD, st, layers)
        self.decided = False
        return self.compute_residuals(model, x_BLD, ctx, layers, st)
