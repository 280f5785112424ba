"""Train the built-in world's tiny models: `framecast train` and `train(cfg, ...)`.

Recipe (shared/methods/world.md):
- Rectified flow with a noise level per latent frame (Diffusion Forcing, Chen et al. 2024):
  σ_BF = sigmoid(N(0, 1)) (logit-normal, SD3), x_σ = (1 − σ)·x0 + σ·noise per frame, the model
  regresses v = noise − x0 from timestep σ·1000 given as [B, F]. With probability
  `uniform_prob` a clip draws ONE σ for all its frames instead: the full and DualParal schedules
  embed a whole window at one timestep, so that case gets trained directly.
- AdamW with linear warm-up, grad-norm clipping, adaLN-Zero init (DiT) of the modulation and
  output layers; an EMA of all weights (decay min(d, (1 + n)/(10 + n)) so a short run is not
  dominated by its random start) — the EMA is what ships.
- Caption dropout: `caption_dropout` of the clips see the empty prompt ("" -> "</s>" only), the
  unconditional branch of classifier-free guidance.
- Play models (`play=True`): action adaLN, the prompt always empty, trained as NFD runs them —
  each frame denoised on its clean (σc-noised) past, block-causal, with the clip laid out twice
  (teacher forcing, `causal_training.py`); `draft_prob` lays a share of the clips out as
  speculation's joint drafts. `distill_from` turns the run into few-step distillation of that
  teacher onto the sampler's grid (cfg.sampler.steps, euler-wan).
- Learning rate: linear warm-up, then cosine decay to lr·lr_final at the last step.

Determinism: the model init, the data and every step's noise derive from `seed` alone — the
noise of step n from a generator seeded with (seed, n), the data from `world_batches(seed)`
replayed to its position — so a resumed run continues exactly as an uninterrupted one.

Files in `out/` (a folder):
  weights.safetensors  EMA weights, keys `transformer.*` and `text_encoder.*` (load_builtin's layout)
  weights.json         metadata: command, seed, steps, wall time, device, final loss
  state.pt             raw weights, EMA, optimizer, step, loss history (for --resume)
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from framecast.config import Config, load_config
from framecast.engine.components import sampler_factory
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning


@dataclass
class TrainOptions:
    lr: float = 5e-4              # AdamW peak learning rate
    warmup: int = 100             # steps of linear learning-rate warm-up
    weight_decay: float = 0.01    # AdamW decoupled weight decay
    grad_clip: float = 1.0        # max global grad norm
    ema_decay: float = 0.999      # EMA decay ceiling (ramped up from 0.1 over the first steps)
    caption_dropout: float = 0.1  # fraction of clips trained on the empty prompt (CFG's uncond branch)
    uniform_prob: float = 0.5     # fraction of clips with one σ for all frames (else σ per frame)
    logit_mean: float = 0.0       # logit-normal σ: sigmoid(N(mean, std))
    logit_std: float = 1.0
    sigma_uniform: float = 0.0    # share of σ draws uniform on [0, 1]: logit-normal rarely gives σ > 0.95,
                                  # where a next-frame model must predict from its context alone
    lr_final: float = 0.1         # cosine decay after warm-up, to lr·lr_final at the last step (1 = constant)
    save_every: int = 250         # steps between checkpoints (and always at the end)
    play: bool = False            # block-causal play model with actions (tiny-play)
    context_sigma_max: float = 0.1  # play: context frames noised at σc ~ U[0, this] (GameNGen augmentation)
    distill_from: str = ""        # play: teacher weights (a train --out folder or builtin:NAME) -> few-step student
    substeps: int = 4             # distillation: teacher Euler steps per student step
    init_from: str = ""           # start from these weights (fresh optimizer): a second training stage
    action_init_std: float = 0.0  # play: > 0 draws the action table from N(0, this) after init_from (the
                                  # model's zero init leaves actions much weaker than time in short runs)
    fg_weight: float = 0.0        # play: extra loss weight near the previous frame's objects (causal_training)
    draft_prob: float = 0.0       # play: share of clips with a joint draft (speculation's layout, causal_training)
    prefix_prob: float = 0.0      # text: share of clips whose first 1..F/2 frames are nearly clean context
                                  # (σ ~ U[0, context_sigma_max]) and the rest share one σ (what
                                  # schedule.rollout.lead_frames samples); there the direction word says where the
                                  # object goes next
    prefix_max: int = 0           # text: prefix clips keep 1..prefix_max frames nearly clean (0: F // 2); clips
                                  # from later in their video (offset_prob) keep at least offset_clean_min (2:
                                  # their motion shows; one frame mid-video does not tell which way a shape goes)
    offset_prob: float = 0.0      # share of clips that are windows from later in their video (shapes at walls and
                                  # bouncing, as a rollout's later chunks and DualParal's later blocks see them)
    offset_clean_min: int = 2     # text: prefix clips from later in their video keep at least this many nearly clean
                                  # frames (1: as few as the rollout's one finished frame, even at a wall)
    dualparal_prob: float = 0.0   # text: share of the clips of >= context + block frames laid out as a DualParal
                                  # window on the sampler's grid (world/layouts.py): the schedule's layout, trained
    dualparal_context: int = 4    # C of that layout (schedule.dualparal.context_frames)
    dualparal_block: int = 8      # N of that layout (schedule.dualparal.block_frames)
    bf16: bool = False            # forward and backward under bf16 autocast (weights, optimizer and EMA stay fp32);
                                  # (bench/research/train_step.py times both; docs/play.md has the numbers)


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------

def build(cfg: Config, seed: int) -> nn.ModuleDict:
    """{"transformer": the model.kind family's model, "text_encoder": BuiltinTextEncoder},
    initialised from `seed`."""
    from framecast.engine.components import new_model
    from framecast.engine.text import BuiltinTextEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = new_model(cfg)
        text = BuiltinTextEncoder(cfg.model.text_dim, cfg.text.max_length)
        init_adaln_zero(model)
        # Unit-scale word/position vectors: at the encoder's default std 0.02 the cross-attention
        # values start ~50x smaller than the video features and a short run learns to ignore the
        # prompt (measured: identical videos for different prompts after 1,000 steps).
        nn.init.normal_(text.word.weight, std=1.0)
        nn.init.normal_(text.position.weight, std=1.0)
    return nn.ModuleDict({"transformer": model, "text_encoder": text})


def init_adaln_zero(model: nn.Module) -> None:
    """DiT's adaLN-Zero (Peebles & Xie 2023, §3.2): every block starts as the identity (zero
    gates) and the output projection at zero, which trains markedly faster from scratch."""
    with torch.no_grad():
        ce = model.condition_embedder
        nn.init.zeros_(ce.time_proj.weight)
        nn.init.zeros_(ce.time_proj.bias)
        for block in model.blocks:
            block.scale_shift_table.zero_()
        model.scale_shift_table.zero_()
        nn.init.zeros_(model.proj_out.weight)
        nn.init.zeros_(model.proj_out.bias)
        nn.init.normal_(ce.time_embedder.linear_1.weight, std=0.02)  # DiT: N(0, 0.02) for the t-MLP
        nn.init.normal_(ce.time_embedder.linear_2.weight, std=0.02)


def sample_sigmas(gen: torch.Generator, b: int, f: int, opt: TrainOptions,
                  offsets_B: Optional[torch.Tensor] = None, grid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, F) noise levels: logit-normal per frame (a `sigma_uniform` share of them uniform on
    [0, 1] instead), or one per clip with prob. uniform_prob; a `prefix_prob` share of the clips
    with nearly clean first frames (at least opt.offset_clean_min where offsets_B > 0: clips from later
    in a video); a `dualparal_prob` share of the clips long enough laid out as DualParal windows on
    the sampler's σ `grid` (world/layouts.py)."""
    u_BF = torch.randn(b, f, generator=gen) * opt.logit_std + opt.logit_mean
    shared_B = torch.rand(b, generator=gen) < opt.uniform_prob
    u_BF = torch.where(shared_B[:, None], u_BF[:, :1].expand(-1, f), u_BF)
    sigma_BF = torch.sigmoid(u_BF)
    if opt.sigma_uniform > 0:  # draws only when used: runs without it keep their random stream
        flat_BF = torch.rand(b, f, generator=gen)
        pick_BF = torch.rand(b, f, generator=gen) < opt.sigma_uniform
        pick_BF = torch.where(shared_B[:, None], pick_BF[:, :1].expand(-1, f), pick_BF)
        flat_BF = torch.where(shared_B[:, None], flat_BF[:, :1].expand(-1, f), flat_BF)
        sigma_BF = torch.where(pick_BF, flat_BF, sigma_BF)
    if opt.prefix_prob > 0:  # draws only when used, as above
        from framecast.world.causal_training import share_in_draft

        prefix_B = torch.rand(b, generator=gen) < opt.prefix_prob
        k_B = torch.randint(1, max(2, (opt.prefix_max or f // 2) + 1), (b,), generator=gen)
        if offsets_B is not None:
            k_B = torch.where(offsets_B > 0, k_B.clamp(min=min(opt.offset_clean_min, f - 1)), k_B)
        context_B = torch.rand(b, generator=gen) * opt.context_sigma_max
        rest_BF = share_in_draft(sigma_BF, k_B)  # frames k.. share frame k's σ, as a joint draft's do
        prefixed_BF = torch.where(torch.arange(f)[None] < k_B[:, None], context_B[:, None], rest_BF)
        sigma_BF = torch.where(prefix_B[:, None] & (f > 1), prefixed_BF, sigma_BF)
    if opt.dualparal_prob > 0 and f >= opt.dualparal_context + opt.dualparal_block:  # draws only when used
        from framecast.world.layouts import dualparal_sigmas

        laid_B = torch.rand(b, generator=gen) < opt.dualparal_prob
        laid_BF = dualparal_sigmas(gen, b, f, grid, opt.dualparal_context, opt.dualparal_block)
        sigma_BF = torch.where(laid_B[:, None], laid_BF, sigma_BF)
    return sigma_BF


def predict(nets: nn.ModuleDict, x_BCFHW: torch.Tensor, t_BF: torch.Tensor, tokens_BS: torch.Tensor) -> torch.Tensor:
    """Velocity prediction of the text model (full attention; play models: causal_training)."""
    text_BSD = nets["text_encoder"](tokens_BS)
    return run_model(nets["transformer"], x_BCFHW, t_BF, Conditioning(text_BSD))


def loss_on(nets: nn.ModuleDict, batch: dict, gen: torch.Generator, opt: TrainOptions,
            empty_tokens: torch.Tensor, device, teacher: Optional[nn.ModuleDict] = None,
            grid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Loss of one batch (flow matching; distillation when `teacher` is given); all randomness
    drawn (on CPU) from `gen`."""
    from framecast.world.causal_training import distill_loss, play_loss

    x0 = batch["video"]                                                # (B, C, F, H, W)
    b, _, f = x0.shape[:3]
    if opt.play:
        tokens, actions = empty_tokens.expand(b, -1).to(device), batch["actions"].to(device)
        if teacher is not None:
            return distill_loss(nets, teacher, x0.to(device), actions, tokens, grid, gen,
                                opt.context_sigma_max, opt.substeps, opt.fg_weight, opt.draft_prob)
        sigma_BF = sample_sigmas(gen, b, f, opt).to(device)
        return play_loss(nets, x0.to(device), actions, tokens, sigma_BF, gen, opt.context_sigma_max, opt.fg_weight,
                         opt.draft_prob)
    sigma_BF = sample_sigmas(gen, b, f, opt, batch.get("offsets"), grid)
    noise = torch.randn(x0.shape, generator=gen)
    drop_B = torch.rand(b, generator=gen) < opt.caption_dropout
    tokens = torch.where(drop_B[:, None], empty_tokens, batch["tokens"])
    x0, noise, sigma_BF = x0.to(device), noise.to(device), sigma_BF.to(device)
    s = sigma_BF[:, None, :, None, None]                               # (B, 1, F, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    v = predict(nets, x_t, sigma_BF * 1000, tokens.to(device))
    return F.mse_loss(v.float(), (noise - x0).float())


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def lr_at(step: int, opt: TrainOptions, steps: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from lr to lr·lr_final at step `steps` − 1."""
    if step < opt.warmup:
        return opt.lr * (step + 1) / opt.warmup
    progress = (step - opt.warmup) / max(1, steps - 1 - opt.warmup)
    return opt.lr * (opt.lr_final + (1 - opt.lr_final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def ema_update(ema: nn.Module, nets: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), nets.parameters()):
        e.lerp_(p, 1 - decay)


def train_step(nets: nn.ModuleDict, ema: nn.Module, optim: torch.optim.Optimizer, batch: dict,
               gen: torch.Generator, opt: TrainOptions, empty_tokens: torch.Tensor, device, ema_decay: float,
               teacher: Optional[nn.ModuleDict] = None, grid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One optimizer step on `batch` (under bf16 autocast with `opt.bf16`), then the EMA update;
    returns the loss. The step `train` runs, and `bench/research/train_step.py` times."""
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=opt.bf16), \
            warnings.catch_warnings():
        # bf16 activations meet fp32 RMSNorm weights: torch warns that it takes the unfused kernel
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        loss = loss_on(nets, batch, gen, opt, empty_tokens, device, teacher, grid)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(nets.parameters(), opt.grad_clip)
    optim.step()
    ema_update(ema, nets, ema_decay)
    return loss.detach()


def save_weights(nets: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in nets.state_dict().items()}, str(path))


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def train(cfg: Config, steps: int, batch: int | Sequence[int], frames: int | Sequence[int], seed: int,
          out: str | Path, resume: bool = False,
          device: str = "cpu", log_every: int = 10, options: Optional[TrainOptions] = None,
          command: str = "", progress: bool = True, max_seconds: Optional[float] = None,
          stop_at: Optional[int] = None) -> dict:
    """Train for `steps` steps in total (with `resume`, continue out/state.pt up to `steps`), or
    until `max_seconds` of training wall time have passed (then saved as a finished run), or up
    to step `stop_at` (saved there; the learning rate follows the schedule of `steps`, so a
    recorded stage that stopped early reproduces exactly; `resume` can go on to `steps`).
    Batches: `batch` world clips of `frames` frames at cfg.video.height; with several (batch,
    frames) pairs, step i takes pair i mod n (e.g. frames (8, 12), batch (8, 5): 8-frame and
    12-frame clips on alternate steps), pair j's clips from their own stream (`clip_seed`).
    Returns the metadata written to out/weights.json (losses: the loss of every step, in order)."""
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches

    opt = options or TrainOptions()
    batches, lengths = clip_shapes(batch, frames)
    # recorded as ints for one clip length, as every earlier run recorded them; else as lists
    batch, frames = (batches[0], lengths[0]) if len(lengths) == 1 else (list(batches), list(lengths))
    if opt.play and cfg.model.num_actions < 1:
        raise ValueError("play training needs model.num_actions > 0 (use the tiny-play preset)")
    if (opt.action_init_std > 0 or opt.fg_weight > 0 or opt.draft_prob > 0) and not opt.play:
        raise ValueError("--action-init-std, --fg-weight and --draft-prob are for play models; add --play")
    if opt.dualparal_prob > 0 and opt.play:
        raise ValueError("--dualparal-prob is for the text model; drop --play")
    if opt.dualparal_prob > 0 and max(lengths) < opt.dualparal_context + opt.dualparal_block:
        raise ValueError(f"--dualparal-prob needs clips of at least C + N = "
                         f"{opt.dualparal_context + opt.dualparal_block} frames (schedule.dualparal.context_frames + "
                         f"block_frames); got --frames {' '.join(map(str, lengths))}")
    if opt.prefix_prob > 0 and opt.play:
        raise ValueError("--prefix-prob is for the text model (play models always see clean context); drop --play")
    if opt.distill_from and not opt.play:
        raise ValueError("distillation (distill_from) is for play models; add --play")
    if cfg.vae.kind != "identity" or cfg.text.kind != "builtin":
        raise ValueError("world training is pixel space with the built-in text encoder "
                         f"(vae.kind=identity, text.kind=builtin); got vae.kind={cfg.vae.kind}, "
                         f"text.kind={cfg.text.kind}")
    if cfg.video.height != cfg.video.width:
        raise ValueError(f"world clips are square; got video {cfg.video.height}x{cfg.video.width}")
    if opt.prefix_max >= min(lengths):
        raise ValueError(f"prefix_max={opt.prefix_max} must be below frames={min(lengths)}: a prefix clip needs a "
                         "noisy frame")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)

    nets = build(cfg, seed).to(dev).train()
    if opt.init_from:
        nets.load_state_dict(load_nets(cfg, opt.init_from).state_dict())
    if opt.action_init_std > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nn.init.normal_(nets["transformer"].action_embedder.weight, std=opt.action_init_std)
    teacher, grid = None, None
    if opt.distill_from:
        teacher = load_nets(cfg, opt.distill_from).to(dev).eval().requires_grad_(False)
        nets.load_state_dict(teacher.state_dict())  # the student starts as the teacher
        grid = sampler_factory(cfg)().sigmas  # the few-step grid the student will be sampled on
    if opt.dualparal_prob > 0:
        grid = sampler_factory(cfg)().sigmas  # the grid DualParal samples on (sampler.* of the config)
    ema = build(cfg, seed).to(dev).eval()
    ema.load_state_dict(nets.state_dict())
    ema.requires_grad_(False)
    optim = torch.optim.AdamW(nets.parameters(), lr=opt.lr, betas=(0.9, 0.99), weight_decay=opt.weight_decay)
    start, losses, wall = 0, [], 0.0
    if resume:
        state = torch.load(out / "state.pt", map_location=dev, weights_only=False)
        nets.load_state_dict(state["nets"])
        ema.load_state_dict(state["ema"])
        optim.load_state_dict(state["optim"])
        start, losses, wall = state["step"], state["losses"], state["wall_s"]
        if state["seed"] != seed or clip_shapes(state["batch"], state["frames"]) != (batches, lengths):
            raise ValueError(f"--resume: {out / 'state.pt'} was trained with seed={state['seed']} "
                             f"batch={state['batch']} frames={state['frames']}; got seed={seed} "
                             f"batch={batch} frames={frames}")
    if stop_at is not None and not start < stop_at <= steps:
        raise ValueError(f"stop_at={stop_at} must lie in ({start}, {steps}]: after the start step and at most steps")
    streams = [world_batches(clip_seed(seed, j), b, f, size=cfg.video.height, play=opt.play,
                             offset_prob=opt.offset_prob) for j, (b, f) in enumerate(zip(batches, lengths))]
    for step in range(start):  # replay the data streams to where the saved run stopped
        next(streams[step % len(streams)])
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])  # (1, S): "</s>" then <pad>

    def save(step: int) -> None:
        torch.save({"nets": nets.state_dict(), "ema": ema.state_dict(), "optim": optim.state_dict(),
                    "step": step, "losses": losses, "wall_s": wall, "seed": seed, "batch": batch,
                    "frames": frames, "options": asdict(opt)}, out / "state.pt.tmp")
        (out / "state.pt.tmp").replace(out / "state.pt")  # never leave a half-written state
        save_weights(ema, out / "weights.safetensors")

    t0 = time.perf_counter() - wall
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", unit="step", disable=not progress)
    for step in bar:
        for group in optim.param_groups:
            group["lr"] = lr_at(step, opt, steps)
        clips = next(streams[step % len(streams)])
        loss = train_step(nets, ema, optim, clips, step_generator(seed, step), opt, empty, dev,
                          min(opt.ema_decay, (1 + step) / (10 + step)), teacher, grid)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        wall = time.perf_counter() - t0
        stop = (max_seconds is not None and wall >= max_seconds) or step + 1 == stop_at
        if (step + 1) % opt.save_every == 0 or step + 1 == steps or stop:
            save(step + 1)
        if stop:
            break
    bar.close()
    steps = len(losses)

    tail = losses[-min(len(losses), 50):]
    meta = {"command": command, "preset": cfg.preset, "seed": seed, "steps": steps, "batch": batch,
            "frames": frames, "size": cfg.video.height, "device": describe_device(dev),
            "wall_s": round(wall, 1), "final_loss": round(sum(tail) / max(1, len(tail)), 5),
            "params": sum(p.numel() for p in nets.parameters()), "options": asdict(opt)}
    (out / "weights.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "losses": losses}


def clip_shapes(batch: int | Sequence[int], frames: int | Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(batches, frame counts) of the steps' clip shapes, one pair per step in turn; an int is one pair."""
    batches = (batch,) if isinstance(batch, int) else tuple(batch)
    lengths = (frames,) if isinstance(frames, int) else tuple(frames)
    if not batches or len(batches) != len(lengths):
        raise ValueError(f"batch and frames need one value each per clip length; got batch={list(batches)} "
                         f"frames={list(lengths)}")
    return batches, lengths


def clip_seed(seed: int, j: int) -> int:
    """Seed of the j-th clip length's data stream (j = 0: `seed`, the stream of one-length runs)."""
    return seed if j == 0 else seed * 1_000_003 + 7_919 * j


def load_nets(cfg: Config, source: str) -> nn.ModuleDict:
    """A trained model as train's ModuleDict: `source` as model.weights takes it (builtin:NAME, a
    train --out folder, or its weights.safetensors)."""
    from dataclasses import replace

    from framecast.engine.components import load_configured_weights

    model, text = load_configured_weights(replace(cfg, model=replace(cfg.model, weights=source)))
    return nn.ModuleDict({"transformer": model, "text_encoder": text})


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------
# quality on the world's metrics
# ---------------------------------------------------------------------------------------------

EVAL_PROMPTS = ("a red circle moving right", "a blue square moving down",
                "a green triangle moving left and a yellow circle moving up")


def evaluate(overrides: Sequence[str] = (), preset: str = "tiny", prompts: Sequence[str] = EVAL_PROMPTS,
             frames: int = 32, seed: int = 0) -> dict:
    """Generate each prompt with `Engine.from_preset(preset, overrides)` and average the world
    metrics (`evaluate_video`) over the prompts: {"adherence": ..., "presence": ..., ...}."""
    import numpy as np

    from framecast import Engine
    from framecast.world.metrics import evaluate_video

    engine = Engine.from_preset(preset, list(overrides))
    per = []
    for i, prompt in enumerate(prompts):
        video = np.stack(list(engine.stream(prompt, frames=frames, seed=seed + i)))
        per.append(evaluate_video(video, prompt=prompt))
    keys = ("adherence", "presence", "count_stability", "colour_identity", "prompt.exact_colours", "max_jump")
    return {k: round(float(np.mean([m[k] for m in per if k in m])), 4) for k in keys if any(k in m for m in per)}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainOptions()
    parser.add_argument("--preset", default="tiny", help="model shape preset (tiny; tiny-play with --play)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. model.num_layers=4)")
    parser.add_argument("--out", required=True, help="output folder: weights.safetensors, weights.json, state.pt")
    parser.add_argument("--steps", type=int, default=2000, help="total optimizer steps")
    parser.add_argument("--batch", type=int, nargs="+", default=[16],
                        help="clips per step; one per --frames value")
    parser.add_argument("--frames", type=int, nargs="+", default=[8],
                        help="frames per training clip; several (e.g. --frames 8 12 --batch 8 5) take turns, "
                             "one per step")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, data and noise")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/state.pt up to --steps")
    parser.add_argument("--log-every", type=int, default=10, help="steps averaged in the progress bar's loss")
    parser.add_argument("--play", action="store_true", help="train the block-causal action model (tiny-play)")
    parser.add_argument("--vin", action="store_true",
                        help="fine-tune with a VIN interface module, chunked (--preset tiny-vin; "
                             "framecast/world/vin_training.py, docs/vin.md)")
    parser.add_argument("--vin-windows", type=int, default=0, metavar="N",
                        help="--vin: windows of each clip the loss takes, drawn per clip (0 = all); with a long "
                             "--frames the keyframes span much more than the windows, as at inference")
    parser.add_argument("--vdt", action="store_true",
                        help="train a VDT with its spatial-temporal mask modeling, from scratch "
                             "(--preset tiny-vdt; framecast/world/vdt_training.py)")
    parser.add_argument("--av", action="store_true",
                        help="train AV-DiT's audio parts on the frozen tiny backbone (--preset tiny-av; "
                             "framecast/world/avdit_training.py, docs/avdit.md)")
    parser.add_argument("--click-weight", type=float, default=1.0,
                        help="--av: loss weight of the audio hops that hold a bounce click (1 = plain MSE)")
    parser.add_argument("--audio-lag-prob", type=float, default=0.0,
                        help="--av: share of clips whose video is cleaner than their sound (σ_video = u·σ_band, "
                             "u ~ U[0, 1]), as model.avdit.audio_lag samples them")
    parser.add_argument("--cue-weight", type=float, default=0.0,
                        help="--av with model.avdit.event_cue=true: weight of the event cue's cross-entropy "
                             "against the frames that click (0 = no direct supervision)")
    parser.add_argument("--camera", action="store_true",
                        help="train a camera adapter on the frozen tiny model, on camera clips of the world "
                             "(--preset tiny-camera; framecast/world/camera_training.py, docs/camera.md)")
    parser.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="learning-rate warm-up steps")
    parser.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay of the shipped weights")
    parser.add_argument("--caption-dropout", type=float, default=d.caption_dropout,
                        help="fraction of clips trained on the empty prompt (for CFG)")
    parser.add_argument("--uniform-prob", type=float, default=d.uniform_prob,
                        help="fraction of clips with one noise level for all frames (else one per frame)")
    parser.add_argument("--logit-mean", type=float, default=d.logit_mean,
                        help="noise levels sigmoid(N(mean, std)): > 0 trains high noise levels more")
    parser.add_argument("--logit-std", type=float, default=d.logit_std, help="see --logit-mean")
    parser.add_argument("--sigma-uniform", type=float, default=d.sigma_uniform,
                        help="share of noise levels drawn uniformly on [0, 1] instead of logit-normal")
    parser.add_argument("--init-from", default=d.init_from, metavar="WEIGHTS",
                        help="start from these weights (train --out folder or builtin:NAME) with a fresh "
                             "optimizer: a second stage with other options")
    parser.add_argument("--action-init-std", type=float, default=d.action_init_std,
                        help="play: draw the action table from N(0, this) after --init-from (0 = keep)")
    parser.add_argument("--fg-weight", type=float, default=d.fg_weight,
                        help="play: extra loss weight near the previous frame's objects (0 = plain MSE)")
    parser.add_argument("--draft-prob", type=float, default=d.draft_prob,
                        help="play: share of clips trained as a joint speculative draft (0 = none)")
    parser.add_argument("--prefix-prob", type=float, default=d.prefix_prob,
                        help="text: share of clips with their first frames nearly clean (σ <= --context-sigma-max) "
                             "and the rest at one σ (0 = none)")
    parser.add_argument("--prefix-max", type=int, default=d.prefix_max,
                        help="text: prefix clips keep 1..this many first frames nearly clean (0 = frames // 2)")
    parser.add_argument("--offset-prob", type=float, default=d.offset_prob,
                        help="share of clips that are windows from later in their video: shapes at walls and "
                             "bouncing (0 = every clip starts at frame 0)")
    parser.add_argument("--offset-clean-min", type=int, default=d.offset_clean_min,
                        help="text: prefix clips from later in their video keep at least this many nearly clean "
                             "frames (default 2: the motion shows; 1: the rollout's one finished frame)")
    parser.add_argument("--dualparal-prob", type=float, default=d.dualparal_prob,
                        help="text: share of clips of >= C + N frames laid out as DualParal windows on the sampler's "
                             "grid (C, N: the preset's schedule.dualparal.context_frames and block_frames)")
    parser.add_argument("--lr-final", type=float, default=d.lr_final,
                        help="cosine decay after warm-up to lr x this at the last step (1 = constant)")
    parser.add_argument("--context-sigma-max", type=float, default=d.context_sigma_max,
                        help="context frames (play; text with --prefix-prob) noised at a level drawn from [0, this]")
    parser.add_argument("--distill-from", default=d.distill_from, metavar="WEIGHTS",
                        help="play: distil this teacher (train --out folder or builtin:NAME) into a "
                             "few-step student on the preset's sampler grid")
    parser.add_argument("--substeps", type=int, default=d.substeps,
                        help="distillation: teacher Euler steps per student step")
    parser.add_argument("--bf16", action="store_true",
                        help="run forward and backward under bf16 autocast (fp32 weights, optimizer and EMA): "
                             "faster on GPUs and on CPUs with bf16 instructions")
    parser.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (and save) after this much training wall time, even before --steps")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop (and save) after this step; the learning rate still follows --steps")


def check_stop_at(stop_at: Optional[int], steps: int) -> None:
    """--stop-at, if given, must name one of the run's steps (one line otherwise)."""
    if stop_at is not None and not 1 <= stop_at <= steps:
        raise ValueError(f"--stop-at must lie in [1, --steps] = [1, {steps}], got {stop_at}")


def run_train(args: argparse.Namespace) -> int:
    if args.logit_std <= 0:
        raise ValueError(f"--logit-std must be > 0, got {args.logit_std}")
    if args.prefix_max < 0:
        raise ValueError(f"--prefix-max must be >= 0, got {args.prefix_max}")
    for name in ("steps", "batch", "frames", "save_every", "substeps", "offset_clean_min"):
        values = getattr(args, name) if name in ("batch", "frames") else [getattr(args, name)]
        if min(values) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {' '.join(map(str, values))}")
    if len(args.batch) != len(args.frames):
        raise ValueError(f"--batch needs one value per --frames value: got --frames {' '.join(map(str, args.frames))} "
                         f"and --batch {' '.join(map(str, args.batch))}")
    check_stop_at(args.stop_at, args.steps)
    for name in ("caption_dropout", "uniform_prob", "lr_final", "context_sigma_max", "sigma_uniform", "draft_prob",
                 "prefix_prob", "offset_prob", "dualparal_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    cfg = load_config(args.preset, args.overrides)
    opt = TrainOptions(lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay,
                       caption_dropout=args.caption_dropout, uniform_prob=args.uniform_prob,
                       lr_final=args.lr_final, save_every=args.save_every, play=args.play,
                       context_sigma_max=args.context_sigma_max, distill_from=args.distill_from,
                       substeps=args.substeps, sigma_uniform=args.sigma_uniform, init_from=args.init_from,
                       action_init_std=args.action_init_std, fg_weight=args.fg_weight,
                       draft_prob=args.draft_prob, prefix_prob=args.prefix_prob, logit_mean=args.logit_mean,
                       logit_std=args.logit_std, prefix_max=args.prefix_max, offset_prob=args.offset_prob,
                       offset_clean_min=args.offset_clean_min, bf16=args.bf16, dualparal_prob=args.dualparal_prob,
                       dualparal_context=cfg.schedule.dualparal.context_frames,
                       dualparal_block=cfg.schedule.dualparal.block_frames)
    prog = Path(sys.argv[0]).name
    prog = "python -m framecast" if prog == "__main__.py" else prog
    command = " ".join([prog, shlex.join(sys.argv[1:])])
    meta = train(cfg, args.steps, args.batch, args.frames, args.seed, args.out, resume=args.resume,
                 device=args.device, log_every=args.log_every, options=opt, command=command,
                 max_seconds=None if args.max_minutes is None else 60 * args.max_minutes, stop_at=args.stop_at)
    print(f"{meta['steps']} steps in {meta['wall_s']:.0f} s on {meta['device']}; final loss "
          f"{meta['final_loss']:.4f}; EMA weights in {Path(args.out) / 'weights.safetensors'}")
    return 0
