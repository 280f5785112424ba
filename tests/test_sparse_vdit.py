"""Sparse-vDiT backend (framecast/models/sparse_vdit_attention.py), its offline search
(sparse_vdit_search.py) and `framecast tune-attention`.

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim.
"""
from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from framecast.config import ConfigError, load_config
from framecast.models.attention import AttentionCall, AttentionRuntime, BlockCausal, attention, sdpa_attention
from framecast.models.block_sparse import masked_dense_attention
from framecast.models.sparse_vdit_attention import (
    MODES, SparseVditOptions, SparseVditPlan, layer_table, load_plan, mode_table, run_modes,
)
from framecast.models.sparse_vdit_search import ModeMeter, choose_modes, mode_errors, plan_json

SMALL = ["model.weights=", "model.num_layers=2", "sampler.steps=2", "sampler.guidance_scale=1"]
GRID = (4, 8, 8)  # 256 tokens, 64 a frame
OPTS = SparseVditOptions(block=16, diagonal_width=1, multi_width=0, multi_frames=0, stripes=2)
MIXED = ("full", "diagonal", "multi_diagonal", "vertical_stripe", "skip")


def qkv(L=256, S=None, N=5, H=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = L if S is None else S
    return (torch.randn(2, L, N, H, generator=g), torch.randn(2, S, N, H, generator=g),
            torch.randn(2, S, N, H, generator=g))


def call(modes, grid=GRID, opts=OPTS, layer=0):
    rt = AttentionRuntime(backend="sparse_vdit", options=opts, assets=SparseVditPlan((tuple(modes),)))
    return AttentionCall(grid=grid, layer=layer, step=3, kind="self", runtime=rt)


def test_every_head_full_equals_dense_sdpa():
    q, k, v = qkv()
    out = attention(q, k, v, backend="sparse_vdit", meta=call(("full",) * 5))
    assert (out - sdpa_attention(q, k, v)).abs().max() <= 1e-5


@pytest.mark.parametrize("L,S,block", [(256, 256, 16), (256, 320, 16), (256, 256, 24)])
def test_block_computation_equals_masked_dense_reference(L, S, block):
    """Mixed modes, extra context keys (S > L, DualParal) and a block size that does not divide the
    frame: the backend equals dense attention masked to its own block table."""
    opts = SparseVditOptions(block=block, diagonal_width=1, multi_width=1, multi_frames=1, stripes=2)
    q, k, v = qkv(L, S)
    out = attention(q, k, v, backend="sparse_vdit", meta=call(MIXED, opts=opts))
    keep = layer_table(MIXED, q, k, 64, opts)
    ref = masked_dense_attention(q, k, v, keep, block, block)
    assert (out - ref).abs().max() <= 1e-5
    assert out[:, :, 4].abs().max() == 0.0  # skip
    assert keep[:, 0].all() and not keep[:, 4].any()


def test_skip_heads_are_exactly_zero():
    q, k, v = qkv()
    out = attention(q, k, v, backend="sparse_vdit", meta=call(("skip", "full", "skip", "diagonal", "skip")))
    assert torch.equal(out[:, :, [0, 2, 4]], torch.zeros_like(out[:, :, [0, 2, 4]]))
    assert out[:, :, 1].abs().sum() > 0


def test_mode_tables_follow_the_token_grid():
    """4 blocks a frame: diagonal = the own block +- 1; multi-diagonal (width 0) = the same block of
    every frame; vertical_stripe's fixed part = the own block."""
    diag = mode_table("diagonal", 256, 256, 64, OPTS)
    multi = mode_table("multi_diagonal", 256, 256, 64, OPTS)
    assert diag[5].nonzero().flatten().tolist() == [4, 5, 6]
    assert multi[5].nonzero().flatten().tolist() == [1, 5, 9, 13]
    assert mode_table("vertical_stripe", 256, 256, 64, OPTS)[5].nonzero().flatten().tolist() == [5]
    two = SparseVditOptions(block=16, multi_width=0, multi_frames=1)
    assert mode_table("multi_diagonal", 256, 256, 64, two)[5].nonzero().flatten().tolist() == [1, 5, 9]


def test_block_causal_runs_each_query_frame_at_its_position():
    """NFD: the last 2 of 4 frames as queries on a KV cache. All-full equals sdpa's block-causal
    attention; own-block diagonal equals the unmasked run's last frames (no key outside the block)."""
    q, k, v = qkv()
    mask = BlockCausal(frame_tokens=64, q_start_frame=2)
    full = run_modes(q[:, 128:], k, v, ("full",) * 5, (2, 8, 8), OPTS, mask=mask)
    assert (full - sdpa_attention(q[:, 128:], k, v, mask=mask)).abs().max() <= 1e-5
    own = SparseVditOptions(block=16, diagonal_width=0)
    cached = run_modes(q[:, 128:], k, v, ("diagonal",) * 5, (2, 8, 8), own, mask=mask)
    whole = run_modes(q, k, v, ("diagonal",) * 5, GRID, own)
    assert (cached - whole[:, 128:]).abs().max() <= 1e-5


def local_qk(L=256, N=1, width=4.0):
    """q, k whose attention is a Gaussian of width `width` tokens around the query's own index:
    q_i . k_j = c (i j - j^2 / 2) = -c/2 (j - i)^2 + const(i)."""
    pos = torch.arange(L, dtype=torch.float32)
    c = 1.0 / width ** 2
    q = torch.zeros(1, L, N, 32)
    k = torch.zeros(1, L, N, 32)
    q[0, :, :, 0], q[0, :, :, 1] = (c * pos)[:, None], c
    k[0, :, :, 0], k[0, :, :, 1] = pos[:, None], (-pos ** 2 / 2)[:, None]
    return q, k


def test_search_picks_a_cheap_mode_for_local_heads_and_full_where_nothing_cheaper_fits():
    """Head 0 attends to a +-8-token neighbourhood (inside the diagonal band, beyond its own block):
    diagonal. Head 1 attends uniformly (q = k = 0): no sparse mode comes near, so full. Head 2 puts
    all its mass on the first block (a sink): vertical_stripe."""
    g = torch.Generator().manual_seed(1)
    q_loc, k_loc = local_qk()
    q = torch.cat([q_loc, torch.zeros(1, 256, 1, 32), torch.zeros(1, 256, 1, 32)], dim=2)
    k = torch.cat([k_loc, torch.zeros(1, 256, 1, 32), torch.zeros(1, 256, 1, 32)], dim=2)
    q[0, :, 2, 0], k[0, :16, 2, 0] = 1.0, 50.0  # every query -> the first 16 keys
    v = torch.randn(1, 256, 3, 32, generator=g)
    err, cost = mode_errors(q, k, v, GRID, OPTS, scale=1.0)
    assert choose_modes(err, cost, threshold=0.05) == ["diagonal", "full", "vertical_stripe"]
    assert err[MODES.index("diagonal"), 0] < 1e-3 and err[MODES.index("full")].abs().max() == 0


def tiny_fingerprint(layers=2):
    return {"kind": "wan", "layers": layers, "heads": 4, "head_dim": 32}


def random_plan(opts, layers=2, threshold=0.3):
    meter = ModeMeter(opts)
    for layer in range(layers):
        q, k, v = qkv(N=4, seed=layer)
        meter(AttentionCall(grid=GRID, layer=layer, step=0, kind="self"), q, k, v)
    return plan_json(meter, tiny_fingerprint(layers), threshold, {"prompt": "random"})


def write(tmp_path, plan, name="plan.json"):
    path = tmp_path / name
    path.write_text(json.dumps(plan))
    return path


def small_cfg(path, extra=()):
    return load_config("tiny", SMALL + ["attention.sparse_vdit.block=16", "attention.sparse_vdit.multi_width=0",
                                        f"attention.sparse_vdit.plan={path}", *extra])


def test_plan_round_trip_and_another_models_plan_refused_in_one_line(tmp_path):
    cfg = small_cfg("")
    plan = random_plan(cfg.attention.sparse_vdit)
    path = write(tmp_path, plan)
    cfg.attention.sparse_vdit.plan = str(path)
    loaded = load_plan(cfg.attention.sparse_vdit, cfg)
    assert [list(m) for m in loaded.modes] == plan["modes"] and loaded.source == str(path)
    bad = [("layers", dict(plan, model=tiny_fingerprint(layers=6)), "layers 6 (model: 2)"),
           ("version", dict(plan, version=99), "version 99"),
           ("geometry", dict(plan, geometry=dict(plan["geometry"], block=64)), "block=64 (config: 16)"),
           ("format", {"modes": []}, "is not a sparse_vdit plan")]
    for name, data, needle in bad:
        cfg.attention.sparse_vdit.plan = str(write(tmp_path, data, f"{name}.json"))
        with pytest.raises(ValueError) as e:  # make_attention reports it as a ConfigError
            load_plan(cfg.attention.sparse_vdit, cfg)
        assert needle in str(e.value) and f"{name}.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("item,needle", [
    ("default_mode=dense", "attention.sparse_vdit.default_mode='dense' is not allowed; choose one of: full, diagonal"),
    ("block=0", "attention.sparse_vdit.block=0 is out of range; must be >= 1"),
    ("stripes=0", "attention.sparse_vdit.stripes=0 is out of range; must be >= 1")])
