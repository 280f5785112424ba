"""The optimisation loop of the world's fine-tunes that add a module to trained weights (SLA's
projections: sla_training.py; VIN's interface: vin_training.py): warm-up + cosine learning rate
(each parameter group scaled by its "scale"), AdamW with grad-norm clipping, the EMA that ships,
a progress line every `log_every` steps, and a wall-time budget.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import nn

from framecast.world.train import TrainOptions, ema_update, lr_at


def finetune_loop(nets: nn.Module, ema: nn.Module, optim: torch.optim.Optimizer,
                  loss_at: Callable[[int], torch.Tensor], steps: int, opt: TrainOptions, log_every: int = 0,
                  max_seconds: Optional[float] = None, checkpoint: Optional[Callable[[], None]] = None,
                  checkpoint_every: int = 0) -> tuple[list[float], float]:
    """Run up to `steps` steps of `loss_at(step)` (stopping early once `max_seconds` of wall time
    have passed: a finished run of fewer steps); `checkpoint()` every `checkpoint_every` steps.
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
        if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
            break
    return losses, time.perf_counter() - t0
