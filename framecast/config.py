"""Typed configuration: dataclass defaults <- preset YAML (configs/NAME.yaml) <- dotlist overrides.

    cfg = load_config("tiny", ["sampler.steps=20", "video.height=64"])

Every field carries its meaning and unit. Unknown keys, wrong types and out-of-range values raise
`ConfigError` with one line naming the key and what is allowed.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field, fields, is_dataclass
from typing import List, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad preset, key or value; the message is one line naming the key and what is allowed."""


@dataclass
class ModelConfig:
    kind: str = "wan"  # model family (registry name); only "wan" ships today
    weights: str = ""  # "" = random init (init_seed); builtin:NAME = shipped; or a `train --out` folder / .safetensors
    init_seed: int = 0  # seed for random init when no weights are given
    patch_size: List[int] = field(default_factory=lambda: [1, 2, 2])  # (t, h, w) latent patch
    num_attention_heads: int = 12  # attention heads
    attention_head_dim: int = 128  # channels per head; inner dim = heads * head_dim
    in_channels: int = 16  # latent channels in (= VAE z_dim)
    out_channels: int = 16  # latent channels out
    text_dim: int = 4096  # text-encoder embedding width
    freq_dim: int = 256  # sinusoidal timestep embedding width
    ffn_dim: int = 8960  # feed-forward hidden width
    num_layers: int = 30  # transformer blocks
    cross_attn_norm: bool = True  # affine LayerNorm before cross-attention (Wan: True)
    eps: float = 1e-6  # norm epsilon
    rope_max_seq_len: int = 1024  # RoPE table length per axis (positions)
    num_actions: int = 0  # > 0: discrete-action adaLN conditioning (play models)
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
    attn_backend: str = "sdpa"  # attention backend name (see `framecast info`)


@dataclass
class TextConfig:
    kind: str = "umt5"  # umt5 (transformers UMT5 from a checkpoint folder) | builtin (world vocabulary)
    max_length: int = 512  # tokens the prompt is padded/cut to (diffusers max_sequence_length)


@dataclass
class VaeConfig:
    kind: str = "wan"  # wan (diffusers AutoencoderKLWan) | identity (pixel space)
    temporal_stride: int = 4  # video frames per latent frame (first latent frame = 1 frame)
    spatial_stride: int = 8  # pixels per latent pixel


@dataclass
class SamplerConfig:
    name: str = "unipc"  # unipc | euler (diffusers' FlowMatchEuler table) | euler-wan (Euler on Wan's sigmas)
    steps: int = 50  # denoising steps per frame
    shift: float = 3.0  # flow sigma shift (Wan: 3.0 at 480p, 5.0 at 720p)
    guidance_scale: float = 5.0  # classifier-free guidance; <= 1 turns CFG off


@dataclass
class VideoConfig:
    height: int = 480  # pixels
    width: int = 832  # pixels
    frames: int = 81  # default frame count when neither --frames nor --seconds is given
    fps: int = 16  # frames per second of the output


@dataclass
class ScheduleConfig:
    name: str = "full"  # full (whole clip at one noise level) | dualparal (staggered blocks) | nfd (frame by frame)
    #                     | rollout (chunk after chunk, each from the finished frames before it)
    block_frames: int = 8  # DualParal N: latent frames per block
    context_frames: int = 4  # DualParal C: latent frames of the older neighbour as left context
    chunk_frames: int = 4  # rollout: latent frames made per chunk
    chunk_context: int = 4  # rollout: finished latent frames before a chunk it is given clean
    lead_frames: int = 0  # full: denoise the first L latent frames first, then the rest with them as clean context
    #                       (rollout: the first chunk is the first L frames)
    window: int = 32  # NFD: committed frames a new frame attends to (the KV cache window; NFD: 32)
    context_sigma: float = 0.0  # NFD: noise level in [0, 1) of committed frames against drift (0 = clean)
    speculate: int = 1  # NFD: draft K frames under the current action, keep those the actions confirm (1 = off)
    draft_mode: str = "joint"  # NFD drafts: joint (one batched pass per step) | sequential (= plain NFD)
    first_frame: str = "generate"  # NFD: generate (the model makes frame 0) | world (a built-in world scene)
    fuse_commit: bool = True  # NFD: record finished frames' K/V in the next chunk's first pass (T passes, not T + 1)


@dataclass
class ParallelConfig:
    workers: int = 1  # W: pipeline stages (one per GPU / CPU process)
    launcher: str = "local"  # local | torchrun | ray
    ray_address: str = ""  # "" starts a local Ray instance; "auto" joins a running cluster
    placement: str = "PACK"  # Ray placement-group strategy: PACK | SPREAD
    layer_split: List[int] = field(default_factory=list)  # layers per worker; [] = as even as possible


@dataclass
class Config:
    preset: str = ""  # the preset these values came from
    seed: int = 0  # same seed, same video
    negative_prompt: str = ""  # unconditional prompt for CFG (diffusers' default: "")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


