"""SLA: block classes from the compressed map, the critical part against masked dense attention,
the linear branch against a dense reference of its formula, the projections as loaded assets
(framecast/models/sla_attention.py) and the fine-tune's call path (framecast/world/sla_training.py)."""
import math

import pytest
import torch

from framecast.models.attention import BACKENDS, AttentionCall, AttentionRuntime, BlockCausal, attention
from framecast.models.block_sparse import block_sparse_attention, masked_dense_attention, pooled_block_scores
from framecast.models.sla_attention import (SlaOptions, classify_blocks, linear_attention, load, projection_state,
                                            sla_attention, supports, zero_projections)


def qkv(L=100, S=100, N=2, H=8, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, N, H, generator=g), torch.randn(B, S, N, H, generator=g),
            torch.randn(B, S, N, H, generator=g))


def dense(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                             v.transpose(1, 2)).transpose(1, 2)


def random_projections(layers, H, seed=1):
    proj = zero_projections(layers, H)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return proj


OPTS = SlaOptions(block_q=16, block_k=16, critical=0.25, negligible=0.25)  # 7 key blocks: 2 / 4 / 1


def test_block_classes_take_the_top_and_bottom_shares():
    q, k, _ = qkv(S=112)
    pc = pooled_block_scores(q, k, 16, 16)
    crit, marg = classify_blocks(pc, 0.25, 0.25)
    assert (crit.sum(-1) == 2).all() and (marg.sum(-1) == 4).all() and not (crit & marg).any()
    # critical blocks outrank marginal ones, which outrank the negligible one
    low_crit = pc.masked_fill(~crit, 2).amin(-1)
    assert (pc.masked_fill(~marg, -1).amax(-1) <= low_crit).all()
    neg = ~(crit | marg)
    assert (pc.masked_fill(~neg, -1).amax(-1) <= pc.masked_fill(~marg, 2).amin(-1)).all()
    # at least one critical block even at critical = 0
    assert (classify_blocks(pc, 0.0, 0.0)[0].sum(-1) == 1).all()


def test_density_one_equals_dense():
    q, k, v = qkv(S=140)  # keys outnumber queries (appended context keys)
    got = sla_attention(q, k, v, options=SlaOptions(block_q=16, block_k=16, critical=1.0, negligible=0.0),
                        proj=random_projections(1, 8))  # no marginal blocks: the linear branch adds Proj(0) = bias
    proj = random_projections(1, 8)
    torch.testing.assert_close(got - proj[0].bias.detach(), dense(q, k, v), atol=1e-5, rtol=1e-5)
    got = sla_attention(q, k, v, options=SlaOptions(block_q=16, block_k=16, critical=1.0, negligible=0.0))
    torch.testing.assert_close(got, dense(q, k, v), atol=1e-5, rtol=1e-5)


