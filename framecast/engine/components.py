"""Build what a generation needs — model, text encoder, VAE, sampler — from a config, a shipped
weights file, or a local checkpoint folder in diffusers' layout (WanPipeline, or LattePipeline:
`model_index.json` decides the family, engine/latte_checkpoint.py):

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
    """WanModel's constructor keys from cfg.model (Wan-shaped tools: gpu_check sizes, benches, the
    cache-calibration fingerprint). Models are built by `new_model`, whatever the family."""
    from framecast.models.wan import WanModel

    return WanModel.config_kwargs(cfg.model)


def new_model(cfg: Config):
    """A randomly initialised model of the cfg.model.kind family (each family's `from_model_config`)."""
    from framecast.models.registry import model_class

    return model_class(cfg.model.kind).from_model_config(cfg.model)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent.parent if what != 'model_index' else path.parent}: "
                              f"missing {path.name} ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed JSON ({e.__class__.__name__}: {e})") from None


def checkpoint_preset(folder: str | Path) -> str:
    """The preset a checkpoint folder starts from when none is named: `latte-1` for a LattePipeline
    folder, else `wan2.1-t2v-1.3b` (an unreadable folder too: inspect_checkpoint reports it later)."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return "wan2.1-t2v-1.3b"
    return "latte-1" if isinstance(index, dict) and index.get("_class_name") == "LattePipeline" else "wan2.1-t2v-1.3b"


def inspect_checkpoint(folder: str | Path) -> dict:
    """Check the folder's layout and read its small JSON configs (no weights). Returns
    {"model_index": cfg, "transformer": cfg, "vae": cfg, "scheduler": cfg}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist")
    index = _read_json(folder / "model_index.json", "model_index")
    missing = [p for p in CHECKPOINT_PARTS if not (folder / p).is_dir()]
    if missing:
        raise CheckpointError(f"checkpoint {folder}: missing sub-folder(s) {', '.join(missing)}; "
                              f"diffusers' Wan layout needs {', '.join(CHECKPOINT_PARTS)}")
    return {
        "model_index": index if isinstance(index, dict) else {},
        "transformer": _read_json(folder / "transformer" / "config.json", "transformer config"),
        "vae": _read_json(folder / "vae" / "config.json", "vae config"),
        "scheduler": _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config"),
    }


def apply_checkpoint_config(cfg: Config, info: dict, keep_sampler: set[str]) -> None:
    """Shapes and sampler defaults come from the folder (fields in `keep_sampler` were set by the
    user and win)."""
    from framecast.engine.latte_checkpoint import apply_latte_config, is_latte
    from framecast.schedulers.flow import sampler_from_diffusers_config

    if is_latte(info):
        apply_latte_config(cfg, info, keep_sampler)
        return
    t = info["transformer"]
    m = cfg.model
    m.kind = "wan"  # the folder decides the family, whatever the preset said
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
    with torch.random.fork_rng(devices=[]):  # random init must not disturb the caller's RNG
        torch.manual_seed(cfg.model.init_seed)
        return new_model(cfg)


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

    what = what or f"weights {str(path)!r}"
    sd = load_file(str(path))
    blocks = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.blocks.")}
    if blocks and len(blocks) != cfg.model.num_layers:
        raise CheckpointError(f"{what} have {len(blocks)} transformer blocks but model.num_layers="
                              f"{cfg.model.num_layers}: use model.num_layers={len(blocks)}")
    model = new_model(cfg)
    check = getattr(model, "weights_problem", None)  # a family's own one-line reading of a key set (avdit)
    problem = check({k[len("transformer."):] for k in sd if k.startswith("transformer.")}) if check else None
    if problem:
        raise CheckpointError(f"{what}: {problem}")
    text = BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)
    for prefix, module in (("transformer.", model), ("text_encoder.", text)):
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{what} do not match the preset's model config: "
                                  f"{str(e).splitlines()[0]}") from None
    return model, text


def configured_weights_path(cfg: Config) -> tuple[Path, str]:
    """(world weights file, how to name it in errors) for cfg.model.weights: builtin:NAME, a
    `framecast train --out` folder or its weights.safetensors."""
    import importlib.resources

    w = cfg.model.weights
    if w.startswith("builtin:"):
        name = w.split(":", 1)[1]
        path = importlib.resources.files("framecast.weights").joinpath(f"{name}.safetensors")
        if not path.is_file():
            raise ConfigError(f"model.weights='builtin:{name}': no shipped weights named {name!r}")
        return Path(str(path)), f"builtin weights {name!r}"
    path = Path(w) / "weights.safetensors" if Path(w).is_dir() else Path(w)
    if not path.is_file() or path.suffix != ".safetensors":
        raise ConfigError(f"model.weights={w!r}: use builtin:NAME, a `framecast train --out` folder or its "
                          f"weights.safetensors (a Wan checkpoint folder goes to --checkpoint DIR)")
    return path, f"weights {str(path)!r}"


