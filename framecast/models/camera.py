"""Camera control: Plücker ray embeddings and the camera adapter (YingVideo-MV's camera adapter
in the public Wan camera-control lineage; spec: shared/methods/model-zoo.md §5, §7, §8.6).

    rays_6FHW = plucker(K_F33, c2w_F44, height, width)        # one 6-vector per pixel and frame
    rays = CameraRays(poses, temporal_stride, height, width)   # per latent frame, made per window:
    rays.window(range(s, e))                                    # [1, R, e - s, H, W]
    model = CameraModel(base_model, CameraAdapter.for_config(cfg))      # adapter(rays) + tokens

Plücker rays (the CameraCtrl lineage's `ray_condition`, which the spec takes over the report's
"+ t" formula): poses are made relative to frame 0 (c2w_0⁻¹ · c2w_f); at pixel centres (u + 0.5,
v + 0.5) the camera-frame direction K⁻¹[u, v, 1] = ((u − cx)/fx, (v − cy)/fy, 1) is normalised and
rotated by c2w[:3, :3] (no + t); the origin is c2w[:3, 3]; the embedding is [o × d, d].

Adapter (the lineage's SimpleAdapter shape): the video frames of each latent frame are stacked on
channels (R = 6 · vae.temporal_stride; frame 0 repeated to fill the first latent frame, whose VAE
chunk is that one frame), then per latent frame PixelUnshuffle(vae.spatial_stride) ->
Conv2d(R·s² -> D, kernel = stride = the model's spatial patch) -> ResidualBlock(s) (conv3x3,
ReLU, conv3x3, skip) -> one D-vector per video token, added to the patch-embedded tokens. For Wan
that is 24 channels, PixelUnshuffle(8), kernel 2: weights of the lineage's shapes. The entry
conv and each residual block's last conv start at zero, so an untrained adapter adds exactly 0
and the model equals the one it wraps; gradients still reach the entry conv through the skip.

Camera LoRA (`camera.lora_rank` r > 0): token offsets alone cannot steer a frozen attention, so
the adapter also holds rank-r updates of every block's self-attention projections (to_q, to_k,
to_v, to_out.0): W + up·down, `up` zero at init. They act only in passes that carry camera rays;
a camera-less pass through a CameraModel is exactly the frozen model.

Attaching: `CameraModel` wraps a family that exposes its token embedding (`token_grid_fhw`:
`embed` returns tokens t-major over the (F', H', W') grid of one latent frame per token frame);
its `embed` adds the adapter's output when the conditioning carries camera rays and marks the
context (`ctx.camera`); with a LoRA its `blocks` are `CameraBlock`s, which run the wrapped block
with the merged weights (torch.func.functional_call) when `ctx.camera` is set and the block
itself otherwise. Everything else (`head`, `place`, capabilities) is the wrapped model's. No
`forward` is rebound.

Shape legend: B batch, R ray channels per latent frame, F frames, H/W pixels, L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Optional

import numpy as np
import torch
from einops import rearrange
from torch import nn

from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.layers import LoRA

RAY_CHANNELS = 6  # Plücker (o x d, d)


@dataclass
class CameraConfig:
    """camera.* of the config: the camera adapter (framecast/models/camera.py; docs/camera.md)."""
    weights: str = ""  # "" = no adapter; builtin:NAME, or a `framecast train --camera --out` folder / its .safetensors
    residual_blocks: int = 1  # ResidualBlocks after the patch conv (the lineage: 1)
    lora_rank: int = 0  # rank of the camera LoRA on every block's self-attention q/k/v/out; 0 = none (adapter only)
    lora_targets: str = "self"  # the projections it adapts: self (self-attention) or all (+ cross-attention and MLP)

    MINIMUM: ClassVar[dict] = {"residual_blocks": 1, "lora_rank": 0}
    CHOICES: ClassVar[dict] = {"lora_targets": ("self", "all")}


def plucker(K_F33, c2w_F44, height: int, width: int, origin_44=None) -> torch.Tensor:
    """Plücker rays [6, F, H, W] float32 ([o x d, d], poses relative to `origin_44`, by default frame
    0) of cameras with intrinsics K [F, 3, 3] (pixels) and camera-to-world extrinsics [F, 4, 4]
    (OpenCV axes)."""
    K = np.asarray(K_F33, dtype=np.float64)
    c2w = np.asarray(c2w_F44, dtype=np.float64)
    origin = c2w[0] if origin_44 is None else np.asarray(origin_44, dtype=np.float64)
    c2w = np.linalg.inv(origin) @ c2w                                         # relative to the origin
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix_3P = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])                  # (3, H·W)
    d_cam_F3P = np.linalg.inv(K) @ pix_3P                                      # ((u-cx)/fx, (v-cy)/fy, 1)
    d_cam_F3P /= np.linalg.norm(d_cam_F3P, axis=1, keepdims=True)
    d_F3P = c2w[:, :3, :3] @ d_cam_F3P                                          # rotated only (no + t)
    o_F3P = np.broadcast_to(c2w[:, :3, 3:], d_F3P.shape)
    m_F3P = np.cross(o_F3P, d_F3P, axis=1)
    rays = np.concatenate([m_F3P, d_F3P], axis=1).reshape(len(K), 6, height, width)
    return torch.from_numpy(rays.transpose(1, 0, 2, 3).astype(np.float32))


def group_frames(rays_6FHW: torch.Tensor, temporal_stride: int) -> torch.Tensor:
    """Video-frame rays [6, F, H, W] -> per latent frame [6·ts, F', H, W] (F = 1 + ts·(F' − 1)):
    frame 0 repeated ts times for the first latent frame, then ts frames at a time, channels
    ordered (ray channel, frame in the group)."""
    ts = temporal_stride
    if ts == 1:
        return rays_6FHW
    f = rays_6FHW.shape[1]
    if (f - 1) % ts:
        raise ValueError(f"{f} video frames are not 1 + {ts}k (vae.temporal_stride={ts})")
    padded = torch.cat([rays_6FHW[:, :1].expand(-1, ts - 1, -1, -1), rays_6FHW], dim=1)
    return rearrange(padded, "c (f k) h w -> (c k) f h w", k=ts)


@dataclass(frozen=True)
class CameraRays:
    """A request's camera rays per latent frame, made for the frames a pass reads (`window`): a
    minute of rays at pixel resolution is never held, so memory stays flat in the video's length.
    `poses`: framecast.models.camera_poses.Poses, one per video frame (1 + temporal_stride·k)."""
    poses: object
    temporal_stride: int
    height: int
    width: int

    @property
    def frames(self) -> int:
        """The video's latent frames."""
        return 1 + (len(self.poses) - 1) // self.temporal_stride

    def window(self, frames: range) -> torch.Tensor:
        """Rays [1, R, len(frames), H, W] of latent frames `frames`: those frames of the whole video's
        rays (poses relative to the video's frame 0). Latent frame j > 0 holds video frames
        1 + (j − 1)·ts .. j·ts; a window from j > 0 is grouped from one frame earlier and drops it."""
        if not 0 <= frames.start < frames.stop <= self.frames:
            raise ValueError(f"camera rays of latent frames {frames.start}..{frames.stop - 1}: the video has "
                             f"{self.frames}")
        ts, p = self.temporal_stride, self.poses
        first, stop = max(0, (frames.start - 1) * ts), (frames.stop - 1) * ts + 1
        rays = plucker(p.K_F33[first:stop], p.c2w_F44[first:stop], self.height, self.width, origin_44=p.c2w_F44[0])
        return group_frames(rays, ts)[None, :, int(frames.start > 0):]


