"""DualParal against references that share none of its stage, cache or worker code (issue 26.5).

1. C = 0: DualParal = each block denoised alone, from the same per-block initial noise (the
   coordinated pool's `block_noise(k, n)`), with a fresh sampler and the plain model call
   (`model(...)`, CFG combined by hand).
2. One block covering the whole video (N >= latent frames, any C): DualParal = the full
   schedule's loop (`denoise_full`) started from that block's pool noise.

The DualParal side runs through the Engine (`generate(..., latents_out=...)`, local launcher,
W = 1; W > 1 = W = 1 is tests/test_dualparal_run.py). fp32 throughout.

Tolerance: exact. DualParal embeds a window at ONE timestep per CFG branch (`t` of shape [B], the
worker's `_inputs`), the plain model call of the full schedule, so the arithmetic is the same and
the latents are bitwise EQUAL (max |diff| = 0.0) in every case. (Passing that timestep once per
frame, [B, F], takes the model's per-frame path: the same embedding up to float32 rounding of a
GEMM over B·F rows, ~5e-5 after CFG and the steps — why the worker passes [B].)
"""
from __future__ import annotations

import pytest
import torch

from framecast import Engine
from framecast.engine.components import sampler_factory
from framecast.parallel.noise import NoisePool
from framecast.schedulers.full import denoise_full

PROMPT = "a red circle moving right"
SEED = 5
STEPS = 3  # unipc at 3 steps: order 1, 2, then the lower-order final step


def dualparal_run(tmp_path, sampler: str, guidance: float, N: int, C: int, frames: int):
    """(engine, request, latents [1, C, F, h, w]) of a W = 1 local DualParal run through the Engine."""
    engine = Engine.from_preset("tiny", [
        "schedule.name=dualparal", f"schedule.dualparal.block_frames={N}",
        f"schedule.dualparal.context_frames={C}", "parallel.launcher=local", "parallel.workers=1",
        f"sampler.name={sampler}", f"sampler.steps={STEPS}", f"sampler.guidance_scale={guidance}",
        "model.dtype=float32"])
    out = tmp_path / "latents.pt"
    engine.generate(PROMPT, out=str(tmp_path / "frames") + "/", frames=frames, seed=SEED, latents_out=out)
    engine.close()
    return engine, engine.last_request, torch.load(out)


def pool_noise(engine, req, k: int, n: int) -> torch.Tensor:
    """Block k's initial latents [1, C, n, h, w], as the worker builds them: rows of the pool of
    (seed, N, C) over frames (channels, latent h, latent w)."""
    s = engine.cfg.schedule.dualparal
    pool = NoisePool(req.seed, s.block_frames, s.context_frames,
                     (engine.cfg.model.in_channels, req.latent_height, req.latent_width))
    return pool.block_noise(k, n).permute(1, 0, 2, 3)[None].contiguous()


def plain_model_call(engine, req):
    """lat [1, C, F, h, w], t -> guided velocity: `model(...)` with CFG by hand (cond first)."""
    g = engine.cfg.sampler.guidance_scale
    cfg_on = g > 1.0
    prompts = [req.prompt, req.negative_prompt] if cfg_on else [req.prompt]
    text = engine.text.encode(prompts)
    model = engine.model

    @torch.no_grad()
    def call(lat, t):
        b = len(prompts)
        t = torch.as_tensor(t)
        out = model(lat.expand(b, -1, -1, -1, -1), t.expand(b), text)
        if not cfg_on:
            return out
        cond, uncond = out[:1], out[1:]
        return uncond + g * (cond - uncond)
    return call


def blocks_alone(engine, req) -> torch.Tensor:
    """Each block denoised on its own (no neighbours) from its pool noise, a fresh sampler each."""
    N, F = engine.cfg.schedule.dualparal.block_frames, req.latent_frames
    call = plain_model_call(engine, req)
    outs = []
    for k, start in enumerate(range(0, F, N)):
        lat = pool_noise(engine, req, k, min(N, F - start))
        sampler = sampler_factory(engine.cfg)()
        for t in sampler.timesteps:
            lat = sampler.step(call(lat, t), t, lat)
        outs.append(lat)
    return torch.cat(outs, dim=2)


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    print(f"{name}: max |diff| = {diff:.3g}")
    assert diff == 0.0, f"{name}: expected bitwise equality, max |diff| = {diff}"
    return diff


# 10 latent frames in blocks of 4: 4, 4 and an uneven last block of 2
@pytest.mark.parametrize("sampler", ["euler", "unipc"])
@pytest.mark.parametrize("guidance", [3.0, 1.0], ids=["cfg", "nocfg"])
def test_no_context_equals_each_block_alone(tmp_path, sampler, guidance):
    engine, req, ours = dualparal_run(tmp_path, sampler, guidance, N=4, C=0, frames=10)
    assert ours.shape == (1, 3, 10, 32, 32)
    name = f"C=0 {sampler} g={guidance}"
    compare(f"{name} vs blocks alone", ours, blocks_alone(engine, req))


# (sampler, guidance, N, C) with 6 latent frames: one block, shorter than N or exactly N; C = 0 .. N
@pytest.mark.parametrize("sampler, guidance, N, C", [
    ("euler", 3.0, 8, 0), ("euler", 1.0, 6, 6), ("unipc", 3.0, 6, 3), ("unipc", 1.0, 8, 8)])
def test_one_block_equals_full_schedule(tmp_path, sampler, guidance, N, C):
    engine, req, ours = dualparal_run(tmp_path, sampler, guidance, N=N, C=C, frames=6)
    assert ours.shape == (1, 3, 6, 32, 32)
    denoise = engine.denoiser(req.prompt, req.negative_prompt)
    noise = pool_noise(engine, req, 0, req.latent_frames)
    name = f"one block N={N} C={C} {sampler} g={guidance}"
    compare(f"{name} vs full schedule", ours, denoise_full(denoise, noise, engine.make_sampler))


def test_the_comparison_can_fail(tmp_path):
    """With context (C = 2) the blocks are no longer independent: the per-block reference differs,
    so the C = 0 equality above is not vacuous."""
    engine, req, ours = dualparal_run(tmp_path, "euler", 3.0, N=4, C=2, frames=10)
    assert engine.cfg.schedule.dualparal.context_frames == 2
    diff = (ours - blocks_alone(engine, req)).abs().max().item()
    print(f"C=2 vs blocks alone: max |diff| = {diff:.3g}")
    assert diff > 1e-2
