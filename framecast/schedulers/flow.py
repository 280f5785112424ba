"""Flow-matching samplers (rectified flow, Wan convention) with diffusers-exact schedules.

Convention: x_σ = (1 − σ)·x0 + σ·noise, σ ∈ [0, 1]; the model predicts the velocity
v = noise − x0, so x0 = x_σ − σ·v and an Euler step is x ← x + (σ_next − σ)·v.

Two samplers, each a plain object with per-instance state (a DualParal block holds its own
`copy.deepcopy`):
- `FlowEuler`: matches diffusers `FlowMatchEulerDiscreteScheduler(shift=s)`.
- `FlowUniPC`: matches diffusers `UniPCMultistepScheduler(use_flow_sigmas=True,
  prediction_type="flow_prediction", flow_shift=s)` (UniPC, Zhao et al. 2023,
  arXiv 2302.04867: predictor UniP-p + corrector UniC, B(h) variants bh1/bh2, data prediction).

Both step the whole batch at one noise level; samples at different levels need separate instances.

Shape legend: lat_* is any latent, typically (B, C, F, H, W); the samplers are shape-agnostic.
"""
from __future__ import annotations

import copy

from typing import Optional, Sequence, Union

import numpy as np
import torch

from framecast.schedulers.ddim import DDIM, ddim_from_diffusers_config

Timestep = Union[torch.Tensor, float, int]

SCHEDULES = ("unipc", "euler")


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

def _shift_sigmas(sigmas, shift: float):
    """Time shift of SD3 / Wan: σ' = s·σ / (1 + (s − 1)·σ); s > 1 spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_schedule(steps: int, shift: float, num_train_timesteps: int = 1000,
                  variant: str = "unipc") -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [steps + 1] float32 ending in 0, timesteps [steps] float32) as diffusers makes them.

    variant "unipc" (UniPCMultistepScheduler, use_flow_sigmas): σ = shift(linspace(1, 1/N, steps+1)[:-1])
    in float64, σ0 nudged to 1 − 1e-6 so log(σ) stays finite-signed for UniPC, timesteps =
    trunc(σ·N) — diffusers casts them to int64, so e.g. 999 rather than 999.999.
    variant "euler" (FlowMatchEulerDiscreteScheduler, shift, no dynamic shifting): the shift is applied
    twice — once to the float32 training table whose last entry bounds the linspace, then again
    to linspace(σ_max·N, σ_min·N, steps)/N — and timesteps = float32(σ)·N (not truncated).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    n = num_train_timesteps
    if variant == "unipc":
        s = np.linspace(1.0, 1.0 / n, steps + 1)[:-1]  # float64, as diffusers
        s = _shift_sigmas(s, shift)
        if abs(s[0] - 1.0) < 1e-6:
            s[0] -= 1e-6
        timesteps = torch.from_numpy((s * n).astype(np.int64)).to(torch.float32)
        sigmas = torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))
        return sigmas, timesteps
    if variant == "euler":
        # Ends of the float32 training table (timesteps N..1 over N, shifted in float32).
        ends = torch.tensor([float(n), 1.0], dtype=torch.float32) / n
        ends = _shift_sigmas(ends, shift)
        sigma_max, sigma_min = ends[0].item(), ends[1].item()
        t = np.linspace(sigma_max * n, sigma_min * n, steps)  # float64
        s = torch.from_numpy(_shift_sigmas(t / n, shift)).to(torch.float32)
        timesteps = s * n
        sigmas = torch.cat([s, torch.zeros(1)])
        return sigmas, timesteps
    raise ValueError(f"unknown flow schedule variant {variant!r}; valid: {', '.join(SCHEDULES)}")


def flow_sigmas(steps: int, shift: float, num_train_timesteps: int = 1000,
                variant: str = "unipc") -> torch.Tensor:
    """Shifted flow sigmas [steps + 1] (float32, last 0); see `flow_schedule` for the variants."""
    return flow_schedule(steps, shift, num_train_timesteps, variant)[0]


# ---------------------------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------------------------

def _as_batch(sigma, like: torch.Tensor):
    """A per-sample sigma tensor (B,) broadcast against (B, ...); scalars pass through."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1 and like.ndim > 1:
        return sigma.to(like.device).view(-1, *([1] * (like.ndim - 1)))
    return sigma


