"""Train the VDT family in the built-in world with VDT's spatial-temporal mask modeling.

    framecast train --vdt --preset tiny-vdt --out DIR [--steps N] [--batch B] [--frames F] ...

One step: B world clips of F frames (32×32 pixel-space latents, identity VAE), ONE noise level per
clip (VDT modulates per video) σ = sigmoid(N(logit_mean, logit_std)), x_σ = (1 − σ)·x0 + σ·noise,
and per clip a task mask M drawn from VDT's mixture (framecast/models/vdt_tasks.py
`training_mask`: 20% spatial completion on the patch grid, else predict / backward / interpolate /
unconditional / animate / random frames uniformly). The model sees x_in = x0·(1 − M) + x_σ·M at
timestep σ·1000 and the prompt (caption dropout trains the empty prompt for CFG); the loss is the
flow-matching velocity MSE (v = noise − x0) on the M = 1 positions only.

From scratch, not from the shipped tiny weights: the architectures share almost nothing that
would carry over — tiny is Wan-shaped (joint 3D attention with RoPE, text cross-attention, one
shared time projection), VDT factorises attention into temporal and per-frame spatial layers with
additive sincos positions and reads the prompt only through c. Only the patch embedding, the
MLPs and the text vectors have matching shapes, and their trained roles differ. `--init-from`
takes an earlier VDT run's --out (a second stage).

Everything not VDT-specific is the world's recipe: the clip stream (scenes.world_batches), the
per-step noise generator (train.step_generator), warm-up + cosine learning rate, AdamW with
grad-norm clipping and the EMA that ships (world/finetune.finetune_loop), save_weights.

The shipped `builtin:tiny-vdt` (provenance: framecast/weights/tiny-vdt.json; its task table:
docs/vdt.md) came from, 3,000 steps in 42 minutes on one thread (0.84 s a step):

    OMP_NUM_THREADS=1 framecast train --vdt --preset tiny-vdt --out /tmp/fc_tiny_vdt --steps 3000 \\
        --batch 8 --frames 8 --seed 0 --lr 1e-3 --warmup 50 --lr-final 0.1 --offset-prob 0.5 \\
        --save-every 250 --max-minutes 44

Files in `out/`: weights.safetensors (EMA; keys transformer.*, text_encoder.*: the layout
model.weights takes with the tiny-vdt preset) and weights.json (command, seed, steps, wall time,
s/step, losses).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from framecast.config import Config
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.vdt_tasks import mask_input, masked_mse, training_mask
from framecast.world.finetune import one_stage_run, pixel_run, report_run, run_about, train_and_record
from framecast.world.train import TrainOptions, step_generator

SPATIAL_PROB = 0.2  # VDT: share of training clips with a spatial (completion) mask


def build_vdt_nets(cfg: Config, seed: int) -> nn.ModuleDict:
    """{"transformer": VdtModel, "text_encoder": BuiltinTextEncoder}, initialised from `seed`."""
    from framecast.engine.text import BuiltinTextEncoder
    from framecast.models.registry import model_class

    if cfg.model.kind != "vdt":
        raise ValueError(f"--vdt trains model.kind=vdt (the tiny-vdt preset); got model.kind={cfg.model.kind}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class("vdt").from_model_config(cfg.model)
        text = BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)  # unit-scale vectors (its init)
    return nn.ModuleDict({"transformer": model, "text_encoder": text})


def save_random_vdt(cfg: Config, folder: str | Path, seed: int = 0, std: float = 0.05) -> Path:
    """World weights (transformer.*, text_encoder.*) of a random `cfg` VDT whose zero-initialised layers
    (adaLN-Zero: every fresh block the identity, the head zero) are drawn from N(0, std) too, so every
    path carries signal: for tests and benches of code paths, not a model. Returns the file."""
    from safetensors.torch import save_file

    from framecast.engine.components import new_model
    from framecast.engine.text import BuiltinTextEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, text = new_model(cfg), BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0, std)
    state = {f"transformer.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state.update({f"text_encoder.{k}": v.contiguous() for k, v in text.state_dict().items()})
    path = Path(folder) / "weights.safetensors"
    save_file(state, str(path))
    return path


def clip_masks(gen: torch.Generator, b: int, f: int, h: int, w: int,
               patch: tuple[int, int]) -> tuple[list, torch.Tensor]:
    """(task names, M [B, F, H, W]): one draw of VDT's mixture per clip."""
    drawn = [training_mask(f, h, w, gen, SPATIAL_PROB, patch) for _ in range(b)]
    return [name for name, _ in drawn], torch.stack([m for _, m in drawn])


