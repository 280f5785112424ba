"""The VDT family (framecast/models/vdt.py): shapes through the one block loop, per-frame vs
per-video timesteps, the temporal kv_hook (DualParal's context cache) equal to attention over the
concatenated frames, adaLN-Zero identity blocks, the text projection, the config path."""
import pytest
import torch

from framecast.models.attention import BlockCausal
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.vdt import VdtModel, sincos_1d, sincos_2d
from framecast.parallel.kv_cache import ContextKVCache
from tiny_vdt import C, TEXT_DIM, tiny_vdt


def inputs(b=2, f=4, h=8, w=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, C, f, h, w, generator=g), torch.randn(b, 5, TEXT_DIM, generator=g)


@pytest.mark.parametrize("f,h,w", [(1, 4, 4), (3, 8, 6), (5, 4, 8)])
def test_shapes_through_the_block_loop(f, h, w):
    model = tiny_vdt()
    lat, text = inputs(f=f, h=h, w=w)
    out = model(lat, torch.tensor([900.0, 10.0]), text)
    assert out.shape == lat.shape
    hidden = run_model(model, lat, torch.tensor([900.0, 10.0]), Conditioning(text), head=False)
    assert hidden.shape == (2, f * (h // 2) * (w // 2), 16)


def test_per_frame_timesteps_equal_per_video_when_shared():
    model = tiny_vdt()
    lat, text = inputs()
    t_B = torch.tensor([700.0, 250.0])
    by_video = model(lat, t_B, text)
    by_frame = model(lat, t_B[:, None].expand(-1, 4), text)
    torch.testing.assert_close(by_frame, by_video, atol=1e-5, rtol=1e-5)
    # and per-frame t is per frame: another t on frame 3 changes the output
    t_BF = t_B[:, None].repeat(1, 4)
    t_BF[:, 3] = 0.0
    assert not torch.allclose(model(lat, t_BF, text), by_video, atol=1e-3)


def test_bad_timestep_shape_names_the_expected_ones():
    model = tiny_vdt()
    lat, text = inputs()
    with pytest.raises(ValueError, match=r"\[B, F\]=\[2, 4\]"):
        model(lat, torch.zeros(2, 3), text)


def _contexts(model, lat, t, text, split):
    """(x_BLD, ctx) of the whole window and of its two frame ranges [0, split) and [split, F)."""
    cond = Conditioning(text)
    whole = model.embed(lat, t, cond)
    n = whole[1].grid[1] * whole[1].grid[2]
    x = whole[0]
    ta, tb = (t[:, :split], t[:, split:]) if t.ndim == 2 else (t, t)
    a = (x[:, :split * n], model.embed(lat[:, :, :split], ta, cond)[1])
    b = (x[:, split * n:], model.embed(lat[:, :, split:], tb, cond)[1])
    return whole, a, b


@pytest.mark.parametrize("per_frame", [False, True])
def test_temporal_kv_hook_equals_attention_over_the_concatenated_frames(per_frame):
    """DualParal's cache: a block over frames A whose temporal attention gets the K/V of the frames B
    that follow (kept by the pass over B) equals the block over [A | B], on A's tokens."""
    model = tiny_vdt(layers=1)
    lat, text = inputs(f=5)
    t = torch.full((2, 5), 400.0) if per_frame else torch.tensor([400.0, 400.0])
    (x, ctx), (xa, ctx_a), (xb, ctx_b) = _contexts(model, lat, t, text, split=3)
    n = ctx.grid[1] * ctx.grid[2]
    block = model.blocks[0]
    cache = ContextKVCache()
    ctx_b.kv_hook = cache.for_item(0, 2 * n, 2, use=False)         # the newer block keeps all its 2 frames
    block(xb, ctx_b)
    hook = cache.for_item(0, 0, 0, use=True)                        # the older block reads them
    ctx_a.kv_hook = hook
    frames = torch.arange(3 + hook.extra_frames)
    ctx_a = model.place(ctx_a, frames[:3], frames)
    got = block(xa, ctx_a)
    want = block(x, ctx)[:, :3 * n]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(block(xa, model.embed(lat[:, :, :3], t[:, :3] if per_frame else t,
                                                    Conditioning(text))[1]), want, atol=1e-4)


def test_kv_hook_key_count_is_checked_against_place():
    model = tiny_vdt(layers=1)
    lat, text = inputs(f=3)
    x, ctx = model.embed(lat, torch.tensor([5.0, 5.0]), Conditioning(text))
    ctx = model.place(ctx, torch.arange(3), torch.arange(5))       # promises 2 extra frames, the hook adds none

    class NoExtra:
        def extend(self, layer_id, k, v):
            return k, v
    ctx.kv_hook = NoExtra()
    with pytest.raises(ValueError, match="place set 5 key frames"):
        model.blocks[0](x, ctx)


def test_block_causal_temporal_mask_hides_later_frames():
    """A frame-level BlockCausal mask: the first frames' outputs do not depend on later frames."""
    model = tiny_vdt()
    lat, text = inputs(f=4)
    t = torch.tensor([300.0, 300.0])

    def causal(ctx):
        ctx.mask = BlockCausal(frame_tokens=ctx.grid[1] * ctx.grid[2])
        return ctx
    out = run_model(model, lat, t, Conditioning(text), prepare=causal)
    changed = lat.clone()
    changed[:, :, 2:] = torch.randn_like(changed[:, :, 2:])
    out2 = run_model(model, changed, t, Conditioning(text), prepare=causal)
    torch.testing.assert_close(out2[:, :, :2], out[:, :, :2], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(model(changed, t, text)[:, :, :2], model(lat, t, text)[:, :, :2], atol=1e-4)


def test_fresh_model_blocks_are_identity_and_head_is_zero():
    model = tiny_vdt(randomize=False)
    lat, text = inputs()
    x, ctx = model.embed(lat, torch.tensor([999.0, 1.0]), Conditioning(text))
    for block in model.blocks:
        assert torch.equal(block(x, ctx), x)
    assert torch.equal(model(lat, torch.tensor([999.0, 1.0]), text), torch.zeros_like(lat))


def test_text_projection_starts_at_zero_and_can_be_turned_off():
    model = tiny_vdt(randomize=False)
    lat, text = inputs()
    t = torch.tensor([500.0, 500.0])
    c1 = model.embed(lat, t, Conditioning(text))[1].c_BFD
    c2 = model.embed(lat, t, Conditioning(torch.randn_like(text)))[1].c_BFD
    assert torch.equal(c1, c2)                     # zero-init: a fresh model is plain VDT
    model = tiny_vdt()
    assert not torch.allclose(model(lat, t, text), model(lat, t, torch.randn_like(text)))
    off = tiny_vdt(text_condition=False)
    assert off.text_embedder is None
    torch.testing.assert_close(off(lat, t, text), off(lat, t, torch.randn_like(text)), atol=0, rtol=0)


def test_positions_for_any_frame_count():
    pos = sincos_1d(torch.arange(40), 16)
    assert pos.shape == (40, 16) and torch.equal(pos[:, 0], torch.arange(40, dtype=torch.float64).sin().float())
    assert torch.equal(pos[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    grid = sincos_2d(2, 3, 16)                      # first half: the column, second half: the row
    assert torch.equal(grid[4, :8], sincos_1d(torch.tensor([1]), 8)[0])   # row 1, column 1
    assert torch.equal(grid[2, 8:], sincos_1d(torch.tensor([0]), 8)[0])   # row 0, column 2
    model = tiny_vdt(layers=1)
    lat, text = inputs(f=40, h=4, w=4)
    assert model(lat, torch.tensor([1.0, 2.0]), text).shape == lat.shape


def test_learn_sigma_head_returns_the_prediction_half():
    model = tiny_vdt(learn_sigma=True)
    assert model.final_layer.linear.out_features == 2 * 2 * 2 * C
    lat, text = inputs()
    assert model(lat, torch.tensor([1.0, 2.0]), text).shape == lat.shape


def test_built_from_the_preset_through_the_registry():
    from framecast.config import load_config
    from framecast.models.registry import model_class

    cfg = load_config("tiny-vdt", ["model.num_layers=2", "model.vdt.num_classes=3"])
    model = model_class(cfg.model.kind).from_model_config(cfg.model)
    assert isinstance(model, VdtModel) and len(model.blocks) == 2 and model.y_embedder.num_embeddings == 3
    lat = torch.randn(1, 3, 2, 32, 32)
    assert model(lat, torch.tensor([3.0]), torch.randn(1, 16, 64)).shape == lat.shape
    with pytest.raises(ValueError, match=r"patch_size must be \(1, ph, pw\)"):
        model_class("vdt").from_model_config(load_config("tiny-vdt", ["model.patch_size=[2,4,4]"]).model)
    with pytest.raises(ValueError, match="no action conditioning"):
        model_class("vdt").from_model_config(load_config("tiny-vdt", ["model.num_actions=3"]).model)


def test_cast_keeps_modulation_in_fp32_and_runs_in_bf16():
    model = tiny_vdt().cast(torch.bfloat16)
    assert model.blocks[0].adaLN_modulation[1].weight.dtype == torch.float32
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    lat, text = inputs()
    out = model(lat.bfloat16(), torch.tensor([1.0, 2.0]), text)
    ref = tiny_vdt()(lat, torch.tensor([1.0, 2.0]), text)
    torch.testing.assert_close(out.float(), ref, atol=0.15, rtol=0.1)


@pytest.mark.parametrize("schedule", ["full", "dualparal", "rollout", "nfd"])
def test_engine_schedules_run_a_vdt(schedule):
    """The Engine builds model.kind=vdt from the preset and every schedule runs it (DualParal through
    the stage's context K/V cache in temporal attention, NFD through its causal cache and mask)."""
    import numpy as np

    from framecast import Engine

    small = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=16",
             "model.ffn_dim=64", "model.text_dim=16", "model.freq_dim=16", "sampler.steps=2", "model.weights=",
             f"schedule.name={schedule}", "schedule.dualparal.block_frames=4", "schedule.dualparal.context_frames=2"]
    video = np.stack(list(Engine.from_preset("tiny-vdt", small).stream("a red circle moving right", frames=10, seed=0)))
    assert video.shape == (10, 32, 32, 3) and video.dtype == np.uint8