def camera_rays(poses, temporal_stride: int, height: int, width: int) -> torch.Tensor:
    """The whole video's camera rays [1, R, F', H, W] from `poses` (one per video frame)."""
    rays = CameraRays(poses, temporal_stride, height, width)
    return rays.window(range(rays.frames))


class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


# The weights the camera LoRA adapts (camera.lora_targets), by the name of their LoRA: (the block's
# parameter, its input and output widths as "dim" (the model width) or "ffn" (model.ffn_dim))
SELF_TARGETS = {"q": ("attn1.to_q.weight", "dim", "dim"), "k": ("attn1.to_k.weight", "dim", "dim"),
                "v": ("attn1.to_v.weight", "dim", "dim"), "o": ("attn1.to_out.0.weight", "dim", "dim")}
LORA_TARGETS = {
    "self": SELF_TARGETS,
    "all": {**SELF_TARGETS, "cross_q": ("attn2.to_q.weight", "dim", "dim"), "cross_k": ("attn2.to_k.weight", "dim", "dim"),
            "cross_v": ("attn2.to_v.weight", "dim", "dim"), "cross_o": ("attn2.to_out.0.weight", "dim", "dim"),
            "ffn_in": ("ffn.net.0.proj.weight", "dim", "ffn"), "ffn_out": ("ffn.net.2.weight", "ffn", "dim")},
}


