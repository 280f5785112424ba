"""Re-ttention: the static mask, the ρ correction with its cached residual, and its per-request,
per-layer, per-block state (framecast/models/rettention.py)."""
import dataclasses
import math

import pytest
import torch

from framecast.models.attention import BACKENDS, AttentionCall, AttentionRuntime, BlockCausal, attention
from framecast.models.block_sparse import masked_dense_attention
from framecast.models.rettention import RettentionOptions, full_attention_and_rho, sparse_part, static_blocks, supports

GRID = (3, 4, 4)  # 3 frames of 4 x 4 tokens: 48 tokens


def qkv(grid=GRID, key_frames=None, N=2, H=8, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    f, h, w = grid
    L, S = f * h * w, (key_frames or f) * h * w
    return (torch.randn(B, L, N, H, generator=g), torch.randn(B, S, N, H, generator=g),
            torch.randn(B, S, N, H, generator=g))


def dense(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                             v.transpose(1, 2)).transpose(1, 2)


def runtime(steps=10, **options):
    opts = RettentionOptions(**{"block_rows": 1, "window": 0, "warmup": 0.0, **options})
    return AttentionRuntime(backend="rettention", options=opts, steps=steps)


def call(q, k, v, rt, step, layer=0, block=0, grid=GRID):
    meta = AttentionCall(grid=grid, layer=layer, step=step, kind="self", block=block, runtime=rt)
    return attention(q, k, v, backend="rettention", meta=meta)


def test_static_mask_is_a_local_band_in_every_frame():
    keep = static_blocks((2, 4, 4), 32, RettentionOptions(block_rows=1, window=1))[0][0, 0]
    band = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(keep, band.repeat(2, 2))  # the frame's band, replicated across both frames
    only_own = static_blocks((2, 4, 4), 32, RettentionOptions(block_rows=1, window=1, frames=0))[0][0, 0]
    assert torch.equal(only_own, torch.block_diag(band, band))
    # two rows per block: 2 bands a frame; 3 rows do not divide 4 -> one row per block
    assert static_blocks((2, 4, 4), 32, RettentionOptions(block_rows=2, window=0))[1] == 8
    assert static_blocks((2, 4, 4), 32, RettentionOptions(block_rows=3, window=0))[1] == 4


def test_density_one_equals_dense():
    rt = runtime(window=10)  # every band of every frame: nothing is left out
    q, k, v = qkv()
    torch.testing.assert_close(call(q, k, v, rt, step=0), dense(q, k, v), atol=1e-5, rtol=1e-5)  # calibration
    q2, k2, v2 = qkv(seed=1)
    torch.testing.assert_close(call(q2, k2, v2, rt, step=1), dense(q2, k2, v2), atol=1e-5, rtol=1e-5)


def test_sparse_part_equals_masked_dense_attention():
    q, k, v = qkv(key_frames=5)  # with appended context keys (DualParal)
    keep, block = static_blocks(GRID, k.shape[1], RettentionOptions(block_rows=2, window=0, frames=1))
    got = sparse_part(q, k, v, keep, block, 1 / math.sqrt(8))
    want = masked_dense_attention(q, k, v, keep.expand(1, 2, -1, -1), block, block)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rho_is_the_kept_probability_mass():
    q, k, v = qkv()
    keep, block = static_blocks(GRID, k.shape[1], RettentionOptions(block_rows=1, window=0))
    full, rho = full_attention_and_rho(q, k, v, keep, block, 1 / math.sqrt(8), max_elements=200)  # chunked
    p = torch.einsum("blnh,bsnh->bnls", q.double(), k.double()).div(math.sqrt(8)).softmax(-1)
    mask = keep[0, 0].repeat_interleave(block, 0).repeat_interleave(block, 1)
    torch.testing.assert_close(rho, (p * mask).sum(-1).transpose(1, 2).float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full, dense(q, k, v), atol=1e-5, rtol=1e-5)


def test_calibration_then_residual_reproduces_full_attention():
    rt = runtime(lam=0.0)
    q, k, v = qkv()
    full = call(q, k, v, rt, step=0)
    torch.testing.assert_close(full, dense(q, k, v), atol=1e-5, rtol=1e-5)
    # same inputs at a sparse step: ρ·O_S + R is O_full again (λ = 0)
    torch.testing.assert_close(call(q, k, v, rt, step=1), full, atol=1e-5, rtol=1e-5)


def test_correction_is_closer_to_dense_on_random_inputs():
    rt, plain = runtime(), runtime(correction=False)
    q, k, v = qkv()
    call(q, k, v, rt, step=0)
    g = torch.Generator().manual_seed(3)
    q2, k2, v2 = (x + 0.2 * torch.randn(x.shape, generator=g) for x in (q, k, v))  # the next step's inputs drift
    want = dense(q2, k2, v2)
    err = (call(q2, k2, v2, rt, step=1) - want).norm()
    err_plain = (call(q2, k2, v2, plain, step=1) - want).norm()
    assert err < 0.5 * err_plain, (err, err_plain)


def test_correction_is_closer_to_dense_on_tiny_model_activations():
    from framecast.config import load_config
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning
    from framecast.world.captions import tokenize
    from framecast.world.train import load_nets

    nets = load_nets(load_config("tiny"), "builtin:tiny")
    text = nets["text_encoder"](torch.tensor([tokenize("a red circle moving right", max_len=16)]))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(1, 3, 4, 32, 32, generator=g) * 2 - 1, torch.randn(1, 3, 4, 32, 32, generator=g)
    lat = {s: (1 - s) * x0 + s * noise for s in (0.9, 0.85)}  # two neighbouring steps of the tiny sampler

    def out(rt, sigma, step):
        t = torch.full((1, 4), sigma * 1000)
        with torch.no_grad():
            return run_model(nets["transformer"], lat[sigma], t, Conditioning(text), attention=rt, step=step)

    want = out(AttentionRuntime(), 0.85, None)
    rt, plain = runtime(block_rows=2), runtime(block_rows=2, correction=False)
    out(rt, 0.9, 0)  # calibration on the earlier step
    err = (out(rt, 0.85, 1) - want).norm()  # measured: 5.5 against 18.2 (norm of the output 148)
    err_plain = (out(plain, 0.85, 1) - want).norm()
    assert err < 0.5 * err_plain, (err, err_plain)


def test_warmup_and_unknown_steps_run_dense():
    rt = runtime(warmup=0.3)  # 3 of 10 steps dense
    q, k, v = qkv()
    for step in (0, 1, 2, None):
        torch.testing.assert_close(call(q, k, v, rt, step=step), dense(q, k, v), atol=1e-6, rtol=1e-6)
    assert rt.state == {}
    call(q, k, v, rt, step=3)
    assert set(rt.state) == {("rettention", 0, 0)}
    rt2 = dataclasses.replace(runtime(), dense_steps=4)  # the dispatcher's warm-up counts too
    call(q, k, v, rt2, step=4)
    assert rt2.state[("rettention", 0, 0)]["step"] == 4


def test_state_resets_between_requests():
    engine_rt = runtime()
    inputs = [qkv(seed=s) for s in range(4)]

    def request():
        rt = engine_rt.for_request()
        return [call(*x, rt, step=i) for i, x in enumerate(inputs)]

    first, second = request(), request()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert engine_rt.state == {}


def test_state_is_kept_per_layer_and_per_block():
    rt = runtime(lam=0.0)
    a, b = qkv(seed=0), qkv(seed=1)
    call(*a, rt, step=0, layer=0)
    call(*b, rt, step=0, layer=1)
    call(*b, rt, step=0, layer=0, block=1)
    # each key's residual is its own: the same inputs at the next step give each its own full attention
    torch.testing.assert_close(call(*a, rt, step=1, layer=0), dense(*a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(call(*b, rt, step=1, layer=1), dense(*b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(call(*b, rt, step=1, layer=0, block=1), dense(*b), atol=1e-5, rtol=1e-5)
    assert set(rt.state) == {("rettention", 0, 0), ("rettention", 1, 0), ("rettention", 0, 1)}


def test_rho_grows_by_lambda_and_new_passes_recalibrate():
    rt = runtime(lam=0.25, calib_every=5)
    q, k, v = qkv()
    call(q, k, v, rt, step=0)
    rho0 = rt.state[("rettention", 0, 0)]["rho_BLN"].clone()
    call(q, k, v, rt, step=1)
    call(q, k, v, rt, step=2)
    assert torch.allclose(rt.state[("rettention", 0, 0)]["rho_BLN"], (rho0 + 0.5).clamp(max=1.0))
    call(q, k, v, rt, step=5)  # the next calibration step: ρ measured again
    assert torch.allclose(rt.state[("rettention", 0, 0)]["rho_BLN"], rho0)
    call(q, k, v, rt, step=6)
    call(q, k, v, rt, step=2)  # the step went back (a new pass): calibrate, not reuse
    assert rt.state[("rettention", 0, 0)]["step"] == 2
    assert torch.allclose(rt.state[("rettention", 0, 0)]["rho_BLN"], rho0)


def test_masks_are_refused_in_one_line():
    q, k, v = qkv()
    assert "\n" not in supports(q, k, v, BlockCausal(frame_tokens=16))
    assert supports(q, k, v, None) is None
    assert BACKENDS["rettention"].block_causal and "\n" not in BACKENDS["rettention"].block_causal


def test_bad_options_fail_naming_the_field():
    from framecast.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"attention\.rettention\.lam=2.0 is out of range; must be <= 1"):
        load_config("tiny", ["model.attn_backend=rettention", "attention.rettention.lam=2"])
