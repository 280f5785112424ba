"""Sparse-vDiT's offline search: one mode per (layer, head) from real activations.

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim, M modes.

`ModeMeter` is handed to the sparse_vdit backend as the request state's "capture": on every
self-attention call it runs every mode on the call's own q/k/v and keeps, per (layer, head, mode),
the worst error over the calls it saw. `choose_modes` then takes, per head, the cheapest mode
whose error stays under the threshold (`full` always qualifies: error 0).

Error of a head under a mode: ||o_mode,n - o_dense,n|| / rms_m ||o_dense,m|| — the head's error
relative to the layer's typical head output (rms over its heads), not to its own output. So a
head that contributes little to the layer can be skipped (relative to itself a skip is always
100 % wrong), and, heads' errors being roughly independent, the layer's relative error over all
heads' outputs is about sqrt(mean_n err_n²) <= the threshold.

Cost model: the kept-block fraction — (query block, key block) pairs computed / all pairs, on the
tuning grid (full 1, skip 0). It is what the gather path's work scales with, and it does not
depend on the machine the search runs on (a measured time per mode would: a CPU gather and a GPU
kernel rank the modes differently, and the plan is a per-model artefact).

`plan_json` writes the versioned file `load_plan` reads (format, version, model fingerprint,
geometry, grid, threshold, cost model, per-head errors and costs).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from framecast.models.sparse_vdit_attention import (
    MODES, PLAN_FORMAT, PLAN_VERSION, SparseVditOptions, layer_table, run_modes,
)

ERROR_DEFINITION = ("per head: max over the captured calls of ||o_mode - o_dense|| / rms over the layer's heads "
                    "of ||o_dense|| (float32)")
COST_MODEL = "kept-block fraction: computed (query block, key block) pairs / all pairs on the tuning grid"


class ModeMeter:
    """Per (layer, head, mode): the worst error over the calls seen, and each mode's cost."""

    def __init__(self, options: SparseVditOptions):
        self.options = options
        self.errors: dict[int, torch.Tensor] = {}  # layer -> [M, N] max error
        self.costs: dict[int, torch.Tensor] = {}   # layer -> [M] kept-block fraction (mean over calls)
        self.calls: dict[int, int] = {}
        self.grid: Optional[tuple] = None          # the first call's query grid

    @torch.no_grad()
    def __call__(self, meta, q_BLNH, k_BSNH, v_BSNH, mask=None, scale=None) -> None:
        err_MN, cost_M = mode_errors(q_BLNH, k_BSNH, v_BSNH, meta.grid, self.options, mask=mask, scale=scale)
        layer = meta.layer
        if layer in self.errors:
            n = self.calls[layer]
            self.errors[layer] = torch.maximum(self.errors[layer], err_MN)
            self.costs[layer] = (self.costs[layer] * n + cost_M) / (n + 1)
        else:
            self.errors[layer], self.costs[layer] = err_MN, cost_M
        self.calls[layer] = self.calls.get(layer, 0) + 1
        self.grid = self.grid or tuple(meta.grid)


def mode_errors(q_BLNH, k_BSNH, v_BSNH, grid, options: SparseVditOptions, *, mask=None, scale=None):
    """([M, N] error of each mode per head vs dense, [M] kept-block fraction of each mode)."""
    N = q_BLNH.shape[2]
    q, k, v = q_BLNH.float(), k_BSNH.float(), v_BSNH.float()
    dense_BLNH = run_modes(q, k, v, ("full",) * N, grid, options, mask=mask, scale=scale)
    rms = math.sqrt(dense_BLNH.pow(2).sum(dim=(0, 1, 3)).mean().item()) or 1.0
    errs, costs = [], []
    for mode in MODES:
        o_BLNH = run_modes(q, k, v, (mode,) * N, grid, options, mask=mask, scale=scale)
        errs.append((o_BLNH - dense_BLNH).pow(2).sum(dim=(0, 1, 3)).sqrt() / rms)
        costs.append(layer_table((mode,) * N, q, k, grid[1] * grid[2], options, scale).float().mean())
    return torch.stack(errs), torch.stack(costs)


def choose_modes(err_MN: torch.Tensor, cost_M: torch.Tensor, threshold: float) -> list[str]:
    """Per head: the cheapest mode with error <= threshold (ties: the earlier in MODES)."""
    order = sorted(range(len(MODES)), key=lambda m: (float(cost_M[m]), m))
    chosen = []
    for n in range(err_MN.shape[1]):
        ok = [m for m in order if float(err_MN[m, n]) <= threshold]
        chosen.append(MODES[ok[0]] if ok else "full")
    return chosen


def plan_json(meter: ModeMeter, fingerprint: dict, threshold: float, capture: dict) -> dict:
    """The versioned plan. Layers the meter never saw (dense layers, `attention.dense_layers`) run
    `full` and have no errors."""
    heads = fingerprint["heads"]
    modes, errors, costs = [], [], []
    for layer in range(fingerprint["layers"]):
        if layer not in meter.errors:
            modes.append(["full"] * heads)
            errors.append(None)
            costs.append(None)
            continue
        err_MN, cost_M = meter.errors[layer], meter.costs[layer]
        modes.append(choose_modes(err_MN, cost_M, threshold))
        errors.append([{m: round(float(err_MN[i, n]), 6) for i, m in enumerate(MODES)} for n in range(heads)])
        costs.append({m: round(float(cost_M[i]), 6) for i, m in enumerate(MODES)})
    kept = [costs[layer][m] if costs[layer] else 1.0 for layer in range(len(modes)) for m in modes[layer]]
    return {
        "format": PLAN_FORMAT, "version": PLAN_VERSION,
        "model": fingerprint,
        "geometry": meter.options.geometry(),
        "grid": list(meter.grid) if meter.grid else None,
        "threshold": threshold, "error": ERROR_DEFINITION, "cost_model": COST_MODEL,
        "kept_fraction": round(sum(kept) / max(1, len(kept)), 6),
        "capture": {**capture, "calls_per_layer": {str(k): v for k, v in sorted(meter.calls.items())}},
        "modes": modes, "costs": costs, "errors": errors,
    }


def summary(plan: dict) -> str:
    """One line: mode counts and the kept-block fraction."""
    counts = {m: sum(layer.count(m) for layer in plan["modes"]) for m in MODES}
    return (", ".join(f"{m} {c}" for m, c in counts.items() if c)
            + f"; kept-block fraction {plan['kept_fraction']:.3f} at threshold {plan['threshold']}")