class CameraAdapter(nn.Module):
    def __init__(self, rays: int, dim: int, spatial_stride: int, patch_hw: tuple[int, int],
                 residual_blocks: int = 1, num_layers: int = 0, lora_rank: int = 0, lora_targets: str = "self",
                 ffn_dim: int = 0):
        super().__init__()
        self.pixel_unshuffle = nn.PixelUnshuffle(spatial_stride)
        self.conv = nn.Conv2d(rays * spatial_stride ** 2, dim, kernel_size=tuple(patch_hw), stride=tuple(patch_hw))
        self.residual_blocks = nn.Sequential(*(ResidualBlock(dim) for _ in range(residual_blocks)))
        with torch.no_grad():  # zero at init: the wrapped model is unchanged until trained
            for conv in [self.conv] + [block.conv2 for block in self.residual_blocks]:
                conv.weight.zero_()
                conv.bias.zero_()
        # built after the convs, so a rank-0 adapter draws the same random numbers as before the LoRA existed
        widths = {"dim": dim, "ffn": ffn_dim}
        self.targets = {name: target for name, (target, _, _) in LORA_TARGETS[lora_targets].items()}
        self.lora = nn.ModuleList(nn.ModuleDict({name: LoRA(widths[i], widths[o], lora_rank)
                                                 for name, (_, i, o) in LORA_TARGETS[lora_targets].items()})
                                  for _ in range(num_layers if lora_rank > 0 else 0))

    @classmethod
    def for_config(cls, cfg) -> "CameraAdapter":
        """The adapter of a framecast Config: R = 6·vae.temporal_stride, D = the model width,
        PixelUnshuffle(vae.spatial_stride), kernel = model.patch_size[1:]; with camera.lora_rank > 0,
        a LoRA of camera.lora_targets for each of the model.num_layers blocks."""
        m = cfg.model
        return cls(RAY_CHANNELS * cfg.vae.temporal_stride, m.num_attention_heads * m.attention_head_dim,
                   cfg.vae.spatial_stride, tuple(m.patch_size[1:]), cfg.camera.residual_blocks,
                   m.num_layers, cfg.camera.lora_rank, cfg.camera.lora_targets, m.ffn_dim)

    def forward(self, camera_BRFHW: torch.Tensor) -> torch.Tensor:
        """[B, R, F', H, W] rays (H, W in pixels) -> [B, F'·H'·W', D] token offsets, t-major."""
        b = camera_BRFHW.shape[0]
        x = rearrange(camera_BRFHW, "b r f h w -> (b f) r h w").to(self.conv.weight.dtype)
        x = self.residual_blocks(self.conv(self.pixel_unshuffle(x)))             # (B·F', D, H', W')
        return rearrange(x, "(b f) d h w -> b (f h w) d", b=b)


class CameraBlock(nn.Module):
    """A block of the wrapped model with its camera LoRA: in a pass that carries camera rays
    (`ctx.camera`), the block with each adapted weight W replaced by W + up·down (merged per call,
    so gradients reach the LoRA and none reach W); in any other pass, exactly the block.

    Not registered in CameraModel (its modules are, under `base` and `adapter`): `.to()`, `cast`
    and saving reach them there, and this wrapper reads them at call time."""

    def __init__(self, block: nn.Module, lora: nn.ModuleDict, targets: dict[str, str]):
        super().__init__()
        self.block, self.lora, self.targets = block, lora, targets

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["block"], name)  # layer_id, norm1, ... (caches read them)

    def forward(self, x_BLD: torch.Tensor, ctx) -> torch.Tensor:
        if not ctx.camera:
            return self.block(x_BLD, ctx)
        weights = {target: self.block.get_parameter(target) + self.lora[name].delta()
                   for name, target in self.targets.items()}
        return torch.func.functional_call(self.block, weights, (x_BLD, ctx))


class CameraModel(nn.Module):
    """A model of a family with `token_grid_fhw` whose token embedding also reads camera rays
    (cond.camera_BRFHW) through `adapter` (and, with a LoRA, whose blocks do too, in those passes);
    the block-loop contract of framecast/models/blocks.py."""

    def __init__(self, base: nn.Module, adapter: CameraAdapter):
        super().__init__()
        if not getattr(type(base), "token_grid_fhw", False):
            raise ValueError(f"{type(base).__name__} does not expose a per-frame token grid: no camera adapter")
        self.base, self.adapter = base, adapter
        if len(adapter.lora) and len(adapter.lora) != len(base.blocks):
            raise ValueError(f"the camera LoRA has {len(adapter.lora)} layers; the model has {len(base.blocks)} "
                             f"blocks (model.num_layers)")
        # a plain tuple, not a ModuleList: the blocks and LoRAs are registered under base and adapter already
        self.camera_blocks = tuple(CameraBlock(block, lora, adapter.targets) for block, lora in zip(base.blocks, adapter.lora))

    @property
    def blocks(self):
        """The wrapped model's blocks; with a camera LoRA, its CameraBlocks (a tuple)."""
        return self.camera_blocks if self.camera_blocks else self.base.blocks

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            base = self.__dict__["_modules"].get("base")
            if base is None:
                raise
            return getattr(base, name)  # the wrapped family's attributes and capabilities

    def embed(self, lat_BCFHW: torch.Tensor, t, cond: Conditioning):
        x_BLD, ctx = self.base.embed(lat_BCFHW, t, cond)
        if cond.camera_BRFHW is not None:
            cam_BLD = self.adapter(cond.camera_BRFHW.to(x_BLD.device))
            if cam_BLD.shape != x_BLD.shape:
                raise ValueError(f"camera rays {list(cond.camera_BRFHW.shape)} give {list(cam_BLD.shape)} tokens; the "
                                 f"latents {list(lat_BCFHW.shape)} give {list(x_BLD.shape)} (rays are at pixel size)")
            x_BLD = x_BLD + cam_BLD.to(x_BLD.dtype)
            ctx = replace(ctx, camera=True)  # the blocks' camera LoRA acts in this pass (only)
        return x_BLD, ctx

    def head(self, x_BLD: torch.Tensor, ctx) -> torch.Tensor:
        return self.base.head(x_BLD, ctx)

    def place(self, ctx, query_frames: torch.Tensor, key_frames: torch.Tensor):
        return self.base.place(ctx, query_frames, key_frames)

    def forward(self, lat_BCFHW: torch.Tensor, t, cond: Conditioning) -> torch.Tensor:
        return run_model(self, lat_BCFHW, t, cond)

    def cast(self, dtype: torch.dtype) -> "CameraModel":
        self.base.cast(dtype)
        self.adapter.to(dtype)
        return self