def test_bad_options_are_one_line_config_errors(item, needle):
    with pytest.raises(ConfigError, match="^" + needle.replace("(", r"\(")):
        load_config("tiny", [f"attention.sparse_vdit.{item}"])


def test_without_a_plan_every_head_runs_the_default_mode_with_a_warning():
    cfg = small_cfg("", ["attention.sparse_vdit.default_mode=diagonal"])
    with pytest.warns(RuntimeWarning, match="every head runs 'diagonal'"):
        plan = load_plan(cfg.attention.sparse_vdit, cfg)
    assert plan.layer_modes(1, 4) == ("diagonal",) * 4


def test_shipped_tiny_plan_loads_for_the_tiny_preset_and_is_refused_for_a_smaller_model():
    from framecast.engine.components import make_attention

    cfg = load_config("tiny", ["model.attn_backend=sparse_vdit"])
    rt = make_attention(cfg)
    assert len(rt.assets.modes) == 6 and all(len(layer) == 4 for layer in rt.assets.modes)
    with pytest.raises(ConfigError, match=r"tiny.sparse_vdit.json' was tuned for another model: layers 6 \(model: 2\)"):
        make_attention(load_config("tiny", SMALL + ["model.attn_backend=sparse_vdit"]))


def capture_tiny(overrides, prompt, frames, seed):
    """(meta, q, k, v) of every self-attention call of a short dense generation."""
    from framecast.engine.engine import Engine

    calls = []
    cfg = load_config("tiny", overrides)
    engine = Engine(cfg)
    req = engine.request(prompt, frames=frames, seed=seed)
    denoise = engine.denoiser(req.prompt, req.negative_prompt)
    denoise.attention = AttentionRuntime(backend="sparse_vdit", options=cfg.attention.sparse_vdit,
                                         assets=SparseVditPlan((), "full"),
                                         state={"capture": lambda meta, q, k, v, *_: calls.append((meta, q, k, v))})
    lat, sampler = engine.initial_latents(req), engine.make_sampler()
    for i, t in enumerate(sampler.timesteps):
        lat = sampler.step(denoise(lat, t, step=i), t, lat)
    return cfg, calls