def vdt_loss(nets: nn.ModuleDict, batch: dict, gen: torch.Generator, opt: TrainOptions,
             empty_tokens: torch.Tensor) -> torch.Tensor:
    """The masked flow-matching loss of one batch (all randomness from `gen`, on the CPU)."""
    x0 = batch["video"]                                                  # (B, C, F, H, W)
    b, _, f, h, w = x0.shape
    model = nets["transformer"]
    sigma_B = torch.sigmoid(torch.randn(b, generator=gen) * opt.logit_std + opt.logit_mean)
    noise = torch.randn(x0.shape, generator=gen)
    drop_B = torch.rand(b, generator=gen) < opt.caption_dropout
    _, mask_BFHW = clip_masks(gen, b, f, h, w, model.patch_size[1:])
    dev = x0.device
    tokens = torch.where(drop_B[:, None].to(dev), empty_tokens, batch["tokens"])
    sigma_B, noise, mask_BFHW = sigma_B.to(dev), noise.to(dev), mask_BFHW.to(dev)
    s = sigma_B[:, None, None, None, None]
    x_in = mask_input(x0, (1 - s) * x0 + s * noise, mask_BFHW)
    v = run_model(model, x_in, sigma_B * 1000, Conditioning(nets["text_encoder"](tokens)))
    return masked_mse(v, noise - x0, mask_BFHW)


def train_vdt(cfg: Config, out: str | Path, steps: int, batch: int, frames: int, seed: int,
              opt: TrainOptions | None = None, init_from: str = "", command: str = "", log_every: int = 25,
              max_seconds: float | None = None, device: str = "cpu", stop_at: int | None = None) -> dict:
    """Train (or, with `init_from`, continue from an earlier run's weights) and write out/."""
    from safetensors.torch import load_file

    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches

    opt = opt or TrainOptions()
    if cfg.model.kind != "vdt":
        raise ValueError(f"--vdt trains model.kind=vdt (the tiny-vdt preset); got model.kind={cfg.model.kind}")
    out, dev = pixel_run(cfg, out, device, "VDT", "tiny-vdt")
    nets = build_vdt_nets(cfg, seed)
    if init_from:
        path = Path(init_from) / "weights.safetensors" if Path(init_from).is_dir() else Path(init_from)
        nets.load_state_dict(load_file(str(path)))  # strict: an earlier VDT run of the same preset
    nets = nets.to(dev).train()
    ema = build_vdt_nets(cfg, seed).to(dev).eval().requires_grad_(False)
    ema.load_state_dict(nets.state_dict())
    optim = torch.optim.AdamW([{"params": list(nets.parameters()), "scale": 1.0}], lr=opt.lr, betas=(0.9, 0.99),
                              weight_decay=opt.weight_decay)
    stream = world_batches(seed, batch, frames, size=cfg.video.height, offset_prob=opt.offset_prob)
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)], device=dev)

    def loss_at(step: int) -> torch.Tensor:
        clips = {k: v.to(dev) for k, v in next(stream).items()}
        return vdt_loss(nets, clips, step_generator(seed, step), opt, empty)

    about = run_about(cfg, command, init_from, seed, batch, frames, dev)
    return train_and_record(nets, ema, optim, loss_at, steps, opt, out, about, {
        "params": sum(p.numel() for p in nets.parameters()), "spatial_prob": SPATIAL_PROB},
                            log_every=log_every, max_seconds=max_seconds, stop_at=stop_at)


def run_vdt_train(args) -> int:
    """`framecast train --vdt ...`: the arguments of `framecast train` that apply here."""
    cfg, opt, command = one_stage_run(args, "--vdt", ("play", "vin", "resume", "distill_from"))
    meta = train_vdt(cfg, args.out, args.steps, args.batch[0], args.frames[0], args.seed, opt=opt,
                     init_from=args.init_from, command=command, log_every=args.log_every, device=args.device,
                     max_seconds=None if args.max_minutes is None else 60 * args.max_minutes, stop_at=args.stop_at)
    report_run(meta, args.out)
    return 0
