"""The optimisation loop of the world's fine-tunes that add a module to trained weights (SLA's
projections: sla_training.py; VIN's interface: vin_training.py): warm-up + cosine learning rate
(each parameter group scaled by its "scale"), AdamW with grad-norm clipping, the EMA that ships,
a progress line every `log_every` steps, and a wall-time budget; and `one_stage_run`, what the
`framecast train` flags of these one-stage recipes (--vin, --vdt) share.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from framecast.config import Config, load_config
from framecast.world.train import TrainOptions, check_stop_at, describe_device, ema_update, lr_at, save_weights


def one_stage_run(args, flag: str, drop: tuple[str, ...]) -> tuple[Config, TrainOptions, str]:
    """The checks and settings a one-stage recipe (`framecast train --vin`, `--vdt`) takes from the
    parsed `framecast train` arguments: (config, options, the command line for the provenance card).
    `drop`: the flags (attribute names) this recipe cannot take."""
    given = [f"--{name.replace('_', '-')}" for name in drop if getattr(args, name)]
    if given:
        raise ValueError(f"{flag} trains one stage in one run: drop {', '.join(given)}")
    if len(args.batch) != 1 or len(args.frames) != 1:
        raise ValueError(f"{flag} trains on one clip length: give one --frames and one --batch value")
    if args.steps < 1 or args.batch[0] < 1 or args.frames[0] < 1:
        raise ValueError(f"--steps, --batch and --frames must be >= 1, got {args.steps}, {args.batch[0]}, "
                         f"{args.frames[0]}")
    if args.logit_std <= 0:
        raise ValueError(f"--logit-std must be > 0, got {args.logit_std}")
    check_stop_at(args.stop_at, args.steps)
    for name in ("caption_dropout", "lr_final", "offset_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    cfg = load_config(args.preset, args.overrides)
    opt = TrainOptions(lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay, caption_dropout=args.caption_dropout,
                       lr_final=args.lr_final, logit_mean=args.logit_mean, logit_std=args.logit_std,
                       offset_prob=args.offset_prob, save_every=args.save_every)
    prog = Path(sys.argv[0]).name
    command = " ".join(["python -m framecast" if prog == "__main__.py" else prog, shlex.join(sys.argv[1:])])
    return cfg, opt, command


def run_adapter_recipe(args, flag: str, finetune: Callable[..., dict], adjust: Optional[Callable] = None) -> int:
    """`framecast train FLAG ...` for a recipe that adds a module to the trained `tiny` (--vin,
    --camera): `finetune(cfg, out, steps, batch, frames, seed, init_from=, opt=, command=, log_every=,
    device=, max_seconds=, stop_at=)` with the parsed arguments; `adjust(opt) -> opt` sets the recipe's own options."""
    cfg, opt, command = one_stage_run(args, flag, ("play", "resume", "distill_from"))
    if adjust is not None:
        opt = adjust(opt)
    meta = finetune(cfg, args.out, args.steps, args.batch[0], args.frames[0], args.seed,
                    init_from=args.init_from or "builtin:tiny", opt=opt, command=command,
                    log_every=args.log_every, device=args.device,
                    max_seconds=None if args.max_minutes is None else 60 * args.max_minutes, stop_at=args.stop_at)
    report_run(meta, args.out)
    return 0


def pixel_run(cfg: Config, out: str | Path, device: str, what: str, preset: str) -> tuple[Path, torch.device]:
    """The start of a world fine-tune (`what` names the recipe, `preset` its preset): a one-line
    ValueError unless the config is pixel space with the built-in text encoder; the output folder
    (made) and the device."""
    if cfg.vae.kind != "identity" or cfg.text.kind != "builtin":
        raise ValueError(f"{what} world training is pixel space with the built-in text encoder (the {preset} preset)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out, torch.device(device)


def run_about(cfg: Config, command: str, init_from: str, seed: int, batch: int, frames: int,
              device: torch.device) -> dict:
    """The provenance fields every world fine-tune's weights.json starts with."""
    return {"command": command, "preset": cfg.preset, "init_from": init_from, "seed": seed, "batch": batch,
            "frames": frames, "device": describe_device(device)}


def train_and_record(nets: nn.Module, ema: nn.Module, optim: torch.optim.Optimizer,
                     loss_at: Callable[[int], torch.Tensor], steps: int, opt: TrainOptions, out: Path,
                     about: dict, extra: dict, log_every: int = 25, max_seconds: Optional[float] = None,
                     stop_at: Optional[int] = None) -> dict:
    """`finetune_loop` with the EMA saved to out/weights.safetensors every `opt.save_every` steps and
    at the end, and out/weights.json written: `about` (command, preset, init_from, seed, batch,
    frames, device), the run's steps, wall time, s/step and final loss (mean of the last 50), the
    recipe's `extra` fields, the options and every step's loss. Returns that record (losses unrounded)."""
    losses, wall = finetune_loop(nets, ema, optim, loss_at, steps, opt, log_every, max_seconds, stop_at,
                                 checkpoint=lambda: save_weights(ema, out / "weights.safetensors"),
                                 checkpoint_every=opt.save_every)
    save_weights(ema, out / "weights.safetensors")
    tail = losses[-min(len(losses), 50):]
    meta = {**about, "steps": len(losses), "wall_s": round(wall, 1), "s_per_step": round(wall / max(1, len(losses)), 3),
            "final_loss": round(sum(tail) / max(1, len(tail)), 5), **extra,
            "options": {k: getattr(opt, k) for k in ("lr", "warmup", "lr_final", "ema_decay", "caption_dropout",
                                                      "logit_mean", "logit_std", "offset_prob")}}
    (out / "weights.json").write_text(json.dumps({**meta, "losses": [round(x, 5) for x in losses]}, indent=1) + "\n")
    return {**meta, "losses": losses}


def report_run(meta: dict, out: str | Path) -> None:
    """The last line of a training run."""
    print(f"{meta['steps']} steps in {meta['wall_s']:.0f} s ({meta['s_per_step']} s/step) on {meta['device']}; "
          f"final loss {meta['final_loss']:.4f}; EMA weights in {Path(out) / 'weights.safetensors'}")


def finetune_loop(nets: nn.Module, ema: nn.Module, optim: torch.optim.Optimizer,
                  loss_at: Callable[[int], torch.Tensor], steps: int, opt: TrainOptions, log_every: int = 0,
                  max_seconds: Optional[float] = None, stop_at: Optional[int] = None,
                  checkpoint: Optional[Callable[[], None]] = None,
                  checkpoint_every: int = 0) -> tuple[list[float], float]:
    """Run up to `steps` steps of `loss_at(step)` (stopping early once `max_seconds` of wall time
    have passed, or after step `stop_at`: a finished run of fewer steps, its learning rate on the
    schedule of `steps`); `checkpoint()` every `checkpoint_every` steps.
    Returns (the loss of every step, wall seconds)."""
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        for group in optim.param_groups:
            group["lr"] = lr_at(step, opt, steps) * group["scale"]
        loss = loss_at(step)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nets.parameters(), opt.grad_clip)
        optim.step()
        ema_update(ema, nets, min(opt.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            print(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            checkpoint()
        if (max_seconds is not None and time.perf_counter() - t0 >= max_seconds) or step + 1 == stop_at:
            break
    return losses, time.perf_counter() - t0
