"""Build what a generation needs — model, text encoder, VAE, sampler — from a config, a shipped
weights file, or a local checkpoint folder in diffusers' Wan layout:

    DIR/model_index.json  transformer/  vae/  text_encoder/  tokenizer/  scheduler/

Nothing is downloaded. A missing or malformed folder is a `CheckpointError` naming what is wrong.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import torch

from framecast.config import Config, ConfigError
from framecast.engine.wan_checkpoint import CheckpointError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECKPOINT_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def model_kwargs(cfg: Config) -> dict:
    m = cfg.model
    return dict(patch_size=tuple(m.patch_size), num_attention_heads=m.num_attention_heads,
                attention_head_dim=m.attention_head_dim, in_channels=m.in_channels,
                out_channels=m.out_channels, text_dim=m.text_dim, freq_dim=m.freq_dim, ffn_dim=m.ffn_dim,
                num_layers=m.num_layers, cross_attn_norm=m.cross_attn_norm, qk_norm="rms_norm_across_heads",
                eps=m.eps, rope_max_seq_len=m.rope_max_seq_len, num_actions=m.num_actions)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent.parent if what != 'model_index' else path.parent}: "
                              f"missing {path.name} ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed JSON ({e.__class__.__name__}: {e})") from None


def inspect_checkpoint(folder: str | Path) -> dict:
    """Check the folder's layout and read its small JSON configs (no weights). Returns
    {"transformer": cfg, "vae": cfg, "scheduler": cfg}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist")
    _read_json(folder / "model_index.json", "model_index")
    missing = [p for p in CHECKPOINT_PARTS if not (folder / p).is_dir()]
    if missing:
        raise CheckpointError(f"checkpoint {folder}: missing sub-folder(s) {', '.join(missing)}; "
                              f"diffusers' Wan layout needs {', '.join(CHECKPOINT_PARTS)}")
    return {
        "transformer": _read_json(folder / "transformer" / "config.json", "transformer config"),
        "vae": _read_json(folder / "vae" / "config.json", "vae config"),
        "scheduler": _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config"),
    }


def apply_checkpoint_config(cfg: Config, info: dict, keep_sampler: set[str]) -> None:
    """Shapes and sampler defaults come from the folder (fields in `keep_sampler` were set by the
    user and win)."""
    from framecast.schedulers.flow import sampler_from_diffusers_config

    t = info["transformer"]
    m = cfg.model
    for key in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "eps", "rope_max_seq_len"):
        if key in t:
            setattr(m, key, t[key])
    if "patch_size" in t:
        m.patch_size = list(t["patch_size"])
    if "dim" in t and "num_heads" in t:  # original Wan-AI config names
        m.num_attention_heads, m.attention_head_dim = t["num_heads"], t["dim"] // t["num_heads"]
        m.num_layers, m.ffn_dim = t["num_layers"], t["ffn_dim"]
    cfg.text.kind, cfg.vae.kind = "umt5", "wan"
    v = info["vae"]
    cfg.vae.temporal_stride = int(v.get("scale_factor_temporal", 4))
    cfg.vae.spatial_stride = int(v.get("scale_factor_spatial", 8))
    try:
        sampler = sampler_from_diffusers_config(info["scheduler"])
    except ValueError as e:
        raise CheckpointError(f"scheduler/scheduler_config.json: {e}") from None
    if "name" not in keep_sampler:
        cfg.sampler.name = "unipc" if type(sampler).__name__ == "FlowUniPC" else "euler"
    if "shift" not in keep_sampler:
        cfg.sampler.shift = float(sampler.shift)


def _random_model(cfg: Config):
    from framecast.models.registry import model_class

    with torch.random.fork_rng(devices=[]):  # random init must not disturb the caller's RNG
        torch.manual_seed(cfg.model.init_seed)
        return model_class(cfg.model.kind)(**model_kwargs(cfg))


def load_builtin(name: str, cfg: Config):
    """Shipped weights framecast/weights/NAME.safetensors: keys `transformer.*` and `text_encoder.*`."""
    import importlib.resources

    path = importlib.resources.files("framecast.weights").joinpath(f"{name}.safetensors")
    if not path.is_file():
        raise ConfigError(f"model.weights='builtin:{name}': no shipped weights named {name!r}")
    return load_world_weights(str(path), cfg, f"builtin weights {name!r}")


