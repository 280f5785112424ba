"""Fine-tune the tiny model for SLA attention, and the matched ablation without its linear branch.

    python -m framecast.world.sla_training --out /tmp/sla [--no-linear] [--steps 300] [KEY=VALUE ...]

SLA (shared/methods/accelerators.md B5) is fine-tuned, not training-free: the zero-initialised
per-layer projections of the linear branch have to learn what to add, and the model adapts to
seeing only the critical blocks exactly. This trains BOTH the model (every weight of the
transformer and the text encoder, as the paper fine-tunes the whole DiT) and the projections,
starting from the shipped `tiny` weights with zero projections. `--no-linear` is the ablation: the
same run (seed, clips, noise, learning rate, sparsity, block selection) with the linear branch
off, i.e. the model fine-tuned for plain block-sparse attention over the critical blocks. Only
the model can adapt there, which is why the model is trained in both: a projections-only run would
leave the ablation nothing to train and would mix "fine-tuned" with "has a linear branch".

Everything but the attention runtime is the world's recipe (framecast/world/train.py): the clip
stream (`world_batches`), the noise levels (`sample_sigmas`), the per-step noise generator, the
learning-rate schedule, the EMA. The loss is `loss_on`'s text branch with the SLA runtime handed
to `run_model` (`predict` there takes no runtime).

Files in `out/`: weights.safetensors (EMA; keys transformer.*, text_encoder.*, sla.proj.* — the
layout of model.weights and attention.sla.weights alike) and weights.json (command, seed, steps,
wall time, losses).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from framecast.config import load_config
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.sla_attention import zero_projections
from framecast.world.finetune import finetune_loop
from framecast.world.train import TrainOptions, describe_device, load_nets, sample_sigmas, save_weights, step_generator

# The fine-tune recipe: the shipped tiny model's last stages (docs/tiny-training.md): most clips
# with one nearly clean first frame (the rollout's layout), some from later in their video.
RECIPE = TrainOptions(lr=2e-4, warmup=20, lr_final=0.3, prefix_prob=0.9, uniform_prob=1.0, logit_mean=2.0,
                      logit_std=1.0, sigma_uniform=0.2, prefix_max=1, offset_prob=0.3, offset_clean_min=1)


def sla_runtime(cfg, proj: nn.ModuleList, linear: bool):
    """The engine's runtime for the sla backend with trainable projections as its assets."""
    from framecast.engine.components import make_attention

    rt = make_attention(cfg)
    return dataclasses.replace(rt, options=dataclasses.replace(rt.options, linear=linear, weights=""), assets=proj)


def flow_loss(nets: nn.ModuleDict, runtime, batch: dict, gen: torch.Generator, opt: TrainOptions,
              empty_tokens: torch.Tensor) -> torch.Tensor:
    """`train.loss_on` (text models) with the attention runtime passed to the block loop."""
    x0 = batch["video"]                                                # (B, C, F, H, W)
    b, _, f = x0.shape[:3]
    sigma_BF = sample_sigmas(gen, b, f, opt, batch.get("offsets"))
    noise = torch.randn(x0.shape, generator=gen)
    drop_B = torch.rand(b, generator=gen) < opt.caption_dropout
    tokens = torch.where(drop_B[:, None], empty_tokens, batch["tokens"])
    s = sigma_BF[:, None, :, None, None]                               # (B, 1, F, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    v = run_model(nets["transformer"], x_t, sigma_BF * 1000, Conditioning(nets["text_encoder"](tokens)),
                  attention=runtime)
    return F.mse_loss(v.float(), noise - x0)


