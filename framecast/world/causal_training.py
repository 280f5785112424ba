"""Training the play model exactly as NFD runs it: every frame denoised on a clean committed past.

At inference (`schedulers/nfd.py`) frame f is denoised on top of a KV cache whose entries were
written by a "commit pass" over the finished frames < f (block-causal among themselves, at the
small context noise σc); the new frame attends to that cache and to itself. Plain diffusion
forcing (an independent σ per frame under a block-causal mask) almost never shows the model that
case: with logit-normal σ a context frame is nearly clean (σ < 0.05) in 0.2% of draws.

So a play clip of F frames is laid out twice along time — teacher forcing, as in CausVid's and
Self-Forcing's training of causal students:

    [ ctx_0 .. ctx_{F-1} | noisy_0 .. noisy_{F-1} ]      (2F frames, temporal RoPE positions 0..F-1 twice)

- ctx_i = the clean frame i at context noise σc ~ U[0, context_sigma_max] (GameNGen's noise
  augmentation), timestep σc·1000: attends to ctx_0..ctx_i — exactly a commit pass.
- noisy_i = frame i at its own σ_i (logit-normal, per frame: diffusion forcing), attends to
  ctx_0..ctx_{i-1} and itself — exactly a denoising step of frame i on the cache.
Only the noisy half is in the loss. The noisy frames never see each other, so each may sit at its
own σ, and in distillation each is integrated by the teacher independently in one batched pass.

Joint drafts (`draft_prob`): speculative drafting (`schedulers/speculative.py`, "joint") denoises
K frames as ONE block-causal chunk at a shared σ, so draft k sees drafts 0..k−1 mid-denoising —
a context plain teacher forcing never shows (measured: action-following fell from 0.68 to 0.01
over 96 frames with 4 joint drafts). A `draft_prob` share of the clips therefore picks a chunk
start s ∈ [0, F−2]: noisy_i for i ≥ s shares one σ and sees ctx_0..ctx_{s−1} and noisy_s..noisy_i
(`draft_mask`) — exactly a joint draft of frames s..F−1 on a cache of frames < s. The mask then
differs per clip and is dense ([B, 1, 2F·T, 2F·T] booleans), so only the drafted clips take it;
the rest of the batch runs as its own batch on the mask-free path, which is cheaper (timed by
`bench/research/train_step.py`; docs/play.md). Frames before s keep the plain layout.
Training clips must be at most window + 1 frames long for a noisy frame to see no more than
inference's window (the mask has no window).

Few-step distillation (`distill_loss`): shortcut-style trajectory distillation onto the fixed
grid of the few-step sampler (σ_0 = 1 > σ_1 > ... > σ_K = 0, the Euler grid of `sampler.steps`).
A noisy frame sits at a grid point σ_k (a forward-process sample); the frozen teacher integrates
it to σ_{k+1} with `substeps` Euler steps; the student's single Euler step must land there, i.e.
it regresses the average velocity v* = (x_teacher(σ_{k+1}) − x(σ_k)) / (σ_{k+1} − σ_k). This is
the self-consistency target of shortcut models (Frans et al. 2024: one step of size 2d equals two
of size d) with the small steps taken by the teacher. Chosen over sCM (NFD+) because its targets
are plain regressions — no JVP through attention, no EMA target network, no tangent
normalisation — which train reliably in minutes at this scale, and because the grid is fixed
(4 steps) no step-size input is needed: the model is unchanged.

Shape legend: B clips, C channels, F frames per clip, H/W frame size, T tokens per frame.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from framecast.models.attention import TeacherForcing
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning


def teacher_forcing_mask(frames: int, frame_tokens: int, device=None) -> torch.Tensor:
    """Boolean self-attention mask [2F·T, 2F·T] (True = may attend) of the layout above: the
    dense reference of `attention.TeacherForcing`, which the model uses (no N×N mask)."""
    i = torch.arange(frames, device=device)
    clean_sees_clean = i[:, None] >= i[None, :]          # ctx_i -> ctx_j, j <= i
    noisy_sees_clean = i[:, None] > i[None, :]           # noisy_i -> ctx_j, j < i
    noisy_sees_noisy = torch.eye(frames, dtype=torch.bool, device=device)
    none = torch.zeros(frames, frames, dtype=torch.bool, device=device)
    frame_mask = torch.cat([torch.cat([clean_sees_clean, none], 1),
                            torch.cat([noisy_sees_clean, noisy_sees_noisy], 1)], 0)  # (2F, 2F)
    return frame_mask.repeat_interleave(frame_tokens, 0).repeat_interleave(frame_tokens, 1)


def draft_mask(frames: int, frame_tokens: int, starts_B: torch.Tensor) -> torch.Tensor:
    """Boolean self-attention masks [B, 1, 2F·T, 2F·T] (True = may attend) of the teacher-forcing
    layout in which clip b's noisy frames from starts_B[b] on are one joint draft: noisy_i, i ≥ s,
    sees ctx_j for j < s and noisy_j for s ≤ j ≤ i. starts_B[b] = F is plain teacher forcing."""
    device = starts_B.device
    i = torch.arange(frames, device=device)
    q, k, s = i[None, :, None], i[None, None, :], starts_B[:, None, None]      # (1, F, 1), (1, 1, F), (B, 1, 1)
    b = starts_B.shape[0]
    clean_sees_clean = (q >= k).expand(b, -1, -1)                            # ctx_i -> ctx_j, j <= i
    noisy_sees_clean = k < torch.minimum(q, s)                                # j < i, and j < s in a draft
    noisy_sees_noisy = (k == q) | ((q >= s) & (k >= s) & (k <= q))            # itself; earlier drafts
    none = torch.zeros(b, frames, frames, dtype=torch.bool, device=device)
    frame_mask = torch.cat([torch.cat([clean_sees_clean, none], 2),
                            torch.cat([noisy_sees_clean, noisy_sees_noisy], 2)], 1)  # (B, 2F, 2F)
    dense = frame_mask.repeat_interleave(frame_tokens, 1).repeat_interleave(frame_tokens, 2)
    return dense[:, None]


def draft_starts(gen: torch.Generator, b: int, f: int, draft_prob: float) -> torch.Tensor:
    """Per clip, where its joint draft starts: s ∈ [0, F−2] for a `draft_prob` share of the clips
    (a chunk of >= 2 frames), F (none) for the rest."""
    chunk_B = torch.rand(b, generator=gen) < draft_prob
    s_B = torch.randint(0, max(1, f - 1), (b,), generator=gen)
    return torch.where(chunk_B & (f > 1), s_B, torch.full((b,), f))


def share_in_draft(values_BF: torch.Tensor, starts_B: torch.Tensor) -> torch.Tensor:
    """values_BF with every frame of a clip's draft (i ≥ s) set to the value of frame s: the
    drafted frames are denoised together, one noise level for all."""
    f = values_BF.shape[1]
    i = torch.arange(f, device=values_BF.device)[None]
    s = starts_B.to(values_BF.device)[:, None]
    first = values_BF.gather(1, s.clamp(max=f - 1))
    return torch.where(i >= s, first.expand(-1, f), values_BF)


def predict_on_context(nets: nn.ModuleDict, ctx_BCFHW: torch.Tensor, sigma_ctx_BF: torch.Tensor,
                       x_BCFHW: torch.Tensor, sigma_BF: torch.Tensor, tokens_BS: torch.Tensor,
                       actions_BF: torch.Tensor, starts_B: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Velocity [B, C, F, H, W] of the noisy frames x, frame i on context frames ctx_0..ctx_{i-1}
    (already noised to sigma_ctx), as NFD's cached rollout computes it; with `starts_B`, clip b's
    frames from starts_B[b] on as one joint draft (`draft_mask`). Only the drafted clips take the
    dense mask: the plain ones run as their own batch on the mask-free teacher-forcing path."""
    f = x_BCFHW.shape[2]
    starts_B = None if starts_B is None else starts_B.to(x_BCFHW.device)
    drafted_B = None if starts_B is None else starts_B < f
    if drafted_B is not None and bool(drafted_B.any()) and not bool(drafted_B.all()):
        parts = (ctx_BCFHW, sigma_ctx_BF, x_BCFHW, sigma_BF, tokens_BS, actions_BF)
        plain = predict_on_context(nets, *(t[~drafted_B] for t in parts))
        drafted = predict_on_context(nets, *(t[drafted_B] for t in parts), starts_B=starts_B[drafted_B])
        out = plain.new_empty((x_BCFHW.shape[0], *plain.shape[1:]))
        out[~drafted_B], out[drafted_B] = plain, drafted
        return out
    model = nets["transformer"]
    text_BSD = nets["text_encoder"](tokens_BS)
    both = torch.cat([ctx_BCFHW, x_BCFHW], dim=2)
    t_BF = torch.cat([sigma_ctx_BF, sigma_BF], dim=1) * 1000
    cond = Conditioning(text_BSD, torch.cat([actions_BF, actions_BF], dim=1))

    def prepare(ctx):
        _, h, w = ctx.grid
        frames = torch.arange(f, device=both.device).repeat(2)  # ctx_i and noisy_i both at position i
        ctx = model.place(ctx, frames, frames)
        if starts_B is None or bool((starts_B >= f).all()):
            ctx.mask = TeacherForcing(frame_tokens=h * w)  # no dense mask
        else:
            ctx.mask = draft_mask(f, h * w, starts_B.to(both.device))
        return ctx

    return run_model(model, both, t_BF, cond, prepare=prepare)[:, :, f:]


