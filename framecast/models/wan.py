"""Wan2.1 text-to-video DiT (the framecast reference model), numerically equal to diffusers'
`WanTransformer3DModel` and loadable from its state dict (same module tree and keys).

    embed(lat_BCFHW, t, cond) -> (x_BLD, ctx);  x = block(x, ctx) for block in blocks;
    head(x_BLD, ctx) -> out_BCFHW;  place(ctx, query_frames, key_frames) -> ctx

The loop itself is `framecast.models.blocks.run_model` (the one block loop); `forward` calls it.

Timesteps may be per latent frame (`t_BF`), so frames at different noise levels share one pass;
the per-frame modulation is broadcast over each frame's tokens, never materialised per token.
Caches, windows and parallelism come from outside through `ctx` (`kv_hook`, `mask`, and key
positions set by `place`); so do VIN's global interface tokens (`ctx.interface`, models/vin.py),
which the layers it names attend to as extra keys and values, without rotary positions.
Spec: shared/methods/model-zoo.md §1.

Shape legend: B batch, C latent channels, F latent frames (F' after temporal patching),
H/W latent height/width, L video tokens (F'·H'·W'), S key/text tokens, N heads, Hd head dim,
D width (N·Hd), K rotation pairs (Hd/2), A actions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from framecast.models.attention import AttentionCall, AttentionRuntime, Mask, attention
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.layers import (MLP, FeedForward, FP32LayerNorm, apply_rope, cast_keeping_fp32, frame_timesteps,
                                     timestep_embedding)
from framecast.models.layers import rope_table as build_rope_table

# Parameters whose dotted name contains one of these parts stay fp32 under `cast` (diffusers'
# `_keep_in_fp32_modules`; `rope` has no parameters here, its tables are always fp32).
KEEP_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")


@dataclass
class WanContext:
    """Everything a block or the head needs besides the hidden states."""

    temb_BFD: torch.Tensor            # time (+ action) embedding per latent frame, for the head
    mod_BF6D: torch.Tensor            # timestep_proj per frame: 6 modulation vectors of each block
    text_BSD: torch.Tensor            # text tokens after text_embedder (cross-attention K/V source)
    grid: tuple[int, int, int]        # (F', H', W') token grid of x
    rope_q: tuple[torch.Tensor, torch.Tensor]  # (cos_LK, sin_LK) fp32 for the queries
    rope_k: tuple[torch.Tensor, torch.Tensor]  # (cos_SK, sin_SK) for the keys (after kv_hook); see place
    kv_hook: Any = None               # object with .extend(layer_id, k_BSNH, v_BSNH) -> (k, v)
    mask: Mask = None                 # self-attention mask: None (full) or BlockCausal
    attention: Optional[AttentionRuntime] = None  # backend, options, per-request state (None: sdpa)
    step: Optional[int] = None        # sampler step index, for the attention backend's metadata
    block: int = 0                    # frame block of this pass, for backend state and feature caches
    interface: Any = None             # VIN interface tokens (models/vin.py InterfaceTokens): extra K/V, or None
    camera: bool = False              # pass carries camera rays (CameraModel.embed, models/camera.py): LoRA acts


class WanConditionEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int, text_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = MLP(freq_dim, dim, nn.SiLU())
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = MLP(text_dim, dim, nn.GELU(approximate="tanh"))

    def temb(self, t_N: torch.Tensor) -> torch.Tensor:
        """[N] timesteps -> [N, D] in the dtype of time_proj (the model dtype)."""
        sinusoid = timestep_embedding(t_N, self.freq_dim).to(self.time_embedder.linear_1.weight.dtype)
        return self.time_embedder(sinusoid).to(self.time_proj.weight.dtype)

    def modulation(self, temb: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., 6, D]"""
        return self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))