def noise_latents(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·noise; sigma is a float, a 0-d tensor or a (B,) tensor."""
    sigma = _as_batch(sigma, x0)
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v = noise − x0 (Wan convention)."""
    return noise - x0


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------

class _StepCounter:
    """Shared bookkeeping: the schedule, the step index and the check that `t` is the expected one."""

    schedule = "unipc"

    def _init_counter(self, shift: float, num_train_timesteps: int):
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.num_inference_steps: Optional[int] = None
        self.timesteps: Optional[torch.Tensor] = None  # (n,) float32
        self.sigmas: Optional[torch.Tensor] = None  # (n + 1,) float32, last 0
        self._step_index: Optional[int] = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.sigmas, self.timesteps = flow_schedule(num_inference_steps, self.shift,
                                                    self.num_train_timesteps, self.schedule)
        self.num_inference_steps = int(num_inference_steps)
        self.reset()

    def reset(self) -> None:
        """Back to the first timestep (the schedule is kept)."""
        self._step_index = 0 if self.timesteps is not None else None
        self._reset_state()

    def _reset_state(self) -> None:
        pass

    def state_to(self, device, non_blocking: bool = False):
        """A copy whose per-sample state (multistep history) lives on `device`; the schedule tables
        stay on the host (scalars read from them combine with device tensors). For resume records
        (host) and their reload (device)."""
        out = copy.copy(self)
        for name, value in vars(self).items():
            if name in ("sigmas", "timesteps"):
                continue
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.to(device, non_blocking=non_blocking))
            elif isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
                setattr(out, name, [v.to(device, non_blocking=non_blocking) for v in value])
        return out

    @property
    def step_index(self) -> Optional[int]:
        """Index of the next timestep to step from (None before `set_timesteps`)."""
        return self._step_index

    @property
    def sigma(self) -> float:
        """Noise level of the sample the next `step` expects (0.0 once exhausted)."""
        self._require_timesteps()
        return float(self.sigmas[self._step_index])

    @property
    def done(self) -> bool:
        return self._step_index is not None and self._step_index >= self.num_inference_steps

    def _require_timesteps(self):
        if self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps(n) before stepping")

    def _check_t(self, t: Timestep) -> int:
        self._require_timesteps()
        i = self._step_index
        if i >= self.num_inference_steps:
            raise RuntimeError(f"{type(self).__name__}: all {self.num_inference_steps} steps taken; "
                               "call reset() or set_timesteps() to start again")
        expected = float(self.timesteps[i])
        got = (t.detach().to("cpu", torch.float64) if isinstance(t, torch.Tensor)
               else torch.tensor(float(t), dtype=torch.float64))
        # Timesteps are only ever passed back from self.timesteps, so they match to float32
        # rounding; a looser test would hide a block stepping at the wrong noise level.
        if got.numel() == 0 or not bool(((got - expected).abs() <= 1e-5 * max(1.0, abs(expected))).all()):
            shown = got.flatten()[:4].tolist()
            raise ValueError(f"{type(self).__name__}: step {i} expects timestep {expected} "
                             f"(timesteps[{i}]), got {shown}")
        return i


