"""Train the AV parts of AV-DiT (engine-defined, not the paper's; docs/avdit.md) in the built-in world.

    framecast train --av --preset tiny-av --out DIR [--steps N] [--batch B] [--frames F] ...

The backbone (model.avdit.base, the shipped `tiny`) and its text encoder are loaded and frozen;
only the audio parts of framecast/models/avdit.py train (audio patch embedding and modality
vector, time adapter, audio LoRA, fusion block, audio head), from `--seed`.

One step: B world clips of F frames with their sound (world/audio.py `av_world_batches`), the
sound encoded by the preset's mel codec (engine/audio.py) into the band below each frame: the
tall latent x0 [B, 3, F, 32 + 4, 32]. Noise levels per frame from the world recipe's
`train.sample_sigmas` (so a share of the clips keeps its first frame nearly clean, as the rollout
schedule's context frame is), the SAME σ for a frame's video rows and its audio band (both
modalities share the timestep, as at inference with model.avdit.audio_lag 0; with
`--audio-lag-prob P` a share P of the clips has its video rows at u·σ, u ~ U[0, 1], the band at σ
and its own timestep, as a lagged band meets them), x_σ = (1 − σ)·x0 + σ·noise. The loss is the
flow-matching velocity MSE on the audio band only, over the frames that are not nearly clean
context (σ ≥ --context-sigma-max): the video rows are input, never target (the backbone is
frozen, and the fusion block's video gates, which only a video loss could move, stay at zero).
Caption dropout trains the empty prompt (CFG's unconditional branch), where the pitch must come
from the colours the audio tokens see.

Everything else is the world's recipe: per-step noise generator (train.step_generator), warm-up +
cosine learning rate, AdamW with grad-norm clipping and the EMA that ships (finetune.py).

With model.avdit.event_cue (the preset's), `--cue-weight W` adds W times the event cue's
cross-entropy against the frames whose band clicks (framecast/models/event_cue.py).

The shipped `builtin:tiny-av` (provenance: framecast/weights/tiny-av.json; its table: docs/avdit.md)
came from, stopped by --max-minutes at step 2,723 after 43 minutes on one thread (0.95 s a step):

    OMP_NUM_THREADS=1 framecast train --av --preset tiny-av --set model.avdit.event_cue=true --cue-weight 0.2 \\
        --click-weight 10 --audio-lag-prob 0.5 --out /tmp/fc_av5 --steps 3000 --batch 8 --frames 8 --seed 0 \\
        --lr 2e-3 --warmup 50 --lr-final 0.1 --offset-prob 0.5 --prefix-prob 0.5 --prefix-max 1 \\
        --uniform-prob 1.0 --logit-mean 1.0 --sigma-uniform 0.1 --log-every 25 --save-every 250 --max-minutes 43

Files in `out/`: weights.safetensors (EMA; keys transformer.* — the whole AvditModel, the frozen
backbone bit-for-bit the base's — and text_encoder.*: the layout model.weights takes with the
tiny-av preset) and weights.json (command, seed, steps, wall time, s/step, losses).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from framecast.config import Config, ConfigError
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.event_cue import event_loss
from framecast.world.finetune import one_stage_run, pixel_run, report_run, run_about, train_and_record
from framecast.world.train import TrainOptions, load_nets, sample_sigmas, step_generator


CUE_POS_WEIGHT = 4.0  # the click frames' weight in the event cue's cross-entropy (about 1 frame in 20 clicks)


def build_av_nets(cfg: Config, seed: int) -> nn.ModuleDict:
    """{"transformer": AvditModel with the frozen backbone of model.avdit.base and fresh AV parts
    (seeded), "text_encoder": the base's, frozen}."""
    from framecast.models.avdit import AvditModel

    base_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kind="wan"))
    try:
        base = load_nets(base_cfg, cfg.model.avdit.base)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"model.avdit.base={cfg.model.avdit.base!r}: the frozen backbone cannot be loaded "
                          f"({str(e).splitlines()[0]})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AvditModel.from_model_config(cfg.model)
    model.load_backbone(base["transformer"].state_dict())
    model.freeze_backbone()
    return nn.ModuleDict({"transformer": model, "text_encoder": base["text_encoder"].requires_grad_(False)})