def finetune(cfg, out: str | Path, steps: int, batch: int, frames: int, seed: int, linear: bool = True,
             init_from: str = "builtin:tiny", proj_lr: float = 1e-3, opt: TrainOptions = RECIPE,
             command: str = "", log_every: int = 25, max_seconds: float | None = None) -> dict:
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_nets(cfg, init_from)
    proj = zero_projections(cfg.model.num_layers, cfg.model.attention_head_dim)
    nets = nn.ModuleDict({**base, "sla": nn.ModuleDict({"proj": proj})}).train()
    ema = nn.ModuleDict({**load_nets(cfg, init_from),
                         "sla": nn.ModuleDict({"proj": zero_projections(cfg.model.num_layers,
                                                                        cfg.model.attention_head_dim)})})
    ema.load_state_dict(nets.state_dict())
    ema.requires_grad_(False)
    runtime = sla_runtime(cfg, proj, linear)
    model_params = [p for k, p in nets.named_parameters() if not k.startswith("sla.")]
    groups = [{"params": model_params, "lr": opt.lr, "scale": 1.0}]
    if linear:  # zero-initialised: a larger step than the pretrained weights take
        groups.append({"params": list(proj.parameters()), "lr": proj_lr, "scale": proj_lr / opt.lr,
                       "weight_decay": 0.0})
    optim = torch.optim.AdamW(groups, lr=opt.lr, betas=(0.9, 0.99), weight_decay=opt.weight_decay)
    stream = world_batches(seed, batch, frames, size=cfg.video.height, offset_prob=opt.offset_prob)
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])
    losses, wall = finetune_loop(
        nets, ema, optim, lambda step: flow_loss(nets, runtime, next(stream), step_generator(seed, step), opt, empty),
        steps, opt, log_every, max_seconds)
    save_weights(ema, out / "weights.safetensors")
    tail = losses[-min(len(losses), 50):]
    meta = {"command": command, "preset": cfg.preset, "init_from": init_from, "linear": linear, "seed": seed,
            "steps": len(losses), "batch": batch, "frames": frames, "device": describe_device(torch.device("cpu")),
            "wall_s": round(wall, 1), "final_loss": round(sum(tail) / max(1, len(tail)), 5),
            "attention": dataclasses.asdict(runtime.options), "proj_lr": proj_lr,
            "options": dataclasses.asdict(opt), "losses": [round(x, 5) for x in losses]}
    (out / "weights.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


@torch.no_grad()
def held_out_loss(cfg, weights: str, linear: bool, batches: int = 16, batch: int = 4, frames: int = 8,
                  seed: int = 999, backend: str = "sla") -> list[float]:
    """Flow-matching loss per batch of `weights` on clips and noise no run trains on (seed 999), with the
    sla backend at cfg's sparsity (linear branch and projections of `weights` when `linear`), or
    dense sdpa with backend="sdpa": the fine-tune's fidelity, free of sampling noise."""
    from framecast.models.attention import AttentionRuntime
    from framecast.models.sla_attention import load as load_projections
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches

    nets = load_nets(cfg, weights).eval()
    runtime = AttentionRuntime()
    if backend == "sla":
        options = dataclasses.replace(cfg.attention.sla, linear=linear, weights=weights if linear else "")
        runtime = sla_runtime(cfg, load_projections(options, cfg), linear)
    stream = world_batches(seed, batch, frames, size=cfg.video.height, offset_prob=RECIPE.offset_prob)
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])
    return [flow_loss(nets, runtime, next(stream), step_generator(seed, i), RECIPE, empty).item()
            for i in range(batches)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (weights.safetensors, weights.json)")
    ap.add_argument("--preset", default="tiny-sla", help="preset whose attention.sla options are trained for")
    ap.add_argument("--init-from", default="builtin:tiny", help="model weights to start from")
    ap.add_argument("--no-linear", action="store_true", help="the ablation: no linear branch (plain block-sparse)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seed", type=int, default=40)
    ap.add_argument("--lr", type=float, default=RECIPE.lr, help="peak learning rate of the model weights")
    ap.add_argument("--proj-lr", type=float, default=1e-3, help="peak learning rate of the SLA projections")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall time")
    ap.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    # the projections start at zero: whatever attention.sla.weights names is not read here
    cfg = load_config(args.preset, [*args.overrides, "attention.sla.weights=", "model.weights="])
    command = " ".join(["python -m framecast.world.sla_training", shlex.join(sys.argv[1:] if argv is None else argv)])
    meta = finetune(cfg, args.out, args.steps, args.batch, args.frames, args.seed, linear=not args.no_linear,
                    init_from=args.init_from, proj_lr=args.proj_lr,
                    opt=dataclasses.replace(RECIPE, lr=args.lr), command=command,
                    log_every=args.log_every, max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    print(f"{meta['steps']} steps in {meta['wall_s']:.0f} s; final loss {meta['final_loss']:.4f}; "
          f"weights in {Path(args.out) / 'weights.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
