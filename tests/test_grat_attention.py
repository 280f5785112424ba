"""GRAT (backend `grat`): the group patterns, dense when every group is kept, exactly the blocks
it selects, a bounded error, context keys, BlockCausal, options, and the tiny model end to end."""
import math

import numpy as np
import pytest

from video_activations import video_qkv
from framecast.config import ConfigError, load_config
from framecast.models.attention import AttentionCall, AttentionRuntime, BlockCausal, TeacherForcing, sdpa_attention
from framecast.models.block_sparse import apply_layout, layout_valid, masked_dense_attention, undo_layout
from framecast.models.attention import block_causal_only as supports
from framecast.models.grat_attention import GratOptions, grat_attention, grat_plan

SMALL = ["model.weights=", "model.num_layers=2", "sampler.steps=2", "sampler.guidance_scale=1"]
SMALL_GROUPS = {"group_t": 2, "group_h": 4, "group_w": 4}


def meta(grid, options):
    return AttentionCall(grid=grid, layer=0, step=3, kind="self",
                         runtime=AttentionRuntime(backend="grat", options=options))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def selected_reference(q, k, v, grid_hw, options, q_frame0=0):
    iq, ik, bq, bk, keep = grat_plan(q.shape[1], k.shape[1], grid_hw, options, q_frame0)
    keep = keep.expand(1, q.shape[2], *keep.shape[-2:])
    o = masked_dense_attention(apply_layout(q, iq), apply_layout(k, ik), apply_layout(v, ik), keep, bq, bk,
                               1.0 / math.sqrt(q.shape[-1]), kv_valid_S=layout_valid(ik))
    return undo_layout(o, iq, q.shape[1]), keep


def test_cross_keeps_the_group_planes_and_surround_the_neighbourhood():
    # 4 x 8 x 8 tokens in 2 x 4 x 4 groups: a 2 x 2 x 2 group grid
    _, _, bq, bk, cross = grat_plan(256, 256, (8, 8), GratOptions(**SMALL_GROUPS))
    assert bq == bk == 32 and cross.shape == (1, 1, 8, 8)
    assert cross[0, 0, 0].tolist() == [True] * 7 + [False]  # only the opposite corner group differs in t, h and w
    _, _, _, _, near = grat_plan(16 * 64, 16 * 64, (8, 8), GratOptions(mode="surround", radius=1, **SMALL_GROUPS))
    # 8 x 2 x 2 groups: group (0, 0, 0) sees t in {0, 1} x all h x all w
    assert near[0, 0, 0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("grid,options", [((4, 8, 8), GratOptions(mode="surround", radius=8, **SMALL_GROUPS)),
                                          ((3, 6, 10), GratOptions(mode="surround", radius=8, **SMALL_GROUPS)),
                                          ((3, 8, 8), GratOptions())])  # default groups cover the tiny grid
def test_keeping_every_group_equals_dense_sdpa_also_on_a_grid_the_groups_do_not_divide(grid, options):
    q, k, v = video_qkv(grid)
    out = grat_attention(q, k, v, meta=meta(grid, options))
    assert (out - sdpa_attention(q, k, v)).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["cross", "surround"])
def test_output_is_attention_over_exactly_the_selected_groups(mode):
    grid, options = (5, 8, 12), GratOptions(mode=mode, group_t=2, group_h=4, group_w=5)  # ragged in t and w
    q, k, v = video_qkv(grid, seed=1)
    ref, keep = selected_reference(q, k, v, grid[1:], options)
    assert not keep.all()
    assert (grat_attention(q, k, v, meta=meta(grid, options)) - ref).abs().max() <= 1e-5


def test_error_is_bounded_on_video_like_activations():
    # measured on 8 x 16 x 16 tokens in 2 x 4 x 4 groups, seeds 0-2: relative L2 error vs dense
    # cross 0.077-0.087 (58% of blocks), surround (radius 1) 0.123-0.136 (24% of blocks)
    grid = (8, 16, 16)
    for seed in range(2):
        q, k, v = video_qkv(grid, seed=seed)
        dense = sdpa_attention(q, k, v)
        assert rel(grat_attention(q, k, v, meta=meta(grid, GratOptions(**SMALL_GROUPS))), dense) <= 0.12
        surround = GratOptions(mode="surround", **SMALL_GROUPS)
        assert rel(grat_attention(q, k, v, meta=meta(grid, surround)), dense) <= 0.18


