"""AV-DiT: video and its soundtrack from one denoising loop, on a frozen video DiT.

ENGINE-DEFINED, NOT THE PAPER'S. AV-DiT (Wang et al., arXiv 2406.07686) has no public code; this
follows the engine's proposal of shared/methods/model-zoo.md §4, adapted to a video backbone
(docs/avdit.md has the design and every deviation):

- latent: the video latent with an audio band of `band_rows` extra rows below each frame
  [B, C, F, H + band_rows, W] (framecast/engine/audio.py packs one hop's log-mel spectrum into one
  patch token of the band), so every schedule that moves whole latent frames moves the sound with
  its frame;
- tokens: the whole tall latent is patchified onto one grid (F', (H + band_rows)/ph, W'/pw); video
  tokens keep exactly the positions (RoPE) of the frozen backbone, audio tokens sit in the extra
  rows. Self-attention is masked so that video queries never see audio keys, while audio
  queries see both (run as two unmasked attention calls);
- frozen: the backbone (a Wan-kind model, the shipped `tiny` for tiny-av): patch embedding, time
  and text embedders, every block, the video head;
- trained: the audio patch embedding and a modality embedding, a time adapter (extra adaLN
  modulation for audio tokens), rank-r LoRA on every block's attention projections (self q/k/v/o
  and cross q/k/v/o) applied to audio tokens only, the audio head, and one shared fusion block
  (joint self-attention + MLP over video and audio tokens, no mask) whose per-modality output
  gates start at zero; with model.avdit.event_cue, the event cue (framecast/models/event_cue.py):
  a per-frame detector on the video tokens whose reading is added to the frame's audio tokens.

So with the fusion gates at zero the video rows are exactly the frozen backbone's output
(tests/test_avdit_model.py compares them with WanModel). Trained on the audio loss only, the
video gate receives no gradient and stays zero: the adapters cannot cost video quality.

Contract (framecast/models/blocks.py): embed -> blocks -> head, place; `run_model` runs it.
The fusion block runs in `head` (once, after the last block), so feature caches and the block loop
see the backbone's blocks only.

Shape legend: B batch, C channels, F latent frames, H video latent rows, R band rows, W width,
L tokens (F'·(H' + R')·W'), S keys / text tokens, N heads, Hd head dim, D width, r LoRA rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from framecast.models.attention import attention
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.event_cue import EventCue
from framecast.models.layers import FP32LayerNorm, LoRA, apply_rope, cast_keeping_fp32, frame_timesteps
from framecast.models.layers import rope_table as build_rope_table
from framecast.models.vdt import sincos_2d
from framecast.models.wan import KEEP_FP32, WanBlock, WanConditionEmbedder, WanContext, WanModel


@dataclass
class AvditConfig:
    """model.avdit.* (model.kind=avdit only). Engine-defined, not the paper's (docs/avdit.md)."""

    base: str = "builtin:tiny"  # the frozen video backbone (Wan-kind weights) the AV parts were trained on
    band_rows: int = 4  # latent rows below each video frame that carry its audio (one token row at patch 4)
    lora_rank: int = 8  # rank r of the audio LoRA on every attention projection
    fusion_ffn: int = 256  # hidden width of the shared fusion block's MLP
    audio_guidance: float = 1.0  # CFG scale of the audio band (sampler.guidance_scale is the video's); 1 = none
    # sampler steps the band runs behind the video in the one denoising loop (0: both at each step's level;
    # k: the loop takes steps + k model calls, the band's first k at pure noise, the video's last k clean),
    # so a click forms once the bounce that makes it is visible (docs/avdit.md); at most sampler.steps
    audio_lag: int = 0
    # the fusion block also reads every token's place on the tall grid (fixed 2-D sincos of its row and
    # column through a zero-initialised projection): where the walls are, which hop of its frame an audio
    # token is (the frozen backbone's tokens carry relative positions only); off in weights trained without
    fusion_positions: bool = False
    # the event cue (framecast/models/event_cue.py): a per-frame detector on the video tokens, trained on
    # the frames that click, whose reading is added to the frame's audio tokens before the fusion block
    event_cue: bool = False

    MINIMUM: ClassVar[dict] = {"band_rows": 1, "lora_rank": 1, "fusion_ffn": 1, "audio_guidance": 0.0, "audio_lag": 0}