class WanAttention(nn.Module):
    """Projections of one attention layer; q/k RMSNorm over the full width (across heads), as Wan."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)
        self.norm_k = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)

    def qkv(self, x_BLD: torch.Tensor, src_BSD: torch.Tensor):
        """-> q_BLNH, k_BSNH, v_BSNH (norm before the head split)."""
        # plain unflatten/flatten, not einops: these run four times per attention layer, where einops'
        # per-call parsing shows in a tiny model's forward (the once-per-pass patterns use einops)
        q_BLNH = self.norm_q(self.to_q(x_BLD)).unflatten(2, (self.heads, -1))
        return (q_BLNH, *self.kv(src_BSD))

    def kv(self, src_BSD: torch.Tensor):
        """-> k_BSNH, v_BSNH of `src` (keys normed before the head split)."""
        k_BSNH = self.norm_k(self.to_k(src_BSD)).unflatten(2, (self.heads, -1))
        v_BSNH = self.to_v(src_BSD).unflatten(2, (self.heads, -1))
        return k_BSNH, v_BSNH

    def out(self, o_BLNH: torch.Tensor) -> torch.Tensor:
        return self.to_out[0](o_BLNH.flatten(2))


class WanBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, heads: int, cross_attn_norm: bool, eps: float, layer_id: int):
        super().__init__()
        self.layer_id = layer_id  # key of this layer's K/V for a kv_hook
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads, eps)
        self.attn2 = WanAttention(dim, heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, ffn_dim)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def self_attention(self, x_BLD: torch.Tensor, ctx: WanContext,
                       z_BSD: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z_BSD: VIN interface tokens (already modulated), appended as keys and values only."""
        q_BLNH, k_BSNH, v_BSNH = self.attn1.qkv(x_BLD, x_BLD)
        if ctx.kv_hook is not None:
            # before RoPE: cached keys stay un-rotated and take positions from ctx.rope_k
            k_BSNH, v_BSNH = ctx.kv_hook.extend(self.layer_id, k_BSNH, v_BSNH)
        q_BLNH = apply_rope(q_BLNH, *ctx.rope_q)
        k_BSNH = apply_rope(k_BSNH, *ctx.rope_k)
        if z_BSD is not None:  # global tokens have no place in the video: no rotation (docs/vin.md)
            kz_BSNH, vz_BSNH = self.attn1.kv(z_BSD)
            k_BSNH, v_BSNH = torch.cat([k_BSNH, kz_BSNH], dim=1), torch.cat([v_BSNH, vz_BSNH], dim=1)
        o_BLNH = attention(q_BLNH, k_BSNH, v_BSNH, mask=ctx.mask, **self._call(ctx, "self"))
        return self.attn1.out(o_BLNH)

    def cross_attention(self, x_BLD: torch.Tensor, ctx: WanContext) -> torch.Tensor:
        q_BLNH, k_BSNH, v_BSNH = self.attn2.qkv(x_BLD, ctx.text_BSD)
        return self.attn2.out(attention(q_BLNH, k_BSNH, v_BSNH, **self._call(ctx, "cross")))

    def _call(self, ctx: WanContext, kind: str) -> dict:
        """The backend name and per-call metadata of one attention call."""
        rt = ctx.attention
        meta = AttentionCall(grid=ctx.grid, layer=self.layer_id, step=ctx.step, kind=kind, block=ctx.block,
                             runtime=rt)
        return {"backend": "sdpa" if rt is None else rt.backend, "meta": meta}

    def forward(self, x_BLD: torch.Tensor, ctx: WanContext) -> torch.Tensor:
        dtype, f = x_BLD.dtype, ctx.mod_BF6D.shape[1]
        # Modulation math in fp32 (as diffusers). (B, F, 6, 1, D) -> six (B, F, 1, D): broadcast over
        # each frame's tokens by viewing tokens as (B, F, H'W', D).
        mod = (self.scale_shift_table + ctx.mod_BF6D.float()).unsqueeze(3)
        shift, scale, gate, c_shift, c_scale, c_gate = mod.unbind(2)

        def frames(y_BLD):  # (B, L, D) -> (B, F, H'W', D)
            return y_BLD.unflatten(1, (f, -1))

        x_n = (frames(self.norm1(x_BLD.float())) * (1 + scale) + shift).flatten(1, 2).to(dtype)
        z_BSD = None if ctx.interface is None else ctx.interface.tokens(self.layer_id)
        if z_BSD is not None:  # VIN tokens: the norm and modulation of the pass's first frame (one level per chunk)
            z_BSD = (self.norm1(z_BSD.float()) * (1 + scale[:, 0]) + shift[:, 0]).to(dtype)
        a_BLD = self.self_attention(x_n, ctx, z_BSD)
        x_BLD = (frames(x_BLD.float()) + frames(a_BLD) * gate).flatten(1, 2).to(dtype)

        x_BLD = x_BLD + self.cross_attention(self.norm2(x_BLD.float()).to(dtype), ctx)

        x_n = (frames(self.norm3(x_BLD.float())) * (1 + c_scale) + c_shift).flatten(1, 2).to(dtype)
        ff_BLD = self.ffn(x_n)
        return (frames(x_BLD.float()) + frames(ff_BLD.float()) * c_gate).flatten(1, 2).to(dtype)