def noised_context(x0_BCFHW: torch.Tensor, gen: torch.Generator, sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(context frames at σc ~ U[0, sigma_max] per frame, σc [B, F]); randomness from `gen` (CPU)."""
    b, _, f = x0_BCFHW.shape[:3]
    sigma_BF = torch.rand(b, f, generator=gen) * sigma_max
    noise = torch.randn(x0_BCFHW.shape, generator=gen)
    s = sigma_BF[:, None, :, None, None].to(x0_BCFHW.device)
    return (1 - s) * x0_BCFHW + s * noise.to(x0_BCFHW.device), sigma_BF.to(x0_BCFHW.device)


def foreground_weights(x0_BCFHW: torch.Tensor, weight: float, reach: int = 3) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, F, H, W]: 1 + weight where the PREVIOUS frame has an object
    within `reach` px (frame 0: 1 everywhere). The world is ~93% black background, which
    dominates a plain MSE while the player (1.6% of the pixels) and the shapes are what moves; the
    weights depend only on the context the model sees, so the regression's minimiser — the
    conditional mean, per pixel — is unchanged. weight 0 gives the plain MSE."""
    b, _, f, h, w = x0_BCFHW.shape
    lit = (x0_BCFHW > -0.5).any(dim=1, keepdim=True).float()                     # (B, 1, F, H, W)
    near = F.max_pool3d(lit, (1, 2 * reach + 1, 2 * reach + 1), stride=1, padding=(0, reach, reach))
    prev = torch.cat([torch.zeros_like(near[:, :, :1]), near[:, :, :-1]], dim=2)
    return 1 + weight * prev


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, w_B1FHW: torch.Tensor) -> torch.Tensor:
    return ((pred.float() - target.float()) ** 2 * w_B1FHW).mean() / w_B1FHW.mean()


