"""Latte text-to-video DiT (Ma et al. 2024, "Latte: Latent Diffusion Transformer for Video
Generation", variant 1: interleaved spatial and temporal blocks), numerically equal to diffusers'
`LatteTransformer3DModel` and loadable from its state dict (same module tree and keys).

    embed(lat_BCFHW, t, cond) -> (x_BLD, ctx);  x = block(x, ctx) for block in blocks;
    head(x_BLD, ctx) -> out_BCFHW;  place(ctx, query_frames, key_frames) -> ctx

One framecast block is one *pair*: spatial block i (self-attention within each frame, then
cross-attention to the text) followed by temporal block i (self-attention across the frames at each
spatial position). The parameters live where diffusers keeps them — `transformer_blocks.i.*` and
`temporal_transformer_blocks.i.*` — and `blocks[i]` is a parameter-free `LattePair` that calls
those two modules, so the state dict holds each tensor once under its diffusers key.

Between blocks the hidden states are framecast's token layout `x_BLD`, L = F·H'·W' tokens in
t-major order; a pair views them per frame ((B·F), H'W', D) for the spatial block and per spatial
position ((B·H'W'), F, D) for the temporal one, as diffusers does.

Timesteps may be per latent frame (`t_BF`): every token takes its own frame's adaLN-single
modulation, in both the spatial and the temporal block (equal to diffusers when all frames share t).
Temporal positions are a fixed 1-D sin-cos embedding added to the hidden states before the first
temporal block; `place` sets which positions the pass's frames have (default 0..F-1, none when F = 1,
as diffusers). A `ctx.kv_hook` extends the *temporal* self-attention keys/values (context frames kept
by another pass, DualParal): K/V are handed to the hook in Wan's token-major layout [B, F·H'W', N, Hd]
(t-major), so `framecast.parallel.kv_cache` works unchanged; the frames it appends carry the
positions baked into their hidden states by the pass that produced them (no rotary re-placement:
a DualParal stage therefore embeds every window at its global frames, `Conditioning.frame_positions`).
Spatial self-attention is per frame and needs no cache. Spec: shared/methods/model-zoo.md §2.

Shape legend: B batch, C latent channels, F latent frames, H/W latent height/width, h/w patch
grid (H/p, W/p), L video tokens (F·h·w), S text tokens, N heads, Hd head dim, D width (N·Hd).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from framecast.models.attention import AttentionCall, AttentionRuntime, Mask, attention
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.layers import MLP, frame_timesteps, timestep_embedding

ACTIVATIONS = ("gelu-approximate", "gelu", "geglu")


@dataclass
class LatteConfig:
    """Latte-only keys of `model.latte.*` (the generic ones — heads, head dim, layers = pairs,
    channels, patch [1, p, p], eps, text_dim = caption channels — are ModelConfig's)."""

    sample_size: int = 64  # latent size the 2-D sin-cos positions are scaled to (grid base sample_size/p; Latte-1: 64)
    video_length: int = 16  # latent frames of training; 1-D temporal positions beyond it are extrapolated
    cross_attention_dim: int = 0  # width of the text K/V source of cross-attention; 0 = the model width (N·Hd)
    activation_fn: str = "gelu-approximate"  # feed-forward activation: gelu-approximate | gelu | geglu
    attention_bias: bool = True  # q/k/v projections with bias (Latte-1: True)
    norm_elementwise_affine: bool = False  # affine LayerNorms in the blocks (Latte-1: False)
    norm_type: str = "ada_norm_single"  # block norm; only PixArt's adaLN-single is implemented


@dataclass
class LatteContext:
    """Everything a pair or the head needs besides the hidden states."""

    mod_BF6D: torch.Tensor            # adaLN-single output per frame (diffusers' `timestep` in the blocks)
    temb_BFD: torch.Tensor            # embedded timestep per frame, for the head
    text_BSD: torch.Tensor            # caption_projection output (cross-attention K/V source)
    grid: tuple[int, int, int]        # (F, h, w) token grid of x
    frame_pos: Optional[torch.Tensor] = None  # positions of the pass's frames for temp_pos_embed (None: not added)
    temporal: bool = True             # run the temporal blocks (diffusers' enable_temporal_attentions)
    kv_hook: Any = None               # object with .extend(layer_id, k_BSNH, v_BSNH) -> (k, v): temporal K/V
    mask: Mask = None                 # not supported (no block-causal Latte schedule): must stay None
    attention: Optional[AttentionRuntime] = None  # backend, options, per-request state (None: sdpa)
    step: Optional[int] = None        # sampler step index, for the attention backend's metadata
    block: int = 0                    # frame block of this pass, for backend state and feature caches
    interface: Any = None             # VIN interface tokens: not supported, must stay None


# ---- sin-cos positions (diffusers' get_1d/2d_sincos_pos_embed, same op order) -----------------

def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """[M] positions -> [M, dim] fp32: [sin | cos] of pos · 10000^(-2j/dim), in float64 first."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = torch.outer(pos.reshape(-1).to(torch.float64), omega)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def sincos_2d(h: int, w: int, dim: int, base_size: int, scale: float, device=None) -> torch.Tensor:
    """[h·w, dim] fp32 for the h×w patch grid (row-major): [sincos(x) | sincos(y)], each axis
    stretched to `base_size` positions and divided by the interpolation `scale` (PixArt/Latte)."""
    ys = torch.arange(h, dtype=torch.float32, device=device) / (h / base_size) / scale
    xs = torch.arange(w, dtype=torch.float32, device=device) / (w / base_size) / scale
    y_hw, x_hw = torch.meshgrid(ys, xs, indexing="ij")
    return torch.cat([sincos_1d(x_hw, dim // 2), sincos_1d(y_hw, dim // 2)], dim=1)


# ---- modules with diffusers' keys ----------------------------------------------------------

class TimestepEmbedder(nn.Module):
    """PixArt's combined embedder without size conditions: 256-d cos-first sinusoid -> MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = MLP(256, dim, nn.SiLU())

    def forward(self, t_N: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_embedding(t_N, 256).to(dtype))


class AdaLNSingle(nn.Module):
    """Timestep -> (6·D modulation shared by all blocks, embedded timestep for the head)."""

    def __init__(self, dim: int):
        super().__init__()
        self.emb = TimestepEmbedder(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t_N: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] -> ([N, 6, D], [N, D])"""
        temb = self.emb(t_N, dtype)
        return self.linear(F.silu(temb)).unflatten(-1, (6, -1)), temb


class PatchEmbed(nn.Module):
    """Per-frame p×p patches (Conv2d `proj`) plus the fixed 2-D sin-cos positions."""

    def __init__(self, in_channels: int, dim: int, patch: int, sample_size: int):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.base_size = sample_size // patch
        self.scale = float(max(sample_size // 64, 1))  # diffusers' interpolation_scale

    def forward(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, h·w, D]"""
        y = self.proj(x_NCHW)
        pos = sincos_2d(y.shape[2], y.shape[3], self.dim, self.base_size, self.scale, device=y.device)
        return (y.flatten(2).transpose(1, 2) + pos[None]).to(y.dtype)


class LatteAttention(nn.Module):
    """Projections of one attention layer (no q/k norm, no positions: Latte adds them to x)."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool, kv_dim: Optional[int] = None):
        super().__init__()
        inner, kv_dim = heads * head_dim, kv_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def q(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.to_q(x_BLD).unflatten(-1, (self.heads, -1))

    def kv(self, src_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_k(src_BSD).unflatten(-1, (self.heads, -1)), self.to_v(src_BSD).unflatten(-1, (self.heads, -1))

    def out(self, o_BLNH: torch.Tensor) -> torch.Tensor:
        return self.to_out[0](o_BLNH.flatten(-2))


class ActProj(nn.Module):
    """Linear `proj` then the activation (GEGLU: proj to 2·inner, value · gelu(gate))."""

    def __init__(self, dim: int, inner: int, kind: str):
        super().__init__()
        self.kind = kind
        self.proj = nn.Linear(dim, 2 * inner if kind == "geglu" else inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if self.kind == "geglu":
            y, gate = y.chunk(2, dim=-1)
            return y * F.gelu(gate)
        return F.gelu(y, approximate="tanh" if self.kind == "gelu-approximate" else "none")


class FeedForward(nn.Module):
    """keys net.0.proj, net.2 (net.1 a parameter-free Dropout, kept for the indices); inner = 4·D."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.net = nn.ModuleList([ActProj(dim, 4 * dim, kind), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class LatteBlock(nn.Module):
    """diffusers' BasicTransformerBlock with norm_type="ada_norm_single": modulated self-attention,
    un-normed cross-attention (spatial blocks only), modulated feed-forward (normed by `norm2`)."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_dim: Optional[int], activation: str,
                 bias: bool, affine: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        self.attn1 = LatteAttention(dim, heads, head_dim, bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        self.attn2 = LatteAttention(dim, heads, head_dim, bias, cross_dim) if cross_dim else None
        self.ff = FeedForward(dim, activation)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def run(self, x: torch.Tensor, mod: torch.Tensor, self_attention, cross_attention=None) -> torch.Tensor:
        """x [..., T, D] (T tokens attended over); mod [..., 1 or T, 6, D] broadcast to x;
        self_attention(x_n) and cross_attention(x) return updates shaped like x."""
        shift, scale, gate, c_shift, c_scale, c_gate = (self.scale_shift_table + mod).unbind(-2)
        x = gate * self_attention(self.norm1(x) * (1 + scale) + shift) + x
        if cross_attention is not None:
            x = cross_attention(x) + x
        return c_gate * self.ff(self.norm2(x) * (1 + c_scale) + c_shift) + x


class LattePair(nn.Module):
    """Framecast block i: spatial block i then temporal block i. Holds no parameters: it reaches the
    model's `transformer_blocks` / `temporal_transformer_blocks` through an unregistered reference
    (a tuple, which nn.Module does not register), so every tensor has one (diffusers) key."""

    def __init__(self, index: int, spatial: nn.ModuleList, temporal: nn.ModuleList, dim: int):
        super().__init__()
        self.layer_id, self.dim = index, dim  # layer_id: key of this pair's temporal K/V for a kv_hook
        self._lists = (spatial, temporal)

    def forward(self, x_BLD: torch.Tensor, ctx: LatteContext) -> torch.Tensor:
        if ctx.mask is not None or ctx.interface is not None:
            raise NotImplementedError("Latte: attention masks and VIN interface tokens are not supported")
        spatial, temporal = (lst[self.layer_id] for lst in self._lists)
        x_BLD = self.spatial(spatial, x_BLD, ctx)
        return self.temporal(temporal, x_BLD, ctx) if ctx.temporal else x_BLD

    def _call(self, ctx: LatteContext, kind: str) -> dict:
        # kinds "spatial"/"temporal"/"cross" are not "self": sparse backends, whose patterns assume
        # Wan's full 3-D self-attention over ctx.grid, run dense sdpa here (AttentionRuntime.dense)
        rt = ctx.attention
        meta = AttentionCall(grid=ctx.grid, layer=self.layer_id, step=ctx.step, kind=kind, block=ctx.block,
                             runtime=rt)
        return {"backend": "sdpa" if rt is None else rt.backend, "meta": meta}

    def spatial(self, blk: LatteBlock, x_BLD: torch.Tensor, ctx: LatteContext) -> torch.Tensor:
        b, (f, h, w) = x_BLD.shape[0], ctx.grid

        def self_attention(n_BFTD):  # within each frame: (B·F) sequences of h·w tokens
            n = n_BFTD.flatten(0, 1)
            q_NTH, (k, v) = blk.attn1.q(n), blk.attn1.kv(n)
            return blk.attn1.out(attention(q_NTH, k, v, **self._call(ctx, "spatial"))).unflatten(0, (b, f))

        def cross_attention(x_BFTD):  # every token of a sample attends to the same text: one (B, L) call
            q_BLNH, (k_BSNH, v_BSNH) = blk.attn2.q(x_BFTD.flatten(1, 2)), blk.attn2.kv(ctx.text_BSD)
            o_BLNH = attention(q_BLNH, k_BSNH, v_BSNH, **self._call(ctx, "cross"))
            return blk.attn2.out(o_BLNH).unflatten(1, (f, h * w))

        x_BFTD = x_BLD.unflatten(1, (f, h * w))
        x_BFTD = blk.run(x_BFTD, ctx.mod_BF6D[:, :, None], self_attention,
                         cross_attention if blk.attn2 is not None else None)
        return x_BFTD.flatten(1, 2)

    def temporal(self, blk: LatteBlock, x_BLD: torch.Tensor, ctx: LatteContext) -> torch.Tensor:
        b, (f, h, w) = x_BLD.shape[0], ctx.grid
        x_BPFD = x_BLD.unflatten(1, (f, h * w)).transpose(1, 2)  # (B, h·w, F, D)
        if self.layer_id == 0 and ctx.frame_pos is not None:  # temp_pos_embed, once, before temporal block 0
            x_BPFD = x_BPFD + sincos_1d(ctx.frame_pos, self.dim).to(x_BPFD.device, x_BPFD.dtype)

        def self_attention(n_BPFD):  # across frames: (B·h·w) sequences of F tokens
            n = n_BPFD.flatten(0, 1)
            q, (k, v) = blk.attn1.q(n), blk.attn1.kv(n)
            if ctx.kv_hook is not None:
                k, v = self._extend(ctx, k, v, b)
            return blk.attn1.out(attention(q, k, v, **self._call(ctx, "temporal"))).unflatten(0, (b, h * w))

        x_BPFD = blk.run(x_BPFD, ctx.mod_BF6D[:, None], self_attention)
        return x_BPFD.transpose(1, 2).reshape(b, f * h * w, self.dim)

    def _extend(self, ctx: LatteContext, k_PFNH: torch.Tensor, v_PFNH: torch.Tensor, b: int):
        """The kv_hook sees Wan's token-major layout [B, F·h·w, N, Hd] (t-major), so a DualParal
        ContextKVCache keeps/appends whole frames; back to [(B·h·w), F + extra, N, Hd]."""
        def tokens(y):  # ((B·P), F, N, Hd) -> (B, F·P, N, Hd)
            return y.unflatten(0, (b, -1)).transpose(1, 2).flatten(1, 2)

        def per_position(y, p):  # (B, F'·P, N, Hd) -> ((B·P), F', N, Hd)
            return y.unflatten(1, (-1, p)).transpose(1, 2).flatten(0, 1)

        p = k_PFNH.shape[0] // b
        k_BSNH, v_BSNH = ctx.kv_hook.extend(self.layer_id, tokens(k_PFNH), tokens(v_PFNH))
        return per_position(k_BSNH, p), per_position(v_BSNH, p)


class LatteModel(nn.Module):
    """diffusers' LatteTransformer3DModel: constructor keys are its config keys (defaults: the
    Latte-1 hub config as the spec reads it, unverified)."""

    # What the family is and can do (read by the schedules' and caches' config checks; `framecast info`)
    summary: ClassVar[str] = "Latte T2V: interleaved spatial / temporal DiT blocks (equal to diffusers)"
    checkpoints: ClassVar[str] = "LattePipeline folders in diffusers layout (--checkpoint DIR, e.g. maxin-cn/Latte-1)"
    tasks: ClassVar[tuple[str, ...]] = ()  # text to video only
    supports_masks: ClassVar[bool] = False  # no attention masks: no block-causal schedule (nfd)
    reads_interface_tokens: ClassVar[bool] = False  # VIN's global tokens are read only by Wan's blocks
    adaln_probe: ClassVar[bool] = False  # a block is a spatial+temporal pair: no norm1 / scale_shift_table to probe
    absolute_positions: ClassVar[bool] = True  # 1-D sin-cos added to the hidden states (Conditioning.frame_positions)
    produces_audio: ClassVar[bool] = False  # video only; model.kind=avdit makes a soundtrack too
    token_grid_fhw: ClassVar[bool] = False  # no camera adapter (framecast/models/camera.py) attached here yet

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 72, in_channels: int = 4,
                 out_channels: Optional[int] = 8, num_layers: int = 28, dropout: float = 0.0,
                 cross_attention_dim: Optional[int] = 1152, attention_bias: bool = True, sample_size: int = 64,
                 patch_size: int = 2, activation_fn: str = "gelu-approximate",
                 num_embeds_ada_norm: Optional[int] = None, norm_type: str = "ada_norm_single",
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-6, caption_channels: int = 4096,
                 video_length: int = 16, **extra):
        super().__init__()
        unknown = sorted(k for k in extra if not k.startswith("_"))  # `_class_name` etc. are bookkeeping
        if unknown:
            raise TypeError(f"LatteModel got unknown config key(s) {', '.join(map(repr, unknown))}")
        if norm_type != "ada_norm_single":
            raise NotImplementedError(f"LatteModel: norm_type={norm_type!r} not supported; only 'ada_norm_single'")
        if activation_fn not in ACTIVATIONS:
            raise NotImplementedError(f"LatteModel: activation_fn={activation_fn!r}; supported: {', '.join(ACTIVATIONS)}")
        if dropout:
            raise NotImplementedError(f"LatteModel: dropout={dropout} (inference model: 0.0 only)")
        dim = num_attention_heads * attention_head_dim
        if dim % 4:
            raise ValueError(f"LatteModel: width {dim} must be divisible by 4 (2-D sin-cos positions)")
        out_channels = out_channels or in_channels
        self.config = dict(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, in_channels=in_channels,
            out_channels=out_channels, num_layers=num_layers, dropout=dropout,
            cross_attention_dim=cross_attention_dim, attention_bias=attention_bias, sample_size=sample_size,
            patch_size=patch_size, activation_fn=activation_fn, num_embeds_ada_norm=num_embeds_ada_norm,
            norm_type=norm_type, norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
            caption_channels=caption_channels, video_length=video_length)
        # (t, h, w) as every family reports it (schedules read patch_size[0]); diffusers' config keeps the int
        self.patch_size, self.out_channels, self.dim = (1, patch_size, patch_size), out_channels, dim

        self.pos_embed = PatchEmbed(in_channels, dim, patch_size, sample_size)

        def block(cross_dim):
            return LatteBlock(dim, num_attention_heads, attention_head_dim, cross_dim, activation_fn,
                              attention_bias, norm_elementwise_affine, norm_eps)

        self.transformer_blocks = nn.ModuleList(block(cross_attention_dim) for _ in range(num_layers))
        self.temporal_transformer_blocks = nn.ModuleList(block(None) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaln_single = AdaLNSingle(dim)
        self.caption_projection = MLP(caption_channels, dim, nn.GELU(approximate="tanh"))
        self.action_embedder = None  # no action conditioning (what NFD and play sessions look for)
        self.blocks = nn.ModuleList(LattePair(i, self.transformer_blocks, self.temporal_transformer_blocks, dim)
                                    for i in range(num_layers))

    @classmethod
    def from_model_config(cls, m) -> "LatteModel":
        """From framecast's ModelConfig (`m.latte` holds the Latte-only keys)."""
        pt, ph, pw = m.patch_size
        if pt != 1 or ph != pw:
            raise ValueError(f"model.patch_size={list(m.patch_size)}: Latte patches each frame, use [1, p, p]")
        lc = m.latte
        dim = m.num_attention_heads * m.attention_head_dim
        return cls(num_attention_heads=m.num_attention_heads, attention_head_dim=m.attention_head_dim,
                   in_channels=m.in_channels, out_channels=m.out_channels, num_layers=m.num_layers,
                   cross_attention_dim=lc.cross_attention_dim or dim, attention_bias=lc.attention_bias,
                   sample_size=lc.sample_size, patch_size=ph, activation_fn=lc.activation_fn,
                   norm_type=lc.norm_type, norm_elementwise_affine=lc.norm_elementwise_affine, norm_eps=m.eps,
                   caption_channels=m.text_dim, video_length=lc.video_length)

    def keep_pairs(self, layers: range) -> None:
        """A pipeline stage: pairs outside `layers` become `nn.Identity` — the pair and its spatial
        and temporal blocks (so their weights are neither loaded nor held; indices kept)."""
        for i in range(len(self.blocks)):
            if i not in layers:
                self.blocks[i] = self.transformer_blocks[i] = self.temporal_transformer_blocks[i] = nn.Identity()

    # ---- pieces ------------------------------------------------------------------------------

    def place(self, ctx: LatteContext, query_frames: torch.Tensor, key_frames: torch.Tensor) -> LatteContext:
        """Temporal positions (latent frames, 1-D) of the pass's own frames: the 1-D sin-cos
        embedding added before temporal block 0. `key_frames` is not needed: Latte's attention has no
        positions of its own, and keys a kv_hook adds carry the embedding that was added to their
        hidden states in the pass that computed them. Returns ctx."""
        if query_frames.ndim != 1 or query_frames.shape[0] != ctx.grid[0]:
            raise ValueError(f"place: {tuple(query_frames.shape)} query frame positions for {ctx.grid[0]} frames")
        ctx.frame_pos = query_frames
        return ctx

    def embed(self, lat_BCFHW: torch.Tensor, t, cond: Conditioning) -> tuple[torch.Tensor, LatteContext]:
        """Patchify every frame and build the conditioning. t: [B] or [B, F] (DDPM steps 0..999);
        cond.text_BSD: text encoder states [B, S, caption_channels]."""
        if cond.actions_BF is not None:
            raise ValueError("LatteModel has no action conditioning (actions given)")
        b, _, f, hh, ww = lat_BCFHW.shape
        p = self.patch_size[1]
        if hh % p or ww % p:
            raise ValueError(f"latent (H, W)=({hh}, {ww}) not divisible by patch_size {p}")
        grid = (f, hh // p, ww // p)
        frames = rearrange(lat_BCFHW, "b c f h w -> (b f) c h w").to(self.pos_embed.proj.weight.dtype)
        x_BLD = self.pos_embed(frames).reshape(b, -1, self.dim)       # (B, F·h·w, D), tokens t-major

        t = frame_timesteps(t, b, f, lat_BCFHW.device)
        if t.ndim == 1:  # one row per sample, broadcast (a view) over frames: identical numbers to [B]
            mod_B6D, temb_BD = self.adaln_single(t, x_BLD.dtype)
            mod_BF6D, temb_BFD = mod_B6D[:, None].expand(-1, f, -1, -1), temb_BD[:, None].expand(-1, f, -1)
        else:
            mod_N6D, temb_ND = self.adaln_single(t.reshape(-1), x_BLD.dtype)
            mod_BF6D, temb_BFD = mod_N6D.unflatten(0, (b, f)), temb_ND.unflatten(0, (b, f))
        text_BSD = self.caption_projection(cond.text_BSD.to(self.caption_projection.linear_1.weight.dtype))
        frame_pos = torch.arange(f, device=lat_BCFHW.device) if f > 1 else None
        if cond.frame_positions is not None:  # the pass's frames in the video (a DualParal stage: global)
            frame_pos = cond.frame_positions.to(lat_BCFHW.device)
        return x_BLD, LatteContext(mod_BF6D=mod_BF6D, temb_BFD=temb_BFD, text_BSD=text_BSD, grid=grid,
                                   frame_pos=frame_pos)

    def head(self, x_BLD: torch.Tensor, ctx: LatteContext) -> torch.Tensor:
        """Final adaLN (embedded timestep per frame) + projection + per-frame unpatchify -> [B, C_out, F, H, W]."""
        f, h, w = ctx.grid
        shift, scale = (self.scale_shift_table + ctx.temb_BFD[:, :, None]).unsqueeze(3).unbind(2)  # (B, F, 1, D)
        x = self.norm_out(x_BLD.view(x_BLD.shape[0], f, h * w, self.dim)) * (1 + scale) + shift
        out = self.proj_out(x)                                                   # (B, F, h·w, p·p·C)
        p = self.patch_size[1]
        return rearrange(out, "b f (h w) (p q c) -> b c f (h p) (w q)", h=h, w=w, p=p, q=p)

    def forward(self, hidden_states: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                enable_temporal_attentions: bool = True, return_dict: bool = False) -> torch.Tensor:
        """diffusers-compatible call: latents [B, C, F, H, W], timestep [B] or [B, F], text
        [B, S, caption_channels] -> prediction [B, C_out, F, H, W] (a tensor, not a tuple; C_out
        includes the learned-variance channels)."""
        if return_dict:
            raise ValueError("LatteModel returns a tensor; return_dict=True is not supported")

        def image_mode(ctx: LatteContext) -> LatteContext:
            ctx.temporal = False
            return ctx

        return run_model(self, hidden_states, timestep, Conditioning(encoder_hidden_states),
                         prepare=None if enable_temporal_attentions else image_mode)

    def cast(self, dtype: torch.dtype) -> "LatteModel":
        """Move to `dtype`: diffusers keeps no Latte module in fp32 (positions are computed in fp32
        and rounded to the stream dtype, as diffusers does)."""
        return self.to(dtype)
