"""Typed configuration: dataclass defaults <- preset YAML (configs/NAME.yaml) <- dotlist overrides.

    cfg = load_config("tiny", ["sampler.steps=20", "video.height=64"])

Every field carries its meaning and unit. Unknown keys, wrong types and out-of-range values raise
`ConfigError` with one line naming the key and what is allowed.
"""
from __future__ import annotations

import importlib.resources
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from typing import List, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framecast.models.registry import FAMILIES
from framecast.models.latte import LatteConfig
from framecast.models.vdt import VdtConfig
from framecast.models.avdit import AvditConfig
from framecast.models.vin import VinConfig
from framecast.models.camera import CameraConfig


class ConfigError(ValueError):
    """A bad preset, key or value; the message is one line naming the key and what is allowed."""


@dataclass
class ModelConfig:
    kind: str = "wan"  # model family (framecast/models/registry.py): wan, latte, vdt (docs/model-zoo.md)
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
    latte: LatteConfig = field(default_factory=LatteConfig)  # model.kind=latte only: Latte's own keys (framecast/models/latte.py)
    vdt: VdtConfig = field(default_factory=VdtConfig)  # model.kind=vdt only: VDT's own keys (framecast/models/vdt.py)
    # model.kind=avdit only: the engine-defined AV-DiT's keys, not the paper's (framecast/models/avdit.py)
    avdit: AvditConfig = field(default_factory=AvditConfig)


@dataclass
class TextConfig:
    kind: str = "umt5"  # umt5 (transformers UMT5 from a checkpoint folder) | t5 (T5, Latte) | builtin (world vocabulary)
    max_length: int = 512  # tokens the prompt is padded/cut to (diffusers max_sequence_length)


@dataclass
class VaeConfig:
    kind: str = "wan"  # wan (diffusers AutoencoderKLWan) | sd (AutoencoderKL per frame, Latte) | identity (pixel space)
    temporal_stride: int = 4  # video frames per latent frame (first latent frame = 1 frame)
    spatial_stride: int = 8  # pixels per latent pixel


@dataclass
class SamplerConfig:
    name: str = "unipc"  # unipc | euler (diffusers' FlowMatchEuler table) | euler-wan (Euler on Wan's sigmas) | ddim (DDPM models: Latte)
    steps: int = 50  # denoising steps per frame
    shift: float = 3.0  # flow sigma shift (Wan: 3.0 at 480p, 5.0 at 720p)
    guidance_scale: float = 5.0  # classifier-free guidance; <= 1 turns CFG off


@dataclass
class AudioConfig:
    """The soundtrack of audio-video models (model.kind=avdit): the mel codec of framecast/engine/audio.py."""

    sample_rate: int = 16000  # Hz, mono; video.fps must divide it (each frame owns whole samples)
    n_fft: int = 512  # FFT size of each hop's frame-local window (zero-padded hop; frequency grid only)
    fmin: float = 0.0  # Hz, lowest mel edge
    fmax: float = 0.0  # Hz, highest mel edge; 0 = sample_rate / 2
    db_range: float = 80.0  # dB below a unit sine that the band's -1 stands for (silence floor)


@dataclass
class VideoConfig:
    height: int = 480  # pixels
    width: int = 832  # pixels
    frames: int = 81  # default frame count when neither --frames nor --seconds is given
    fps: int = 16  # frames per second of the output


def _schedule_config() -> type:
    """ScheduleConfig: `name` plus one section per registered schedule (its `Options` dataclass),
    so a new schedule brings its own config section with its module."""
    from framecast.schedulers.registry import SCHEDULES, schedule_class

    sections = [(name, schedule_class(name).Options) for name in SCHEDULES]
    cls = make_dataclass("ScheduleConfig", [
        ("name", str, field(default="full")),  # registry name: full | rollout | dualparal | nfd | vin | task (see README)
        *[(name, opts, field(default_factory=opts)) for name, opts in sections]])
    cls.__module__ = __name__  # pickled configs (torchrun, Ray) find the class here
    return cls


ScheduleConfig = _schedule_config()


