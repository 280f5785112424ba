"""The `window` schedule: timestep-aware dynamic windows (TDW; YingVideo-MV report, Algorithm 1;
spec: shared/methods/model-zoo.md §5, open questions §7; docs/window.md). The whole long latent is
denoised at every sampler step by overlapping windows of at most f latent frames, whose start
shifts from one step to the next, so no window boundary stays at the same frame for every step.

Vocabulary (spec): l latent frames, window f (`window_frames`), overlap o, shift step p, max
offset m, minimum clip n; α the offset of a step.

- Plan (pure data, `make_plan`): α = 0; for each step: if α > m then α = 0; the first window is
  [0, f − α) (its start −α clipped to 0: the first clip shrinks as α grows); then s = e − o,
  e = min(s + f, l); a clip shorter than n is extended backwards, s = e − n; until the window
  ending at l is made (the spec's printed `while e < l` would skip it, §7); after the sweep
  α += p. No wrap-around. p = 0: the same windows at every step (fixed windows).
- Options are checked so that every window holds between min(n, l) and f frames and each starts
  after the one before (m ≤ f − max(n, o + 1): the first window, f − α frames, is never shorter
  than n and always longer than the overlap).
- Run (`denoise_windows`): at step i each window is one model call on z[:, :, s:e] at the step's
  timestep, with `frames=range(s, e)` (per-frame conditions such as a camera are read for those
  frames); the windows' predictions are merged per frame (the merge rule below), then the sampler
  steps the whole latent once, so any sampler works, multistep ones included (one history for the
  whole latent). With Euler, merging the predictions equals merging the windows' stepped latents.
- Merge (§7 leaves it open; `merge_weights`): a weighted mean per frame. A window's weight ramps
  linearly over its overlap with the window before it and the one after it and is 1 elsewhere:
  w(i) = min(1, (i − s + 1)/(L + 1), (e − i)/(R + 1)) for L, R frames shared with the previous /
  next window. Where two windows share k frames this is vin's cross-fade, (k − j)/(k + 1) and
  (j + 1)/(k + 1) for the j-th shared frame (weights summing to 1: neither side wins, no frame
  jumps from one window's prediction to the other's); where more share a frame (o > f/2) the
  weights are normalised. One window over the whole video: weight 1, the full schedule exactly.
- Positions: each window is embedded at 0..e−s−1 (the model's own clip positions) for every
  family: windows share no keys or values (unlike DualParal's context, which needs global
  positions for families with additive positions), so a window is exactly a short clip, as the
  model was trained, wherever it lies in the video.
- Memory: a model call holds at most f frames, whatever the video's length; the latent itself
  (and the merge buffer and the sampler's history) is O(l) but small (l · C · h · w floats; the
  tiny preset: 12 KiB a frame). Release: every frame is final only after the last step, so all
  leave at the end, one latent frame at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, Optional, Sequence

from framecast.schedulers.base import Schedule, check_cancel

if TYPE_CHECKING:
    import torch


def _check(name: str, value, low: int, high: Optional[int] = None, why: str = "") -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} is not allowed; must be an integer {allowed}{why}")


def check_options(window: int, overlap: int, shift: int, max_offset: int, min_frames: int) -> None:
    """ValueError (one line naming the schedule.window field and its allowed values) for options
    whose windows would be empty, not advance, or be shorter than min_frames."""
    _check("schedule.window.window_frames", window, 1)
    _check("schedule.window.overlap_frames", overlap, 0, window - 1, " (< window_frames: each window must go on)")
    _check("schedule.window.min_frames", min_frames, 1, window, " (<= window_frames)")
    _check("schedule.window.shift_step", shift, 0)
    high = window - max(min_frames, overlap + 1)
    _check("schedule.window.max_offset", max_offset, 0, high,
           " (window_frames - max(min_frames, overlap_frames + 1): the first window, window_frames - offset "
           "frames, must hold min_frames and more than the overlap)")


def offsets(steps: int, shift: int, max_offset: int) -> tuple[int, ...]:
    """α of each step: 0, p, 2p, ... while <= m, then back to 0 (spec: `if α > m: α = 0` before the
    sweep, `α += p` after it)."""
    out, alpha = [], 0
    for _ in range(steps):
        if alpha > max_offset:
            alpha = 0
        out.append(alpha)
        alpha += shift
    return tuple(out)


def sweep(latent_frames: int, window: int, overlap: int, min_frames: int, offset: int) -> tuple[range, ...]:
    """The windows [s, e) of one step at offset α, in order: [0, f − α), then s = e − o,
    e = min(s + f, l), a clip shorter than n extended backwards to e − n, until e == l."""
    s, e = 0, min(window - offset, latent_frames)
    out = [range(s, e)]
    while e < latent_frames:  # "until the window ending at l is processed" (spec §7)
        s = e - overlap
        e = min(s + window, latent_frames)
        if e - s < min_frames:
            s = e - min_frames
        out.append(range(s, e))
    return tuple(out)


@dataclass(frozen=True)
class WindowPlan:
    latent_frames: int  # exactly what was asked
    steps: int  # T
    offsets: tuple[int, ...]  # α of each step
    windows: tuple[tuple[range, ...], ...]  # per step, its windows [s, e) in sweep order

    @property
    def calls(self) -> int:
        """Model calls of the whole plan (one per window per step)."""
        return sum(len(w) for w in self.windows)

    def edges(self, step: int) -> tuple[int, ...]:
        """Latent frames where a window of `step` begins or where the one before it ended (both
        edges of every overlap; 0 excluded): where a boundary of that step's windows lies."""
        ws = self.windows[step]
        return tuple(sorted({f for a, b in zip(ws, ws[1:]) for f in (b.start, a.stop) if 0 < f < self.latent_frames}))

    def summary(self) -> dict:
        return {"latent_frames": self.latent_frames, "steps": self.steps, "offsets": list(self.offsets),
                "calls": self.calls, "windows_per_step": [len(w) for w in self.windows]}


