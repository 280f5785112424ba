"""Same seed, same video: framecast on a diffusers LattePipeline folder vs diffusers' LattePipeline."""
import numpy as np
import pytest
import torch

from tiny_latte import FRAMES, save_pipeline

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def latte_dir(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("latte"))


def diffusers_frames(folder, prompt, seed, steps, negative_prompt="", guidance=7.5):
    from diffusers import LattePipeline

    pipe = LattePipeline.from_pretrained(folder)
    out = pipe(prompt=prompt, negative_prompt=negative_prompt, height=64, width=64, video_length=FRAMES,
               num_inference_steps=steps, guidance_scale=guidance,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np").frames[0]
    return np.round(out * 255).astype(np.uint8)  # [F, H, W, 3]


def framecast_frames(folder, tmp_path, prompt, seed, steps, extra=()):
    from framecast.engine.video_io import read_video
    from framecast.launch.cli import main

    out = tmp_path / "frames/"
    rc = main(["generate", prompt, "--frames", str(FRAMES), "--out", str(out) + "/", "--checkpoint",
               str(folder), "--seed", str(seed), "--schedule", "full", "--quiet", "model.dtype=float32",
               f"sampler.steps={steps}", "video.height=64", "video.width=64", *extra])
    assert rc == 0
    return read_video(out)


@pytest.mark.parametrize("seed, guidance", [(0, 7.5), (7, 1.0)])
def test_same_seed_same_video_as_diffusers(latte_dir, tmp_path, seed, guidance):
    prompt = "  A Cat walks on the grass "  # lower-cased and stripped by both
    ref = diffusers_frames(latte_dir, prompt, seed, steps=3, guidance=guidance)
    ours = framecast_frames(latte_dir, tmp_path, prompt, seed, steps=3, extra=[f"sampler.guidance_scale={guidance}"])
    assert ours.shape == ref.shape == (FRAMES, 64, 64, 3)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    inner = ((ref > 0) & (ref < 255)).mean()
    print(f"max 8-bit level difference: {diff.max()}, mean {diff.mean():.4f}; unsaturated {inner:.0%}")
    assert diff.max() <= 1
    # the comparison can fail: another seed gives a different video
    other = diffusers_frames(latte_dir, prompt, seed + 1, steps=3, guidance=guidance)
    assert np.abs(other.astype(int) - ref.astype(int)).max() > 1


def test_negative_prompt_matches(latte_dir, tmp_path):
    ref = diffusers_frames(latte_dir, "a dog runs", 3, steps=2, negative_prompt="night city lights")
    ours = framecast_frames(latte_dir, tmp_path, "a dog runs", 3, steps=2,
                            extra=["--negative-prompt", "night city lights"])
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_folder_sets_the_family(latte_dir):
    from framecast.config import load_config
    from framecast.engine.components import apply_checkpoint_config, inspect_checkpoint

    cfg = load_config("tiny", [])
    apply_checkpoint_config(cfg, inspect_checkpoint(latte_dir), keep_sampler=set())
    m = cfg.model
    assert (m.kind, m.num_layers, m.in_channels, m.out_channels, m.text_dim, list(m.patch_size)) == \
        ("latte", 2, 4, 8, 32, [1, 2, 2])
    assert (m.latte.video_length, m.latte.sample_size, m.latte.cross_attention_dim) == (FRAMES, 8, 16)
    assert (cfg.text.kind, cfg.text.max_length, cfg.vae.kind, cfg.vae.spatial_stride, cfg.vae.temporal_stride,
            cfg.sampler.name, cfg.sampler.guidance_scale) == ("t5", 120, "sd", 8, 1, "ddim", 7.5)


def test_stage_build_equals_full_build(latte_dir):
    """build_stage on a Latte folder: only the stage's pairs (and the shared modules) are loaded, each
    tensor equal to the full model's."""
    from framecast.config import load_config
    from framecast.engine.components import apply_checkpoint_config, build_model, inspect_checkpoint
    from torch import nn

    cfg = load_config("tiny", [])
    apply_checkpoint_config(cfg, inspect_checkpoint(latte_dir), keep_sampler=set())
    full = build_model(cfg, latte_dir)
    stage = build_model(cfg, latte_dir, layers=range(1, 2))
    assert isinstance(stage.blocks[0], nn.Identity) and not isinstance(stage.blocks[1], nn.Identity)
    sd, full_sd = stage.state_dict(), full.state_dict()
    assert not any(k.startswith(("transformer_blocks.0.", "temporal_transformer_blocks.0.")) for k in sd)
    assert sd.keys() == {k for k in full_sd if not k.startswith(("transformer_blocks.0.", "temporal_transformer_blocks.0."))}
    assert all(torch.equal(v, full_sd[k]) for k, v in sd.items())
