"""DDIM (Song et al. 2021, arXiv 2010.02502, eta = 0) on a discrete DDPM noise table, equal to
diffusers' `DDIMScheduler` as LattePipeline drives it.

Convention (DDPM, epsilon prediction): x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε, t ∈ {0 .. N−1};
the model predicts ε (or v), x0 = (x_t − sqrt(1 − ᾱ_t)·ε) / sqrt(ᾱ_t) and a step to the previous
timestep t' is x_t' = sqrt(ᾱ_t')·x0 + sqrt(1 − ᾱ_t')·ε.

Learned-variance models (Latte: out_channels = 2·C) predict [ε | variance]; DDIM uses ε only, so
`step` keeps the first C channels of the prediction (LattePipeline's `noise_pred.chunk(2, dim=1)[0]`).
The initial noise is unscaled (init_noise_sigma = 1), so framecast's noise pool applies as is.

Shape legend: lat_* is any latent, typically (B, C, F, H, W); the sampler is shape-agnostic
(except for the channel dim 1 above).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

Timestep = Union[torch.Tensor, float, int]

BETA_SCHEDULES = ("linear", "scaled_linear")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float,
                   beta_schedule: str) -> torch.Tensor:
    """ᾱ_t [N] float32 (diffusers' table, same ops)."""
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule={beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(steps: int, num_train_timesteps: int, spacing: str, steps_offset: int) -> torch.Tensor:
    """Descending int64 timesteps [steps] (diffusers' set_timesteps)."""
    n = num_train_timesteps
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in [1, {n}] (num_train_timesteps), got {steps}")
    if spacing == "leading":
        t = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == "trailing":
        t = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        t = np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
    else:
        raise ValueError(f"timestep_spacing={spacing!r}; valid: {', '.join(SPACINGS)}")
    return torch.from_numpy(t)


class DDIM:
    """Deterministic DDIM (eta = 0). Per-instance state is only the step index (one per block)."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", set_alpha_to_one: bool = True,
                 steps_offset: int = 0, timestep_spacing: str = "leading", clip_sample: bool = False,
                 clip_sample_range: float = 1.0, shift: float = 1.0):
        if prediction_type not in PREDICTIONS:
            raise ValueError(f"prediction_type={prediction_type!r}; valid: {', '.join(PREDICTIONS)}")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing={timestep_spacing!r}; valid: {', '.join(SPACINGS)}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.alphas_cumprod = alphas_cumprod(self.num_train_timesteps, beta_start, beta_end, beta_schedule)
        # ᾱ after the last step: 1 (a clean sample) or ᾱ_0
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.prediction_type, self.spacing, self.steps_offset = prediction_type, timestep_spacing, int(steps_offset)
        self.clip = float(clip_sample_range) if clip_sample else None
        self.shift = float(shift)  # unused (flow samplers' knob); kept so every sampler has it
        self.num_inference_steps: Optional[int] = None
        self.timesteps: Optional[torch.Tensor] = None  # (n,) int64, descending
        self._step_index: Optional[int] = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.timesteps = ddim_timesteps(num_inference_steps, self.num_train_timesteps, self.spacing,
                                        self.steps_offset)
        self.num_inference_steps = int(num_inference_steps)
        self.reset()

    def reset(self) -> None:
        """Back to the first timestep (the schedule is kept)."""
        self._step_index = 0 if self.timesteps is not None else None

    def state_to(self, device, non_blocking: bool = False) -> "DDIM":
        """No per-sample state to move (the step index is a plain int)."""
        return self

    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def done(self) -> bool:
        return self._step_index is not None and self._step_index >= self.num_inference_steps

    def step(self, model_out: torch.Tensor, t: Timestep, sample: torch.Tensor) -> torch.Tensor:
        """One DDIM step from timesteps[step_index] to the next; returns the sample in sample.dtype.
        model_out: [B, C or more, ...] — channels past C (learned variance) are dropped."""
        if self.timesteps is None:
            raise RuntimeError("DDIM: call set_timesteps(n) before stepping")
        i = self._step_index
        if i >= self.num_inference_steps:
            raise RuntimeError(f"DDIM: all {self.num_inference_steps} steps taken; call reset() or set_timesteps()")
        step_t = int(self.timesteps[i])
        got = t.detach().flatten().cpu().double() if isinstance(t, torch.Tensor) else torch.tensor([float(t)])
        if got.numel() == 0 or not bool((got == step_t).all()):
            raise ValueError(f"DDIM: step {i} expects timestep {step_t} (timesteps[{i}]), got {got[:4].tolist()}")
        if model_out.shape[1] > sample.shape[1]:
            model_out = model_out[:, :sample.shape[1]]
        prev_t = step_t - self.num_train_timesteps // self.num_inference_steps  # as diffusers, whatever the spacing
        a_t = self.alphas_cumprod[step_t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        x, out = sample.float(), model_out.float()
        if self.prediction_type == "epsilon":
            x0, eps = (x - b_t ** 0.5 * out) / a_t ** 0.5, out
        elif self.prediction_type == "v_prediction":
            x0, eps = a_t ** 0.5 * x - b_t ** 0.5 * out, a_t ** 0.5 * out + b_t ** 0.5 * x
        else:
            x0, eps = out, (x - a_t ** 0.5 * out) / b_t ** 0.5
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        prev = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        self._step_index = i + 1
        return prev.to(sample.dtype)


# diffusers DDIMScheduler config: keys read, keys that must hold a value (else other math), keys
# without effect here. Other keys are rejected.
_READ = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "set_alpha_to_one",
         "steps_offset", "timestep_spacing", "clip_sample", "clip_sample_range")
_FIXED = {"thresholding": False, "rescale_betas_zero_snr": False, "trained_betas": None}
# variance_type: a DDPM key Latte's scheduler config carries; DDIM ignores it (the pipeline keeps
# the first half of the channels for a DDIM scheduler either way)
_IGNORED = ("dynamic_thresholding_ratio", "sample_max_value", "variance_type")


def ddim_from_diffusers_config(cfg: dict) -> DDIM:
    """Our DDIM for a diffusers DDIMScheduler config; unsupported options raise ValueError naming them."""
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if key in _FIXED:
            if value != _FIXED[key]:
                raise ValueError(f"DDIMScheduler: {key}={value!r} is not supported (need {_FIXED[key]!r})")
        elif key not in _READ and key not in _IGNORED:
            raise ValueError(f"DDIMScheduler: unknown field {key}={value!r}; known: "
                             f"{', '.join(sorted((*_READ, *_FIXED, *_IGNORED)))}")
    # diffusers' DDIMScheduler defaults where the config is silent (clip_sample=True among them)
    defaults = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear",
                    prediction_type="epsilon", set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                    clip_sample=True, clip_sample_range=1.0)
    return DDIM(**{k: cfg.get(k, v) for k, v in defaults.items()})
