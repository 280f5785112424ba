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
from typing import Union

import torch

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


def convert_original_state_dict(sd: dict) -> dict:
    """Original Wan-AI key names (optionally prefixed `model.diffusion_model.`) -> diffusers names."""
    out = {}
    for key, value in sd.items():
        new = key[len(ORIGINAL_PREFIX):] if key.startswith(ORIGINAL_PREFIX) else key
        for old, rep in ORIGINAL_TO_DIFFUSERS:
            new = new.replace(old, rep)
        out[new] = value
    return out


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


def load_wan_transformer(path: Union[str, Path], dtype: torch.dtype = torch.float32,
                         device: Union[str, torch.device] = "cpu") -> WanModel:
    """A `WanModel` in eval mode with the folder's weights. For dtype != fp32 the fp32-kept modules
    (time embedder, modulation tables, norms) stay fp32, as with `WanModel.cast`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    cfg = _read_config(folder)
    original = _is_original(cfg)
    kwargs = _model_kwargs(cfg, folder / "config.json")
    files = _weight_files(folder)
    try:
        # on the meta device: shapes only, no memory; the loaded tensors become the parameters
        with torch.device("meta"):
            model = WanModel(**kwargs)
    except (TypeError, NotImplementedError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f), device=str(device))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
        if original:
            part = convert_original_state_dict(part)
        for key in list(part):
            if key in sd:
                raise CheckpointError(f"{f}: key {key!r} also in another shard")
            tensor = part.pop(key)  # pop: convert one tensor at a time, never two copies of the model
            if tensor.is_floating_point():
                keep = any(p in KEEP_FP32 for p in key.split("."))
                tensor = tensor.to(torch.float32 if keep else dtype)
            sd[key] = tensor

    missing, unexpected = expected.keys() - sd.keys(), sd.keys() - expected.keys()
    if missing or unexpected:
        layout = "original Wan" if original else "diffusers"
        raise CheckpointError(
            f"{folder}: weights do not match the config ({layout} layout): {len(missing)} missing "
            f"[{_names(missing)}], {len(unexpected)} unexpected [{_names(unexpected)}]")
    bad = [f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in sorted(expected) if tuple(sd[k].shape) != expected[k]]
    if bad:
        raise CheckpointError(f"{folder}: {len(bad)} shape mismatch(es) (file vs config): {'; '.join(bad[:3])}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