def load_configured_weights(cfg: Config):
    """(model, text encoder) from cfg.model.weights: builtin:NAME, or a world weights file
    (`framecast train`'s weights.safetensors, or its --out folder)."""
    if cfg.model.weights.startswith("builtin:"):
        return load_builtin(cfg.model.weights.split(":", 1)[1], cfg)
    path, what = configured_weights_path(cfg)
    return load_world_weights(path, cfg, what)


def build_model(cfg: Config, checkpoint: str | Path | None = None, layers: range | None = None):
    """The transformer on cfg.device in cfg.model.dtype (eval mode). With `layers`: one pipeline
    stage of it (`build_stage`): only those blocks (the others `nn.Identity`) plus the shared
    embedding and head modules, loaded without ever holding the rest."""
    if layers is not None:
        return build_stage(cfg, checkpoint, layers)
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.model.dtype]
    if checkpoint is not None and cfg.model.kind == "latte":
        from framecast.engine.latte_checkpoint import load_latte_transformer

        model = load_latte_transformer(Path(checkpoint) / "transformer", dtype=torch.float32)
    elif checkpoint is not None:
        from framecast.engine.wan_checkpoint import load_wan_transformer

        model = load_wan_transformer(Path(checkpoint) / "transformer", dtype=torch.float32)
    elif cfg.model.weights:
        model, _ = load_configured_weights(cfg)
    else:
        model = _random_model(cfg)
    if cfg.camera.weights:  # the camera adapter on the model's token embedding (models/camera.py)
        from framecast.models.camera import CameraModel, load_camera_adapter

        model = CameraModel(model, load_camera_adapter(cfg))
    model = model.cast(dtype) if dtype != torch.float32 else model
    return model.to(device).eval()


def interface_weights(cfg: Config, checkpoint: str | Path | None = None) -> dict:
    """The learned VIN interface module's tensors (`vin.*` keys of model.weights, prefix dropped);
    a one-line ConfigError when there are none (a Wan checkpoint folder never has them)."""
    from safetensors import safe_open

    fix = "use schedule.vin.interface=pooled (training-free) or weights with a VIN module (--preset tiny-vin)"
    if checkpoint is not None or not cfg.model.weights:
        raise ConfigError(f"schedule.vin.interface=learned needs a VIN module in model.weights, and "
                          f"{'a checkpoint folder' if checkpoint is not None else 'random weights'} have none; {fix}")
    path, what = configured_weights_path(cfg)
    with safe_open(str(path), framework="pt") as f:
        state = {k[len("vin."):]: f.get_tensor(k) for k in f.keys() if k.startswith("vin.")}
    if not state:
        raise ConfigError(f"schedule.vin.interface=learned: {what} have no VIN module (no vin.* tensors); {fix}")
    return state


def build_interface(cfg: Config, checkpoint: str | Path | None = None, state: dict | None = None):
    """The learned VIN interface module (models/vin.py) on cfg.device in cfg.model.dtype (eval mode),
    shaped by cfg.vin and loaded from `state` (default: `interface_weights`)."""
    from framecast.models.vin import VinInterface

    state = interface_weights(cfg, checkpoint) if state is None else state
    with torch.device("meta"):
        module = VinInterface.for_model(cfg.model, cfg.vin)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"model.weights={cfg.model.weights!r}: the VIN module does not match vin.* "
                              f"({str(e).splitlines()[0]})") from None
    return module.to(resolve_device(cfg.device), DTYPES[cfg.model.dtype]).eval()


