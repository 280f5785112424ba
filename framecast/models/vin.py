"""VIN: the Video Interface Network of "Generating, Fast and Slow" (Dedhia et al., ICCV 2025;
spec: shared/methods/nfd-vin-streaming.md §3) — a small set of global "interface" tokens that every
chunk of a video reads, recomputed at every denoising step from keyframes of the whole noisy video.

    z_BND = vin(keyframes_BCKHW, t_B, text_BSD)       # the learned module (VinInterface)
    z_BND = pooled_interface(model, keyframes, grid)  # training-free: pooled keyframe tokens
    ctx.interface = InterfaceTokens(z_BND, layers)    # set in run_model's `prepare`; the DiT reads it

- Z_init: N learned tokens (`vin.tokens`: 64 tiny, 512 Wan-sized), input-independent.
- Encoder: one cross-attention from Z_init (+ the timestep's embedding) to the tokens of the
  keyframes (every T_s seconds of the current noisy latents, `schedule.vin.keyframe_seconds`),
  patchified like the DiT's input, with fixed 2-D sinusoidal positions. No temporal position: the
  keyframes form a set, so a module trained on clips of a few keyframes reads 60 of them as well
  (docs/vin.md, "What the tokens carry").
- Processor: `vin.blocks` pre-norm self-attention blocks over [Z, text] (the prompt refines Z).
- Read-back (in the DiT, `WanBlock`): the layers in `vin.layers` attend to Z as extra keys and
  values only, through their own modulation, norm and K/V projections, with no rotary position.
  Z is never a query, so every chunk reads the same Z at a layer (docs/vin.md, "Layers and K/V").

Shape legend: B batch (CFG branches), C latent channels, K keyframes, H/W latent height/width,
N interface tokens, S text tokens / keys, L keyframe tokens, D width (the DiT's), Hd head dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from framecast.models.attention import attention
from framecast.models.layers import timestep_embedding


@dataclass
class VinConfig:
    """vin.*: the learned interface module (its shape) and which DiT layers read the tokens."""
    tokens: int = 512  # N_global: learned interface tokens (paper: 512; the tiny-vin preset: 64)
    heads: int = 12  # attention heads of the encoder and the processor (width: the DiT's)
    blocks: int = 4  # processor: self-attention blocks over [tokens, text] (paper: 4)
    mlp_ratio: int = 4  # processor MLP width / D
    # DiT layers whose self-attention reads the tokens as extra K/V ([] = all). Default [0]: the
    # training-free (pooled) tokens are layer-0 input features; a trained module sets its own (tiny-vin: all)
    layers: List[int] = field(default_factory=lambda: [0])

    MINIMUM: ClassVar[dict] = {"tokens": 1, "heads": 1, "blocks": 0, "mlp_ratio": 1}


@dataclass(frozen=True)
class InterfaceTokens:
    """What a DiT pass reads: `z_BND` at the layers in `layers` (None: every layer)."""
    z_BND: torch.Tensor
    layers: Optional[frozenset] = None

    def tokens(self, layer_id: int) -> Optional[torch.Tensor]:
        return self.z_BND if self.layers is None or layer_id in self.layers else None


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sinusoidal positions [h·w, dim] (rows in the first half of the channels, columns in
    the second), h-major like the DiT's tokens."""
    half = dim // 2
    rows = timestep_embedding(torch.arange(h, device=device, dtype=torch.float32), half)  # (h, half)
    cols = timestep_embedding(torch.arange(w, device=device, dtype=torch.float32), dim - half)
    return torch.cat([rows[:, None].expand(h, w, half), cols[None].expand(h, w, dim - half)], -1).reshape(h * w, dim)


class Attention(nn.Module):
    """Plain multi-head attention (q from x, k/v from src) through the attention registry's sdpa."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"VIN: width {dim} is not divisible by vin.heads={heads}")
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x_BND: torch.Tensor, src_BSD: torch.Tensor) -> torch.Tensor:
        q_BNHd = self.to_q(x_BND).unflatten(2, (self.heads, -1))
        k_BSHd = self.to_k(src_BSD).unflatten(2, (self.heads, -1))
        v_BSHd = self.to_v(src_BSD).unflatten(2, (self.heads, -1))
        return self.to_out(attention(q_BNHd, k_BSHd, v_BSHd).flatten(2))


class ProcessorBlock(nn.Module):
    """Pre-norm self-attention + MLP over [tokens, text]."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        h_BSD = self.norm1(x_BSD)
        x_BSD = x_BSD + self.attn(h_BSD, h_BSD)
        return x_BSD + self.mlp(self.norm2(x_BSD))