def click_hops(codec, band: torch.Tensor) -> torch.Tensor:
    """bool (B, F, hops): the hops of an audio band [B, C, F, R, W] that hold a click (broadband onset:
    their mean level above 5 kHz >= av_metrics.CLICK_LEVEL)."""
    from framecast.world.av_metrics import CLICK_LEVEL, CLICK_MIN_HZ

    return codec.unpack(band)[..., codec.centres_hz > CLICK_MIN_HZ].mean(-1) >= CLICK_LEVEL


def click_weights(codec, band: torch.Tensor, click_weight: float) -> torch.Tensor:
    """Per-value loss weights of an audio band [B, C, F, R, W]: `click_weight` on the hops that hold a
    click, 1 elsewhere. Clicks fill about 1 hop in 100 of the world's sound: unweighted, the loss is
    nearly all tones and silence."""
    click = click_hops(codec, band)[..., None]                            # (B, F, hops, 1)
    w = torch.where(click, torch.as_tensor(click_weight), torch.as_tensor(1.0)).expand(*click.shape[:3], codec.n_mels)
    return codec.pack(w.flatten(-3, -2))


def av_loss(nets: nn.ModuleDict, codec, batch: dict, gen: torch.Generator, opt: TrainOptions,
            empty_tokens: torch.Tensor, click_weight: float = 1.0, lag_prob: float = 0.0,
            cue_weight: float = 0.0) -> torch.Tensor:
    """The audio-band velocity loss of one batch (module docstring); all randomness from `gen` (CPU).
    `lag_prob`: share of clips whose video rows are noised at u·σ (u ~ U[0, 1]) while the band is at σ.
    `cue_weight` (a model with model.avdit.event_cue): plus that times the event cue's cross-entropy
    against the frames whose sound clicks (event_cue.event_loss, click frames weighted CUE_POS_WEIGHT)."""
    video = batch["video"]                                              # (B, C, F, H, W)
    dev = video.device
    band = codec.encode(batch["audio"].cpu()).to(dev)                    # (B, C, F, R, W)
    x0 = torch.cat([video, band], dim=3)                                 # (B, C, F, H + R, W)
    b, _, f, h = x0.shape[:4]
    rows = band.shape[3]
    sigma_BF = sample_sigmas(gen, b, f, opt, batch.get("offsets").cpu())
    noise = torch.randn(x0.shape, generator=gen)
    drop_B = torch.rand(b, generator=gen) < opt.caption_dropout
    if lag_prob > 0:  # the band behind the video (model.avdit.audio_lag): the video cleaner than the sound
        lagged_B = torch.rand(b, generator=gen) < lag_prob
        video_BF = torch.where(lagged_B[:, None], sigma_BF * torch.rand(b, 1, generator=gen), sigma_BF)
    else:
        video_BF = sigma_BF
    sigma_BF, video_BF, noise = sigma_BF.to(dev), video_BF.to(dev), noise.to(dev)
    tokens = torch.where(drop_B[:, None].to(dev), empty_tokens, batch["tokens"])
    s = torch.cat([video_BF[:, None, :, None, None].expand(-1, -1, -1, h - rows, -1),
                   sigma_BF[:, None, :, None, None].expand(-1, -1, -1, rows, -1)], dim=3)  # (B, 1, F, H + R, 1)
    x_t = (1 - s) * x0 + s * noise
    with torch.no_grad():
        text_BSD = nets["text_encoder"](tokens)
    ctxs = []
    v = run_model(nets["transformer"], x_t, video_BF * 1000, Conditioning(text_BSD, audio_timesteps=sigma_BF * 1000),
                  prepare=lambda ctx: ctxs.append(ctx) or ctx)
    err = (v[:, :, :, h - rows:].float() - (noise - x0)[:, :, :, h - rows:]) ** 2     # (B, C, F, R, W)
    if click_weight != 1.0:
        err = err * click_weights(codec, band.cpu(), click_weight).to(dev)
    # nearly clean frames are the rollout's given context: their velocity is noise the model cannot see
    weight_BF = (sigma_BF >= opt.context_sigma_max).float()
    per_frame = err.mean(dim=(1, 3, 4))                                  # (B, F)
    loss = (per_frame * weight_BF).sum() / weight_BF.sum().clamp_min(1.0)
    if cue_weight > 0:
        if ctxs[0].event_logits_BF is None:
            raise ValueError("--cue-weight trains the event cue: set model.avdit.event_cue=true")
        events_BF = click_hops(codec, band.cpu()).any(-1).to(dev)
        loss = loss + cue_weight * event_loss(ctxs[0].event_logits_BF, events_BF, CUE_POS_WEIGHT)
    return loss


