"""Build a tiny random LattePipeline folder in diffusers' layout, offline (T5 text encoder, the SD
image VAE applied per frame, DDIM)."""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_wan import build_tokenizer

FRAMES = 5  # diffusers' Latte adds its temporal positions only when frames == video_length


def build_pipeline(seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, LattePipeline, LatteTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False,
        norm_eps=1e-6, caption_channels=32, video_length=FRAMES)
    with torch.no_grad():  # diffusers zero-inits some tables; make every weight matter
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8, 16, 16],
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    text_encoder = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                           relative_attention_num_buckets=8, relative_attention_max_distance=16))
    sched = DDIMScheduler(beta_start=1e-4, beta_end=2e-2, beta_schedule="linear", clip_sample=False,
                          prediction_type="epsilon", set_alpha_to_one=True, steps_offset=0,
                          timestep_spacing="leading")
    return LattePipeline(tokenizer=build_tokenizer(), text_encoder=text_encoder.eval(), vae=vae.eval(),
                         transformer=transformer.eval(), scheduler=sched)


def save_pipeline(folder: Path, **kwargs) -> Path:
    build_pipeline(**kwargs).save_pretrained(folder)
    return folder
