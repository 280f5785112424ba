"""Load a Wan2.1 transformer from a local folder, strictly.

A folder holds `config.json` and `*.safetensors` weights (one file, or shards listed by
`*.safetensors.index.json`), in either layout:
- diffusers (`_class_name: WanTransformer3DModel`, `WanTransformer3DModel` kwargs, diffusers keys);
- original Wan-AI (config keys dim, ffn_dim, freq_dim, in_dim, out_dim, num_heads, num_layers,
  eps, model_type, text_len; original key names, optionally prefixed `model.diffusion_model.`),
  renamed by model-zoo §1.3.
Every problem is a `CheckpointError` with one line naming the path and what is wrong.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from framecast.models.wan import KEEP_FP32, WanModel

ORIGINAL_PREFIX = "model.diffusion_model."

# Original Wan-AI -> diffusers key fragments, applied in order as substring replacements (model-zoo
# §1.3). Fragments end in "." so that e.g. `cross_attn.k.` cannot match `cross_attn.k_img.`.
ORIGINAL_TO_DIFFUSERS: tuple[tuple[str, str], ...] = (
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
    (".modulation", ".scale_shift_table"),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.k_img.", "attn2.add_k_proj."),
    ("cross_attn.v_img.", "attn2.add_v_proj."),
    ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    # the original's affine cross-attention norm is `norm3`, diffusers' is `norm2`; the original
    # `norm2` (before the FFN) has no parameters, so the swap cannot collide.
    (".norm3.", ".norm2."),
)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the path and the problem."""


def convert_original_key(key: str) -> str:
    """One original Wan-AI key name (optionally prefixed `model.diffusion_model.`) -> diffusers name."""
    new = key[len(ORIGINAL_PREFIX):] if key.startswith(ORIGINAL_PREFIX) else key
    for old, rep in ORIGINAL_TO_DIFFUSERS:
        new = new.replace(old, rep)
    return new


def convert_original_state_dict(sd: dict) -> dict:
    """Original Wan-AI key names (optionally prefixed `model.diffusion_model.`) -> diffusers names."""
    return {convert_original_key(key): value for key, value in sd.items()}


def _read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing config.json")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _is_original(cfg: dict) -> bool:
    return cfg.get("_class_name") == "WanModel" or ("dim" in cfg and "num_heads" in cfg)


def _model_kwargs(cfg: dict, path: Path) -> dict:
    """WanModel kwargs from either config layout."""
    if not _is_original(cfg):
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    missing = [k for k in ("dim", "ffn_dim", "num_heads", "num_layers") if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}: original Wan config lacks {', '.join(missing)}")
    model_type = cfg.get("model_type", "t2v")
    if model_type != "t2v":
        raise CheckpointError(f"{path}: model_type={model_type!r} not supported (T2V only)")
    if not cfg.get("qk_norm", True):
        raise CheckpointError(f"{path}: qk_norm=false is not supported")
    dim, heads = int(cfg["dim"]), int(cfg["num_heads"])
    if dim % heads:
        raise CheckpointError(f"{path}: dim={dim} is not a multiple of num_heads={heads}")
    return dict(
        patch_size=tuple(cfg.get("patch_size", (1, 2, 2))), num_attention_heads=heads,
        attention_head_dim=dim // heads, in_channels=cfg.get("in_dim", 16), out_channels=cfg.get("out_dim", 16),
        text_dim=cfg.get("text_dim", 4096), freq_dim=cfg.get("freq_dim", 256), ffn_dim=cfg["ffn_dim"],
        num_layers=cfg["num_layers"], cross_attn_norm=cfg.get("cross_attn_norm", True),
        qk_norm="rms_norm_across_heads", eps=cfg.get("eps", 1e-6))