def _attention_config() -> type:
    """AttentionConfig: the options shared by the sparse backends plus one section per registered
    backend that has options (its `Options` dataclass, declared in the attention registry)."""
    from framecast.models.attention import BACKENDS, resolve

    sections = [(name, resolve(b.options)) for name, b in BACKENDS.items() if b.options]
    cls = make_dataclass("AttentionConfig", [
        # sparse backends run dense sdpa for the first sampler steps (the layout forms early) ...
        ("dense_steps", int, field(default=0)),
        # ... and in these layers (0-based block indices)
        ("dense_layers", List[int], field(default_factory=list)),
        *[(name, opts, field(default_factory=opts)) for name, opts in sections]])
    cls.__module__ = __name__
    return cls


AttentionConfig = _attention_config()


def _cache_config() -> type:
    """CacheConfig: the feature cache's `kind` and `calibration` plus one section per cache kind
    (its `Options` dataclass, framecast/models/caches/KIND.py); docs/caches.md."""
    from framecast.models.caches import KINDS, cache_class

    sections = [(kind, cache_class(kind).Options) for kind in KINDS if KINDS[kind]]
    cls = make_dataclass("CacheConfig", [
        # none (every block every step) | taylorseer | cg_taylor | delta_dit | fbcache | teacache | magcache
        ("kind", str, field(default="none")),
        # teacache / magcache: builtin:NAME or a JSON file from `framecast calibrate-cache`;
        # "" = the calibration shipped with model.weights=builtin:NAME
        ("calibration", str, field(default="")),
        *[(kind, opts, field(default_factory=opts)) for kind, opts in sections]])
    cls.__module__ = __name__
    return cls


CacheConfig = _cache_config()


@dataclass
class ParallelConfig:
    workers: int = 1  # W: pipeline stages (one per GPU / CPU process)
    launcher: str = "local"  # local | torchrun | ray
    ray_address: str = ""  # "" starts a local Ray instance; "auto" joins a running cluster
    placement: str = "PACK"  # Ray placement-group strategy: PACK | SPREAD
    layer_split: List[int] = field(default_factory=list)  # layers per worker; [] = as even as possible
    timeout_s: int = 600  # seconds a worker waits on a peer (process-group timeout) before the run fails naming it
    connect_timeout_s: float = 30.0  # seconds to join a Ray cluster and to place its workers before failing


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
    audio: AudioConfig = field(default_factory=AudioConfig)  # soundtrack codec of audio-video models (model.kind=avdit)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)  # sparse-backend options (model.attn_backend)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)  # training-free feature cache (cache.kind; docs/caches.md)
    vin: VinConfig = field(default_factory=VinConfig)  # the learned VIN interface module (schedule.name=vin; docs/vin.md)
    camera: CameraConfig = field(default_factory=CameraConfig)  # the camera adapter (camera.weights; docs/camera.md)


# key -> allowed values, for string fields with a closed set
CHOICES = {
    "model.kind": tuple(FAMILIES),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "text.kind": ("umt5", "t5", "builtin"),
    "vae.kind": ("wan", "sd", "identity"),
    "sampler.name": ("unipc", "euler", "euler-wan", "ddim"),
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
    "audio.sample_rate": 1, "audio.n_fft": 1, "audio.fmin": 0.0, "audio.fmax": 0.0, "audio.db_range": 1.0,
    "parallel.workers": 1, "parallel.timeout_s": 1, "parallel.connect_timeout_s": 0.1, "seed": 0,
}


def presets() -> list[str]:
    """Names of the shipped presets (configs/*.yaml)."""
    root = importlib.resources.files("framecast.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _preset_text(name: str) -> str:
    if name not in presets():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(presets())}")
    return importlib.resources.files("framecast.configs").joinpath(f"{name}.yaml").read_text()


def _moved(key: str) -> str:
    """Where a flat schedule key of earlier versions lives now ("" if `key` is not one)."""
    parts = key.split(".")
    if len(parts) != 2 or parts[0] != "schedule":
        return ""
    homes = [f"schedule.{name}.{parts[1]}" for name, section in _schedule_sections(Config())
             if parts[1] in {f.name for f in fields(section)}]
    return f"; it moved to {' or '.join(homes)}" if homes else ""