class FlowEuler(_StepCounter):
    """Euler on the flow ODE: x ← x + (σ_next − σ)·v. Matches FlowMatchEulerDiscreteScheduler."""

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000, schedule: str = "euler"):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        self.schedule = schedule  # "unipc" runs Euler on UniPC's sigmas (Wan's original schedule)
        self._init_counter(shift, num_train_timesteps)

    def step(self, model_out: torch.Tensor, t: Timestep, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step from timesteps[step_index]; returns the next sample in sample.dtype."""
        i = self._check_t(t)
        dt = self.sigmas[i + 1] - self.sigmas[i]  # float32, like diffusers
        out = sample.to(torch.float32) + dt.to(sample.device) * model_out
        self._step_index += 1
        return out.to(sample.dtype)


class FlowUniPC(_StepCounter):
    """UniPC multistep (data prediction) on flow sigmas. Matches diffusers' UniPCMultistepScheduler
    with use_flow_sigmas=True, prediction_type="flow_prediction", predict_x0=True.

    Step i with order p: first the corrector UniC refines the sample the previous predictor made
    (using this step's model output), then the predictor UniP-p jumps σ_i → σ_{i+1} with the last
    p x0 predictions. Orders warm up 1, 2, ... and with lower_order_final the last steps drop order
    so the final jump to σ = 0 (λ = +inf) is first-order: it returns the last x0 prediction.
    """

    schedule = "unipc"

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000, solver_order: int = 2,
                 solver_type: str = "bh2", lower_order_final: bool = True,
                 disable_corrector: Sequence[int] = ()):
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
        if not lower_order_final and solver_order > 1:
            # The final jump to σ = 0 has λ = +inf, so every r_k is 0 and a multistep update
            # divides by it: diffusers returns inf/NaN there (or a singular solve for order 3).
            raise ValueError(f"lower_order_final=False with solver_order={solver_order} is not supported: "
                             "the last step to sigma 0 is non-finite (it is in diffusers too)")
        self.solver_order = int(solver_order)
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)
        self.disable_corrector = tuple(int(i) for i in disable_corrector)  # step indices
        self._init_counter(shift, num_train_timesteps)
        self._reset_state()

    def _reset_state(self) -> None:
        self._x0_hist: list[torch.Tensor] = []  # last `solver_order` x0 predictions, newest last
        self._last_sample: Optional[torch.Tensor] = None  # the sample the last predictor started from
        self._last_order = 0  # order the last predictor used (the corrector reuses it)

    # -- coefficients (0-d float32 tensors, the same dtype flow as diffusers) --

    def _lam(self, j: int) -> torch.Tensor:
        """λ_j = log(α_j / σ_j) with α = 1 − σ (+inf at σ = 0)."""
        s = self.sigmas[j]
        return torch.log(1 - s) - torch.log(s)

    def _bh(self, t_idx: int, s0_idx: int, order: int):
        """Coefficients of a UniP/UniC update from σ[s0_idx] to σ[t_idx] using x0 predictions at
        σ[s0_idx], σ[s0_idx − 1], ...: returns (σ_t/σ_s0, α_t, hφ1, B(h), r_k list, b vector)."""
        lam_t, lam_s0 = self._lam(t_idx), self._lam(s0_idx)
        h = lam_t - lam_s0
        rks = [(self._lam(s0_idx - k) - lam_s0) / h for k in range(1, order)]
        hh = -h  # data prediction integrates e^{-h}
        h_phi_1 = torch.expm1(hh)  # e^{-h} − 1
        B_h = hh if self.solver_type == "bh1" else torch.expm1(hh)
        # b_k = k!·φ_{k+1}(hh)/B(h) via the recurrence φ_{k+1} = (φ_k − 1/k!)/hh.
        b, h_phi_k, fact = [], h_phi_1 / hh - 1, 1
        for k in range(1, order + 1):
            b.append(h_phi_k * fact / B_h)
            fact *= k + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        s_t, s_s0 = self.sigmas[t_idx], self.sigmas[s0_idx]
        return s_t / s_s0, 1 - s_t, h_phi_1, B_h, rks, torch.stack(b)

    @staticmethod
    def _vandermonde(rks: list, order: int) -> torch.Tensor:
        r = torch.stack(rks + [torch.ones(())])  # r_1..r_{p-1}, 1
        return torch.stack([r ** k for k in range(order)])  # (p, p)

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniP-p: x at σ_i → σ_{i+1}."""
        ratio, alpha_t, h_phi_1, B_h, rks, b = self._bh(i + 1, i, order)
        m0 = self._x0_hist[-1]
        out = ratio * x - alpha_t * h_phi_1 * m0
        if order >= 2:
            D = [(self._x0_hist[-(k + 1)] - m0) / r for k, r in enumerate(rks, start=1)]
            if order == 2:
                rhos = torch.full((1,), 0.5)  # the 2nd-order predictor's fixed ρ (as in UniPC)
            else:
                rhos = torch.linalg.solve(self._vandermonde(rks, order)[:-1, :-1], b[:-1])
            res = sum(rho * d for rho, d in zip(rhos, D))
            out = out - alpha_t * B_h * res
        return out

    def _correct(self, x_new: torch.Tensor, m_t: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniC-p: redo the σ_{i−1} → σ_i update of the last predictor, now including the model
        output m_t at σ_i (history not yet shifted: _x0_hist[-1] is the σ_{i−1} prediction)."""
        ratio, alpha_t, h_phi_1, B_h, rks, b = self._bh(i, i - 1, order)
        m0 = self._x0_hist[-1]
        D = [(self._x0_hist[-(k + 1)] - m0) / r for k, r in enumerate(rks, start=1)]
        if order == 1:
            rhos = torch.full((1,), 0.5)
        else:
            rhos = torch.linalg.solve(self._vandermonde(rks, order), b)
        out = ratio * self._last_sample - alpha_t * h_phi_1 * m0
        res = sum(rho * d for rho, d in zip(rhos[:-1], D))
        res = res + rhos[-1] * (m_t - m0)
        return out - alpha_t * B_h * res

    def step(self, model_out: torch.Tensor, t: Timestep, sample: torch.Tensor) -> torch.Tensor:
        """One UniPC step from timesteps[step_index] (the velocity `model_out` predicted at `t` for
        `sample`); returns the sample at the next sigma, in sample.dtype (math in float32)."""
        i = self._check_t(t)
        x = sample.to(torch.float32)
        x0 = x - self.sigmas[i].to(x.device) * model_out.to(torch.float32)
        if i > 0 and self._last_sample is not None and (i - 1) not in self.disable_corrector:
            x = self._correct(x, x0, i, self._last_order)
        self._x0_hist = (self._x0_hist + [x0])[-self.solver_order:]
        order = self.solver_order
        if self.lower_order_final:
            order = min(order, self.num_inference_steps - i)
        order = min(order, len(self._x0_hist))  # warm-up: as many x0s as have been seen
        self._last_sample, self._last_order = x, order
        out = self._predict(x, i, order)
        self._step_index += 1
        return out.to(sample.dtype)


# ---------------------------------------------------------------------------------------------
# Registry and diffusers configs
# ---------------------------------------------------------------------------------------------

class FlowEulerWan(FlowEuler):
    """Euler on Wan's original sigmas (UniPC's: shift(linspace(1, 1/N, n + 1)[:-1]), then 0). Unlike
    diffusers' Euler table, whose last step runs from σ ≈ 0.001·shift to 0 and so does almost
    nothing, every step here covers a real stretch: 4 steps at shift 1 are σ = 1, .75, .5, .25 -> 0,
    the grid a few-step distilled model is trained on (`framecast.world.causal_training`)."""

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000):
        super().__init__(shift, num_train_timesteps, schedule="unipc")


SAMPLERS = {"euler": FlowEuler, "euler-wan": FlowEulerWan, "unipc": FlowUniPC, "ddim": DDIM}  # ddim: schedulers/ddim.py


def make_sampler(name: str, shift: float, num_train_timesteps: int = 1000):
    """A sampler by registry name ("euler" | "euler-wan" | "unipc" | "ddim") with diffusers' defaults
    otherwise (ddim: LattePipeline's linear betas 1e-4..2e-2, epsilon; `shift` has no effect on it)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](shift=shift, num_train_timesteps=num_train_timesteps)


# Per diffusers class: fields we read, fields that must hold a given value (anything else changes
# the math we reproduce), and fields that do not affect flow sigmas. Other keys are rejected.
_EULER_READ = ("shift", "num_train_timesteps")
_EULER_FIXED = {"use_dynamic_shifting": False, "invert_sigmas": False, "shift_terminal": None,
                "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "stochastic_sampling": False}
_EULER_IGNORED = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type")

_UNIPC_READ = ("flow_shift", "num_train_timesteps", "solver_order", "solver_type", "lower_order_final",
               "disable_corrector")
_UNIPC_FIXED = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "predict_x0": True,
                "thresholding": False, "solver_p": None, "use_karras_sigmas": False,
                "use_exponential_sigmas": False, "use_beta_sigmas": False, "final_sigmas_type": "zero",
                "use_dynamic_shifting": False, "shift_terminal": None}
# Betas only define the non-flow sigma table; spacing/offset are overwritten by flow sigmas;
# sigma_min/max only feed Karras-type conversions (rejected above).
_UNIPC_IGNORED = ("beta_start", "beta_end", "beta_schedule", "trained_betas", "dynamic_thresholding_ratio",
                  "sample_max_value", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
                  "time_shift_type", "sigma_min", "sigma_max")

_CLASSES = {"FlowMatchEulerDiscreteScheduler": (_EULER_READ, _EULER_FIXED, _EULER_IGNORED),
            "UniPCMultistepScheduler": (_UNIPC_READ, _UNIPC_FIXED, _UNIPC_IGNORED)}


def _infer_class(cfg: dict) -> str:
    # A live scheduler's `.config` has no _class_name (scheduler_config.json does).
    if "flow_shift" in cfg or "solver_order" in cfg:
        return "UniPCMultistepScheduler"
    if "shift" in cfg:
        return "FlowMatchEulerDiscreteScheduler"
    if "set_alpha_to_one" in cfg:
        return "DDIMScheduler"
    raise ValueError("_class_name missing and the fields match neither "
                     f"{' nor '.join(_CLASSES)}")


def sampler_from_diffusers_config(cfg: dict):
    """Our sampler for a diffusers scheduler config (scheduler_config.json or `scheduler.config`).
    Unsupported classes, options or unknown fields raise ValueError naming the field and value."""
    cls = cfg.get("_class_name") or _infer_class(cfg)
    if cls == "DDIMScheduler":  # a DDPM-trained model's folder (Latte)
        return ddim_from_diffusers_config(cfg)
    if cls not in _CLASSES:
        raise ValueError(f"_class_name={cls!r} is not supported; valid: {', '.join(_CLASSES)}, DDIMScheduler")
    read, fixed, ignored = _CLASSES[cls]
    for key, value in cfg.items():
        if key.startswith("_"):
            continue  # _class_name, _diffusers_version, _use_default_values
        if key in fixed:
            same = (not value) if fixed[key] is None else value == fixed[key]
            if not same:
                raise ValueError(f"{cls}: {key}={value!r} is not supported (need {fixed[key]!r})")
        elif key not in read and key not in ignored:
            raise ValueError(f"{cls}: unknown field {key}={value!r}; known: "
                             f"{', '.join(sorted((*read, *fixed, *ignored)))}")
    for key in ("use_flow_sigmas", "prediction_type") if cls == "UniPCMultistepScheduler" else ():
        if key not in cfg:  # diffusers' defaults here are the non-flow ones
            raise ValueError(f"{cls}: {key} missing (need {fixed[key]!r})")
    n = int(cfg.get("num_train_timesteps", 1000))
    if cls == "FlowMatchEulerDiscreteScheduler":
        return FlowEuler(shift=float(cfg.get("shift", 1.0)), num_train_timesteps=n)
    solver_type = cfg.get("solver_type", "bh2")
    if solver_type in ("midpoint", "heun", "logrho"):
        solver_type = "bh2"  # diffusers maps these legacy names to bh2
    order = cfg.get("solver_order", 2)
    if order not in (1, 2, 3):
        raise ValueError(f"{cls}: solver_order={order!r} is not supported (1, 2 or 3)")
    if solver_type not in ("bh1", "bh2"):
        raise ValueError(f"{cls}: solver_type={solver_type!r} is not supported (bh1 or bh2)")
    if not cfg.get("lower_order_final", True) and order > 1:
        raise ValueError(f"{cls}: lower_order_final=False is not supported with solver_order={order} "
                         "(the last step to sigma 0 is non-finite)")
    return FlowUniPC(shift=float(cfg.get("flow_shift", 1.0)), num_train_timesteps=n, solver_order=order,
                     solver_type=solver_type, lower_order_final=bool(cfg.get("lower_order_final", True)),
                     disable_corrector=cfg.get("disable_corrector") or ())