def layer_error(q, k, v, modes, grid, opts):
    """||o_plan - o_dense|| / ||o_dense|| over all heads of one call."""
    dense = sdpa_attention(q, k, v)
    return float((run_modes(q, k, v, modes, grid, opts) - dense).norm() / dense.norm())


def test_shipped_plan_error_is_bounded_on_captured_and_random_activations():
    """The shipped tiny plan (threshold 0.2 per head, tuned on 'a red circle moving right', seed 0)
    on a generation it was not tuned on (another prompt and seed, 3 steps): every layer's relative
    error <= 0.2, the threshold (measured 0.11). On iid Gaussian q/k/v of the same grid (attention
    close to uniform: the worst case for a local pattern) a head keeping a share d of the key blocks averages d·S values instead of
    S, an error of sqrt(1/d - 1) relative to dense; every layer stays within 15 % of
    sqrt(mean over heads of (1/d - 1)) (measured: 0.97-1.08 of it)."""
    cfg, calls = capture_tiny(["sampler.steps=3"], "a blue square moving left", 6, 5)
    opts = cfg.attention.sparse_vdit
    plan = load_plan(opts, cfg)
    worst = max(layer_error(q, k, v, plan.layer_modes(m.layer, 4), m.grid, opts) for m, q, k, v in calls)
    assert worst <= 0.2, worst
    grid = calls[0][0].grid
    for layer in range(6):
        q, k, v = qkv(L=math.prod(grid), N=4, seed=layer)
        modes = plan.layer_modes(layer, 4)
        d_N = layer_table(modes, q, k, grid[1] * grid[2], opts).float().mean(dim=(0, 2, 3))
        assert layer_error(q, k, v, modes, grid, opts) <= 1.15 * math.sqrt(float((1 / d_N - 1).mean())) + 1e-5