def camera_problem(cfg) -> Optional[str]:
    """Why cfg's model cannot take a camera adapter (one line), or None."""
    from framecast.models.registry import model_class

    if not model_class(cfg.model.kind).token_grid_fhw:
        return (f"camera.weights={cfg.camera.weights!r}: model.kind={cfg.model.kind} does not expose a per-frame "
                f"token grid a camera adapter can add to (families that do: wan)")
    if cfg.model.patch_size[0] != 1:
        return f"camera.weights: the camera adapter needs model.patch_size[0] == 1, got {list(cfg.model.patch_size)}"
    return None


def camera_weights_path(weights: str):
    """(path, name for errors) of camera.weights: builtin:NAME, a train --out folder or a .safetensors."""
    import importlib.resources
    from pathlib import Path

    if weights.startswith("builtin:"):
        name = weights.split(":", 1)[1]
        path = Path(str(importlib.resources.files("framecast.weights").joinpath(f"{name}.safetensors")))
        if not path.is_file():
            raise ValueError(f"camera.weights={weights!r}: no shipped weights named {name!r}")
        return path, f"builtin camera weights {name!r}"
    path = Path(weights) / "weights.safetensors" if Path(weights).is_dir() else Path(weights)
    if not path.is_file() or path.suffix != ".safetensors":
        raise ValueError(f"camera.weights={weights!r}: use builtin:NAME, a `framecast train --camera --out` folder "
                         f"or its weights.safetensors")
    return path, f"camera weights {str(path)!r}"


def load_camera_adapter(cfg) -> CameraAdapter:
    """The adapter of cfg (`for_config`) loaded from camera.weights' `camera.*` tensors (strict)."""
    from safetensors import safe_open

    path, what = camera_weights_path(cfg.camera.weights)
    with safe_open(str(path), framework="pt") as f:
        state = {k[len("camera."):]: f.get_tensor(k) for k in f.keys() if k.startswith("camera.")}
    if not state:
        raise ValueError(f"{what} hold no camera adapter (no camera.* tensors)")
    adapter = CameraAdapter.for_config(cfg)
    try:
        adapter.load_state_dict(state, strict=True)
    except RuntimeError as e:
        trained, wanted = lora_settings(state), f"camera.lora_rank={cfg.camera.lora_rank}"
        if cfg.camera.lora_rank > 0:
            wanted += f" camera.lora_targets={cfg.camera.lora_targets}"
        if trained is not None and trained != wanted:
            raise ValueError(f"{what} do not match this model's camera adapter: they were trained with {trained}, "
                             f"this config has {wanted}") from None
        detail = " ".join(str(e).split()).replace("Error(s) in loading state_dict for CameraAdapter: ", "")
        raise ValueError(f"{what} do not match this model's camera adapter: {detail[:240]}") from None
    return adapter


def lora_settings(state: dict) -> Optional[str]:
    """The `camera.lora_rank=R camera.lora_targets=T` settings an adapter's tensors were made with
    (`camera.lora_rank=0` without a LoRA); None when its first block's LoRA names match no target set."""
    names = {k.split(".")[2] for k in state if k.startswith("lora.0.")}
    if not names:
        return "camera.lora_rank=0"
    targets = [t for t, spec in LORA_TARGETS.items() if set(spec) == names]
    if not targets or f"lora.0.{min(names)}.down.weight" not in state:
        return None
    return f"camera.lora_rank={state[f'lora.0.{min(names)}.down.weight'].shape[0]} camera.lora_targets={targets[0]}"