# key -> allowed values, for string fields with a closed set
CHOICES = {
    "model.kind": ("wan",),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "text.kind": ("umt5", "builtin"),
    "vae.kind": ("wan", "identity"),
    "sampler.name": ("unipc", "euler", "euler-wan"),
    "schedule.name": ("full", "dualparal", "nfd", "rollout"),
    "schedule.draft_mode": ("joint", "sequential"),
    "schedule.first_frame": ("generate", "world"),
    "parallel.launcher": ("local", "torchrun", "ray"),
    "parallel.placement": ("PACK", "SPREAD"),
}
# key -> minimum allowed value, for numeric fields
MINIMUM = {
    "model.num_attention_heads": 1, "model.attention_head_dim": 2, "model.in_channels": 1,
    "model.out_channels": 1, "model.text_dim": 1, "model.freq_dim": 2, "model.ffn_dim": 1,
    "model.num_layers": 1, "model.eps": 0.0, "model.rope_max_seq_len": 1, "model.num_actions": 0,
    "text.max_length": 1, "vae.temporal_stride": 1, "vae.spatial_stride": 1,
    "sampler.steps": 1, "sampler.shift": 1e-6, "sampler.guidance_scale": 0.0,
    "video.height": 1, "video.width": 1, "video.frames": 1, "video.fps": 1,
    "schedule.block_frames": 1, "schedule.context_frames": 0, "schedule.lead_frames": 0, "schedule.window": 1,
    "schedule.chunk_frames": 1, "schedule.chunk_context": 0,
    "schedule.context_sigma": 0.0,
    "schedule.speculate": 1, "parallel.workers": 1, "seed": 0,
}


def presets() -> list[str]:
    """Names of the shipped presets (configs/*.yaml)."""
    root = importlib.resources.files("framecast.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _preset_text(name: str) -> str:
    if name not in presets():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(presets())}")
    return importlib.resources.files("framecast.configs").joinpath(f"{name}.yaml").read_text()


def _one_line(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    msg = str(e).splitlines()[0]
    if "not in" in msg:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = _node(parent)
        allowed = ", ".join(f.name for f in fields(node)) if node is not None else ""
        return f"{source}: unknown key {key!r}; allowed keys{' in ' + parent if parent else ''}: {allowed}"
    return f"{source}: bad value for {key!r}: {msg}"


def _node(path: str):
    """The dataclass instance at a dotted path of the defaults, or None."""
    obj = Config()
    for part in [p for p in path.split(".") if p]:
        obj = getattr(obj, part, None)
        if not is_dataclass(obj):
            return None
    return obj


def load_config(preset: str = "tiny", overrides: Sequence[str] = ()) -> Config:
    """Defaults <- preset YAML <- dotlist overrides (e.g. ["sampler.steps=20"]); validated."""
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(_preset_text(preset)))
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e, f"preset {preset!r}")) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. sampler.steps=20)")
        if item.endswith("="):  # `key=` means the empty string (OmegaConf would read None)
            item += '""'
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise ConfigError(_one_line(e, f"override {item!r}")) from None
    merged.preset = preset
    cfg = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def _get(cfg: Config, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config) -> None:
    """Range and choice checks; raises ConfigError naming the key and the allowed values."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    for key, low in MINIMUM.items():
        value = _get(cfg, key)
        if value < low:
            raise ConfigError(f"{key}={value} is out of range; must be >= {low}")
    m = cfg.model
    if len(m.patch_size) != 3 or min(m.patch_size) < 1:
        raise ConfigError(f"model.patch_size={list(m.patch_size)} must be 3 positive ints (t, h, w)")
    if m.attention_head_dim % 2:
        raise ConfigError(f"model.attention_head_dim={m.attention_head_dim} must be even (RoPE pairs)")
    if cfg.schedule.context_frames > cfg.schedule.block_frames:
        raise ConfigError(f"schedule.context_frames={cfg.schedule.context_frames} must be <= "
                          f"schedule.block_frames={cfg.schedule.block_frames}")
    if not cfg.schedule.context_sigma < 1.0:
        raise ConfigError(f"schedule.context_sigma={cfg.schedule.context_sigma} is out of range; must be in [0, 1)")
    if cfg.schedule.name == "nfd" and (m.patch_size[0] != 1 or cfg.vae.temporal_stride != 1):
        raise ConfigError(f"schedule.name=nfd generates one video frame at a time: it needs model.patch_size[0]=1 "
                          f"and vae.temporal_stride=1, got {m.patch_size[0]} and {cfg.vae.temporal_stride}")
    if cfg.parallel.layer_split:
        split = list(cfg.parallel.layer_split)
        if len(split) != cfg.parallel.workers or sum(split) != m.num_layers or min(split) < 1:
            raise ConfigError(f"parallel.layer_split={split} must list {cfg.parallel.workers} positive "
                              f"layer counts summing to model.num_layers={m.num_layers}")
    if cfg.schedule.name == "dualparal" and cfg.parallel.launcher == "local" and cfg.parallel.workers != 1:
        raise ConfigError(f"parallel.launcher=local runs one worker; got parallel.workers={cfg.parallel.workers} "
                          f"(use parallel.launcher=torchrun or ray for more)")
    if cfg.parallel.workers > m.num_layers:
        raise ConfigError(f"parallel.workers={cfg.parallel.workers} must be <= model.num_layers={m.num_layers}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
