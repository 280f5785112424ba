"""Small building blocks shared by the video DiTs: fp32 LayerNorm, the sinusoidal timestep
embedding, Wan's 3-axis RoPE and the GELU feed-forward.

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim, K = H // 2 rotation
pairs, D width, P positions along one axis.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input and parameter dtypes, returned in the input
    dtype. Wan keeps its norms in fp32 because bf16 variance over thousands of channels drifts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of 1-D timesteps `t` [N] -> [N, dim] fp32, **cos first, then sin**, with
    freqs exp(-ln(max_period) * k / (dim/2)), k = 0..dim/2-1 (diffusers `Timesteps(flip_sin_to_cos=True,
    downscale_freq_shift=0)`, computed in fp32 in the same order so the numbers are identical)."""
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding wants 1-D timesteps, got shape {tuple(t.shape)}")
    if dim % 2:
        raise ValueError(f"timestep_embedding dim must be even, got {dim}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args_NK = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args_NK), torch.sin(args_NK)], dim=-1)


# ---- Wan 3-axis RoPE ---------------------------------------------------------------------------

class MLP(nn.Module):
    """linear_1 -> activation -> linear_2 (diffusers' TimestepEmbedding / PixArtAlphaTextProjection keys)."""

    def __init__(self, dim_in: int, dim: int, act: nn.Module):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = nn.Linear(dim_in, dim), act, nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LoRA(nn.Module):
    """A rank-r low-rank update of a (dim_out, dim_in) projection: x -> up(down(x)), or merged into the
    weight as `delta()` = up·down. `up` starts at zero, so the adapted projection starts as the frozen
    one (AV-DiT's audio LoRA adds it as a path, the camera LoRA merges it: models/avdit.py, camera.py)."""

    def __init__(self, dim_in: int, dim_out: int, rank: int):
        super().__init__()
        self.down, self.up = nn.Linear(dim_in, rank, bias=False), nn.Linear(rank, dim_out, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / math.sqrt(dim_in))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def delta(self) -> torch.Tensor:
        """The weight update [dim_out, dim_in]: linear(x, W + delta) = linear(x, W) + self(x)."""
        return self.up.weight @ self.down.weight


def cast_keeping_fp32(model: nn.Module, dtype: torch.dtype, keep_fp32: tuple[str, ...]) -> nn.Module:
    """Move `model`'s floating-point parameters to `dtype`, keeping those whose dotted name has a
    part in `keep_fp32` in fp32 (diffusers' `_keep_in_fp32_modules` under from_pretrained(torch_dtype=...)).
    Returns the model."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point():
                keep = any(part in keep_fp32 for part in name.split("."))
                p.data = p.data.to(torch.float32 if keep else dtype)
    return model


def frame_timesteps(t, batch: int, frames: int, device) -> torch.Tensor:
    """A model's timestep argument as [B] (shared by all frames) or [B, F] (per latent frame, F after
    temporal patching); a scalar is shared by the batch. Any other shape is a one-line error."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if (t.ndim == 1 and t.shape[0] == batch) or (t.ndim == 2 and tuple(t.shape) == (batch, frames)):
        return t
    raise ValueError(f"timestep shape {tuple(t.shape)}: expected [B]=[{batch}] or per (patched) latent "
                     f"frame [B, F]=[{batch}, {frames}]")


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (t, h, w): h = w = 2 * (head_dim // 6), t takes the rest (128 -> 44/42/42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Rotation angles [P, dim/2] in float64: position * theta^(-2j/dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
    return torch.outer(positions.to(torch.float64), inv_freq)


def rope_table(frame_positions: torch.Tensor, h: int, w: int, head_dim: int, theta: float = 10000.0,
               device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos_LK, sin_LK), each [L, head_dim // 2] fp32, for the tokens of the grid
    frame_positions x range(h) x range(w) in t-major, then h, then w order (L = len(frames) * h * w).

    `frame_positions` is a 1-D tensor of (not necessarily contiguous or zero-based) frame indices, so
    a window or a KV cache can place its keys anywhere on the time axis. Angles are computed in
    float64 and rounded to fp32 once, as diffusers does for its precomputed table: for integer
    positions the values are bit-identical to it. Column j rotates channels (2j, 2j + 1) (interleaved
    pairs); the columns are [t | h | w].
    """
    if frame_positions.ndim != 1:
        raise ValueError(f"rope_table: frame_positions must be 1-D, got shape {tuple(frame_positions.shape)}")
    device = frame_positions.device if device is None else torch.device(device)
    t_dim, h_dim, w_dim = rope_axis_dims(head_dim)
    f = frame_positions.shape[0]
    ang_t = _axis_angles(frame_positions.to(device), t_dim, theta)           # (f, t_dim/2)
    ang_h = _axis_angles(torch.arange(h, device=device), h_dim, theta)      # (h, h_dim/2)
    ang_w = _axis_angles(torch.arange(w, device=device), w_dim, theta)      # (w, w_dim/2)
    tables = []
    for fn in (torch.cos, torch.sin):
        # per-axis cos/sin first (cheap), then broadcast over the grid
        grid = torch.cat([
            fn(ang_t).float()[:, None, None].expand(f, h, w, -1),
            fn(ang_h).float()[None, :, None].expand(f, h, w, -1),
            fn(ang_w).float()[None, None, :].expand(f, h, w, -1),
        ], dim=-1)
        tables.append(grid.reshape(f * h * w, head_dim // 2))
    return tables[0], tables[1]


def apply_rope(x_BLNH: torch.Tensor, cos_LK: torch.Tensor, sin_LK: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2j, 2j + 1) of every head by the table's angles.
    Computed in fp32 (the tables are fp32), returned in x's dtype."""
    if cos_LK.shape[0] != x_BLNH.shape[1] or 2 * cos_LK.shape[1] != x_BLNH.shape[-1]:
        raise ValueError(f"apply_rope: table of shape {tuple(cos_LK.shape)} does not fit tokens x head_dim "
                         f"= {x_BLNH.shape[1]} x {x_BLNH.shape[-1]} (build it with rope_table for these tokens)")
    # As complex numbers (x1 + i·x2)·(cos + i·sin): the same products and sums as the real form
    # (x1·cos − x2·sin, x1·sin + x2·cos), bit for bit on CPU here, in one op instead of a stack of
    # four — several times faster at the token counts we run, and RoPE runs on the whole key window every NFD pass.
    x_BLNK = torch.view_as_complex(x_BLNH.float().unflatten(-1, (-1, 2)))
    rot_1L1K = torch.complex(cos_LK.float(), sin_LK.float())[None, :, None]
    return torch.view_as_real(x_BLNK * rot_1L1K).flatten(-2).to(x_BLNH.dtype)


# ---- feed-forward -------------------------------------------------------------------------------

class GELUProj(nn.Module):
    """Linear followed by tanh-approximate GELU (key `proj`)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """Linear -> GELU(tanh) -> Linear; keys `net.0.proj`, `net.2` (`net.1` is a parameter-free
    Dropout kept so the indices match diffusers' checkpoints)."""

    def __init__(self, dim: int, inner_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x
