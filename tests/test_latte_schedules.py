"""A random tiny Latte through framecast's schedules (built-in text encoder, pixel space, DDIM):
the family contract (blocks = spatial+temporal pairs, temporal kv_hook) under DualParal, whose
W=2 pipeline stages (layer-sharded, with the context K/V cache) must equal W=1 exactly on CPU."""
from pathlib import Path

import torch

from cli_latents import PROMPT, generate_latents

LATTE = ["model.kind=latte", "model.weights=", "model.num_attention_heads=2", "model.attention_head_dim=8",
         "model.num_layers=3", "model.out_channels=6", "model.latte.sample_size=8", "model.latte.video_length=4",
         "model.latte.cross_attention_dim=0", "sampler.name=ddim", "video.height=16", "video.width=16"]
DUALPARAL = ["--frames", "10", "--schedule", "dualparal", "--block-frames", "4", "--context-frames", "2",
             "--steps", "3", "--seed", "5", "--quiet", "sampler.guidance_scale=3.0"]


def generate(tmp_path: Path, name: str, *extra) -> torch.Tensor:
    return generate_latents(tmp_path, name, *DUALPARAL, *extra, *LATTE)


def test_dualparal_latte_w2_equals_w1(tmp_path):
    w1 = generate(tmp_path, "w1", "--launcher", "local")
    assert w1.shape == (1, 3, 10, 16, 16) and torch.isfinite(w1).all()
    w2 = generate(tmp_path, "w2", "--launcher", "torchrun", "--workers", "2")
    diff = (w2 - w1).abs().max().item()
    print(f"DualParal Latte W=2 vs W=1: max abs diff {diff:.3g}")
    assert diff <= 1e-5


def test_full_schedule_per_frame_timesteps_run(tmp_path):
    """The full schedule with a lead frame steps frames at different levels in one pass (t [B, F])."""
    from framecast import Engine

    engine = Engine.from_preset("tiny", LATTE + ["schedule.name=full", "schedule.full.lead_frames=1",
                                                 "sampler.steps=2"])
    model = engine.model
    assert type(model).__name__ == "LatteModel" and len(model.blocks) == 3
    engine.generate(PROMPT, frames=4, seed=1, out=f"{tmp_path}/frames/")
    assert len(list((tmp_path / "frames").glob("*.png"))) == 4