def build_text(cfg: Config, checkpoint: str | Path | None = None, dtype: torch.dtype | None = None):
    """The text encoder: `.encode(list[str]) -> [B, S, text_dim]`. `dtype`: the UMT5 encoder's
    dtype (None: fp32; diffusers' WanPipeline runs it in the pipeline dtype). The built-in world
    encoder (two embedding tables) always runs in fp32."""
    from framecast.engine.text import BuiltinTextEncoder, T5TextEncoder, UMT5TextEncoder

    device = resolve_device(cfg.device)
    if checkpoint is not None and cfg.text.kind == "t5":
        return T5TextEncoder(checkpoint, max_length=cfg.text.max_length, device=device, dtype=dtype)
    if checkpoint is not None:
        return UMT5TextEncoder(checkpoint, max_length=cfg.text.max_length, device=device, dtype=dtype)
    if cfg.text.kind != "builtin":
        raise ConfigError(f"text.kind={cfg.text.kind} loads from a checkpoint folder: pass --checkpoint DIR "
                          "(without one only text.kind=builtin is available)")
    if cfg.model.weights:
        text = load_world_text(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model.init_seed + 1)
            text = BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)
    return text.to(device).eval()


# ---- one pipeline stage ----------------------------------------------------------------------
# What a stage holds: the blocks in its `layers`, plus the modules outside `blocks` — the patch,
# condition (time, text[, action]) embedders and the head (`norm_out`, `proj_out`,
# `scale_shift_table`). Every stage needs the embedders: `run_model` calls `model.embed` on every
# pass to rebuild the conditioning (timestep modulation, text projection), only hidden states travel
# between stages. Only the last stage runs the head, but it is kept everywhere: it is
# dim x (out_channels·patch) + 2·dim values (≈ 0.1 M for Wan-1.3B, 0.3 M for 14B, < 0.01 % of the
# model), and keeping it leaves no meta tensor in any stage's model.


def _check_stage_layers(cfg: Config, layers: range) -> None:
    n = cfg.model.num_layers
    if not (isinstance(layers, range) and layers.step == 1 and 0 <= layers.start < layers.stop <= n):
        raise ValueError(f"stage layers {layers!r}: expected a non-empty range(start, stop) within "
                         f"model.num_layers={n}")


def build_stage(cfg: Config, checkpoint: str | Path | None, layers: range):
    """Pipeline stage `layers` of the transformer on cfg.device in cfg.model.dtype (eval mode), each
    kept tensor equal to the full build's (`build_model` then `prune_blocks`):
    - checkpoint folder (diffusers or original Wan layout, sharded or not): built on the meta
      device, only the stage's tensors read from the safetensors files, each cast straight to its
      dtype onto the device (`load_wan_stage`); the whole folder's keys and shapes are checked;
    - world weights (builtin:NAME, `framecast train` output): the same from its `transformer.*` keys;
    - random init (tests, benches): the model is constructed as the full build does, with the same
      seed and so the same random draws, but each block outside `layers` is dropped the moment it
      is built (a module registration hook swaps it for `nn.Identity`): the CPU holds the stage in
      fp32 plus one block at most, never the whole model."""
    from framecast.engine.wan_checkpoint import load_wan_stage

    _check_stage_layers(cfg, layers)
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.model.dtype]
    if checkpoint is not None and cfg.model.kind == "latte":
        from framecast.engine.latte_checkpoint import load_latte_transformer

        model = load_latte_transformer(Path(checkpoint) / "transformer", dtype, device, layers)
    elif checkpoint is not None:
        model = load_wan_stage(Path(checkpoint) / "transformer", layers, dtype=dtype, device=device)
    if checkpoint is not None:
        if len(model.blocks) != cfg.model.num_layers:
            raise CheckpointError(f"checkpoint {checkpoint}: {len(model.blocks)} transformer blocks but "
                                  f"model.num_layers={cfg.model.num_layers}")
        return model
    if cfg.model.weights:
        return _world_stage(cfg, layers, dtype, device)
    model = _random_stage(cfg, layers)
    model = model.cast(dtype) if dtype != torch.float32 else model
    return model.to(device).eval()


def _world_stage(cfg: Config, layers: range, dtype: torch.dtype, device: torch.device):
    """Stage `layers` from a world weights file's `transformer.*` keys (read as `load_wan_stage`)."""
    from framecast.engine.wan_checkpoint import index_weights, load_stage_weights

    path, what = configured_weights_path(cfg)
    prefix = "transformer."
    index = index_weights([path], rename=lambda k: k[len(prefix):], select=lambda k: k.startswith(prefix))
    blocks = {int(k.split(".")[1]) for k in index if k.startswith("blocks.")}
    if blocks and len(blocks) != cfg.model.num_layers:
        raise CheckpointError(f"{what} have {len(blocks)} transformer blocks but model.num_layers="
                              f"{cfg.model.num_layers}: use model.num_layers={len(blocks)}")
    with torch.device("meta"):
        model = new_model(cfg)
    return load_stage_weights(model, layers, index, dtype, device, what, "world weights")


