"""Fine-tune the tiny world model with a VIN interface module: chunked training (spec §3.2).

    framecast train --vin --preset tiny-vin --out DIR [--init-from builtin:tiny] [--steps N] ...

One step: B world clips of F latent frames, ONE noise level per clip (the vin schedule denoises
every chunk at the same step), x_σ = (1 − σ)·x0 + σ·noise. The VIN module reads the clip's
keyframes (every `keyframe_every` frames of x_σ, the schedule's T_s) with the timestep and the
prompt -> Z (per clip). Each clip is cut into the schedule's windows (`make_plan`: F_chunk own
frames + the previous chunk's last F_local), and every window is its own sample of the batch,
reading its clip's Z at the layers `vin.layers`: windows never attend to one another, so the
only path between chunks is Z — the stop-gradient across chunks of the spec, with VIN and DiT
trained end to end through Z. Loss: the velocity MSE over every window frame (overlap frames count
in both windows: both predict them at inference). `--vin-windows N` takes N windows of each clip
(drawn per clip) instead of all of them: the keyframes then come from a clip much longer than the
windows the loss trains on, as at inference, where a chunk reads the keyframes of the whole video
(docs/vin.md, "Training"). Caption dropout trains the empty prompt, which
the unconditional CFG branch gives both the DiT and the VIN processor.

Starts from the shipped `tiny` weights (`--init-from`, default builtin:tiny) with a fresh VIN
module whose patch embedding is copied from the DiT's (it reads the same latents); the DiT and
the text encoder train at `--lr`, the new module at 5x it. Everything not VIN-specific is the
world's recipe (framecast/world/train.py): clip stream, per-step noise generator, warm-up +
cosine learning rate, EMA.

Files in `out/`: weights.safetensors (EMA; keys transformer.*, text_encoder.*, vin.*: the layout
model.weights takes, with the tiny-vin preset) and weights.json (command, seed, steps, wall
time, losses).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from framecast.config import Config
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.vin import InterfaceTokens, VinInterface
from framecast.schedulers.vin import keyframe_every, make_plan
from framecast.world.finetune import pixel_run, run_about, run_adapter_recipe, train_and_record
from framecast.world.train import TrainOptions, load_nets, step_generator

VIN_LR_SCALE = 5.0  # the fresh interface module learns faster than the pretrained DiT is moved


def build_vin_nets(cfg: Config, init_from: str, seed: int) -> nn.ModuleDict:
    """{"transformer", "text_encoder"} from `init_from`, plus a fresh "vin" module (seeded)."""
    nets = load_nets(cfg, init_from)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vin = VinInterface.for_model(cfg.model, cfg.vin)
    vin.patch.load_state_dict(nets["transformer"].patch_embedding.state_dict())  # it reads the same latents
    return nn.ModuleDict({**nets, "vin": vin})


def windows(cfg: Config, frames: int) -> list[range]:
    """The schedule's windows (context + own frames) of a clip of `frames` latent frames."""
    o = cfg.schedule.vin
    plan = make_plan(frames, o.chunk_frames, o.overlap_frames, 1)
    return [range(c.start, c.stop) for c in plan.chunks]


def drawn_windows(count: int, clips: int, per_clip: int, gen: torch.Generator) -> list[set[int]]:
    """Per clip, the indices of the windows the loss takes: `per_clip` of the `count`, drawn for
    each clip from `gen` (0: all of them, drawing nothing)."""
    if not per_clip:
        return [set(range(count)) for _ in range(clips)]
    return [set(torch.randperm(count, generator=gen)[:per_clip].tolist()) for _ in range(clips)]


