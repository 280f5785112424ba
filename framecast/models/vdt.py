"""VDT, the Video Diffusion Transformer (Lu et al., ICLR 2024): a DiT over per-frame patches with
factorised attention — per block an unmodulated temporal attention (TimeSformer-style) across the
frames at each spatial position, then adaLN-Zero spatial attention within each frame, then an
adaLN-Zero MLP. Implemented from the spec, shared/methods/model-zoo.md §3 (spatial-temporal mask
modeling, the tasks and the sampling re-fill: framecast/models/vdt_tasks.py).

    embed(lat_BCFHW, t, cond) -> (x_BLD, ctx);  x = block(x, ctx) for block in blocks;
    head(x_BLD, ctx) -> out_BCFHW;  place(ctx, query_frames, key_frames) -> ctx

The loop is `framecast.models.blocks.run_model`; `forward` calls it.

Positions: fixed 2D sincos over the patch grid (DiT's layout: the first half of the channels
encodes the column, the second the row) plus a fixed 1D sincos temporal embedding of the frame
index, both added to the tokens in `embed` and computed for any grid and frame count.

Timesteps: [B] (VDT: one modulation per video, broadcast over all T·N tokens) or per latent frame
[B, F] (each frame's tokens modulated by its own t; equal to [B] when all frames share t).

Conditioning, c = t_emb + y_emb (+ text): VDT is class-conditional with the label forced to 0
(the label table `y_embedder` is kept, as in VDT). **Engine choice, not VDT's**: for the built-in
world the prompt is added to c as a projection of the pooled text states (a per-token MLP, mean
over the tokens; its output layer zero-initialised, so a fresh model starts as plain VDT);
`model.vdt.text_condition=false` turns it off. The condition of a VDT task (given frames or
regions) enters as clean latents in the same token sequence, never through `embed`.

Outside hooks (ctx, set by the caller's `prepare`): the temporal attention of block i calls
`ctx.kv_hook.extend(i, k_BSNH, v_BSNH)` with the keys/values of its own frames in token layout
(t-major, S = F·H'·W') and attends to what it returns — whole extra frames of the same H'×W' grid
(DualParal's right context, a causal cache) — and reads a frame-level `ctx.mask` (BlockCausal /
TeacherForcing, applied with one token per frame). Spatial attention is within one frame: it needs
neither. Positions are absolute and enter the tokens in `embed` (the pass's frames at
`Conditioning.frame_positions`, default 0..F-1; a DualParal stage gives global frame indices), so
K/V from a hook keep the temporal positions of the pass that computed them; `place` only records the
frame layout, which the temporal attention checks the hook's key count against.

Attention goes through `framecast.models.attention.attention` with kinds "temporal" and
"spatial" (sparse backends run dense for them: they are patterns over a whole-video token grid).

Shape legend: B batch, C latent channels, F latent frames, H/W latent height/width, n tokens per
frame (H'·W'), L video tokens (F·n), S key tokens, N heads, Hd head dim, D width (N·Hd).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from framecast.models.attention import AttentionCall, AttentionRuntime, Mask, attention
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.layers import FP32LayerNorm, cast_keeping_fp32, frame_timesteps, timestep_embedding
from framecast.models.vdt_tasks import TASKS

# Parameters whose dotted name contains one of these parts stay fp32 under `cast`: the embedders
# of c, the modulation layers and the affine temporal norm (the modulation math is fp32, as Wan's).
KEEP_FP32 = ("t_embedder", "y_embedder", "text_embedder", "adaLN_modulation", "temporal_norm1")


@dataclass
class VdtConfig:
    """model.vdt.*: what VDT has beyond the generic model keys (heads, head dim, layers, patch,
    channels, text_dim, freq_dim, ffn_dim = the MLP width, eps)."""
    num_classes: int = 1          # rows of the class-label table; VDT always uses label 0
    learn_sigma: bool = False     # proj_out also emits a variance half (2·C: DiT/VDT checkpoint shape); head drops it
    text_condition: bool = True   # add a projection of the pooled text states to c (engine choice; VDT has none)

    MINIMUM: ClassVar[dict] = {"num_classes": 1}


@dataclass
class VdtContext:
    """Everything a block or the head needs besides the hidden states."""

    c_BFD: torch.Tensor               # conditioning c per frame: [B, 1, D] (per-video t) or [B, F, D]
    grid: tuple[int, int, int]        # (F, H', W') token grid of x
    kv_hook: Any = None               # object with .extend(layer_id, k_BSNH, v_BSNH) -> (k, v): temporal attention
    mask: Mask = None                 # frame-level mask of temporal attention: None, BlockCausal or TeacherForcing
    attention: Optional[AttentionRuntime] = None  # backend, options, per-request state (None: sdpa)
    step: Optional[int] = None        # sampler step index (attention metadata)
    block: int = 0                    # frame block of this pass (attention metadata)
    interface: Any = None             # VIN interface tokens: not supported by VDT (must stay None)
    query_frames: Optional[torch.Tensor] = None  # set by `place`: frame positions of the queries
    key_frames: Optional[torch.Tensor] = None    # ... and of all temporal keys (own + kv_hook's)


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[P] positions -> [P, dim] fp32: sin of the first dim/2 channels, cos of the rest, frequencies
    10000^(−2i/dim) (the fixed embedding of DiT/MAE)."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """[h·w, dim] fp32 for a row-major patch grid: the first dim/2 channels encode the column, the
    rest the row (DiT's get_2d_sincos_pos_embed layout)."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)


class TimestepEmbedder(nn.Module):
    """Sinusoid (cos first) -> Linear -> SiLU -> Linear (DiT's t_embedder)."""

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t_N, self.freq_dim).to(self.mlp[0].weight.dtype))


