"""load_wan_transformer: diffusers and original Wan-AI folders, sharded or not, and strictness."""
import json

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

from framecast.engine.wan_checkpoint import (CheckpointError, convert_original_state_dict,  # noqa: E402
                                             load_wan_transformer)
from framecast.models.wan import WanModel  # noqa: E402
from tiny_wan import ORIGINAL_CONFIG, to_original  # noqa: E402

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _assert_same(model: WanModel, ref, atol=1e-5):
    want = ref.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    g = torch.Generator().manual_seed(2)
    lat, text = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 12, 16, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        diff = (model(lat, t, text) - ref(lat, t, text, return_dict=False)[0]).abs().max().item()
    assert diff <= atol


def _write(folder, config, sd, name="diffusion_pytorch_model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name))
    return folder


def _diffusers_config(ref) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(ref.config).items()}


def test_diffusers_save_pretrained(ref, tmp_path):
    ref.save_pretrained(tmp_path)
    model = load_wan_transformer(tmp_path)
    assert isinstance(model, WanModel) and not model.training
    _assert_same(model, ref)


def test_diffusers_sharded(ref, tmp_path):
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    _assert_same(load_wan_transformer(tmp_path), ref)


def test_bf16_load_keeps_fp32_modules(ref, tmp_path):
    ref.save_pretrained(tmp_path)
    model = load_wan_transformer(tmp_path, dtype=torch.bfloat16)
    want = WanModel(**dict(ref.config)).cast(torch.bfloat16)
    assert {k: v.dtype for k, v in model.state_dict().items()} == {k: v.dtype for k, v in want.state_dict().items()}
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_original_layout(ref, tmp_path, prefix):
    sd = to_original(ref.state_dict(), prefix)
    assert f"{prefix}blocks.0.norm3.weight" in sd and f"{prefix}head.modulation" in sd
    assert not any("norm2" in k for k in sd)
    _write(tmp_path, ORIGINAL_CONFIG, sd)
    _assert_same(load_wan_transformer(tmp_path), ref)


def test_original_layout_sharded(ref, tmp_path):
    sd = to_original(ref.state_dict(), "model.diffusion_model.")
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    _write(tmp_path, ORIGINAL_CONFIG, {k: sd[k] for k in shards[next(iter(shards))]}, next(iter(shards)))
    name2 = list(shards)[1]
    save_file({k: sd[k] for k in shards[name2]}, str(tmp_path / name2))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    _assert_same(load_wan_transformer(tmp_path), ref)


def test_convert_original_state_dict_roundtrip(ref):
    sd = ref.state_dict()
    assert convert_original_state_dict(to_original(sd)).keys() == sd.keys()
    assert convert_original_state_dict(to_original(sd, "model.diffusion_model.")).keys() == sd.keys()


# ---- strictness ------------------------------------------------------------------------------

def _err(folder, match):
    with pytest.raises(CheckpointError, match=match) as e:
        load_wan_transformer(folder)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_key(ref, tmp_path):
    sd = dict(ref.state_dict())
    del sd["blocks.1.attn2.to_k.bias"]
    msg = _err(_write(tmp_path, _diffusers_config(ref), sd), "1 missing")
    assert "blocks.1.attn2.to_k.bias" in msg and str(tmp_path) in msg


def test_unexpected_key(ref, tmp_path):
    sd = dict(ref.state_dict())
    sd["blocks.0.attn1.to_qkv.weight"] = torch.zeros(3)
    msg = _err(_write(tmp_path, _diffusers_config(ref), sd), "1 unexpected")
    assert "blocks.0.attn1.to_qkv.weight" in msg and "0 missing" in msg


def test_original_keys_under_diffusers_config(ref, tmp_path):
    # original names without the original config: every key is wrong, reported by count
    _err(_write(tmp_path, _diffusers_config(ref), to_original(ref.state_dict())), "missing")


def test_bad_shape(ref, tmp_path):
    sd = dict(ref.state_dict())
    sd["proj_out.bias"] = torch.zeros(17)
    msg = _err(_write(tmp_path, _diffusers_config(ref), sd), "shape mismatch")
    assert "proj_out.bias (17,) vs (16,)" in msg


def test_missing_folder(tmp_path):
    _err(tmp_path / "nope", "does not exist")


def test_missing_config(ref, tmp_path):
    save_file(dict(ref.state_dict()), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    _err(tmp_path, "missing config.json")


def test_malformed_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    _err(tmp_path, "malformed JSON")


def test_no_weights(ref, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_diffusers_config(ref)))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"")
    msg = _err(tmp_path, "no \\*.safetensors")
    assert "diffusion_pytorch_model.bin" in msg


def test_unknown_config_key(ref, tmp_path):
    _err(_write(tmp_path, {**_diffusers_config(ref), "bogus_key": 1}, ref.state_dict()), "bogus_key")


def test_i2v_original_config(ref, tmp_path):
    _err(_write(tmp_path, {**ORIGINAL_CONFIG, "model_type": "i2v"}, to_original(ref.state_dict())), "i2v")


def test_index_lists_missing_shard(ref, tmp_path):
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    next(iter(sorted(tmp_path.glob("*.safetensors")))).unlink()
    _err(tmp_path, "missing shard")
