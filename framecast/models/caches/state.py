"""The one state model every feature cache shares (spec: shared/methods/accelerators.md A, C, F).

A cache wraps the block loop (`run_model(..., cache=...)` calls `run_blocks(model, x_BLD, ctx,
layers)`) and, per pass, either computes the blocks or reuses / forecasts their effect. Every kind
is written as the same three parts:
- a **decision** per pass — compute or reuse — made once, on the stage that holds the probe layer
  (block 0, the first layer of the model); a later pipeline stage receives it (`given`) instead of
  deciding, so every stage of a frame block skips together;
- **state** per (frame block, key): tensors of shape [B, ...] whose batch rows are the CFG
  branches (cond, uncond) run in one batch, so each branch keeps its own residuals and Taylor
  factors; keys name the layer and what is held (`(layer, "residual")`, `"probe"`, `"output"`);
- **reuse**: each skipped layer's residual (or its Taylor forecast) added to the current input,
  layer after layer. Per layer rather than one sum per stage: the additions are then the same,
  in the same order, however the layers are split over pipeline stages, so W stages equal W = 1
  exactly (a per-stage sum differs in rounding, and the sampler amplifies it).

Decisions are shared by the rows of a batch: the rows run as one batch, so skipping one row saves
nothing, and a stale uncond beside a fresh cond would put the staleness into g·(cond − uncond),
amplified by the guidance scale. Gate metrics therefore take the largest change over the rows.

State lives per frame block (`ctx.block`): under DualParal each live block sits at its own step
with its own history; a block's state goes when its last step (`steps − 1`) has run, and all of it
with `new_request()`. A pass without a step index (`ctx.step is None`: NFD commit passes,
diffusers-style calls) or a block without state computes every block: the first step is always
computed, and a cache restarted from a resume point starts cold rather than wrong.

Shape legend: B batch (CFG branches), L tokens, D width.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch

from framecast.models.blocks import run_block


@dataclass
class NoOptions:
    """cache.none has no options."""


class FeatureCache:
    """Base of every kind; subclasses implement `decide` and `cached_pass`.

    steps: sampler steps per trajectory (the last `tail` of them are always computed);
    options: the kind's config section; calibration: the loaded calibration (teacache, magcache)."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs_calibration: ClassVar[bool] = False

    def __init__(self, options: Any, steps: int, calibration: Optional[dict] = None):
        self.options, self.steps, self.calibration = options, steps, calibration
        self.state: dict[int, dict] = {}   # frame block -> {key: tensor or number}
        self.stats: Counter = Counter()    # block evaluations, passes, reused passes (this stage)
        self.given: Optional[bool] = None  # the decision received from an earlier stage, for the next pass
        self.decided: Optional[bool] = None  # this stage's decision of the last pass (sent on)

    @classmethod
    def check_config(cls, cfg: Any) -> Optional[str]:
        """A one-line problem with the whole config when this kind is selected (e.g. a model family
        whose blocks it cannot read), or None; checked with the config, before any work."""
        return None

    # ------------------------------------------------------------------------------- lifecycle
    def new_request(self) -> None:
        """Forget every block's state (caches never carry anything from one request to the next)."""
        self.state.clear()
        self.stats.clear()
        self.given = self.decided = None

    # ------------------------------------------------------------------------------- the loop
    def run_blocks(self, model, x_BLD: torch.Tensor, ctx, layers: Sequence[int]) -> torch.Tensor:
        layers = list(layers)
        given, self.given = self.given, None
        step = ctx.step
        self.stats["passes"] += 1
        if step is None or not layers:
            self.decided = False
            return self.compute(model, x_BLD, ctx, layers)
        st = self.state.setdefault(ctx.block, {})
        if st.get("shape") != tuple(x_BLD.shape):  # a new window shape: nothing stored applies
            st.clear()
            st["shape"] = tuple(x_BLD.shape)
        out = self.cached_pass(model, x_BLD, ctx, layers, st, step, given)
        if self.decided:
            self.stats["reused"] += 1
        if step >= self.steps - 1:  # the block's trajectory is over: free its state
            self.state.pop(ctx.block, None)
        return out

    def cached_pass(self, model, x_BLD, ctx, layers: list[int], st: dict, step: int,
                    given: Optional[bool]) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- helpers
    def compute(self, model, x_BLD: torch.Tensor, ctx, layers: Sequence[int]) -> torch.Tensor:
        for i in layers:
            x_BLD = run_block(model, i, x_BLD, ctx)
        self.stats["blocks"] += len(layers)
        return x_BLD

    def compute_residuals(self, model, x_BLD: torch.Tensor, ctx, layers: Sequence[int], st: dict,
                          keep: Optional[Callable] = None) -> torch.Tensor:
        """Run `layers`, holding each one's residual (output − input) under (layer, "residual"), or
        `keep(held, residual)` of it (e.g. Taylor factors)."""
        for i in layers:
            y_BLD = run_block(model, i, x_BLD, ctx)
            r_BLD = y_BLD - x_BLD
            st[(i, "residual")] = r_BLD if keep is None else keep(st.get((i, "residual")), r_BLD)
            x_BLD = y_BLD
        self.stats["blocks"] += len(layers)
        return x_BLD

    @staticmethod
    def has_residuals(st: dict, layers: Sequence[int]) -> bool:
        return all((i, "residual") in st for i in layers)

    @staticmethod
    def add_residuals(x_BLD: torch.Tensor, st: dict, layers: Sequence[int],
                      value: Optional[Callable] = None) -> torch.Tensor:
        """x + each layer's held residual (or `value(held)`), one layer after the other: the same
        additions in the same order whichever stage holds which layers, so W stages give exactly
        the W = 1 result."""
        for i in layers:
            held = st[(i, "residual")]
            x_BLD = x_BLD + (held if value is None else value(held))
        return x_BLD

    @staticmethod
    def holds_probe(layers: Sequence[int]) -> bool:
        """The stage that runs block 0 decides; the others are told."""
        return layers[0] == 0

    def forced_full(self, step: int, warmup: int, tail: int) -> bool:
        """The first `warmup` steps and the last `tail` steps are always computed."""
        return step < warmup or step >= self.steps - tail

    def decide_here(self, layers, given: Optional[bool], decide) -> bool:
        """This stage's decision: `decide()` on the probe stage, else the one received."""
        if self.holds_probe(layers):
            reuse = bool(decide())
        elif given is None:
            raise RuntimeError(f"cache.kind={self.kind}: a stage without block 0 needs the decision "
                               f"of the stage that has it (none was received)")
        else:
            reuse = given
        self.decided = reuse
        return reuse