class TextPool(nn.Module):
    """Per-token MLP, then the mean over the tokens -> [B, D] added to c (engine choice). The
    token MLP before the mean keeps which word sits at which position (the encoder adds position
    vectors), so colour and direction of one object stay tied in the pooled vector."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    def forward(self, text_BSD: torch.Tensor) -> torch.Tensor:
        return self.mlp(text_BSD.to(self.mlp[0].weight.dtype)).mean(dim=1)


class Attention(nn.Module):
    """Multi-head self-attention projections: fused qkv (with bias) and the output proj; no q/k norm."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x_BLD: torch.Tensor):
        """-> q_BLNH, k_BLNH, v_BLNH"""
        return self.qkv(x_BLD).unflatten(-1, (3, self.heads, -1)).unbind(2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _frame_mask(mask: Mask) -> Mask:
    """A token-level frame mask as temporal attention applies it: one token per frame."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        raise ValueError("VDT temporal attention takes frame-level masks (BlockCausal, TeacherForcing), "
                         "not a dense tensor")
    return dataclasses.replace(mask, frame_tokens=1)


class VdtBlock(nn.Module):
    """temporal attention (not modulated) -> adaLN-Zero spatial attention -> adaLN-Zero MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float, layer_id: int):
        super().__init__()
        self.layer_id = layer_id  # key of this layer's temporal K/V for a kv_hook
        self.temporal_norm1 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.temporal_attn = Attention(dim, heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.mlp = Mlp(dim, mlp_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def _call(self, ctx: VdtContext, kind: str) -> dict:
        rt = ctx.attention
        meta = AttentionCall(grid=ctx.grid, layer=self.layer_id, step=ctx.step, kind=kind, block=ctx.block, runtime=rt)
        return {"backend": "sdpa" if rt is None else rt.backend, "meta": meta}

    def temporal_attention(self, x_BLD: torch.Tensor, ctx: VdtContext) -> torch.Tensor:
        """Each spatial position attends over the frames: (B, F·n) tokens -> (B·n) sequences of F."""
        f, n = ctx.grid[0], ctx.grid[1] * ctx.grid[2]
        q_BLNH, k_BSNH, v_BSNH = self.temporal_attn.split(x_BLD)
        if ctx.kv_hook is not None:  # extra whole frames of keys/values, in the same t-major token layout
            k_BSNH, v_BSNH = ctx.kv_hook.extend(self.layer_id, k_BSNH, v_BSNH)
        s = k_BSNH.shape[1]
        if s % n or (ctx.key_frames is not None and s != len(ctx.key_frames) * n):
            placed = "" if ctx.key_frames is None else f" (place set {len(ctx.key_frames)} key frames)"
            raise ValueError(f"VDT temporal attention: {s} key tokens are not whole frames of {n} tokens{placed}")
        q = rearrange(q_BLNH, "b (f n) h d -> (b n) f h d", f=f)
        k = rearrange(k_BSNH, "b (f n) h d -> (b n) f h d", n=n)
        v = rearrange(v_BSNH, "b (f n) h d -> (b n) f h d", n=n)
        o = attention(q, k, v, mask=_frame_mask(ctx.mask), **self._call(ctx, "temporal"))
        return self.temporal_attn.proj(rearrange(o, "(b n) f h d -> b (f n) (h d)", n=n))

    def spatial_attention(self, x_BLD: torch.Tensor, ctx: VdtContext) -> torch.Tensor:
        """Attention within each frame: (B, F·n) tokens -> (B·F) sequences of n."""
        f = ctx.grid[0]
        q, k, v = self.attn.split(rearrange(x_BLD, "b (f n) d -> (b f) n d", f=f))
        o = attention(q, k, v, **self._call(ctx, "spatial"))
        return self.attn.proj(rearrange(o, "(b f) n h d -> b (f n) (h d)", f=f))

    def forward(self, x_BLD: torch.Tensor, ctx: VdtContext) -> torch.Tensor:
        if ctx.interface is not None:
            raise NotImplementedError("VDT does not read VIN interface tokens (ctx.interface)")
        dtype, f = x_BLD.dtype, ctx.grid[0]

        def frames(y_BLD):  # (B, L, D) -> (B, F, n, D): per-frame modulation broadcasts over each frame's tokens
            return y_BLD.float().unflatten(1, (f, -1))

        # 1. temporal attention, unmodulated, its own affine LayerNorm; temporal_fc on the residual branch
        a_BLD = self.temporal_attention(self.temporal_norm1(x_BLD), ctx)
        x_BLD = x_BLD + self.temporal_fc(a_BLD)
        # modulation in fp32: (B, F|1, 6D) -> six (B, F|1, 1, D)
        mod = self.adaLN_modulation(ctx.c_BFD.float()).unflatten(-1, (6, -1)).unsqueeze(3)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(2)
        # 2. spatial attention per frame, adaLN-Zero
        x_n = (frames(self.norm1(x_BLD)) * (1 + scale_msa) + shift_msa).flatten(1, 2).to(dtype)
        x_BLD = (frames(x_BLD) + gate_msa * frames(self.spatial_attention(x_n, ctx))).flatten(1, 2).to(dtype)
        # 3. MLP, adaLN-Zero
        x_n = (frames(self.norm2(x_BLD)) * (1 + scale_mlp) + shift_mlp).flatten(1, 2).to(dtype)
        return (frames(x_BLD) + gate_mlp * frames(self.mlp(x_n))).flatten(1, 2).to(dtype)


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c) -> Linear to ph·pw·C_out per token."""

    def __init__(self, dim: int, patch: tuple[int, int], out_channels: int, eps: float):
        super().__init__()
        self.norm_final = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.linear = nn.Linear(dim, patch[0] * patch[1] * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x_BLD: torch.Tensor, c_BFD: torch.Tensor, f: int) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c_BFD.float()).unsqueeze(2).chunk(2, dim=-1)  # (B, F|1, 1, D)
        x_n = self.norm_final(x_BLD.float()).unflatten(1, (f, -1)) * (1 + scale) + shift
        return self.linear(x_n.flatten(1, 2).to(x_BLD.dtype))


class VdtModel(nn.Module):
    _keep_in_fp32_modules = list(KEEP_FP32)
    # What the family is and can do (read by the schedules' and caches' config checks; `framecast info`)
    summary: ClassVar[str] = ("VDT: factorised temporal / spatial DiT with mask-modelled tasks "
                              "(from the paper's spec; text through pooled text states is an engine choice)")
    checkpoints: ClassVar[str] = "world weights only (builtin:tiny-vdt; `framecast train --vdt --out DIR`, model.weights=DIR)"
    tasks: ClassVar[tuple[str, ...]] = tuple(TASKS)  # framecast/models/vdt_tasks.py
    supports_masks: ClassVar[bool] = True  # frame-level BlockCausal / TeacherForcing in temporal attention
    reads_interface_tokens: ClassVar[bool] = False  # VIN's global tokens are read only by Wan's blocks
    adaln_probe: ClassVar[bool] = False  # modulation from c, no scale_shift_table / ctx.mod_BF6D to probe
    absolute_positions: ClassVar[bool] = True  # 1-D sin-cos added in `embed` (Conditioning.frame_positions)
    produces_audio: ClassVar[bool] = False  # video only; model.kind=avdit makes a soundtrack too
    token_grid_fhw: ClassVar[bool] = False  # no camera adapter (framecast/models/camera.py) attached here yet

    def __init__(self, patch_size=(1, 2, 2), num_attention_heads: int = 16, attention_head_dim: int = 72,
                 in_channels: int = 4, out_channels: Optional[int] = 4, text_dim: int = 64, freq_dim: int = 256,
                 ffn_dim: int = 4608, num_layers: int = 28, eps: float = 1e-6, vdt: Optional[VdtConfig] = None):
        super().__init__()
        vdt = VdtConfig() if vdt is None else vdt
        if len(patch_size) != 3 or patch_size[0] != 1:
            raise ValueError(f"VdtModel: patch_size must be (1, ph, pw) (per-frame 2D patches), "
                             f"got {tuple(patch_size)}")
        dim = num_attention_heads * attention_head_dim
        if dim % 4:
            raise ValueError(f"VdtModel: width heads x head_dim = {dim} must be a multiple of 4 (2D sincos positions)")
        if vdt.num_classes < 1:
            raise ValueError(f"model.vdt.num_classes={vdt.num_classes} is out of range; must be >= 1")
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels or in_channels
        self.vdt = vdt
        ph, pw = self.patch_size[1:]
        self.x_embedder = nn.Conv2d(in_channels, dim, kernel_size=(ph, pw), stride=(ph, pw))
        self.t_embedder = TimestepEmbedder(dim, freq_dim)
        self.y_embedder = nn.Embedding(vdt.num_classes, dim)
        self.action_embedder = None  # no action conditioning (what NFD and play sessions look for)
        self.text_embedder = TextPool(text_dim, dim) if vdt.text_condition else None
        self.blocks = nn.ModuleList(VdtBlock(dim, num_attention_heads, ffn_dim, eps, layer_id=i)
                                    for i in range(num_layers))
        self.final_layer = FinalLayer(dim, (ph, pw), self.out_channels * (2 if vdt.learn_sigma else 1), eps)
        self.initialize_weights()

    @classmethod
    def from_model_config(cls, m) -> "VdtModel":
        """From the config's `model` section (framecast.config.ModelConfig; its `vdt` section)."""
        if m.num_actions:
            raise ValueError(f"model.kind=vdt has no action conditioning; got model.num_actions={m.num_actions}")
        return cls(patch_size=tuple(m.patch_size), num_attention_heads=m.num_attention_heads,
                   attention_head_dim=m.attention_head_dim, in_channels=m.in_channels, out_channels=m.out_channels,
                   text_dim=m.text_dim, freq_dim=m.freq_dim, ffn_dim=m.ffn_dim, num_layers=m.num_layers, eps=m.eps,
                   vdt=m.vdt)

    def initialize_weights(self) -> None:
        """DiT's init: xavier-uniform linears with zero bias, N(0, 0.02) embedders; adaLN-Zero (every
        modulation and the output layer at zero). temporal_fc at zero too (TimeSformer's choice for
        its temporal branch): every fresh block is then exactly the identity."""
        def xavier(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.apply(xavier)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        zero += [m for b in self.blocks for m in (b.adaLN_modulation[-1], b.temporal_fc)]
        if self.text_embedder is not None:
            zero.append(self.text_embedder.mlp[-1])  # a fresh model ignores the prompt: plain VDT
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- the block-loop contract ---------------------------------------------------------------

    def place(self, ctx: VdtContext, query_frames: torch.Tensor, key_frames: torch.Tensor) -> VdtContext:
        """Record the frame layout of the queries and of ALL temporal keys (own + a kv_hook's). VDT's
        positions are absolute and already in the tokens (added in `embed`), so this moves nothing;
        temporal attention checks the hook's key count against `key_frames`."""
        if len(query_frames) != ctx.grid[0]:
            raise ValueError(f"place: {len(query_frames)} query frames for a pass of {ctx.grid[0]} frames")
        ctx.query_frames, ctx.key_frames = query_frames, key_frames
        return ctx

    def embed(self, lat_BCFHW: torch.Tensor, t, cond: Conditioning) -> tuple[torch.Tensor, VdtContext]:
        """Per-frame patches + 2D sincos + 1D sincos temporal positions; c from t (+ label 0, + text).
        t: [B] or [B, F] (sigma·1000); cond.text_BSD: [B, S, text_dim] (read when text_condition)."""
        if cond.actions_BF is not None:
            raise ValueError("VdtModel has no action conditioning (cond.actions_BF must be None)")
        b, _, f, h, w = lat_BCFHW.shape
        ph, pw = self.patch_size[1:]
        if h % ph or w % pw:
            raise ValueError(f"latent (H, W)=({h}, {w}) not divisible by patch (ph, pw)=({ph}, {pw})")
        grid = (f, h // ph, w // pw)
        x = self.x_embedder(rearrange(lat_BCFHW, "b c f h w -> (b f) c h w").to(self.x_embedder.weight.dtype))
        x_BFnD = rearrange(x, "(b f) d h w -> b f (h w) d", b=b)
        dim, device = x_BFnD.shape[-1], x_BFnD.device
        pos_nD = sincos_2d(grid[1], grid[2], dim, device)
        frames = torch.arange(f) if cond.frame_positions is None else cond.frame_positions  # (DualParal: global)
        pos_FD = sincos_1d(frames.to(device), dim)
        x_BLD = (x_BFnD + (pos_nD[None, None] + pos_FD[None, :, None]).to(x_BFnD.dtype)).flatten(1, 2)

        t = frame_timesteps(t, b, f, device)
        c_BFD = self.t_embedder(t.reshape(-1)).unflatten(0, (b, -1))       # (B, 1, D) or (B, F, D)
        c_BFD = c_BFD + self.y_embedder(torch.zeros(1, 1, dtype=torch.long, device=device)).to(c_BFD.dtype)
        if self.text_embedder is not None:
            c_BFD = c_BFD + self.text_embedder(cond.text_BSD.to(device))[:, None].to(c_BFD.dtype)
        return x_BLD, VdtContext(c_BFD=c_BFD, grid=grid)

    def head(self, x_BLD: torch.Tensor, ctx: VdtContext) -> torch.Tensor:
        """Final adaLN layer + unpatchify per frame -> [B, C_out, F, H, W] (the variance half of
        learn_sigma dropped)."""
        f, gh, gw = ctx.grid
        ph, pw = self.patch_size[1:]
        out = self.final_layer(x_BLD, ctx.c_BFD, f)                                  # (B, L, ph·pw·C)
        out = rearrange(out, "b (f h w) (ph pw c) -> b c f (h ph) (w pw)", f=f, h=gh, w=gw, ph=ph, pw=pw)
        return out[:, :self.out_channels]

    def forward(self, lat_BCFHW: torch.Tensor, t, text_BSD: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F, H, W], timestep [B] or [B, F], text [B, S, text_dim] -> prediction."""
        return run_model(self, lat_BCFHW, t, Conditioning(text_BSD))

    def cast(self, dtype: torch.dtype) -> "VdtModel":
        """Move to `dtype`, keeping the KEEP_FP32 parameters (embedders of c, modulation, the
        affine temporal norm) in fp32."""
        return cast_keeping_fp32(self, dtype, KEEP_FP32)