def test_tune_attention_cli_end_to_end(tmp_path, capsys):
    from framecast.launch.cli import main

    out = tmp_path / "plan.json"
    argv = ["tune-attention", "--preset", "tiny", "--out", str(out), "--frames", "4", "--steps", "2",
            "--threshold", "0.3", *SMALL, "attention.sparse_vdit.block=16", "attention.sparse_vdit.multi_width=0"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"framecast: wrote {out}") and "kept-block fraction" in line
    plan = json.loads(out.read_text())
    assert plan["model"] == tiny_fingerprint() and plan["grid"] == [4, 8, 8] and plan["threshold"] == 0.3
    assert all(e is not None and set(e[0]) == set(MODES) for e in plan["errors"])
    cfg = small_cfg(out)
    assert len(load_plan(cfg.attention.sparse_vdit, cfg).modes) == 2
    assert main(argv) == 2 and "exists; pass --overwrite" in capsys.readouterr().err  # nothing replaced
    assert main([*argv, "--overwrite", "--threshold", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "framecast: error: --threshold=2.0 is out of range; must be in (0, 1)"


@pytest.mark.parametrize("schedule", ["full", "dualparal", "nfd"])
def test_engine_runs_sparse_vdit(schedule, tmp_path):
    """A whole generation through the backend: an all-full plan gives sdpa's video; the fallback
    (every head multi-diagonal) runs (DualParal: with right-context keys; NFD: block-causal masks on
    a KV cache)."""
    from framecast import Engine

    full = dict(random_plan(small_cfg("").attention.sparse_vdit), modes=[["full"] * 4] * 2)
    base = SMALL + [f"schedule.name={schedule}", "schedule.dualparal.block_frames=2",
                    "schedule.dualparal.context_frames=1", "schedule.full.lead_frames=0",
                    "schedule.nfd.first_frame=generate",
                    "attention.sparse_vdit.block=16", "attention.sparse_vdit.multi_width=0"]
    videos = {}
    for name, extra in [("sdpa", []), ("full", ["model.attn_backend=sparse_vdit",
                                                f"attention.sparse_vdit.plan={write(tmp_path, full)}"]),
                        ("fallback", ["model.attn_backend=sparse_vdit", "attention.sparse_vdit.plan="])]:
        with pytest.warns(RuntimeWarning) if name == "fallback" else contextlib.nullcontext(), \
                Engine.from_preset("tiny", base + extra) as engine:
            prompt = "" if schedule == "nfd" else "a red circle moving right"
            videos[name] = np.stack(list(engine.stream(prompt, frames=5, seed=3)))
    assert np.abs(videos["full"].astype(int) - videos["sdpa"].astype(int)).max() <= 1
    assert videos["fallback"].shape == videos["sdpa"].shape