def train_av(cfg: Config, out: str | Path, steps: int, batch: int, frames: int, seed: int,
             opt: TrainOptions | None = None, command: str = "", log_every: int = 25,
             max_seconds: float | None = None, device: str = "cpu", click_weight: float = 1.0,
             lag_prob: float = 0.0, cue_weight: float = 0.0, stop_at: int | None = None) -> dict:
    from framecast.engine.audio import codec_for
    from framecast.world.audio import av_world_batches
    from framecast.world.captions import tokenize

    opt = opt or TrainOptions()
    if cfg.model.kind != "avdit":
        raise ValueError(f"--av trains model.kind=avdit (the tiny-av preset); got model.kind={cfg.model.kind}")
    codec = codec_for(cfg)
    out, dev = pixel_run(cfg, out, device, "AV", "tiny-av")
    nets = build_av_nets(cfg, seed).to(dev)
    nets["transformer"].train()
    ema = build_av_nets(cfg, seed).to(dev).eval().requires_grad_(False)
    ema.load_state_dict(nets.state_dict())
    trained = list(nets["transformer"].trained_parameters().values())
    optim = torch.optim.AdamW([{"params": trained, "scale": 1.0}], lr=opt.lr, betas=(0.9, 0.99),
                              weight_decay=opt.weight_decay)
    stream = av_world_batches(seed, batch, frames, size=cfg.video.height, fps=cfg.video.fps,
                              offset_prob=opt.offset_prob)
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)], device=dev)

    def loss_at(step: int) -> torch.Tensor:
        clips = {k: v.to(dev) for k, v in next(stream).items()}
        return av_loss(nets, codec, clips, step_generator(seed, step), opt, empty, click_weight, lag_prob, cue_weight)

    about = run_about(cfg, command, cfg.model.avdit.base, seed, batch, frames, dev)
    return train_and_record(nets, ema, optim, loss_at, steps, opt, out, about, {
        "params_trained": sum(p.numel() for p in trained),
        "params_total": sum(p.numel() for p in nets["transformer"].parameters()), "click_weight": click_weight,
        "audio_lag_prob": lag_prob, "cue_weight": cue_weight,
        "sigmas": {k: getattr(opt, k) for k in ("uniform_prob", "sigma_uniform", "prefix_prob", "prefix_max",
                                                "context_sigma_max")}},
                            log_every=log_every, max_seconds=max_seconds, stop_at=stop_at)


def run_av_train(args) -> int:
    """`framecast train --av ...`: the arguments of `framecast train` that apply here (the backbone
    comes from model.avdit.base, not --init-from)."""
    cfg, opt, command = one_stage_run(args, "--av", ("play", "vin", "vdt", "resume", "distill_from", "init_from"))
    if args.click_weight <= 0:
        raise ValueError(f"--click-weight must be > 0, got {args.click_weight}")
    if not 0 <= args.audio_lag_prob <= 1:
        raise ValueError(f"--audio-lag-prob must be in [0, 1], got {args.audio_lag_prob}")
    if args.cue_weight < 0:
        raise ValueError(f"--cue-weight must be >= 0, got {args.cue_weight}")
    if args.cue_weight > 0 and not cfg.model.avdit.event_cue:
        raise ValueError("--cue-weight trains the event cue: add --set model.avdit.event_cue=true")
    opt = dataclasses.replace(opt, uniform_prob=args.uniform_prob, sigma_uniform=args.sigma_uniform,
                              prefix_prob=args.prefix_prob, prefix_max=args.prefix_max,
                              context_sigma_max=args.context_sigma_max, offset_clean_min=args.offset_clean_min)
    meta = train_av(cfg, args.out, args.steps, args.batch[0], args.frames[0], args.seed, opt=opt, command=command,
                    log_every=args.log_every, device=args.device, click_weight=args.click_weight,
                    lag_prob=args.audio_lag_prob, cue_weight=args.cue_weight,
                    max_seconds=None if args.max_minutes is None else 60 * args.max_minutes, stop_at=args.stop_at)
    report_run(meta, args.out)
    return 0
