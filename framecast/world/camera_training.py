"""Train the camera adapter (framecast/models/camera.py) on top of the frozen tiny world model.

    framecast train --camera --preset tiny-camera --out DIR [--init-from builtin:tiny] [--steps N] ...

Data: camera clips of the world (framecast/world/camera_scenes.py): 1-2 still shapes on the tiled
plane, one move per clip (pans at 0.5-3 px/frame, zooms at 0.25-1.5, still), captioned "a red
circle still ..."; `--offset-prob` of the clips start up to MAX_OFFSET frames into their
trajectory, with their rays relative to the trajectory's frame 0, as a rollout's later windows see
them. Loss: flow-matching velocity MSE, x_σ = (1 − σ)·x0 + σ·noise per frame with the noise
levels of the world's recipe (`sample_sigmas`; the recommended command lays clips out as the
rollout schedule samples: the first frame nearly clean, the rest at one σ), the model reading the
clip's rays through the adapter; `--fg-weight` W weighs pixels within FG_REACH px of a shape
(1 + W) times (the shapes are a few % of the pixels, and all the camera decides). Only the
adapter trains, with its camera LoRA (camera.lora_rank: rank-r updates of every block's
self-attention, merged only in passes with rays; token offsets alone left the frozen attention
unsteered): the transformer and the text encoder are the frozen `--init-from` weights (default
builtin:tiny), so a camera-less request through the adapter model is exactly the frozen model.
Caption dropout trains the empty prompt, CFG's unconditional branch (which also reads the camera).

Files in `out/`: weights.safetensors (the adapter's EMA, keys camera.*: what camera.weights takes)
and weights.json (command, seed, steps, wall time, losses).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from framecast.config import Config
from framecast.models.blocks import run_model
from framecast.models.camera import CameraAdapter, CameraModel
from framecast.models.conditioning import Conditioning
from framecast.world.finetune import pixel_run, run_about, run_adapter_recipe, train_and_record
from framecast.world.train import TrainOptions, load_nets, sample_sigmas, step_generator

MAX_OFFSET = 40  # frames: the latest start of a training clip in its trajectory (5 s at 8 fps)
FG_REACH = 3  # px: with --fg-weight, pixels this close to a shape in the clip weigh more


def new_adapter(cfg: Config, seed: int) -> nn.ModuleDict:
    """{"camera": a fresh CameraAdapter for cfg (zero output at init; the rest seeded)}."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.ModuleDict({"camera": CameraAdapter.for_config(cfg)})


def camera_loss(model: CameraModel, text_encoder: nn.Module, batch: dict, gen: torch.Generator, opt: TrainOptions,
                empty_tokens: torch.Tensor, device) -> torch.Tensor:
    """The velocity loss of one batch of camera clips (all randomness from `gen`, on the CPU)."""
    x0 = batch["video"]                                                   # (B, C, F, H, W)
    b, _, f = x0.shape[:3]
    sigma_BF = sample_sigmas(gen, b, f, opt)
    noise = torch.randn(x0.shape, generator=gen)
    drop_B = torch.rand(b, generator=gen) < opt.caption_dropout
    tokens = torch.where(drop_B[:, None], empty_tokens, batch["tokens"])
    x0, noise, sigma_BF = x0.to(device), noise.to(device), sigma_BF.to(device)
    s = sigma_BF[:, None, :, None, None]
    x_t = (1 - s) * x0 + s * noise
    with torch.no_grad():
        text_BSD = text_encoder(tokens.to(device))
    v = run_model(model, x_t, sigma_BF * 1000, Conditioning(text_BSD, camera_BRFHW=batch["camera"].to(device)))
    err = (v.float() - (noise - x0)) ** 2
    if opt.fg_weight <= 0:
        return err.mean()
    # The camera decides where the shapes are; they cover a few % of the pixels, the black rest is the same
    # whatever the camera does. Pixels within FG_REACH px of a shape count (1 + fg_weight) times.
    fg = (x0.amax(dim=1, keepdim=True) > -0.5).float()                   # (B, 1, F, H, W) shape pixels
    fg = F.max_pool3d(fg, (1, 2 * FG_REACH + 1, 2 * FG_REACH + 1), stride=1, padding=(0, FG_REACH, FG_REACH))
    w = 1 + opt.fg_weight * fg
    return (err * w).sum() / (w.sum() * err.shape[1])


def finetune(cfg: Config, out: str | Path, steps: int, batch: int, frames: int, seed: int,
             init_from: str = "builtin:tiny", opt: TrainOptions | None = None, command: str = "",
             log_every: int = 25, max_seconds: float | None = None, device: str = "cpu",
             stop_at: int | None = None) -> dict:
    from framecast.world.camera_scenes import camera_batches
    from framecast.world.captions import tokenize

    opt = opt or TrainOptions()
    out, dev = pixel_run(cfg, out, device, "camera", "tiny-camera")
    frozen = load_nets(cfg, init_from).to(dev).eval().requires_grad_(False)
    nets = new_adapter(cfg, seed).to(dev).train()
    ema = new_adapter(cfg, seed).to(dev).eval().requires_grad_(False)
    ema.load_state_dict(nets.state_dict())
    model = CameraModel(frozen["transformer"], nets["camera"])
    optim = torch.optim.AdamW([{"params": list(nets.parameters()), "scale": 1.0}], lr=opt.lr, betas=(0.9, 0.99),
                              weight_decay=opt.weight_decay)
    stream = camera_batches(seed, batch, frames, size=cfg.video.height, max_offset=MAX_OFFSET,
                            offset_prob=opt.offset_prob)
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])

    def loss_at(step: int) -> torch.Tensor:
        return camera_loss(model, frozen["text_encoder"], next(stream), step_generator(seed, step), opt, empty, dev)

    about = run_about(cfg, command, init_from, seed, batch, frames, dev)
    return train_and_record(nets, ema, optim, loss_at, steps, opt, out, about, {
        "max_offset": MAX_OFFSET, "params_camera": sum(p.numel() for p in nets.parameters()),
        "lora_rank": cfg.camera.lora_rank, "lora_targets": cfg.camera.lora_targets,
        "fg_weight": opt.fg_weight, "fg_reach": FG_REACH,
        "sigmas": {k: getattr(opt, k) for k in ("prefix_prob", "prefix_max", "uniform_prob", "sigma_uniform",
                                                "context_sigma_max")}},
                            log_every=log_every, max_seconds=max_seconds, stop_at=stop_at)


def run_camera_train(args) -> int:
    """`framecast train --camera ...`: the arguments of `framecast train` that apply here."""
    return run_adapter_recipe(args, "--camera", finetune, lambda opt: replace(
        opt, prefix_prob=args.prefix_prob, prefix_max=args.prefix_max, uniform_prob=args.uniform_prob,
        sigma_uniform=args.sigma_uniform, context_sigma_max=args.context_sigma_max, fg_weight=args.fg_weight))