def vin_loss(nets: nn.ModuleDict, cfg: Config, batch: dict, gen: torch.Generator, opt: TrainOptions,
             empty_tokens: torch.Tensor, interface: bool = True, windows_per_clip: int = 0) -> torch.Tensor:
    """The chunked loss of one batch (all randomness from `gen`, on the CPU). `interface` False: the
    windows read no tokens (the ablation; the same draws, so losses pair by batch).
    `windows_per_clip` N > 0: N of each clip's windows, drawn per clip (0: all of them)."""
    x0 = batch["video"]                                                  # (B, C, F, H, W)
    b, _, f = x0.shape[:3]
    sigma_B = torch.sigmoid(torch.randn(b, generator=gen) * opt.logit_std + opt.logit_mean)
    noise = torch.randn(x0.shape, generator=gen)
    drop_B = torch.rand(b, generator=gen) < opt.caption_dropout
    tokens = torch.where(drop_B[:, None], empty_tokens, batch["tokens"])
    s = sigma_B[:, None, None, None, None]
    x_t = (1 - s) * x0 + s * noise
    t_B = sigma_B * 1000
    text_BSD = nets["text_encoder"](tokens)
    every = keyframe_every(cfg.schedule.vin, cfg.video.fps, cfg.vae.temporal_stride)
    z_BND = nets["vin"](x_t[:, :, ::every], t_B, text_BSD)
    layers = frozenset(cfg.vin.layers) if cfg.vin.layers else None
    ws = windows(cfg, f)
    taken = drawn_windows(len(ws), b, windows_per_clip, gen)
    groups: dict[int, list[tuple[int, range]]] = {}  # (clip, window) samples of one length run as one batch
    for i, w in enumerate(ws):  # window-major, as the schedule's chunks
        for c in range(b):
            if i in taken[c]:
                groups.setdefault(len(w), []).append((c, w))
    total, count = x0.new_zeros(()), 0
    for pairs in groups.values():
        idx = torch.tensor([c for c, _ in pairs], device=x0.device)
        x = torch.cat([x_t[c:c + 1, :, w.start:w.stop] for c, w in pairs])  # (n, C, len, H, W)
        target = torch.cat([(noise - x0)[c:c + 1, :, w.start:w.stop] for c, w in pairs])
        interface_tokens = InterfaceTokens(z_BND[idx], layers)

        def prepare(ctx, tokens=interface_tokens if interface else None):
            ctx.interface = tokens
            return ctx

        v = run_model(nets["transformer"], x, t_B[idx], Conditioning(text_BSD[idx]), prepare=prepare)
        total = total + F.mse_loss(v.float(), target, reduction="sum")
        count += target.numel()
    return total / count


def finetune(cfg: Config, out: str | Path, steps: int, batch: int, frames: int, seed: int,
             init_from: str = "builtin:tiny", opt: TrainOptions | None = None, command: str = "",
             log_every: int = 25, max_seconds: float | None = None, device: str = "cpu",
             stop_at: int | None = None, windows_per_clip: int = 0) -> dict:
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches

    opt = opt or TrainOptions()
    count = len(windows(cfg, frames))  # a clip shorter than a chunk: one line, before any work
    if not 0 <= windows_per_clip <= count:
        raise ValueError(f"--vin-windows {windows_per_clip}: a clip of {frames} frames has {count} windows "
                         f"(schedule.vin chunks); use 0 (all) to {count}")
    out, dev = pixel_run(cfg, out, device, "VIN", "tiny-vin")
    nets = build_vin_nets(cfg, init_from, seed).to(dev).train()
    ema = build_vin_nets(cfg, init_from, seed).to(dev).eval().requires_grad_(False)
    ema.load_state_dict(nets.state_dict())
    base = [p for k, p in nets.named_parameters() if not k.startswith("vin.")]
    optim = torch.optim.AdamW([{"params": base, "scale": 1.0},
                               {"params": list(nets["vin"].parameters()), "scale": VIN_LR_SCALE}],
                              lr=opt.lr, betas=(0.9, 0.99), weight_decay=opt.weight_decay)
    stream = world_batches(seed, batch, frames, size=cfg.video.height, offset_prob=opt.offset_prob)
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])

    def loss_at(step: int) -> torch.Tensor:
        clips = {k: v.to(dev) for k, v in next(stream).items()}
        return vin_loss(nets, cfg, clips, step_generator(seed, step), opt, empty.to(dev),
                        windows_per_clip=windows_per_clip)

    about = run_about(cfg, command, init_from, seed, batch, frames, dev)
    return train_and_record(nets, ema, optim, loss_at, steps, opt, out, about, {
        "chunk_frames": cfg.schedule.vin.chunk_frames, "overlap_frames": cfg.schedule.vin.overlap_frames,
        "windows_per_clip": windows_per_clip or count,
        "vin": {"tokens": cfg.vin.tokens, "heads": cfg.vin.heads, "blocks": cfg.vin.blocks, "layers": list(cfg.vin.layers)},
        "params_vin": sum(p.numel() for p in nets["vin"].parameters())},
                            log_every=log_every, max_seconds=max_seconds, stop_at=stop_at)


def run_vin_train(args) -> int:
    """`framecast train --vin ...`: the arguments of `framecast train` that apply here."""
    return run_adapter_recipe(args, "--vin", partial(finetune, windows_per_clip=args.vin_windows))
