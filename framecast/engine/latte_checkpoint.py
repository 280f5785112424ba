"""A local LattePipeline folder (diffusers layout) for the engine:

    DIR/model_index.json (_class_name LattePipeline)  transformer/  vae/  text_encoder/  tokenizer/  scheduler/

`is_latte` decides the family from the folder's JSON; `apply_latte_config` sets model.kind=latte,
its shapes, the T5 text encoder, the frame-wise VAE and the DDIM sampler from the folder;
`load_latte_transformer` loads `transformer/` strictly (diffusers keys). Problems are
`CheckpointError`s with one line naming the path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from framecast.engine.wan_checkpoint import (CheckpointError, _names, _read_config, _weight_files, check_weights,
                                             index_weights, read_weights)
from framecast.models.latte import LatteModel

# transformer config key -> where it goes in framecast's config (model.* / model.latte.*)
GENERIC = {"num_attention_heads": "num_attention_heads", "attention_head_dim": "attention_head_dim",
           "in_channels": "in_channels", "out_channels": "out_channels", "num_layers": "num_layers",
           "norm_eps": "eps", "caption_channels": "text_dim"}
LATTE_ONLY = ("sample_size", "video_length", "cross_attention_dim", "activation_fn", "attention_bias",
              "norm_elementwise_affine", "norm_type")
LATTE_MAX_LENGTH = 120  # LattePipeline.encode_prompt's fixed T5 length
LATTE_GUIDANCE = 7.5  # LattePipeline.__call__'s default guidance_scale (its steps default, 50, is framecast's too)


def is_latte(info: dict) -> bool:
    """Whether `components.inspect_checkpoint`'s reading of a folder is a Latte pipeline."""
    return (info.get("model_index", {}).get("_class_name") == "LattePipeline"
            or info["transformer"].get("_class_name") == "LatteTransformer3DModel")


def apply_latte_config(cfg, info: dict, keep_sampler: set[str]) -> None:
    """Shapes and pipeline parts from the folder; sampler fields in `keep_sampler` were set by the
    user and win (the DDIM's own options always come from scheduler_config.json: `ddim_for`)."""
    t, m = info["transformer"], cfg.model
    m.kind = "latte"
    for key, field in GENERIC.items():
        if t.get(key) is not None:
            setattr(m, field, t[key])
    if t.get("out_channels") is None:
        m.out_channels = m.in_channels
    p = int(t.get("patch_size") or 2)
    m.patch_size = [1, p, p]
    for key in LATTE_ONLY:
        if key in t:
            value = t[key]
            setattr(m.latte, key, 0 if key == "cross_attention_dim" and value is None else value)
    cfg.text.kind, cfg.text.max_length = "t5", LATTE_MAX_LENGTH
    cfg.vae.kind = "sd"
    cfg.vae.temporal_stride = 1
    cfg.vae.spatial_stride = 2 ** (len(info["vae"].get("block_out_channels", [0] * 4)) - 1)
    sched = info["scheduler"]
    if sched.get("_class_name") != "DDIMScheduler":
        raise CheckpointError(f"scheduler/scheduler_config.json: a Latte folder needs DDIMScheduler, got "
                              f"{sched.get('_class_name')!r}")
    ddim_for(sched)  # unsupported options fail now, not at the first step
    if "name" not in keep_sampler:
        cfg.sampler.name = "ddim"
    if "guidance_scale" not in keep_sampler:
        cfg.sampler.guidance_scale = LATTE_GUIDANCE


def ddim_for(scheduler_cfg: dict):
    from framecast.schedulers.ddim import ddim_from_diffusers_config

    try:
        return ddim_from_diffusers_config(scheduler_cfg)
    except ValueError as e:
        raise CheckpointError(f"scheduler/scheduler_config.json: {e}") from None


def load_latte_transformer(path: Union[str, Path], dtype: torch.dtype = torch.float32,
                           device: Union[str, torch.device] = "cpu", layers: Optional[range] = None) -> LatteModel:
    """A `LatteModel` in eval mode with the folder's weights (strict: the whole folder's keys and
    shapes are checked). Read in fp32, then cast whole (diffusers keeps no Latte module in fp32).
    `layers`: a pipeline stage — the other pairs (and their spatial and temporal blocks) become
    `nn.Identity` before anything is read, so only the stage's tensors are loaded."""
    folder = Path(path)
    cfg = _read_config(folder)
    try:
        with torch.device("meta"):
            model = LatteModel(**cfg)
    except (TypeError, NotImplementedError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    index = index_weights(_weight_files(folder))
    check_weights(str(folder), "diffusers Latte", {k: tuple(v.shape) for k, v in model.state_dict().items()}, index)
    if layers is not None:
        n = len(model.blocks)
        if not (isinstance(layers, range) and layers.step == 1 and 0 <= layers.start < layers.stop <= n):
            raise CheckpointError(f"{folder}: stage layers {layers} are not a non-empty range within the "
                                  f"checkpoint's {n} pairs")
        model.keep_pairs(layers)
    model.load_state_dict(read_weights(index, model.state_dict().keys(), torch.float32, device), strict=True,
                          assign=True)
    left = [k for k, v in model.named_parameters() if v.is_meta]
    if left:
        raise CheckpointError(f"{folder}: {len(left)} tensor(s) not loaded [{_names(left)}]")
    model = model.eval()
    return model.cast(dtype) if dtype != torch.float32 else model