class VinInterface(nn.Module):
    """Keyframes of the current noisy latents + timestep + text -> N interface tokens of width D."""

    def __init__(self, dim: int, in_channels: int, patch_size, text_dim: int, freq_dim: int,
                 tokens: int = 512, heads: int = 12, blocks: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.dim, self.freq_dim = dim, freq_dim
        self.patch_size = tuple(patch_size)
        self.z_init = nn.Parameter(torch.randn(tokens, dim) / math.sqrt(dim))   # Z_init (N, D)
        self.patch = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.time_embedder = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_proj = nn.Linear(text_dim, dim)
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.encoder = Attention(dim, heads)
        self.processor = nn.ModuleList(ProcessorBlock(dim, heads, mlp_ratio) for _ in range(blocks))

    @classmethod
    def for_model(cls, model_cfg, vin_cfg: VinConfig) -> "VinInterface":
        """The module for a DiT of `model_cfg` (config.ModelConfig) with the shape `vin_cfg`."""
        m = model_cfg
        return cls(m.num_attention_heads * m.attention_head_dim, m.in_channels, m.patch_size, m.text_dim,
                   m.freq_dim, vin_cfg.tokens, vin_cfg.heads, vin_cfg.blocks, vin_cfg.mlp_ratio)

    def keyframe_tokens(self, keyframes_BCKHW: torch.Tensor) -> torch.Tensor:
        """Patchified keyframes with 2-D positions -> [B, K·H'·W', D]."""
        x = self.patch(keyframes_BCKHW.to(self.patch.weight.dtype))                  # (B, D, K', H', W')
        _, _, k, h, w = x.shape
        x_BKPD = x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], k, h * w, self.dim)
        return (x_BKPD + sincos_2d(h, w, self.dim, x.device).to(x.dtype)).flatten(1, 2)

    def forward(self, keyframes_BCKHW: torch.Tensor, t_B: torch.Tensor, text_BSD: torch.Tensor) -> torch.Tensor:
        """keyframes [B or 1, C, K, H, W] (the current noisy latents at the keyframes), timesteps [B]
        (sigma·1000), text encoder states [B, S, text_dim] -> interface tokens [B, N, D]."""
        b = text_BSD.shape[0]
        kf_BLD = self.keyframe_tokens(keyframes_BCKHW).expand(b, -1, -1)
        temb_BD = self.time_embedder(timestep_embedding(t_B.reshape(-1).expand(b), self.freq_dim)
                                     .to(self.z_init.dtype))
        z_BND = self.z_init[None] + temb_BD[:, None]
        z_BND = z_BND + self.encoder(self.norm_q(z_BND), self.norm_kv(kf_BLD))       # Z_t = MHA(Z_init, X^{Ts})
        n = z_BND.shape[1]
        x_BSD = torch.cat([z_BND, self.text_proj(text_BSD.to(z_BND.dtype))], dim=1)
        for block in self.processor:
            x_BSD = block(x_BSD)
        return x_BSD[:, :n]


def pooled_interface(model: nn.Module, keyframes_1CKHW: torch.Tensor, grid: int) -> torch.Tensor:
    """Training-free interface for a DiT without a VIN module: the DiT's own patch embedding of the
    keyframes, average-pooled to `grid` x `grid` tokens per keyframe -> [1, K·grid², D]. An
    approximation: these are layer-0 input features, not tokens trained to be read (docs/vin.md)."""
    x = model.patch_embedding(keyframes_1CKHW.to(model.patch_embedding.weight.dtype))  # (1, D, K, H', W')
    k = x.shape[2]
    pooled = F.adaptive_avg_pool3d(x, (k, min(grid, x.shape[3]), min(grid, x.shape[4])))
    return pooled.flatten(2).transpose(1, 2)                                          # (1, K·g·g, D)