def _schedule_sections(cfg: Config) -> list[tuple[str, object]]:
    """(name, options) of every schedule's config section."""
    return [(f.name, getattr(cfg.schedule, f.name)) for f in fields(cfg.schedule) if f.name != "name"]


def _one_line(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    msg = str(e).splitlines()[0]
    if "not in" in msg:
        if _moved(key):
            return f"{source}: unknown key {key!r}{_moved(key)}"
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
        key = item.split("=", 1)[0]
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):  # OmegaConf's own parser fails on some
            raise ConfigError(f"override {item!r}: {key!r} is not a config key (dotted names, e.g. sampler.steps=20)")
        if item.endswith("="):  # `key=` means the empty string (OmegaConf would read None)
            item += '""'
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            if _node(key) is not None and _moved(key):  # a flat key of earlier versions that names a section now
                raise ConfigError(f"override {item!r}: the flat key {key} of earlier versions is a section now "
                                  f"({key}.*, the options of schedule.name={key.split('.')[1]}){_moved(key)}") from None
            raise ConfigError(_one_line(e, f"override {item!r}")) from None
        except (yaml.YAMLError, UnicodeError) as e:  # the value is parsed as YAML: ":" or control characters
            msg = " ".join(str(e).split())[:160]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({msg})") from None
    merged.preset = preset
    try:
        cfg = OmegaConf.to_object(merged)  # resolves ${...} interpolations: a bad one fails only here
    except OmegaConfBaseException as e:
        raise ConfigError(_interpolation_problem(e, preset, overrides)) from None
    validate(cfg)
    return cfg


def _interpolation_problem(e: OmegaConfBaseException, preset: str, overrides: Sequence[str]) -> str:
    """One line for a ${...} that does not resolve to a value its field takes, naming the override."""
    msg = str(e).splitlines()[0]
    given = [o for o in overrides if "${" in o]
    key = getattr(e, "full_key", None) or (given[0].split("=", 1)[0] if len(given) == 1 else "")
    mine = [o for o in given if o.split("=", 1)[0] == key] or given
    source = f"override {mine[0]!r}" if len(mine) == 1 else (
        f"overrides {', '.join(map(repr, mine))}" if mine else f"preset {preset!r}")
    return f"{source}: the interpolation does not give a value {key or 'the field'} takes: {msg}"


