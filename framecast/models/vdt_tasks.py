"""VDT's spatial-temporal mask modeling (shared/methods/model-zoo.md §3), as pure functions.

A task is a binary mask M [F, H, W] over the latent video (bool; True = 1 = generate, False = 0 =
given). One model does every task: the given region enters as clean latents in the same token
sequence (no extra channels, no extra conditioning path),

    model input  x_in = x_clean·(1 − M) + x_t·M          (`mask_input`)
    loss         only on M = 1 positions                 (`masked_mse`)
    sampling     after every step the given region is re-filled from the condition (`refill`,
                 `sample_with_mask`)

Re-fill choice (flow matching, x_σ = (1 − σ)·x_clean + σ·noise): the given region is put back
**clean**, not at the step's noise level ((1 − σ)·x_clean + σ·noise). VDT trains with the given
tokens clean at every σ (the input rule above), so clean is what the model has seen; a noised
re-fill is the rule for a model trained without masks (RePaint-style inpainting), and here it would
show the model inputs it was never trained on. Clean also makes the output's given region equal
to the condition exactly. The timestep stays the video's σ for every token (VDT's per-video
modulation; the model tells given from generated tokens by their content).

Tasks (VDT ids 0-5, then the spatial one), scaled to any frame count F:

| name          | id | given (M = 0)                                           | VDT at F = 16      |
|---------------|----|---------------------------------------------------------|--------------------|
| predict       | 0  | the first F // 2 frames                                  | frames 0-7         |
| backward      | 1  | the last F // 2 frames                                   | frames 8-15        |
| interpolate   | 2  | every 4th frame (0, 4, 8, ...; `every`)                  | 0, 4, 8, 12        |
| unconditional | 3  | nothing                                                  | -                  |
| animate       | 4  | one frame (drawn, or `frame`)                            | one random frame   |
| random        | 5  | each frame given with p = 0.2 (generated with p = 0.8)   | same               |
| complete      | -  | all but a ~50% BEiT block mask of the H×W patches, on    | frames [s : 16 − e]|
|               |    | frames [s : F − e], s, e drawn in 0..min(3, (F − 1)//2); | s, e ∈ 0..3        |
|               |    | the other frames wholly given                           |                    |

F = 1 gives predict/backward nothing (F // 2 = 0): they are then unconditional.
Training mixture (`training_mask`): `spatial_prob` = 20% of the clips `complete`, the others one
of ids 0-5 uniformly.

`--mask SPEC` (`parse_mask`), the generated region of a completion as a union of parts joined
by ";" (everything outside it is given):
    box:X0,Y0,X1,Y1[@FRAMES]   latent pixels, half-open: columns X0..X1−1, rows Y0..Y1−1, on
                               every frame or on FRAMES
    frames:FRAMES              whole frames
    FRAMES := RANGE(,RANGE)*,  RANGE := A | A-B (inclusive, 0-based latent frames)
e.g. "box:8,8,24,24" (the centre of a 32×32 video), "frames:8-15" (= predict at F = 16),
"box:0,0,16,32@0-3;frames:12-15". `request_mask(task, F, H, W, spec, seed)` is the mask of a
request (`--task NAME [--mask SPEC]`), for the engine to call.

Shape legend: B batch, C channels, F latent frames, H/W latent height/width.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

# VDT's task ids 0-5 (the ones the training mixture draws uniformly), then the spatial task
FRAME_TASKS = ("predict", "backward", "interpolate", "unconditional", "animate", "random")
SPATIAL_TASK = "complete"


def _given_frames(frames: int, h: int, w: int, given: torch.Tensor) -> torch.Tensor:
    """M [F, H, W] from a bool [F] of wholly given frames."""
    return (~given)[:, None, None].expand(frames, h, w).clone()


def _check(frames: int, h: int, w: int) -> None:
    if frames < 1 or h < 1 or w < 1:
        raise ValueError(f"task mask needs frames, H, W >= 1, got ({frames}, {h}, {w})")


def predict(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """The first F // 2 frames given."""
    _check(frames, h, w)
    return _given_frames(frames, h, w, torch.arange(frames) < frames // 2)


def backward(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """The last F // 2 frames given."""
    _check(frames, h, w)
    return _given_frames(frames, h, w, torch.arange(frames) >= frames - frames // 2)


def interpolate(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None, every: int = 4) -> torch.Tensor:
    """Frames 0, every, 2·every, ... given."""
    _check(frames, h, w)
    if every < 1:
        raise ValueError(f"interpolate: every must be >= 1, got {every}")
    return _given_frames(frames, h, w, torch.arange(frames) % every == 0)


def unconditional(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Everything generated."""
    _check(frames, h, w)
    return torch.ones(frames, h, w, dtype=torch.bool)


def animate(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None,
            frame: Optional[int] = None) -> torch.Tensor:
    """One frame given: `frame`, or one drawn uniformly from `gen`."""
    _check(frames, h, w)
    if frame is None:
        frame = int(torch.randint(frames, (1,), generator=gen))
    if not 0 <= frame < frames:
        raise ValueError(f"animate: frame {frame} outside 0..{frames - 1}")
    return _given_frames(frames, h, w, torch.arange(frames) == frame)


def random_frames(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None, p: float = 0.8) -> torch.Tensor:
    """Each frame generated with probability p (VDT's "MLM" task)."""
    _check(frames, h, w)
    return _given_frames(frames, h, w, ~(torch.rand(frames, generator=gen) < p))


def block_mask(h: int, w: int, gen: Optional[torch.Generator] = None, ratio: float = 0.5,
               min_blocks: int = 4, max_aspect: float = 1 / 0.3, tries: int = 10) -> torch.Tensor:
    """BEiT's block-wise masking on an h×w grid: rectangles of area in [min_blocks, what is left]
    and log-uniform aspect ratio in [1/max_aspect, max_aspect] are added until about `ratio` of the
    cells are covered (True = masked). Small grids scale min_blocks down to fit."""
    target = max(1, round(ratio * h * w))
    min_blocks = max(1, min(min_blocks, target))
    mask = torch.zeros(h, w, dtype=torch.bool)
    count, stalls = 0, 0
    while count < target and stalls < 4:
        left = target - count
        added = 0
        for _ in range(tries):
            area = float(torch.empty(()).uniform_(min_blocks, max(min_blocks, left) + 1e-9, generator=gen))
            log_aspect = float(torch.empty(()).uniform_(-math.log(max_aspect), math.log(max_aspect), generator=gen))
            bh = int(round(math.sqrt(area * math.exp(log_aspect))))
            bw = int(round(math.sqrt(area / math.exp(log_aspect))))
            if not (1 <= bh <= h and 1 <= bw <= w):
                continue
            top = int(torch.randint(h - bh + 1, (1,), generator=gen))
            lft = int(torch.randint(w - bw + 1, (1,), generator=gen))
            new = int((~mask[top:top + bh, lft:lft + bw]).sum())
            if 0 < new <= left:
                mask[top:top + bh, lft:lft + bw] = True
                added = new
                break
        count += added
        stalls = stalls + 1 if added == 0 else 0
    return mask


def complete(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None, ratio: float = 0.5,
             patch: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Spatial completion: a BEiT block mask of ~`ratio` of the (h/ph)×(w/pw) patch grid is
    generated on frames [s : F − e] (s, e drawn in 0..min(3, (F − 1) // 2), so at least one
    frame); everything else is given. `patch` aligns the mask to the model's patches."""
    _check(frames, h, w)
    ph, pw = patch
    if h % ph or w % pw:
        raise ValueError(f"complete: (H, W)=({h}, {w}) not divisible by patch {tuple(patch)}")
    most = min(3, (frames - 1) // 2)
    s, e = (int(v) for v in torch.randint(most + 1, (2,), generator=gen))
    cells = block_mask(h // ph, w // pw, gen, ratio)
    spatial = cells.repeat_interleave(ph, 0).repeat_interleave(pw, 1)
    mask = torch.zeros(frames, h, w, dtype=torch.bool)
    mask[s:frames - e] = spatial
    return mask


TASKS: dict[str, Callable[..., torch.Tensor]] = {
    "predict": predict, "backward": backward, "interpolate": interpolate, "unconditional": unconditional,
    "animate": animate, "random": random_frames, "complete": complete,
}


def task_mask(name: str, frames: int, h: int, w: int, gen: Optional[torch.Generator] = None,
              **options) -> torch.Tensor:
    """M [F, H, W] (bool, True = generate) of the task `name`; an unknown name lists the tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown VDT task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name](frames, h, w, gen, **options)


def training_mask(frames: int, h: int, w: int, gen: Optional[torch.Generator] = None, spatial_prob: float = 0.2,
                  patch: tuple[int, int] = (1, 1)) -> tuple[str, torch.Tensor]:
    """VDT's training mixture: (task name, M). `spatial_prob` of the draws `complete`, the others one
    of the frame tasks 0-5 uniformly."""
    if float(torch.rand((), generator=gen)) < spatial_prob:
        return SPATIAL_TASK, complete(frames, h, w, gen, patch=patch)
    name = FRAME_TASKS[int(torch.randint(len(FRAME_TASKS), (1,), generator=gen))]
    return name, task_mask(name, frames, h, w, gen)


# ---- --mask SPEC ------------------------------------------------------------------------------

def _frame_set(text: str, frames: int, spec: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if b else int(a)
        except ValueError:
            raise ValueError(f"--mask {spec!r}: {part!r} is not a frame or range A-B") from None
        if not 0 <= lo <= hi < frames:
            raise ValueError(f"--mask {spec!r}: frames {part!r} outside 0..{frames - 1} (or reversed)")
        out.extend(range(lo, hi + 1))
    return out


def parse_mask(spec: str, frames: int, h: int, w: int) -> torch.Tensor:
    """M [F, H, W] (True = generate) from a `--mask` SPEC (module docstring)."""
    _check(frames, h, w)
    mask = torch.zeros(frames, h, w, dtype=torch.bool)
    if not spec.strip():
        raise ValueError("--mask is empty; e.g. box:8,8,24,24 or frames:8-15")
    for part in spec.split(";"):
        kind, _, body = part.strip().partition(":")
        if kind == "frames":
            mask[_frame_set(body, frames, spec)] = True
        elif kind == "box":
            coords, _, on = body.partition("@")
            try:
                x0, y0, x1, y1 = (int(v) for v in coords.split(","))
            except ValueError:
                raise ValueError(f"--mask {spec!r}: box needs four integers X0,Y0,X1,Y1, got {coords!r}") from None
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise ValueError(f"--mask {spec!r}: box {coords} must satisfy 0 <= X0 < X1 <= {w} and "
                                 f"0 <= Y0 < Y1 <= {h} (latent pixels)")
            sel = _frame_set(on, frames, spec) if on else list(range(frames))
            mask[sel, y0:y1, x0:x1] = True
        else:
            raise ValueError(f"--mask {spec!r}: unknown part {part.strip()!r}; use box:X0,Y0,X1,Y1[@FRAMES] "
                             "or frames:FRAMES, joined by ';'")
    return mask


def request_mask(task: str, frames: int, h: int, w: int, mask_spec: str = "", seed: int = 0,
                 patch: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The mask of a request (`--task NAME [--mask SPEC]`): `complete` with a SPEC takes the SPEC's
    region, without one a BEiT block mask drawn from `seed`; the other tasks take no SPEC, and
    draw (animate, random) from `seed`."""
    if mask_spec and task != SPATIAL_TASK:
        raise ValueError(f"--mask is for --task {SPATIAL_TASK}; --task {task} has its own mask")
    if mask_spec:
        return parse_mask(mask_spec, frames, h, w)
    gen = torch.Generator().manual_seed(seed)
    return task_mask(task, frames, h, w, gen, **({"patch": patch} if task == SPATIAL_TASK else {}))


# ---- the mask in training and sampling ----------------------------------------------------------

def _broadcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """M [F, H, W] or [B, F, H, W] -> bool broadcastable against [B, C, F, H, W]."""
    if mask.ndim == 3:
        mask = mask[None]
    if mask.ndim != 4 or tuple(mask.shape[-3:]) != tuple(like.shape[-3:]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit latents {tuple(like.shape)} "
                         "([F, H, W] or [B, F, H, W])")
    return mask.to(device=like.device, dtype=torch.bool)[:, None]


def mask_input(x_clean: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_clean·(1 − M) + x_t·M, exactly (a select, no arithmetic): clean where given."""
    return torch.where(_broadcast(mask, x_t), x_t, x_clean.to(x_t.dtype))


def refill(x: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with the given region (M = 0) put back from the clean condition: after every sampler step."""
    return mask_input(condition, x, mask)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the generated (M = 1) positions only (all channels); 0 with none."""
    m = _broadcast(mask, pred).expand_as(pred)
    err = (pred.float() - target.float()).square()
    return torch.where(m, err, torch.zeros_like(err)).sum() / m.sum().clamp(min=1)


def sample_with_mask(denoise: Callable, condition_BCFHW: torch.Tensor, mask: torch.Tensor,
                     noise_BCFHW: torch.Tensor, sampler,
                     on_step: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Run `sampler`'s timesteps (a fresh flow sampler: `timesteps`, `step`) for a VDT task.

    denoise(lat, t, step=i, block=0) -> velocity (the engine's Denoiser signature; t a scalar: the
    video's one noise level); condition_BCFHW: clean latents, read only where M = 0; mask: M [F, H, W]
    or [B, F, H, W] (True = generate); noise_BCFHW: the initial noise. The given region is clean in
    the model's input at every step and in the result (equal to the condition exactly). With an
    all-True mask this is plain sampling."""
    lat = refill(noise_BCFHW, condition_BCFHW, mask)
    for i, t in enumerate(sampler.timesteps):
        lat = refill(sampler.step(denoise(lat, t, step=i, block=0), t, lat), condition_BCFHW, mask)
        if on_step is not None:
            on_step(i)
    return lat