def play_loss(nets: nn.ModuleDict, x0_BCFHW: torch.Tensor, actions_BF: torch.Tensor, tokens_BS: torch.Tensor,
              sigma_BF: torch.Tensor, gen: torch.Generator, context_sigma_max: float,
              fg_weight: float = 0.0, draft_prob: float = 0.0) -> torch.Tensor:
    """Flow-matching loss of the noisy half (frame i at sigma_BF[:, i] on its clean past; a
    `draft_prob` share of the clips with a joint draft at one σ)."""
    ctx, sigma_ctx = noised_context(x0_BCFHW, gen, context_sigma_max)
    noise = torch.randn(x0_BCFHW.shape, generator=gen).to(x0_BCFHW.device)
    starts_B = None
    if draft_prob > 0:  # draws only when used: runs without it keep their random stream
        starts_B = draft_starts(gen, x0_BCFHW.shape[0], x0_BCFHW.shape[2], draft_prob)
        sigma_BF = share_in_draft(sigma_BF, starts_B)
    s = sigma_BF[:, None, :, None, None]
    x_t = (1 - s) * x0_BCFHW + s * noise
    v = predict_on_context(nets, ctx, sigma_ctx, x_t, sigma_BF, tokens_BS, actions_BF, starts_B)
    return _weighted_mse(v, noise - x0_BCFHW, foreground_weights(x0_BCFHW, fg_weight))


def distill_loss(student: nn.ModuleDict, teacher: nn.ModuleDict, x0_BCFHW: torch.Tensor, actions_BF: torch.Tensor,
                 tokens_BS: torch.Tensor, grid: torch.Tensor, gen: torch.Generator, context_sigma_max: float,
                 substeps: int, fg_weight: float = 0.0, draft_prob: float = 0.0) -> torch.Tensor:
    """Shortcut-style distillation onto `grid` (sigmas [K + 1], 1 -> 0): each noisy frame at a
    random grid point σ_k; target = the teacher's `substeps` Euler steps to σ_{k+1} (a joint
    draft's frames share σ_k and are integrated together, as speculation denoises them)."""
    b, _, f = x0_BCFHW.shape[:3]
    dev = x0_BCFHW.device
    k_BF = torch.randint(0, len(grid) - 1, (b, f), generator=gen)
    starts_B = None
    if draft_prob > 0:
        starts_B = draft_starts(gen, b, f, draft_prob)
        k_BF = share_in_draft(k_BF, starts_B)
    s0_BF, s1_BF = grid[k_BF].to(dev), grid[k_BF + 1].to(dev)
    ctx, sigma_ctx = noised_context(x0_BCFHW, gen, context_sigma_max)
    noise = torch.randn(x0_BCFHW.shape, generator=gen).to(dev)
    x_t = (1 - s0_BF[:, None, :, None, None]) * x0_BCFHW + s0_BF[:, None, :, None, None] * noise
    with torch.no_grad():
        x, s = x_t, s0_BF
        ds_BF = (s1_BF - s0_BF) / substeps
        for _ in range(substeps):
            v = predict_on_context(teacher, ctx, sigma_ctx, x, s, tokens_BS, actions_BF, starts_B).float()
            x = x + ds_BF[:, None, :, None, None] * v
            s = s + ds_BF
        target = (x - x_t) / (s1_BF - s0_BF)[:, None, :, None, None]
    v = predict_on_context(student, ctx, sigma_ctx, x_t, s0_BF, tokens_BS, actions_BF, starts_B)
    return _weighted_mse(v, target, foreground_weights(x0_BCFHW, fg_weight))