def load_world_weights(path: str | Path, cfg: Config, what: str = ""):
    """(model of the model.kind family, BuiltinTextEncoder) from a world weights file (`framecast
    train`'s weights.safetensors layout: keys `transformer.*` and `text_encoder.*`)."""
    from safetensors.torch import load_file

    from framecast.engine.text import BuiltinTextEncoder
    from framecast.models.registry import model_class

    what = what or f"weights {str(path)!r}"
    sd = load_file(str(path))
    blocks = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.blocks.")}
    if blocks and len(blocks) != cfg.model.num_layers:
        raise CheckpointError(f"{what} have {len(blocks)} transformer blocks but model.num_layers="
                              f"{cfg.model.num_layers}: use model.num_layers={len(blocks)}")
    model = model_class(cfg.model.kind)(**model_kwargs(cfg))
    text = BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)
    for prefix, module in (("transformer.", model), ("text_encoder.", text)):
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{what} do not match the preset's model config: "
                                  f"{str(e).splitlines()[0]}") from None
    return model, text


def load_configured_weights(cfg: Config):
    """(model, text encoder) from cfg.model.weights: builtin:NAME, or a world weights file
    (`framecast train`'s weights.safetensors, or its --out folder)."""
    w = cfg.model.weights
    if w.startswith("builtin:"):
        return load_builtin(w.split(":", 1)[1], cfg)
    path = Path(w) / "weights.safetensors" if Path(w).is_dir() else Path(w)
    if not path.is_file() or path.suffix != ".safetensors":
        raise ConfigError(f"model.weights={w!r}: use builtin:NAME, a `framecast train --out` folder or its "
                          f"weights.safetensors (a Wan checkpoint folder goes to --checkpoint DIR)")
    return load_world_weights(path, cfg)


def build_model(cfg: Config, checkpoint: str | Path | None = None):
    """The transformer on cfg.device in cfg.model.dtype (eval mode)."""
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.model.dtype]
    if checkpoint is not None:
        from framecast.engine.wan_checkpoint import load_wan_transformer

        model = load_wan_transformer(Path(checkpoint) / "transformer", dtype=torch.float32)
    elif cfg.model.weights:
        model, _ = load_configured_weights(cfg)
    else:
        model = _random_model(cfg)
    model = model.cast(dtype) if dtype != torch.float32 else model
    return model.to(device).eval()


def build_text(cfg: Config, checkpoint: str | Path | None = None):
    """The text encoder: `.encode(list[str]) -> [B, S, text_dim]`."""
    from framecast.engine.text import BuiltinTextEncoder, UMT5TextEncoder

    device = resolve_device(cfg.device)
    if checkpoint is not None:
        return UMT5TextEncoder(checkpoint, max_length=cfg.text.max_length, device=device)
    if cfg.text.kind != "builtin":
        raise ConfigError("text.kind=umt5 loads from a checkpoint folder: pass --checkpoint DIR "
                          "(without one only text.kind=builtin is available)")
    if cfg.model.weights:
        _, text = load_configured_weights(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model.init_seed + 1)
            text = BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)
    return text.to(device).eval()


def build_vae(cfg: Config, checkpoint: str | Path | None = None):
    from framecast.engine.vae import IdentityVAE, WanVAE

    if checkpoint is not None:
        return WanVAE(Path(checkpoint) / "vae", device=resolve_device(cfg.device))
    if cfg.vae.kind != "identity":
        raise ConfigError("vae.kind=wan loads from a checkpoint folder: pass --checkpoint DIR "
                          "(without one only vae.kind=identity is available)")
    return IdentityVAE()


def sampler_factory(cfg: Config) -> Callable[[], Any]:
    """A function returning a fresh sampler with cfg.sampler.steps timesteps set (one per block)."""
    from framecast.schedulers.flow import make_sampler

    proto = make_sampler(cfg.sampler.name, shift=cfg.sampler.shift)
    proto.set_timesteps(cfg.sampler.steps)
    return lambda: copy.deepcopy(proto)