def _random_stage(cfg: Config, layers: range):
    """`_random_model(cfg)` with the blocks outside `layers` replaced by `nn.Identity` as each is
    registered: the same constructors run in the same order from the same seed, so the kept
    tensors are bitwise those of the full random build; a dropped block is freed right away."""
    from torch import nn
    from torch.nn.modules.module import register_module_module_registration_hook

    from framecast.models.registry import model_class

    cls = model_class(cfg.model.kind)
    with torch.device("meta"):  # which class the blocks are (free: no memory, no random draws)
        block_type = type(cls.from_model_config(cfg.model).blocks[0])

    def drop(parent, name, module):
        if type(module) is block_type and isinstance(parent, nn.ModuleList) and int(name) not in layers:
            return nn.Identity()
        return None

    handle = register_module_module_registration_hook(drop)
    try:
        model = _random_model(cfg)
    finally:
        handle.remove()
    if any(type(b) is block_type for i, b in enumerate(model.blocks) if i not in layers) or \
            any(type(model.blocks[i]) is not block_type for i in layers):
        raise RuntimeError(f"random stage {layers}: blocks were not dropped as registered")
    return model


def load_world_text(cfg: Config):
    """The built-in world text encoder from cfg.model.weights, reading only its `text_encoder.*`
    tensors (not the transformer's)."""
    from safetensors import safe_open

    from framecast.engine.text import BuiltinTextEncoder

    path, what = configured_weights_path(cfg)
    prefix = "text_encoder."
    with safe_open(str(path), framework="pt") as f:
        part = {k[len(prefix):]: f.get_tensor(k).clone() for k in f.keys() if k.startswith(prefix)}
    with torch.device("meta"):  # no memory and no random draws for weights about to be replaced
        text = BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)
    try:
        text.load_state_dict(part, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{what} do not match the preset's model config: "
                              f"{str(e).splitlines()[0]}") from None
    return text


def build_vae(cfg: Config, checkpoint: str | Path | None = None):
    from framecast.engine.vae import FrameVAE, IdentityVAE, WanVAE

    if checkpoint is not None and cfg.vae.kind == "sd":
        return FrameVAE(Path(checkpoint) / "vae", device=resolve_device(cfg.device))
    if checkpoint is not None:
        return WanVAE(Path(checkpoint) / "vae", device=resolve_device(cfg.device))
    if cfg.vae.kind != "identity":
        raise ConfigError(f"vae.kind={cfg.vae.kind} loads from a checkpoint folder: pass --checkpoint DIR "
                          "(without one only vae.kind=identity is available)")
    return IdentityVAE()


def make_attention(cfg: Config):
    """The engine's (or a worker's) attention runtime: the backend of `model.attn_backend` with its
    options (`attention.NAME`) and assets loaded once; each request takes `.for_request()`."""
    from framecast.models.attention import AttentionRuntime, check_backend, resolve

    b = check_backend(cfg.model.attn_backend)
    options = getattr(cfg.attention, b.name, None)
    try:
        assets = resolve(b.load)(options, cfg) if b.load else None
    except ValueError as e:  # a file named in attention.NAME.* that does not fit
        raise ConfigError(str(e)) from None
    if isinstance(assets, torch.nn.Module):  # trained parts (SLA's projections): on the model's device, once
        assets = assets.to(resolve_device(cfg.device), DTYPES[cfg.model.dtype])
    return AttentionRuntime(backend=b.name, options=options, assets=assets, steps=cfg.sampler.steps,
                            dense_steps=cfg.attention.dense_steps, dense_layers=tuple(cfg.attention.dense_layers))


def sampler_factory(cfg: Config, checkpoint: str | Path | None = None) -> Callable[[], Any]:
    """A function returning a fresh sampler with cfg.sampler.steps timesteps set (one per block).
    A checkpoint folder's DDIM options (spacing, offset, betas) come from its scheduler config."""
    from framecast.schedulers.flow import make_sampler

    if checkpoint is not None and cfg.sampler.name == "ddim":
        from framecast.engine.latte_checkpoint import ddim_for

        proto = ddim_for(_read_json(Path(checkpoint) / "scheduler" / "scheduler_config.json", "scheduler config"))
    else:
        proto = make_sampler(cfg.sampler.name, shift=cfg.sampler.shift)
    proto.set_timesteps(cfg.sampler.steps)
    return lambda: copy.deepcopy(proto)