def make_plan(latent_frames: int, steps: int, window: int, overlap: int, shift: int, max_offset: int,
              min_frames: int) -> WindowPlan:
    """The TDW plan; a ValueError (one line naming the schedule.window field) for options it cannot use."""
    _check("latent_frames", latent_frames, 1)
    _check("steps", steps, 1)
    check_options(window, overlap, shift, max_offset, min_frames)
    alphas = offsets(steps, shift, max_offset)
    by_offset = {a: sweep(latent_frames, window, overlap, min_frames, a) for a in set(alphas)}
    return WindowPlan(latent_frames, steps, alphas, tuple(by_offset[a] for a in alphas))


def merge_weights(windows: Sequence[range]) -> list[list[float]]:
    """Per window (in sweep order), its weight at each of its frames: a linear ramp over the frames
    it shares with the previous and with the next window, 1 elsewhere (module docstring)."""
    out = []
    for k, w in enumerate(windows):
        left = max(0, windows[k - 1].stop - w.start) if k > 0 else 0
        right = max(0, w.stop - windows[k + 1].start) if k + 1 < len(windows) else 0
        out.append([min(1.0, (i - w.start + 1) / (left + 1), (w.stop - i) / (right + 1)) for i in w])
    return out


@dataclass
class WindowOptions:
    """schedule.window.* (latent frames; defaults for the tiny preset, trained on 8-frame clips)"""
    window_frames: int = 8  # f: latent frames a model call sees (Wan2.1: 21 = its 81-frame clips)
    overlap_frames: int = 2  # o: frames a window shares with the one before it
    shift_step: int = 1  # p: how far the windows move back from one step to the next (0: fixed windows)
    max_offset: int = 3  # m: the largest offset α before it returns to 0 (α cycles 0, p, 2p, ... <= m)
    min_frames: int = 4  # n: a shorter last window is extended backwards to n frames

    MINIMUM: ClassVar[dict] = {"window_frames": 1, "overlap_frames": 0, "shift_step": 0, "max_offset": 0,
                               "min_frames": 1}

    def check(self) -> Optional[str]:
        try:
            check_options(self.window_frames, self.overlap_frames, self.shift_step, self.max_offset, self.min_frames)
        except ValueError as e:
            return str(e)
        return None