def test_context_keys_extend_the_key_group_grid():
    grid, options = (4, 8, 8), GratOptions(mode="surround", radius=0, **SMALL_GROUPS)
    q, k, v = video_qkv(grid, S_frames=6, seed=2)   # 2 right-context frames: a third key t-group
    ref, keep = selected_reference(q, k, v, grid[1:], options)
    assert keep.shape[-2:] == (8, 12) and not keep[..., 8:].any()  # radius 0: context groups unseen
    assert (grat_attention(q, k, v, meta=meta(grid, options)) - ref).abs().max() <= 1e-5
    wide = GratOptions(mode="surround", radius=4, **SMALL_GROUPS)
    assert (grat_attention(q, k, v, meta=meta(grid, wide)) - sdpa_attention(q, k, v)).abs().max() <= 1e-5


@pytest.mark.parametrize("mask", [BlockCausal(64, q_start_frame=3), BlockCausal(64, q_start_frame=4, window=2)])
def test_block_causal_runs_each_query_frame_as_the_last_of_its_visible_keys(mask):
    grid, options = (2, 8, 8), GratOptions(mode="surround", radius=0, **SMALL_GROUPS)
    q, k, v = video_qkv(grid, S_frames=6, seed=3)
    out = grat_attention(q, k, v, mask=mask, meta=meta(grid, options))
    for f in range(2):
        lo, hi = mask.key_start(f), mask.key_end(f)
        ref, _ = selected_reference(q[:, f * 64:(f + 1) * 64], k[:, lo:hi], v[:, lo:hi], grid[1:], options,
                                    q_frame0=(hi - lo) // 64 - 1)
        assert (out[:, f * 64:(f + 1) * 64] - ref).abs().max() <= 1e-5
    wide = GratOptions(mode="surround", radius=8, **SMALL_GROUPS)
    dense = grat_attention(q, k, v, mask=mask, meta=meta(grid, wide))
    assert (dense - sdpa_attention(q, k, v, mask=mask)).abs().max() <= 1e-5


def test_unsupported_masks_and_bad_options():
    q, k, v = video_qkv((2, 8, 8))
    assert "TeacherForcing" in supports(q, k, v, TeacherForcing(64))
    cfg = load_config("tiny", ["attention.grat.mode=surround", "attention.grat.radius=2"])
    assert cfg.attention.grat.mode == "surround" and cfg.attention.grat.radius == 2
    with pytest.raises(ConfigError, match=r"attention\.grat\.mode='ring' is not allowed; choose one of: cross, surround"):
        load_config("tiny", ["attention.grat.mode=ring"])
    with pytest.raises(ConfigError, match=r"attention\.grat\.group_h=0 is out of range; must be >= 1"):
        load_config("tiny", ["attention.grat.group_h=0"])


@pytest.mark.parametrize("schedule", ["full", "dualparal"])
def test_the_tiny_model_generates_with_grat_attention(schedule):
    from framecast.engine.engine import Engine

    overrides = SMALL + [f"schedule.name={schedule}", "schedule.dualparal.block_frames=2",
                         "schedule.dualparal.context_frames=1", "attention.grat.mode=surround",
                         "attention.grat.radius=0", "attention.grat.group_t=1", "attention.grat.group_h=4",
                         "attention.grat.group_w=4"]
    with Engine.from_preset("tiny", overrides + ["model.attn_backend=grat"]) as engine:
        frames = np.stack(list(engine.stream("a red circle moving right", frames=5, seed=3)))
    assert frames.shape == (5, 32, 32, 3)
    with Engine.from_preset("tiny", overrides) as engine:
        dense = np.stack(list(engine.stream("a red circle moving right", frames=5, seed=3)))
    assert not np.array_equal(frames, dense)  # the sparse backend really ran