def _get(cfg: Config, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _floats(node, prefix: str = ""):
    """(dotted key, value) of every float field in the config tree."""
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            yield from _floats(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{f.name}", value


def validate(cfg: Config) -> None:
    """Range and choice checks; raises ConfigError naming the key and the allowed values."""
    from framecast.models.attention import BACKENDS

    for key, value in _floats(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not a finite number")
    if cfg.model.attn_backend not in BACKENDS:
        raise ConfigError(f"model.attn_backend={cfg.model.attn_backend!r} is not allowed; choose one of: "
                          f"{', '.join(BACKENDS)}")
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
    _validate_schedules(cfg)
    _validate_attention(cfg)
    _validate_cache(cfg)
    _check_section("vin", cfg.vin)
    _check_section("model.avdit", cfg.model.avdit)
    if m.kind == "avdit" and cfg.audio.sample_rate % cfg.video.fps:
        raise ConfigError(f"video.fps={cfg.video.fps} does not divide audio.sample_rate={cfg.audio.sample_rate}: "
                          f"model.kind=avdit needs whole audio samples per frame (e.g. fps 8, 10, 16, 20, 25)")
    lag = cfg.model.avdit.audio_lag
    if m.kind == "avdit" and lag > cfg.sampler.steps:
        raise ConfigError(f"model.avdit.audio_lag={lag} must be at most sampler.steps={cfg.sampler.steps} (the band "
                          f"runs that many steps behind the video)")
    if m.kind == "avdit" and lag and cfg.cache.kind != "none":
        raise ConfigError(f"cache.kind={cfg.cache.kind} does not run with model.avdit.audio_lag={lag}: a feature "
                          f"cache reuses a block's previous step, and the lagged loop's calls mix two steps; use "
                          f"cache.kind=none or model.avdit.audio_lag=0")
    _check_section("camera", cfg.camera)
    if cfg.camera.weights:
        from framecast.models.camera import camera_problem

        problem = camera_problem(cfg)
        if problem:
            raise ConfigError(problem)
    if cfg.parallel.layer_split:
        split = list(cfg.parallel.layer_split)
        if len(split) != cfg.parallel.workers or sum(split) != m.num_layers or min(split) < 1:
            raise ConfigError(f"parallel.layer_split={split} must list {cfg.parallel.workers} positive "
                              f"layer counts summing to model.num_layers={m.num_layers}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")


def _validate_schedules(cfg: Config) -> None:
    """Every schedule section's ranges and choices (each Options class declares MINIMUM / CHOICES
    by field and may have `check()`), then the selected schedule's checks against the whole config."""
    from framecast.schedulers.registry import SCHEDULES, schedule_class

    if cfg.schedule.name not in SCHEDULES:
        raise ConfigError(f"schedule.name={cfg.schedule.name!r} is not allowed; choose one of: {', '.join(SCHEDULES)}")
    for name, options in _schedule_sections(cfg):
        _check_section(f"schedule.{name}", options)
    selected = schedule_class(cfg.schedule.name)
    problem = selected.check_config(cfg, getattr(cfg.schedule, cfg.schedule.name))
    if problem:
        raise ConfigError(problem)


def _validate_attention(cfg: Config) -> None:
    """The shared sparse options and every backend section (MINIMUM / MAXIMUM / CHOICES by field,
    and its `check()`)."""
    a = cfg.attention
    if a.dense_steps < 0:
        raise ConfigError(f"attention.dense_steps={a.dense_steps} is out of range; must be >= 0")
    bad = [i for i in a.dense_layers if not 0 <= i < cfg.model.num_layers]
    if bad:
        raise ConfigError(f"attention.dense_layers={list(a.dense_layers)}: layers must be in 0..{cfg.model.num_layers - 1}")
    for f in fields(a):
        if is_dataclass(getattr(a, f.name)):
            _check_section(f"attention.{f.name}", getattr(a, f.name))


def _validate_cache(cfg: Config) -> None:
    """cache.kind and every kind's section, then the selected kind's checks against the whole config."""
    from framecast.models.caches import KINDS, cache_class

    c = cfg.cache
    if c.kind not in KINDS:
        raise ConfigError(f"cache.kind={c.kind!r} is not allowed; choose one of: {', '.join(KINDS)}")
    for kind in (k for k in KINDS if KINDS[k]):
        _check_section(f"cache.{kind}", getattr(c, kind))
    selected = cache_class(c.kind)
    problem = selected.check_config(cfg) if selected is not None else None  # e.g. a family it cannot read
    if problem:
        raise ConfigError(problem)


def _check_section(prefix: str, options) -> None:
    """An options section's declared checks: CHOICES, MINIMUM and MAXIMUM by field, then `check()`
    (one line naming the problem), for the sections that schedules, backends and caches bring."""
    for key, allowed in getattr(options, "CHOICES", {}).items():
        if getattr(options, key) not in allowed:
            raise ConfigError(f"{prefix}.{key}={getattr(options, key)!r} is not allowed; "
                              f"choose one of: {', '.join(map(str, allowed))}")
    for key, low in getattr(options, "MINIMUM", {}).items():
        if getattr(options, key) < low:
            raise ConfigError(f"{prefix}.{key}={getattr(options, key)} is out of range; must be >= {low}")
    for key, high in getattr(options, "MAXIMUM", {}).items():
        if getattr(options, key) > high:
            raise ConfigError(f"{prefix}.{key}={getattr(options, key)} is out of range; must be <= {high}")
    problem = options.check() if hasattr(options, "check") else None
    if problem:
        raise ConfigError(problem)


def schedule_options(cfg: Config):
    """The selected schedule's config section (cfg.schedule.<name>)."""
    return getattr(cfg.schedule, cfg.schedule.name)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
