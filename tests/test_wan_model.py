"""WanModel against diffusers' WanTransformer3DModel on a tiny random model (model-zoo §1.4)."""
import copy
import dataclasses
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed  # noqa: E402

from framecast.models.conditioning import Conditioning  # noqa: E402
from framecast.models.layers import apply_rope, rope_table, timestep_embedding  # noqa: E402
from framecast.models.wan import WanModel  # noqa: E402

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
B, F, H, W = 2, 3, 16, 16
GRID = (F, H // 2, W // 2)
HW = GRID[1] * GRID[2]


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """randn * 0.1 everywhere, so no weight (incl. the modulation tables) is zero or default; the
    q/k RMSNorm gains get 1 + randn * 0.1 (as trained models), otherwise the logits are ~0.01,
    attention is uniform and the test could not tell RoPE (or any q/k detail) right from wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if name.endswith(("norm_q.weight", "norm_k.weight")):
                p.add_(1.0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**TINY).eval()
    _randomize(ref, 1)
    ours = WanModel(**dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(2)
    lat = torch.randn(B, 4, F, H, W, generator=g)
    text = torch.randn(B, 12, 16, generator=g)
    t = torch.tensor([999.0, 321.5])
    return lat, t, text


def _ref(ref, lat, t, text):
    with torch.no_grad():
        return ref(hidden_states=lat, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def _ours(ours, lat, t, text, **kw):
    with torch.no_grad():
        return ours(lat, t, text, **kw)


def test_fp32_matches_diffusers(models, inputs):
    ref, ours = models
    want, got = _ref(ref, *inputs), _ours(ours, *inputs)
    assert got.shape == want.shape == (B, 4, F, H, W)
    diff = (got - want).abs().max().item()
    print(f"fp32 max abs diff vs diffusers: {diff:.3e}")
    assert diff <= 1e-5
    assert want.abs().max() > 1e-2  # the comparison is not between two near-zero tensors


def _bf16_inputs(inputs):
    lat, t, text = inputs
    return lat.bfloat16(), t, text.bfloat16()


def test_bf16_matches_diffusers(models, inputs):
    ref, ours = (copy.deepcopy(m).to(torch.bfloat16) for m in models)
    x = _bf16_inputs(inputs)
    want, got = _ref(ref, *x), _ours(ours, *x)
    assert got.dtype == want.dtype == torch.bfloat16
    diff = (got.float() - want.float()).abs().max().item()
    print(f"bf16 (.to) max abs diff vs diffusers: {diff:.3e}")
    torch.testing.assert_close(got.float(), want.float(), atol=1.5e-2, rtol=1e-2)
    # The whole difference is diffusers' RoPE table, which `.to(bf16)` rounds to bf16 (its
    # `_keep_in_fp32_modules` lists `rope`); ours is always fp32. With an fp32 table: bit-identical.
    ref.rope = WanRotaryPosEmbed(TINY["attention_head_dim"], TINY["patch_size"], TINY["rope_max_seq_len"])
    assert torch.equal(_ref(ref, *x), got)


def _diffusers_keep_fp32(model, dtype):
    """What diffusers' from_pretrained(torch_dtype=dtype) does to parameters (that path needs
    `accelerate`): each parameter whose dotted name has a part in the class's
    `_keep_in_fp32_modules` stays fp32, the rest go to dtype."""
    keep = WanTransformer3DModel._keep_in_fp32_modules
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data = p.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return model


def test_cast_bf16_matches_diffusers_keep_in_fp32(models, inputs):
    ref, ours = models
    ref_bf16 = _diffusers_keep_fp32(copy.deepcopy(ref), torch.bfloat16)
    ours_bf16 = copy.deepcopy(ours).cast(torch.bfloat16)
    ref_dtypes = {k: v.dtype for k, v in ref_bf16.state_dict().items()}
    our_dtypes = {k: v.dtype for k, v in ours_bf16.state_dict().items()}
    assert our_dtypes == ref_dtypes
    assert our_dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert our_dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    x = _bf16_inputs(inputs)
    want, got = _ref(ref_bf16, *x), _ours(ours_bf16, *x)
    assert got.dtype == torch.bfloat16
    diff = (got.float() - want.float()).abs().max().item()
    print(f"bf16 (cast, fp32-kept modules) max abs diff vs diffusers: {diff:.3e}")
    torch.testing.assert_close(got.float(), want.float(), atol=1.5e-2, rtol=1e-2)


def test_per_frame_timesteps_all_equal_is_scalar(models, inputs):
    _, ours = models
    lat, t, text = inputs
    scalar = _ours(ours, lat, t, text)
    per_frame = _ours(ours, lat, t[:, None].expand(B, F).contiguous(), text)
    assert (per_frame - scalar).abs().max().item() <= 1e-6


def test_per_frame_timesteps_match_diffusers_per_token(models, inputs):
    ref, ours = models
    lat, _, text = inputs
    t_BF = torch.tensor([[999.0, 500.0, 10.0], [0.0, 250.0, 750.0]])
    want = _ref(ref, lat, t_BF.repeat_interleave(HW, dim=1), text)  # diffusers' [B, L] path
    got = _ours(ours, lat, t_BF, text)
    diff = (got - want).abs().max().item()
    print(f"per-frame timestep max abs diff vs diffusers per-token: {diff:.3e}")
    assert diff <= 1e-5
    # and it really is per frame: differs from a shared timestep
    assert (got - _ours(ours, lat, t_BF[:, 0], text)).abs().max() > 1e-3


def test_bad_timestep_shape(models, inputs):
    _, ours = models
    lat, _, text = inputs
    with pytest.raises(ValueError, match="timestep shape"):
        _ours(ours, lat, torch.zeros(B, F + 1), text)


def test_same_state_dict_keys_and_shapes(models):
    ref, ours = models
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want


def test_config_roundtrip_and_layer_ids(models):
    ref, ours = models
    assert isinstance(ours.config, dict) and ours.config["num_layers"] == 2 and ours.config["num_actions"] == 0
    assert WanModel(**ours.config).config == ours.config
    assert [blk.layer_id for blk in ours.blocks] == [0, 1]


def _embed(model, lat, t, text):
    return model.embed(lat, t, Conditioning(text))


def _run_blocks(ours, x, ctx):
    for block in ours.blocks:
        x = block(x, ctx)
    return ours.head(x, ctx)


def test_embed_blocks_head_is_forward(models, inputs):
    _, ours = models
    with torch.no_grad():
        x, ctx = _embed(ours, *inputs)
        assert x.shape == (B, F * HW, 24) and ctx.grid == GRID
        assert ctx.mod_BF6D.shape == (B, F, 6, 24) and ctx.temb_BFD.shape == (B, F, 24)
        assert ctx.rope_q[0].shape == (F * HW, 6)
        got = _run_blocks(ours, x, ctx)
    assert torch.equal(got, _ours(ours, *inputs))


class IdentityHook:
    def __init__(self):
        self.calls = []

    def extend(self, layer_id, k, v):
        self.calls.append((layer_id, tuple(k.shape), tuple(v.shape)))
        return k, v


class AppendHook:
    """Appends `extra` K/V (a function of the layer's own k, v) after the window's keys."""

    def __init__(self, make):
        self.make, self.shapes = make, []

    def extend(self, layer_id, k, v):
        ek, ev = self.make(k, v)
        k, v = torch.cat([k, ek], dim=1), torch.cat([v, ev], dim=1)
        self.shapes.append((layer_id, tuple(k.shape), tuple(v.shape)))
        return k, v


def test_kv_hook(models, inputs):
    _, ours = models
    with torch.no_grad():
        x, ctx = _embed(ours, *inputs)
        plain = _run_blocks(ours, x, ctx)

        hook = IdentityHook()
        same = _run_blocks(ours, x, dataclasses.replace(ctx, kv_hook=hook))
        assert torch.equal(same, plain)
        assert hook.calls == [(i, (B, F * HW, 2, 12), (B, F * HW, 2, 12)) for i in (0, 1)]

        # a copy of every key/value at the same positions: softmax weights all halve, output unchanged
        dup = AppendHook(lambda k, v: (k, v))
        cos, sin = ctx.rope_k
        ctx_dup = copy.copy(ctx)
        ctx_dup.kv_hook, ctx_dup.rope_k = dup, (torch.cat([cos, cos]), torch.cat([sin, sin]))
        torch.testing.assert_close(_run_blocks(ours, x, ctx_dup), plain, atol=1e-5, rtol=1e-5)
        assert dup.shapes == [(i, (B, 2 * F * HW, 2, 12), (B, 2 * F * HW, 2, 12)) for i in (0, 1)]

        # two extra frames of different keys at positions F, F+1: output changes, shape does not
        g = torch.Generator().manual_seed(3)
        extra = AppendHook(lambda k, v: (torch.randn(B, 2 * HW, 2, 12, generator=g),
                                         torch.randn(B, 2 * HW, 2, 12, generator=g)))
        ctx_x = copy.copy(ctx)
        ctx_x.kv_hook = extra
        ctx_x.rope_k = ours.rope_table(torch.arange(F + 2), GRID[1], GRID[2])
        out = _run_blocks(ours, x, ctx_x)
        assert out.shape == plain.shape
        assert (out - plain).abs().max() > 1e-3
        assert extra.shapes == [(i, (B, (F + 2) * HW, 2, 12), (B, (F + 2) * HW, 2, 12)) for i in (0, 1)]

        # a rope_k that does not cover the extended keys is a clear error
        ctx_bad = copy.copy(ctx)
        ctx_bad.kv_hook = AppendHook(lambda k, v: (k[:, :HW], v[:, :HW]))
        with pytest.raises(ValueError, match="rope_table"):
            _run_blocks(ours, x, ctx_bad)


def test_actions_zero_init_equals_no_action(models, inputs):
    _, ours = models
    play = WanModel(**{**ours.config, "num_actions": 5}).eval()
    missing, unexpected = play.load_state_dict(ours.state_dict(), strict=False)
    assert missing == ["action_embedder.weight"] and unexpected == []
    actions = torch.tensor([[0, 3, 4], [1, 1, 2]])
    base = _ours(ours, *inputs)
    # equal up to matmul row-count rounding (the action path embeds per frame)
    torch.testing.assert_close(_ours(play, *inputs, actions=actions), base, atol=1e-6, rtol=0)
    assert torch.equal(_ours(play, *inputs), base)  # no actions given: the very same computation
    with torch.no_grad():
        play.action_embedder.weight.normal_(0, 0.5)
    moved = _ours(play, *inputs, actions=actions)
    assert (moved - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="num_actions=0"):
        _ours(ours, *inputs, actions=actions)


def test_unknown_kwarg_and_i2v():
    with pytest.raises(TypeError, match="window_sizee"):
        WanModel(**TINY, window_sizee=3)
    WanModel(**TINY, _class_name="WanTransformer3DModel", _diffusers_version="0.42.0")  # ignored
    with pytest.raises(NotImplementedError, match="I2V"):
        WanModel(**{**TINY, "image_dim": 8, "added_kv_proj_dim": 24})


def test_timestep_embedding_is_diffusers():
    t = torch.tensor([0.0, 1.5, 999.0, 421.0])
    want = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(timestep_embedding(t, 256), want)


def test_rope_table_matches_diffusers_and_shifts():
    head_dim = 12
    rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), 32)
    cos_ref, sin_ref = rope(torch.zeros(1, 4, 5, 6, 8))  # grid 5 x 3 x 4
    cos, sin = rope_table(torch.arange(5), 3, 4, head_dim)
    # ours stores one column per rotation pair; diffusers repeats each twice
    assert torch.equal(cos.repeat_interleave(2, dim=1), cos_ref[0, :, 0])
    assert torch.equal(sin.repeat_interleave(2, dim=1), sin_ref[0, :, 0])
    # arbitrary frame positions are rows of the longer table
    cos_w, _ = rope_table(torch.tensor([2, 3, 4]), 3, 4, head_dim)
    assert torch.equal(cos_w, cos[2 * 12:])
    # rotation preserves norms and is undone by the inverse rotation
    x = torch.randn(1, 60, 2, head_dim)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(y, cos, -sin), x, atol=1e-6, rtol=1e-6)
    assert math.isclose(float(cos[0].min()), 1.0)