class WindowSchedule(Schedule):
    """Runs the plan on this process (one model call per window) and hands the finished latents out
    oldest first, one latent frame at a time, after the last step."""

    name = "window"
    Options = WindowOptions
    takes_camera = True  # each window's call names its frames: the camera adapter reads their rays

    @classmethod
    def check_config(cls, cfg, options) -> Optional[str]:
        if cfg.model.patch_size[0] != 1:  # windows are ranges of latent frames
            return f"schedule.name=window needs model.patch_size[0] == 1, got {list(cfg.model.patch_size)}"
        if cfg.cache.kind != "none":  # keyed by frame block and step, but windows move between steps
            return (f"cache.kind={cfg.cache.kind} does not run under schedule.name=window: a feature cache reuses "
                    f"a block's previous step, and the windows move between steps; use cache.kind=none")
        return None

    def plan(self, req, steps: Optional[int] = None) -> WindowPlan:
        o = self.options
        return make_plan(req.latent_frames, self.engine.cfg.sampler.steps if steps is None else steps,
                         o.window_frames, o.overlap_frames, o.shift_step, o.max_offset, o.min_frames)

    def max_frames(self, req):
        return self._noise_limit(req)

    def total_steps(self, req) -> int:
        plan = self.plan(req)  # + the calls of an audio band's lag (schedulers/band.py): the last step's windows
        return plan.calls + (self.engine.loop_steps - plan.steps) * len(plan.windows[-1])

    def seams(self, req) -> tuple[int, ...]:
        """The last step's window edges (`WindowPlan.edges`): that step sets the finished frames'
        detail; with fixed windows (shift_step 0) they are every step's edges."""
        plan = self.plan(req)
        return plan.edges(plan.steps - 1)

    def latents(self, req, actions, progress, record=None, cancel=None) -> Iterator["torch.Tensor"]:
        from tqdm.auto import tqdm

        engine = self.engine
        denoise = engine.denoiser(req.prompt, req.negative_prompt, camera=engine.camera_rays(req))
        lat = engine.initial_latents(req).to(engine.device)
        sampler = engine.make_sampler()
        plan = self.plan(req, len(sampler.timesteps))
        with tqdm(total=self.total_steps(req), desc="denoise", unit="window", disable=not progress) as bar:
            lat = denoise_windows(denoise, lat, sampler, plan, on_call=lambda: (bar.update(), check_cancel(cancel)),
                                  band=denoise.band)
        for f in range(lat.shape[2]):  # every frame is final only now; hand them out one at a time
            yield lat[:, :, f:f + 1]


def denoise_windows(denoise: Callable, lat_1CFHW: "torch.Tensor", sampler, plan: WindowPlan,
                    on_call: Optional[Callable[[], None]] = None, band: tuple[int, int] = (0, 0)) -> "torch.Tensor":
    """Run the plan's steps over the whole latent [1, C, F, H, W]: per step, one `denoise(window,
    t, step=i, block=s, frames=range(s, e))` per window (`block`: the window's first frame, the
    key of an attention backend's per-block state), the predictions merged by `merge_weights`,
    then one `sampler.step` of the whole latent. on_call() after each model call. `band`: (rows,
    lag) of an audio band run `lag` steps behind the video (schedulers/band.py): `lag` more sweeps,
    over the last step's windows."""
    import torch

    from framecast.schedulers.band import BandLag

    if len(sampler.timesteps) != plan.steps:
        raise ValueError(f"the plan has {plan.steps} steps, the sampler {len(sampler.timesteps)}")
    loop = BandLag(sampler, band, lat_1CFHW.shape[3], lat_1CFHW.device) if band[1] else None
    for i in range(plan.steps + band[1]):
        step = min(i, plan.steps - 1)  # the lag's extra sweeps use the last step's windows
        t, levels = sampler.timesteps[step], {}
        if loop is not None:
            t, band_t = loop.levels(i)
            levels = {"band_t": band_t}
        # the merged prediction, made at the first call: a model may predict more channels than the
        # latent has (Latte's learned sigma), which the sampler reads
        v_1CFHW = None
        norm_F = torch.zeros(lat_1CFHW.shape[2], dtype=lat_1CFHW.dtype, device=lat_1CFHW.device)
        windows = plan.windows[step]
        for w, weights in zip(windows, merge_weights(windows)):
            out = denoise(lat_1CFHW[:, :, w.start:w.stop].contiguous(), t, step=i, block=w.start, frames=w, **levels)
            if v_1CFHW is None:
                v_1CFHW = out.new_zeros((*out.shape[:2], lat_1CFHW.shape[2], *out.shape[3:]), dtype=lat_1CFHW.dtype)
            w_F = torch.tensor(weights, dtype=lat_1CFHW.dtype, device=lat_1CFHW.device)
            v_1CFHW[:, :, w.start:w.stop] += out.to(lat_1CFHW.dtype) * w_F[:, None, None]
            norm_F[w.start:w.stop] += w_F
            if on_call is not None:
                on_call()
        v_1CFHW = v_1CFHW / norm_F[:, None, None]
        if loop is None:
            lat_1CFHW = sampler.step(v_1CFHW, t, lat_1CFHW)
        else:
            lat_1CFHW = loop.step(v_1CFHW, i, lat_1CFHW, torch.ones(lat_1CFHW.shape[2], dtype=torch.bool))
    return lat_1CFHW