@dataclass
class AvditContext(WanContext):
    """WanContext plus what the audio tokens need."""

    audio_mod_BF6D: Optional[torch.Tensor] = None  # the audio tokens' block modulation (time adapter added)
    audio_temb_BFD: Optional[torch.Tensor] = None  # the audio tokens' time embedding (their own level)
    rows: tuple[int, int] = (0, 0)                 # (video, audio) token rows of every frame
    cut_video: bool = False                        # video states carry no gradient (frozen backbone): detach them
    event_logits_BF: Optional[torch.Tensor] = None  # set by `head` when the model has an event cue


def _split(x_BLD: torch.Tensor, f: int, nv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, ...) -> video (B, F, nv, ...) and audio (B, F, na, ...) tokens of every frame."""
    x = x_BLD.unflatten(1, (f, -1))
    return x[:, :, :nv], x[:, :, nv:]


def _join(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, a], dim=2).flatten(1, 2)


class AvBlock(nn.Module):
    """A frozen Wan block (`base`) whose audio tokens get LoRA'd projections and their own modulation.

    Video and audio tokens run as two streams inside the block (joined only at its output): the
    video stream is exactly the backbone's block, and in training (`ctx.cut_video`) it carries no
    autograd graph at all, since no trainable parameter acts on it."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, cross_attn_norm: bool, eps: float, layer_id: int, rank: int):
        super().__init__()
        self.layer_id = layer_id
        self.base = WanBlock(dim, ffn_dim, heads, cross_attn_norm, eps, layer_id)
        names = [f"{kind}_{p}" for kind in ("self", "cross") for p in "qkvo"]  # self_q .. cross_o
        self.lora = nn.ModuleDict({name: LoRA(dim, dim, rank) for name in names})

    def _audio(self, linear: nn.Linear, lora: str, x: torch.Tensor) -> torch.Tensor:
        return linear(x) + self.lora[lora](x)

    def self_attention(self, xv_BLD, xa_BLD, rope_v, rope_a, ctx: AvditContext):
        """Video queries attend to video keys only (exactly the backbone's attention); audio queries to
        every key. -> (video out, audio out)."""
        a, call = self.base.attn1, self.base._call(ctx, "self")
        qv, kv, vv = a.qkv(xv_BLD, xv_BLD)
        qa = a.norm_q(self._audio(a.to_q, "self_q", xa_BLD)).unflatten(2, (a.heads, -1))
        ka = a.norm_k(self._audio(a.to_k, "self_k", xa_BLD)).unflatten(2, (a.heads, -1))
        va = self._audio(a.to_v, "self_v", xa_BLD).unflatten(2, (a.heads, -1))
        qv, kv = apply_rope(qv, *rope_v), apply_rope(kv, *rope_v)
        qa, ka = apply_rope(qa, *rope_a), apply_rope(ka, *rope_a)
        ov = a.out(attention(qv, kv, vv, **call))
        oa = attention(qa, torch.cat([kv, ka], dim=1), torch.cat([vv, va], dim=1), **call).flatten(2)
        return ov, self._audio(a.to_out[0], "self_o", oa)

    def cross_attention(self, xv_BLD, xa_BLD, ctx: AvditContext):
        a, call, text = self.base.attn2, self.base._call(ctx, "cross"), ctx.text_BSD
        ov = a.out(attention(*a.qkv(xv_BLD, text), **call))                               # the frozen path
        qa = a.norm_q(self._audio(a.to_q, "cross_q", xa_BLD)).unflatten(2, (a.heads, -1))
        ka = a.norm_k(self._audio(a.to_k, "cross_k", text)).unflatten(2, (a.heads, -1))
        va = self._audio(a.to_v, "cross_v", text).unflatten(2, (a.heads, -1))
        oa = attention(qa, ka, va, **call).flatten(2)
        return ov, self._audio(a.to_out[0], "cross_o", oa)

    def forward(self, x_BLD: torch.Tensor, ctx: AvditContext) -> torch.Tensor:
        if ctx.kv_hook is not None:
            raise ValueError("model.kind=avdit takes no extra keys from a kv_hook (schedule.name=dualparal); "
                             "it runs under schedule.name=full or rollout")
        base, dtype, f = self.base, x_BLD.dtype, ctx.mod_BF6D.shape[1]
        nv = ctx.rows[0] * ctx.grid[2]
        xv, xa = _split(x_BLD, f, nv)                                           # (B, F, n, D) each
        if ctx.cut_video:  # no trainable parameter acts on the video stream (class docstring): no graph
            xv = xv.detach()
        mv, ma = [(base.scale_shift_table + m.float()).unsqueeze(3).unbind(2)
                  for m in (ctx.mod_BF6D, ctx.audio_mod_BF6D)]
        (cos_v, cos_a), (sin_v, sin_a) = [_split(table[None], f, nv) for table in ctx.rope_q]  # (1, F, n, K)
        rope_v = (cos_v[0].flatten(0, 1), sin_v[0].flatten(0, 1))
        rope_a = (cos_a[0].flatten(0, 1), sin_a[0].flatten(0, 1))

        def normed(y, norm, mod, i_scale, i_shift):  # Wan's fp32 adaLN -> (B, L, D)
            return (norm(y.float()) * (1 + mod[i_scale]) + mod[i_shift]).flatten(1, 2).to(dtype)

        def gated(y, r_BLD, mod, i_gate):  # (B, F, n, D) + gate * (B, L, D)
            return (y.float() + r_BLD.float().unflatten(1, (f, -1)) * mod[i_gate]).to(dtype)

        av, aa = self.self_attention(normed(xv, base.norm1, mv, 1, 0), normed(xa, base.norm1, ma, 1, 0),
                                     rope_v, rope_a, ctx)
        xv, xa = gated(xv, av, mv, 2), gated(xa, aa, ma, 2)
        cv, ca = self.cross_attention(base.norm2(xv.flatten(1, 2).float()).to(dtype),
                                      base.norm2(xa.flatten(1, 2).float()).to(dtype), ctx)
        xv, xa = xv + cv.unflatten(1, (f, -1)), xa + ca.unflatten(1, (f, -1))
        xv = gated(xv, base.ffn(normed(xv, base.norm3, mv, 4, 3)), mv, 5)
        xa = gated(xa, base.ffn(normed(xa, base.norm3, ma, 4, 3)), ma, 5)
        return _join(xv, xa)