class WanModel(nn.Module):
    _keep_in_fp32_modules = list(KEEP_FP32)
    # What the family is and can do: schedules and feature caches read these in their config checks
    # (before any work); `framecast info` lists them (docs/model-zoo.md)
    summary: ClassVar[str] = "Wan2.1 text-to-video DiT, full 3-D attention with RoPE (reference; equal to diffusers)"
    checkpoints: ClassVar[str] = "Wan folders in diffusers or original Wan-AI layout (--checkpoint DIR); world weights"
    tasks: ClassVar[tuple[str, ...]] = ()  # mask-modelled tasks (schedule.name=task); none: text to video only
    supports_masks: ClassVar[bool] = True  # block-causal self-attention masks (schedule.name=nfd)
    reads_interface_tokens: ClassVar[bool] = True  # VIN's global tokens as extra keys/values (schedule.vin.interface)
    adaln_probe: ClassVar[bool] = True  # blocks expose norm1, scale_shift_table, ctx.mod_BF6D (cache.kind=teacache)
    absolute_positions: ClassVar[bool] = False  # rotary positions: a kv_hook's keys are placed by `place`
    produces_audio: ClassVar[bool] = False  # video only; model.kind=avdit makes a soundtrack too
    token_grid_fhw: ClassVar[bool] = True  # embed's tokens are t-major over (F', H', W'): a camera adapter adds to them

    def __init__(self, patch_size=(1, 2, 2), num_attention_heads: int = 40, attention_head_dim: int = 128,
                 in_channels: int = 16, out_channels: Optional[int] = 16, text_dim: int = 4096,
                 freq_dim: int = 256, ffn_dim: int = 13824, num_layers: int = 40, cross_attn_norm: bool = True,
                 qk_norm: Optional[str] = "rms_norm_across_heads", eps: float = 1e-6,
                 image_dim: Optional[int] = None, added_kv_proj_dim: Optional[int] = None,
                 rope_max_seq_len: int = 1024, pos_embed_seq_len: Optional[int] = None,
                 num_actions: int = 0, **extra):
        super().__init__()
        unknown = sorted(k for k in extra if not k.startswith("_"))  # `_class_name` etc. are bookkeeping
        if unknown:
            raise TypeError(f"WanModel got unknown config key(s) {', '.join(map(repr, unknown))}")
        if image_dim is not None or added_kv_proj_dim is not None:
            raise NotImplementedError(f"WanModel: image conditioning (I2V: image_dim={image_dim}, "
                                      f"added_kv_proj_dim={added_kv_proj_dim}) is not implemented; T2V only")
        if qk_norm != "rms_norm_across_heads":
            raise NotImplementedError(f"WanModel: qk_norm={qk_norm!r} not supported; only 'rms_norm_across_heads'")
        if attention_head_dim % 2:
            raise ValueError(f"WanModel: attention_head_dim must be even for RoPE, got {attention_head_dim}")
        out_channels = out_channels or in_channels
        self.config = dict(
            patch_size=tuple(patch_size), num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim, in_channels=in_channels, out_channels=out_channels,
            text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim, num_layers=num_layers,
            cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps, image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim, rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len, num_actions=num_actions)
        self.patch_size = tuple(patch_size)
        self.head_dim = attention_head_dim
        dim = num_attention_heads * attention_head_dim

        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.condition_embedder = WanConditionEmbedder(dim, freq_dim, text_dim)
        if num_actions > 0:
            # adaLN action conditioning (play model); zero-init so a fresh model ignores actions
            self.action_embedder = nn.Embedding(num_actions, dim)
            nn.init.zeros_(self.action_embedder.weight)
        else:
            self.action_embedder = None
        self.blocks = nn.ModuleList(
            WanBlock(dim, ffn_dim, num_attention_heads, cross_attn_norm, eps, layer_id=i)
            for i in range(num_layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(self.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    @staticmethod
    def config_kwargs(m) -> dict:
        """Constructor keys from framecast's ModelConfig `m` (model.* of the config)."""
        return dict(patch_size=tuple(m.patch_size), num_attention_heads=m.num_attention_heads,
                    attention_head_dim=m.attention_head_dim, in_channels=m.in_channels,
                    out_channels=m.out_channels, text_dim=m.text_dim, freq_dim=m.freq_dim, ffn_dim=m.ffn_dim,
                    num_layers=m.num_layers, cross_attn_norm=m.cross_attn_norm, qk_norm="rms_norm_across_heads",
                    eps=m.eps, rope_max_seq_len=m.rope_max_seq_len, num_actions=m.num_actions)

    @classmethod
    def from_model_config(cls, m) -> "WanModel":
        """The model framecast's ModelConfig `m` describes (random init)."""
        return cls(**cls.config_kwargs(m))

    # ---- pieces ------------------------------------------------------------------------------

    def rope_table(self, frame_positions: torch.Tensor, h: int, w: int, device=None):
        """(cos, sin) fp32 tables [len(frame_positions)·h·w, head_dim/2] for tokens at the given
        (latent, patched) frame positions × h × w, t-major (what `place` sets)."""
        return build_rope_table(frame_positions, h, w, self.head_dim, device=device)

    def place(self, ctx: WanContext, query_frames: torch.Tensor, key_frames: torch.Tensor) -> WanContext:
        """Set the temporal positions (patched latent frames, 1-D) of the queries and of ALL keys
        of self-attention, in key order: the pass's own and those a kv_hook adds (caches,
        context windows). Every frame spans the whole H'×W' grid. Returns ctx."""
        _, h, w = ctx.grid
        ctx.rope_q = self.rope_table(query_frames, h, w)
        # one table when queries and keys are the same tokens (teacher forcing): no second build
        ctx.rope_k = ctx.rope_q if key_frames is query_frames else self.rope_table(key_frames, h, w)
        return ctx

    def embed(self, lat_BCFHW: torch.Tensor, t, cond: Conditioning) -> tuple[torch.Tensor, WanContext]:
        """Patchify and build the conditioning. t: [B] or [B, F'] (sigma·1000); cond.text_BSD: encoder
        states [B, S, text_dim]; cond.actions_BF: [B, F'] action ids (needs num_actions > 0) or None."""
        text_BSD, actions_BF = cond.text_BSD, cond.actions_BF
        b, _, f, h, w = lat_BCFHW.shape
        pt, ph, pw = self.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent (F, H, W)=({f}, {h}, {w}) not divisible by patch_size {self.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        ce = self.condition_embedder
        x = self.patch_embedding(lat_BCFHW.to(self.patch_embedding.weight.dtype))   # (B, D, F', H', W')
        x_BLD = rearrange(x, "b d f h w -> b (f h w) d").contiguous()  # tokens t-major, then h, then w

        t = frame_timesteps(t, b, grid[0], lat_BCFHW.device)
        if actions_BF is not None and self.action_embedder is None:
            raise ValueError("actions given but the model has num_actions=0")
        if t.ndim == 1 and actions_BF is None:
            # one row per sample, then broadcast (a view) over frames: identical numbers to [B]
            temb_BD = ce.temb(t)
            temb_BFD = temb_BD[:, None].expand(-1, grid[0], -1)
            mod_BF6D = ce.modulation(temb_BD)[:, None].expand(-1, grid[0], -1, -1)
        else:
            t_BF = t if t.ndim == 2 else t[:, None].expand(-1, grid[0])
            temb_BFD = ce.temb(t_BF.reshape(-1)).unflatten(0, (b, grid[0]))
            if actions_BF is not None:
                if tuple(actions_BF.shape) != (b, grid[0]):
                    raise ValueError(f"actions shape {tuple(actions_BF.shape)}: expected [B, F']=[{b}, {grid[0]}]")
                temb_BFD = temb_BFD + self.action_embedder(actions_BF.to(temb_BFD.device)).to(temb_BFD.dtype)
            mod_BF6D = ce.modulation(temb_BFD)

        text = ce.text_embedder(text_BSD.to(ce.text_embedder.linear_1.weight.dtype))
        frames = torch.arange(grid[0]) if cond.frame_positions is None else cond.frame_positions
        rope = self.rope_table(frames.to(x_BLD.device), grid[1], grid[2])
        ctx = WanContext(temb_BFD=temb_BFD, mod_BF6D=mod_BF6D, text_BSD=text, grid=grid, rope_q=rope, rope_k=rope)
        return x_BLD, ctx

    def head(self, x_BLD: torch.Tensor, ctx: WanContext) -> torch.Tensor:
        """Final adaLN (from temb, not timestep_proj) + projection + unpatchify -> [B, C, F, H, W]."""
        f = ctx.temb_BFD.shape[1]
        shift, scale = (self.scale_shift_table + ctx.temb_BFD[:, :, None]).unsqueeze(3).unbind(2)  # (B, F, 1, D)
        x_n = self.norm_out(x_BLD.float()).unflatten(1, (f, -1)) * (1 + scale) + shift
        out = self.proj_out(x_n.flatten(1, 2).to(x_BLD.dtype))                 # (B, L, pt·ph·pw·C)
        (gf, gh, gw), (pt, ph, pw) = ctx.grid, self.patch_size
        return rearrange(out, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
                         f=gf, h=gh, w=gw, pt=pt, ph=ph, pw=pw)

    def forward(self, hidden_states: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                actions: Optional[torch.Tensor] = None, return_dict: bool = False) -> torch.Tensor:
        """diffusers-compatible call: latents [B, C, F, H, W], timestep [B] or [B, F'], text
        [B, S, text_dim] -> prediction [B, C_out, F, H, W] (a tensor, not a tuple)."""
        if return_dict:
            raise ValueError("WanModel returns a tensor; return_dict=True is not supported")
        return run_model(self, hidden_states, timestep, Conditioning(encoder_hidden_states, actions))

    def cast(self, dtype: torch.dtype) -> "WanModel":
        """Move to `dtype`, keeping the KEEP_FP32 parameters (time embedder, modulation tables,
        norms) in fp32, as diffusers' from_pretrained(torch_dtype=...) does."""
        return cast_keeping_fp32(self, dtype, KEEP_FP32)