def rel_l1(now_BLD: torch.Tensor, before_BLD: Optional[torch.Tensor]) -> float:
    """Largest relative L1 change over the batch rows: mean|now − before| / mean|before|
    (infinite without a previous value: the pass is computed)."""
    if before_BLD is None or before_BLD.shape != now_BLD.shape:
        return float("inf")
    dims = tuple(range(1, now_BLD.ndim))
    num = (now_BLD.float() - before_BLD.float()).abs().mean(dims)
    den = before_BLD.float().abs().mean(dims).clamp_min(1e-12)
    return float((num / den).max())


class TaylorFactors:
    """Finite-difference Taylor factors of one feature (TaylorSeer §3): F0 = the last computed
    value, F(i+1) = (F(i) − F(i)_previous) / d with d the steps between the two computations
    (a backward difference per order, so the order grows by one per computed step up to `order`).
    Stored as a list of tensors [B, ...] plus the step they were taken at."""

    @staticmethod
    def update(old: Optional[dict], value: torch.Tensor, step: int, order: int) -> dict:
        factors = [value]
        if old is not None and old["step"] < step and old["factors"][0].shape == value.shape:
            d = float(step - old["step"])
            for i in range(min(order, len(old["factors"]))):
                factors.append((factors[i] - old["factors"][i]) / d)
        return {"step": step, "factors": factors}

    @staticmethod
    def forecast(taylor: dict, step: int) -> torch.Tensor:
        """Σ_i F(i) · k^i / i!, k = steps since the factors were taken."""
        k = float(step - taylor["step"])
        out, coef = taylor["factors"][0], 1.0
        for i, f in enumerate(taylor["factors"][1:], start=1):
            coef *= k / i
            out = out + coef * f
        return out