def _weight_files(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{folder}: several weight indexes ({', '.join(p.name for p in indexes)})")
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{indexes[0]}: malformed weight index ({e.__class__.__name__}: {e})") from None
        files = [folder / n for n in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{indexes[0]}: lists missing shard(s) {', '.join(absent[:3])}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (found {', '.join(others[:3])}; only safetensors is read)" if others else ""
        raise CheckpointError(f"{folder}: no *.safetensors weight files{hint}")
    return files


def _names(keys, n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


# ---- reading a model, or one pipeline stage of it, tensor by tensor ---------------------------

# A safetensors file is memory-mapped; every page a read touches stays in the process's RSS until
# the mapping closes. Files are reopened after this many bytes have been read through one mapping,
# so a stage's peak is its own tensors plus at most this much (measured: bench/dualparal_memory.py).
REOPEN_BYTES = 16 << 20


def tensor_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a floating tensor named `name` gets in a model of compute dtype `dtype`: fp32 for
    the KEEP_FP32 modules (as `WanModel.cast`), else `dtype`."""
    return torch.float32 if any(part in KEEP_FP32 for part in name.split(".")) else dtype


def index_weights(files: list[Path], rename: Callable[[str], str] = lambda k: k,
                  select: Callable[[str], bool] = lambda k: True) -> dict[str, tuple[Path, str, tuple]]:
    """{model key: (file, key in the file, shape)} from the files' headers only (no tensor data).
    `select(file key)` picks the keys that belong to the model; `rename` maps them to model keys."""
    import safetensors

    index: dict[str, tuple[Path, str, tuple]] = {}
    for f in files:
        try:
            with safetensors.safe_open(str(f), framework="pt") as h:
                entries = [(key, tuple(h.get_slice(key).get_shape())) for key in h.keys() if select(key)]
        except (safetensors.SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
        for key, shape in entries:
            name = rename(key)
            if name in index:
                raise CheckpointError(f"{f}: key {name!r} also in another shard")
            index[name] = (f, key, shape)
    return index


def check_weights(where: str, layout: str, expected: dict[str, tuple], index: dict) -> None:
    """Every key of the whole model present with its shape, nothing else (headers only: each stage
    checks the whole checkpoint, so a short or foreign file fails on every rank alike)."""
    missing, unexpected = expected.keys() - index.keys(), index.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the config ({layout} layout): {len(missing)} missing "
            f"[{_names(missing)}], {len(unexpected)} unexpected [{_names(unexpected)}]")
    bad = [f"{k} {index[k][2]} vs {expected[k]}" for k in sorted(expected) if index[k][2] != expected[k]]
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} shape mismatch(es) (file vs config): {'; '.join(bad[:3])}")


def _device_name(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def read_weights(index: dict, names, dtype: torch.dtype, device="cpu") -> dict[str, torch.Tensor]:
    """The tensors `names` (model keys of `index`), each read on its own, cast straight to its
    `tensor_dtype` and placed on `device` in memory of its own (never a view of the file mapping).
    Nothing else is read; at most one source tensor is alive besides the result."""
    import safetensors

    device = _device_name(device)
    by_file: dict[Path, list[str]] = {}
    for name in sorted(names):
        by_file.setdefault(index[name][0], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for f, file_names in by_file.items():
        handle, read = None, 0
        try:
            for name in file_names:
                if handle is None or read >= REOPEN_BYTES:  # drop the pages read so far from our RSS
                    if handle is not None:
                        handle.__exit__(None, None, None)
                    handle, read = safetensors.safe_open(str(f), framework="pt").__enter__(), 0
                src = handle.get_tensor(index[name][1])
                read += src.numel() * src.element_size()
                target = tensor_dtype(name, dtype) if src.is_floating_point() else src.dtype
                out[name] = src.to(device=device, dtype=target, copy=True)
                del src
        except (safetensors.SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
        finally:
            if handle is not None:
                handle.__exit__(None, None, None)
    return out


def load_stage_weights(model: nn.Module, layers: Optional[range], index: dict, dtype: torch.dtype, device,
                       where: str, layout: str) -> nn.Module:
    """Fill `model` (built on the meta device) with the weights of `index`: the whole checkpoint is
    checked against the model (headers only), the blocks outside `layers` become `nn.Identity`
    (indices kept; None keeps all), and only the tensors the remaining model holds are read,
    straight in their dtype onto `device`. Returns the model in eval mode."""
    from framecast.parallel.stage import prune_blocks

    check_weights(where, layout, {k: tuple(v.shape) for k, v in model.state_dict().items()}, index)
    if layers is not None:
        n = len(model.blocks)
        if not (isinstance(layers, range) and layers.step == 1 and 0 <= layers.start < layers.stop <= n):
            raise CheckpointError(f"{where}: stage layers {layers} are not a non-empty range within the "
                                  f"checkpoint's {n} blocks")
        prune_blocks(model, layers)
    sd = read_weights(index, model.state_dict().keys(), dtype, device)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if left:
        raise CheckpointError(f"{where}: {len(left)} tensor(s) not loaded [{_names(left)}]")
    return model.eval()


def load_wan_stage(path: Union[str, Path], layers: Optional[range], dtype: torch.dtype = torch.float32,
                   device: Union[str, torch.device] = "cpu") -> WanModel:
    """One pipeline stage of the folder's transformer: the blocks in `layers` (the others
    `nn.Identity`, indices kept; None = all) plus the embedding and head modules, built on the
    meta device and filled with only those tensors, each read from the safetensors files straight
    in its dtype (fp32 for the KEEP_FP32 modules, else `dtype`) onto `device`. The whole folder is
    still checked: a missing, unexpected or mis-shaped key anywhere is a `CheckpointError`."""
    folder = Path(path)
    cfg = _read_config(folder)
    original = _is_original(cfg)
    kwargs = _model_kwargs(cfg, folder / "config.json")
    files = _weight_files(folder)
    try:
        with torch.device("meta"):  # shapes only, no memory; the loaded tensors become the parameters
            model = WanModel(**kwargs)
    except (TypeError, NotImplementedError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    index = index_weights(files, rename=convert_original_key if original else (lambda k: k))
    return load_stage_weights(model, layers, index, dtype, device, str(folder),
                              "original Wan" if original else "diffusers")


def load_wan_transformer(path: Union[str, Path], dtype: torch.dtype = torch.float32,
                         device: Union[str, torch.device] = "cpu") -> WanModel:
    """A `WanModel` in eval mode with the folder's weights. For dtype != fp32 the fp32-kept modules
    (time embedder, modulation tables, norms) stay fp32, as with `WanModel.cast`."""
    return load_wan_stage(path, None, dtype, device)