class FusionBlock(nn.Module):
    """The shared audio-video block: joint self-attention and an MLP over all tokens (no mask), adaLN
    from the time embedding, and per-modality output gates that start at zero."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float, positions: bool = False):
        super().__init__()
        self.heads = heads
        # AvditConfig.fusion_positions: absolute grid positions added to the attention's input, zero at init
        self.positions = nn.Linear(dim, dim) if positions else None
        if self.positions is not None:
            nn.init.zeros_(self.positions.weight)
            nn.init.zeros_(self.positions.bias)
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.modulation = nn.Linear(dim, 4 * dim)  # shift/scale before attention and before the MLP
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.gate_video = nn.Parameter(torch.zeros(2, dim))  # (attention, MLP) gates of the video tokens
        self.gate_audio = nn.Parameter(torch.zeros(2, dim))  # ... and of the audio tokens
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x_BLD: torch.Tensor, ctx: AvditContext) -> torch.Tensor:
        dtype, f, nv = x_BLD.dtype, ctx.temb_BFD.shape[1], ctx.rows[0] * ctx.grid[2]
        na = ctx.rows[1] * ctx.grid[2]
        # each modality modulated by its own time embedding (the band may run at another level)
        mods = [self.modulation(F.silu(temb.float())).unsqueeze(2).expand(-1, -1, n, -1)
                for temb, n in ((ctx.temb_BFD, nv), (ctx.audio_temb_BFD, na))]
        shift1, scale1, shift2, scale2 = torch.cat(mods, dim=2).chunk(4, dim=-1)           # (B, F, n, D)

        def gate(y_BLD, r_BLD, i):
            yv, ya = _split(y_BLD.float(), f, nv)
            rv, ra = _split(r_BLD.float(), f, nv)
            return _join(yv + rv * self.gate_video[i], ya + ra * self.gate_audio[i]).to(dtype)

        x_n = self.norm(x_BLD.float()).unflatten(1, (f, -1)) * (1 + scale1) + shift1              # (B, F, n, D)
        if self.positions is not None:
            _, h, w = ctx.grid
            grid_ND = sincos_2d(h, w, x_n.shape[-1], device=x_n.device)                 # the tall grid, row-major
            x_n = x_n + self.positions(grid_ND.to(self.positions.weight.dtype)).float()
        x_n = x_n.flatten(1, 2).to(dtype)
        q, k, v = self.qkv(x_n).chunk(3, dim=-1)
        q = apply_rope(self.norm_q(q).unflatten(2, (self.heads, -1)), *ctx.rope_q)
        k = apply_rope(self.norm_k(k).unflatten(2, (self.heads, -1)), *ctx.rope_q)
        o = attention(q, k, v.unflatten(2, (self.heads, -1))).flatten(2)
        x_BLD = gate(x_BLD, self.out(o), 0)
        x_n = (self.norm(x_BLD.float()).unflatten(1, (f, -1)) * (1 + scale2) + shift2).flatten(1, 2).to(dtype)
        return gate(x_BLD, self.mlp(x_n), 1)


class AvditModel(nn.Module):
    """Frozen Wan-kind backbone (same module names as WanModel outside the blocks; each block's Wan
    weights under `blocks.i.base`) plus the trained audio parts (module docstring)."""

    _keep_in_fp32_modules = list(KEEP_FP32)
    summary: ClassVar[str] = ("AV-DiT (engine-defined, not the paper's): video + soundtrack from a frozen Wan-kind "
                              "backbone with audio LoRA, a time adapter and a zero-gated fusion block")
    checkpoints: ClassVar[str] = ("world weights only (builtin:tiny-av; `framecast train --av --out DIR`, "
                                  "model.weights=DIR)")
    tasks: ClassVar[tuple[str, ...]] = ()
    supports_masks: ClassVar[bool] = False  # its self-attention carries the modality mask (no block-causal masks)
    reads_interface_tokens: ClassVar[bool] = False
    adaln_probe: ClassVar[bool] = False  # two modulations per block (video / audio): nothing single to probe
    absolute_positions: ClassVar[bool] = False  # rotary positions on the tall grid, placed by `place`
    token_grid_fhw: ClassVar[bool] = False  # its token grid has the audio rows: no camera adapter here
    produces_audio: ClassVar[bool] = True  # latents carry an audio band (framecast/engine/audio.py)

    def __init__(self, patch_size=(1, 4, 4), num_attention_heads: int = 4, attention_head_dim: int = 32,
                 in_channels: int = 3, out_channels: Optional[int] = 3, text_dim: int = 64, freq_dim: int = 64,
                 ffn_dim: int = 512, num_layers: int = 6, cross_attn_norm: bool = True, eps: float = 1e-6,
                 rope_max_seq_len: int = 1024, avdit: Optional[AvditConfig] = None):
        super().__init__()
        avdit = AvditConfig() if avdit is None else avdit
        out_channels = out_channels or in_channels
        if len(patch_size) != 3 or patch_size[0] != 1:
            raise ValueError(f"AvditModel: patch_size must be (1, ph, pw), got {tuple(patch_size)}")
        if avdit.band_rows % patch_size[1]:
            raise ValueError(f"model.avdit.band_rows={avdit.band_rows} must be a multiple of the patch height "
                             f"{patch_size[1]} (whole token rows of audio)")
        if out_channels != in_channels:
            raise ValueError(f"AvditModel: out_channels={out_channels} must equal in_channels={in_channels}")
        self.patch_size, self.head_dim, self.band_rows = tuple(patch_size), attention_head_dim, avdit.band_rows
        self.audio_guidance = avdit.audio_guidance  # read by the guided denoiser (engine/denoise.py)
        self.audio_lag = avdit.audio_lag            # read by the schedules' denoising loop (schedulers/full.py)
        self.config = dict(patch_size=self.patch_size, num_attention_heads=num_attention_heads,
                           attention_head_dim=attention_head_dim, in_channels=in_channels, text_dim=text_dim,
                           freq_dim=freq_dim, ffn_dim=ffn_dim, num_layers=num_layers, avdit=avdit)
        dim = num_attention_heads * attention_head_dim
        patch_values = in_channels * math.prod(self.patch_size)
        # ---- the frozen backbone (WanModel's names) --------------------------------------------
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.condition_embedder = WanConditionEmbedder(dim, freq_dim, text_dim)
        self.blocks = nn.ModuleList(AvBlock(dim, ffn_dim, num_attention_heads, cross_attn_norm, eps, i, avdit.lora_rank)
                                    for i in range(num_layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, patch_values)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        # ---- the trained audio parts -------------------------------------------------------------
        self.audio_embedding = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.audio_modality = nn.Parameter(torch.zeros(dim))        # added to every audio token
        self.audio_time_proj = nn.Linear(dim, 6 * dim)              # time adapter: extra modulation, zero init
        nn.init.zeros_(self.audio_time_proj.weight)
        nn.init.zeros_(self.audio_time_proj.bias)
        self.fusion = FusionBlock(dim, num_attention_heads, avdit.fusion_ffn, eps, avdit.fusion_positions)
        self.event_cue = EventCue(dim, eps=eps) if avdit.event_cue else None
        self.audio_scale_shift_table = nn.Parameter(torch.zeros(1, 2, dim))
        self.audio_proj_out = nn.Linear(dim, patch_values)
        nn.init.zeros_(self.audio_proj_out.weight)
        nn.init.zeros_(self.audio_proj_out.bias)

    @staticmethod
    def config_kwargs(m) -> dict:
        kw = WanModel.config_kwargs(m)
        if kw.pop("num_actions"):
            raise ValueError("model.kind=avdit takes no actions (model.num_actions must be 0)")
        kw.pop("qk_norm")
        return {**kw, "avdit": m.avdit}

    @classmethod
    def from_model_config(cls, m) -> "AvditModel":
        return cls(**cls.config_kwargs(m))

    # ---- the frozen backbone ---------------------------------------------------------------------

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters AV training updates (everything outside the frozen backbone)."""
        return {k: p for k, p in self.named_parameters() if not is_backbone_key(k)}

    def load_backbone(self, wan_state: dict) -> None:
        """Load a WanModel state dict (the frozen backbone) into the backbone's modules; strict:
        every backbone tensor must be there, nothing else may be."""
        own = {k for k in self.state_dict() if is_backbone_key(k)}
        mapped = {_backbone_name(k): v for k, v in wan_state.items()}
        missing, extra = sorted(own - set(mapped)), sorted(set(mapped) - own)
        if missing or extra:
            raise ValueError(f"the backbone weights do not fit model.kind=avdit's backbone: "
                             f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
        self.load_state_dict(mapped, strict=False)

    def weights_problem(self, keys: set[str]) -> Optional[str]:
        """What is wrong with a weights file's transformer keys for this model, in one line (None: nothing
        this check sees; the strict load checks the rest)."""
        own = set(self.state_dict())
        backbone = {k for k in own if is_backbone_key(k)}
        if not any(k.startswith("blocks.") and is_backbone_key(k) for k in keys):
            video_only = any(k.startswith("blocks.") and ".base." not in k for k in keys)
            return ("model.kind=avdit needs its frozen backbone (blocks.*.base.*) in the weights and these hold none"
                    + ("; they are a video-only model's: train the AV parts on them with `framecast train --av "
                       "--preset tiny-av` (model.avdit.base names them)" if video_only else ""))
        if not keys & (own - backbone):
            return ("model.kind=avdit: the weights hold the backbone but no AV parts (audio_*, lora, fusion); "
                    "train them with `framecast train --av --preset tiny-av`")
        for prefix, option in (("event_cue.", "event_cue"), ("fusion.positions.", "fusion_positions")):
            held, built = any(k.startswith(prefix) for k in keys), any(k.startswith(prefix) for k in own)
            if held != built:
                return (f"model.avdit.{option}={str(built).lower()} does not fit the weights: they were trained "
                        f"with {option}={str(held).lower()} (set model.avdit.{option}={str(held).lower()})")
        return None

    def freeze_backbone(self) -> "AvditModel":
        for k, p in self.named_parameters():
            p.requires_grad_(not is_backbone_key(k))
        return self

    # ---- the contract ----------------------------------------------------------------------------

    def rope_table(self, frame_positions: torch.Tensor, h: int, w: int, device=None):
        return build_rope_table(frame_positions, h, w, self.head_dim, device=device)

    def place(self, ctx: AvditContext, query_frames: torch.Tensor, key_frames: torch.Tensor) -> AvditContext:
        """As WanModel.place, over the tall grid (video and audio rows of every frame)."""
        _, h, w = ctx.grid
        ctx.rope_q = self.rope_table(query_frames, h, w)
        ctx.rope_k = ctx.rope_q if key_frames is query_frames else self.rope_table(key_frames, h, w)
        return ctx

    def split_latent(self, lat_BCFHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tall latent -> (video [B, C, F, H, W], audio band [B, C, F, R, W]); a shape that does not fit
        the model is a one-line error."""
        b, c, f, h, w = lat_BCFHW.shape
        _, ph, pw = self.patch_size
        r = self.band_rows
        if c != self.config["in_channels"] or h <= r or (h - r) % ph or w % pw:
            raise ValueError(f"model.kind=avdit: latent [C, F, H, W]=[{c}, {f}, {h}, {w}] does not fit the model: "
                             f"expected C={self.config['in_channels']} and H = video rows (a multiple of {ph}) + "
                             f"model.avdit.band_rows={r} audio rows, W a multiple of {pw}")
        return lat_BCFHW[:, :, :, :h - r], lat_BCFHW[:, :, :, h - r:]

    def embed(self, lat_BCFHW: torch.Tensor, t, cond: Conditioning) -> tuple[torch.Tensor, AvditContext]:
        """Patchify the tall latent and build the conditioning. t: [B] or [B, F] (sigma·1000) of the
        video rows, and of the band too unless cond.audio_timesteps gives its own; cond.text_BSD: [B, S, text_dim]."""
        if cond.actions_BF is not None:
            raise ValueError("model.kind=avdit takes no actions")
        video, band = self.split_latent(lat_BCFHW)
        b, f = lat_BCFHW.shape[0], lat_BCFHW.shape[2]
        wdt = self.patch_embedding.weight.dtype
        xv = self.patch_embedding(video.to(wdt))                                     # (B, D, F, H', W')
        xa = self.audio_embedding(band.to(wdt)) + self.audio_modality.to(wdt)[:, None, None, None]
        rows = (xv.shape[3], xa.shape[3])
        grid = (f, rows[0] + rows[1], xv.shape[4])
        x_BLD = rearrange(torch.cat([xv, xa], dim=3), "b d f h w -> b (f h w) d").contiguous()
        ce = self.condition_embedder
        t = frame_timesteps(t, b, f, lat_BCFHW.device)
        t_BF = t if t.ndim == 2 else t[:, None].expand(-1, f)
        temb_BFD = ce.temb(t_BF.reshape(-1)).unflatten(0, (b, f))
        mod_BF6D = ce.modulation(temb_BFD)
        audio_temb_BFD, audio_base_BF6D = temb_BFD, mod_BF6D
        if cond.audio_timesteps is not None:
            ta = frame_timesteps(cond.audio_timesteps, b, f, lat_BCFHW.device)
            ta_BF = ta if ta.ndim == 2 else ta[:, None].expand(-1, f)
            audio_temb_BFD = ce.temb(ta_BF.reshape(-1)).unflatten(0, (b, f))
            audio_base_BF6D = ce.modulation(audio_temb_BFD)
        audio_mod_BF6D = audio_base_BF6D + self.audio_time_proj(F.silu(audio_temb_BFD)).unflatten(-1, (6, -1))
        text = ce.text_embedder(cond.text_BSD.to(ce.text_embedder.linear_1.weight.dtype))
        frames = torch.arange(f) if cond.frame_positions is None else cond.frame_positions
        rope = self.rope_table(frames.to(x_BLD.device), grid[1], grid[2])
        cut = torch.is_grad_enabled() and not self.patch_embedding.weight.requires_grad
        ctx = AvditContext(temb_BFD=temb_BFD, mod_BF6D=mod_BF6D, text_BSD=text, grid=grid, rope_q=rope, rope_k=rope,
                           audio_mod_BF6D=audio_mod_BF6D, audio_temb_BFD=audio_temb_BFD, rows=rows, cut_video=cut)
        return x_BLD, ctx

    def head(self, x_BLD: torch.Tensor, ctx: AvditContext) -> torch.Tensor:
        """The event cue (if any), the fusion block, then the frozen video head and the audio head -> tall
        [B, C, F, H + R, W]. The cue's per-frame logits are left on `ctx.event_logits_BF` (training reads them)."""
        if ctx.mask is not None:
            raise ValueError("model.kind=avdit carries its own modality mask; it takes no ctx.mask (schedule.name=nfd)")
        f, (hv, ha), gw = ctx.temb_BFD.shape[1], ctx.rows, ctx.grid[2]
        if self.event_cue is not None:
            xv, xa = _split(x_BLD, f, hv * gw)
            ctx.event_logits_BF, cue_BFD = self.event_cue(xv.detach() if ctx.cut_video else xv, (hv, gw), ctx.temb_BFD)
            x_BLD = _join(xv, (xa.float() + cue_BFD.float()[:, :, None]).to(xa.dtype))
        x_BLD = self.fusion(x_BLD, ctx)
        xv, xa = _split(x_BLD, f, hv * gw)
        outs = []
        for x, table, proj, h, temb in ((xv, self.scale_shift_table, self.proj_out, hv, ctx.temb_BFD),
                                        (xa, self.audio_scale_shift_table, self.audio_proj_out, ha, ctx.audio_temb_BFD)):
            shift, scale = (table + temb[:, :, None]).unsqueeze(3).unbind(2)              # (B, F, 1, D)
            x_n = self.norm_out(x.float()) * (1 + scale) + shift
            out = proj(x_n.flatten(1, 2).to(x_BLD.dtype))
            (pt, ph, pw) = self.patch_size
            outs.append(rearrange(out, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
                                  f=f, h=h, w=gw, pt=pt, ph=ph, pw=pw))
        return torch.cat(outs, dim=3)

    def forward(self, hidden_states: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Tall latents [B, C, F, H + R, W], timestep [B] or [B, F], text [B, S, text_dim] -> velocity, same shape."""
        return run_model(self, hidden_states, timestep, Conditioning(encoder_hidden_states))

    def cast(self, dtype: torch.dtype) -> "AvditModel":
        return cast_keeping_fp32(self, dtype, KEEP_FP32)


BACKBONE_TOP = ("patch_embedding.", "condition_embedder.", "norm_out.", "proj_out.", "scale_shift_table")


def is_backbone_key(key: str) -> bool:
    """Is this AvditModel state key part of the frozen backbone?"""
    parts = key.split(".")
    if parts[0] == "blocks":
        return parts[2] == "base"
    return key.startswith(BACKBONE_TOP)


def _backbone_name(wan_key: str) -> str:
    """WanModel key -> AvditModel key (each block's Wan weights live under blocks.i.base)."""
    parts = wan_key.split(".")
    return ".".join(parts[:2] + ["base"] + parts[2:]) if parts[0] == "blocks" else wan_key
