"""Build a tiny random Wan pipeline folder in diffusers' layout, offline (see shared TESTING.md), and
write a diffusers state dict in the original Wan-AI layout."""
from __future__ import annotations

from pathlib import Path

import torch

SENTENCES = ["a cat walks on the grass", "a dog runs in the park", "the red ball bounces",
             "a bird flies over the sea", "night city lights"]


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_pipeline(seed: int = 0, scheduler: str = "unipc"):
    from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                           WanPipeline, WanTransformer3DModel)
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                        in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    with torch.no_grad():  # diffusers zero-inits some tables; make every weight matter
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8,
                                               relative_attention_max_distance=16))
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return WanPipeline(tokenizer=build_tokenizer(), text_encoder=text_encoder, transformer=transformer.eval(),
                       vae=vae.eval(), scheduler=sched)


def save_pipeline(folder: Path, **kwargs) -> Path:
    build_pipeline(**kwargs).save_pretrained(folder)
    return folder


# Original Wan-AI layout, for the checkpoint-loading tests: what its config.json says for a tiny
# model of 2 heads x 12 (dim 24), 2 layers, ffn 32, 4 channels, text_dim 16 (a WanModel kwarg there
# too, 4096 by default)
ORIGINAL_CONFIG = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 24, "eps": 1e-06,
                   "ffn_dim": 32, "freq_dim": 256, "in_dim": 4, "model_type": "t2v", "num_heads": 2,
                   "num_layers": 2, "out_dim": 4, "text_len": 512, "text_dim": 16}

# diffusers -> original, written out independently of the loader's table (inverse of model-zoo §1.3)
DIFFUSERS_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("proj_out.", "head.head."),
    (".scale_shift_table", ".modulation"),
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
    ("attn1.to_q.", "self_attn.q."), ("attn1.to_k.", "self_attn.k."), ("attn1.to_v.", "self_attn.v."),
    ("attn1.to_out.0.", "self_attn.o."), ("attn1.norm_q.", "self_attn.norm_q."),
    ("attn1.norm_k.", "self_attn.norm_k."),
    ("attn2.to_q.", "cross_attn.q."), ("attn2.to_k.", "cross_attn.k."), ("attn2.to_v.", "cross_attn.v."),
    ("attn2.to_out.0.", "cross_attn.o."), ("attn2.norm_q.", "cross_attn.norm_q."),
    ("attn2.norm_k.", "cross_attn.norm_k."),
    (".norm2.", ".norm3."),
)


def to_original(sd: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in sd.items():
        new = "head.modulation" if key == "scale_shift_table" else key
        for old, rep in DIFFUSERS_TO_ORIGINAL:
            new = new.replace(old, rep)
        out[prefix + new] = value.clone()
    return out