def test_zero_projection_is_block_sparse_attention_over_the_critical_blocks():
    q, k, v = qkv()
    crit, _ = classify_blocks(pooled_block_scores(q, k, 16, 16), OPTS.critical, OPTS.negligible)
    want = block_sparse_attention(q, k, v, crit, 16, 16)
    assert torch.equal(sla_attention(q, k, v, options=OPTS, proj=zero_projections(1, 8)), want)  # exactly
    assert torch.equal(sla_attention(q, k, v, options=OPTS), want)  # no weights: the branch is skipped
    torch.testing.assert_close(want, masked_dense_attention(q, k, v, crit, 16, 16), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("phi", ["softmax", "elu1", "relu"])
def test_linear_branch_matches_a_dense_reference(phi):
    q, k, v = qkv(L=90, S=120)  # padded query and key blocks
    _, marg = classify_blocks(pooled_block_scores(q, k, 16, 16), OPTS.critical, OPTS.negligible)
    fmap = {"softmax": lambda x: x.softmax(-1), "elu1": lambda x: torch.nn.functional.elu(x) + 1,
            "relu": torch.relu}[phi]
    fq, fk = fmap(q.double()), fmap(k.double())
    mask = marg.repeat_interleave(16, 2).repeat_interleave(16, 3)[:, :, :90, :120]
    for keys, m in ((marg, mask), (None, torch.ones_like(mask))):
        a = torch.einsum("blnh,bsnh->bnls", fq, fk) * m
        want = torch.einsum("bnls,bsnh->blnh", a, v.double()) / a.sum(-1).transpose(1, 2)[..., None].clamp(min=1e-30)
        got = linear_attention(q, k, v, keys, 16, 16, phi)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_output_is_sparse_plus_projected_linear():
    q, k, v = qkv()
    proj = random_projections(3, 8)
    meta = AttentionCall(grid=(1, 10, 10), layer=2, step=None, kind="self",
                         runtime=AttentionRuntime(backend="sla", options=OPTS, assets=proj))
    crit, marg = classify_blocks(pooled_block_scores(q, k, 16, 16), OPTS.critical, OPTS.negligible)
    want = block_sparse_attention(q, k, v, crit, 16, 16) + proj[2](linear_attention(q, k, v, marg, 16, 16))
    torch.testing.assert_close(attention(q, k, v, backend="sla", meta=meta), want, atol=1e-6, rtol=1e-6)


def test_gradients_reach_the_projections_and_match_inference():
    q, k, v = (x.requires_grad_() for x in qkv())
    proj = random_projections(1, 8)
    out = sla_attention(q, k, v, options=OPTS, proj=proj)  # the training path (masked SDPA)
    out.square().sum().backward()
    assert proj[0].weight.grad.abs().sum() > 0 and q.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(out, sla_attention(q, k, v, options=OPTS, proj=proj), atol=1e-5, rtol=1e-5)


def test_masks_are_refused_in_one_line():
    q, k, v = qkv()
    assert "\n" not in supports(q, k, v, BlockCausal(frame_tokens=10))
    assert BACKENDS["sla"].block_causal and "\n" not in BACKENDS["sla"].block_causal


def test_projections_load_and_a_file_for_another_model_is_refused(tmp_path):
    from safetensors.torch import save_file

    from framecast.config import ConfigError, load_config

    cfg = load_config("tiny")  # 6 layers x head dim 32
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_file(projection_state(random_projections(6, 32)), str(good))
    save_file(projection_state(random_projections(4, 16)), str(bad))
    proj = load(SlaOptions(weights=str(good)), cfg)
    torch.testing.assert_close(proj[5].weight, random_projections(6, 32)[5].weight)
    assert load(SlaOptions(), cfg) is None
    with pytest.raises(ValueError) as e:  # make_attention reports it as a ConfigError
        load(SlaOptions(weights=str(bad)), cfg)
    assert "\n" not in str(e.value) and "attention.sla.weights=" in str(e.value) and "another model" in str(e.value)
    with pytest.raises(ValueError, match="no shipped weights"):
        load(SlaOptions(weights="builtin:nope"), cfg)
    with pytest.raises(ConfigError, match=r"attention\.sla\.critical \+ attention\.sla\.negligible"):
        load_config("tiny", ["attention.sla.critical=0.8", "attention.sla.negligible=0.5"])


def test_two_finetune_steps_write_weights_the_backend_loads(tmp_path):
    from framecast.config import load_config
    from framecast.world.sla_training import finetune

    cfg = load_config("tiny", ["model.attn_backend=sla", "attention.sla.block_q=16", "attention.sla.block_k=16",
                               "attention.sla.critical=0.25"])
    meta = finetune(cfg, tmp_path, steps=2, batch=1, frames=2, seed=0, log_every=0)
    assert meta["steps"] == 2 and math.isfinite(meta["final_loss"])
    proj = load(SlaOptions(weights=str(tmp_path)), cfg)
    assert proj[0].weight.abs().sum() > 0  # the projections moved off zero


def test_preset_loads_and_generates_frames():
    from framecast import Engine

    engine = Engine.from_preset("tiny-sla", ["video.frames=3", "sampler.steps=2"])
    assert engine.attention.backend == "sla" and engine.attention.assets is not None
    frames = list(engine.stream("a red circle moving right", seconds=3 / 8, seed=0))
    assert len(frames) == 3 and frames[0].shape == (32, 32, 3)
