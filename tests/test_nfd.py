"""NFD play: plan, causal KV cache, rollout, speculative drafting, play CLI (tiny random models)."""
import copy

import numpy as np

import pytest
import torch

from framecast.engine.causal_cache import CausalKVCache
from framecast.engine.denoise import Denoiser
from framecast.models.attention import BlockCausal
from framecast.models.conditioning import Conditioning
from framecast.models.wan import WanModel
from framecast.schedulers.flow import make_sampler
from framecast.schedulers.nfd import NfdRollout, forward_on_cache, frame_noise, nfd_plan
from framecast.schedulers.speculative import SpeculationStats, SpeculativeRollout, speculative_generate

C, H, W = 3, 8, 8  # latent frame; patch (1, 4, 4) -> 4 tokens per frame


def tiny_model(seed=0, layers=2):
    torch.manual_seed(seed)
    model = WanModel(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, in_channels=C,
                     out_channels=C, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers, num_actions=5)
    with torch.no_grad():  # zero-init action table and near-zero tables: make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def rollout(model, window=32, steps=2, seed=7, context_sigma=0.0, fuse_commit=False):
    text = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(1))
    proto = make_sampler("euler", shift=3.0)
    proto.set_timesteps(steps)
    den = Denoiser(model, text, None, 1.0, torch.float32, torch.device("cpu"))
    return NfdRollout(model, den, lambda: copy.deepcopy(proto), (C, H, W), seed=seed, window=window,
                      context_sigma=context_sigma, fuse_commit=fuse_commit)


def cat(frames):
    return torch.cat(list(frames), dim=2)


# ---- plan ---------------------------------------------------------------------------------------

def test_plan_keeps_every_frame_once_and_counts_drafts():
    actions = [0, 4, 4, 4, 4, 4, 1, 1, 2, 3, 3, 3]
    for draft in (1, 3, 4, 16):
        plan = nfd_plan(actions, window=4, draft=draft)
        kept = [c.start + i for c in plan for i in range(c.keep)]
        assert kept == list(range(len(actions)))
        for c in plan:
            assert 1 <= c.keep <= c.frames <= draft and c.context == min(4, c.start)
            assert all(actions[c.start + i] == c.action for i in range(c.keep))
    assert [(c.start, c.frames, c.keep) for c in nfd_plan(actions, draft=4)] == \
        [(0, 4, 1), (1, 4, 4), (5, 4, 1), (6, 4, 2), (8, 4, 1), (9, 3, 3)]
    assert all(c.frames == c.keep == 1 for c in nfd_plan(actions, draft=1))


# ---- cache --------------------------------------------------------------------------------------

def test_frame_by_frame_with_cache_equals_block_causal_clip():
    """Teacher forcing: per-frame inputs (noisy latents, per-frame t, actions) through the cache,
    frame by frame, equal the whole clip at once under a BlockCausal mask."""
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    F = 5
    lat = torch.randn(1, C, F, H, W, generator=g)
    t = torch.rand(1, F, generator=g) * 1000
    actions = torch.randint(0, 5, (1, F), generator=g)
    text = torch.randn(1, 3, 16, generator=g)
    with torch.no_grad():
        x, ctx = model.embed(lat, t, Conditioning(text, actions))
        ctx.mask = BlockCausal(frame_tokens=ctx.grid[1] * ctx.grid[2])
        for block in model.blocks:
            x = block(x, ctx)
        whole = model.head(x, ctx)
        for chunks in ([1] * F, [2, 1, 2]):
            cache, outs, f = CausalKVCache(window=32), [], 0
            for n in chunks:
                hook = cache.writer()
                outs.append(forward_on_cache(model, lat[:, :, f:f + n], t[:, f:f + n], text,
                                             actions[:, f:f + n], hook))
                cache.commit(hook, frames=n)
                f += n
            torch.testing.assert_close(cat(outs), whole, atol=1e-5, rtol=0)
    assert (whole - model(lat, t, text, actions)).abs().max() > 1e-3  # the mask matters


def test_window_uses_local_positions():
    """With window w, frame f through the cache equals a block-causal run of frames f−w .. f alone
    (positions 0 .. w): positions are window-local, whatever f. One layer, so that a cached frame's
    K/V do not depend on the frames before it (deeper layers' do, and those left the window)."""
    model = tiny_model(layers=1)
    g = torch.Generator().manual_seed(4)
    F, w = 7, 3
    lat = torch.randn(1, C, F, H, W, generator=g)
    t = torch.rand(1, F, generator=g) * 1000
    actions = torch.randint(0, 5, (1, F), generator=g)
    text = torch.randn(1, 3, 16, generator=g)
    cache = CausalKVCache(window=w)
    with torch.no_grad():
        for f in range(F):
            hook = cache.writer()
            out = forward_on_cache(model, lat[:, :, f:f + 1], t[:, f:f + 1], text, actions[:, f:f + 1], hook)
            cache.commit(hook, frames=1)
            assert cache.held_frames == min(f + 1, w) and cache.window_frames == min(f + 1, w)
            s = max(0, f - w)
            x, ctx = model.embed(lat[:, :, s:f + 1], t[:, s:f + 1], Conditioning(text, actions[:, s:f + 1]))
            ctx.mask = BlockCausal(frame_tokens=4)
            for block in model.blocks:
                x = block(x, ctx)
            torch.testing.assert_close(out, model.head(x, ctx)[:, :, -1:], atol=1e-5, rtol=0)


def _fake_hook(cache, layers, frames, fill):
    hook = cache.writer()
    for layer in range(layers):
        k = torch.full((1, 4 * frames, 2, 8), float(fill))
        hook.extend(layer, k, k + 0.5)
    return hook


def test_cache_bounded_and_frame_5000_runs():
    cache = CausalKVCache(window=8)
    for f in range(5000):
        cache.commit(_fake_hook(cache, 2, 1, f), frames=1)
    assert cache.frames == 5000 and cache.held_frames == 8 and cache.window_start == 4992
    k, _ = cache.window_kv(0)
    assert k.shape == (1, 32, 2, 8) and k[0, ::4, 0, 0].tolist() == list(range(4992, 5000))
    k, v = cache.reader().extend(1, torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8))
    assert k.shape[1] == 36 and v[0, 0, 0, 0] == 4992.5

    # A real model at frame 5,000: the same window content gives the same frame as at frame 20
    # (only the noise is per frame): positions stay in 0 .. window.
    model = tiny_model()
    outs = []
    for start in (20, 5000):
        r = rollout(model, window=4, steps=1)
        for f in range(start - 4):  # filler frames, all evicted by the 4 real ones below
            hook = r.cache.writer()
            for layer in range(2):
                hook.extend(layer, torch.full((1, 4, 2, 16), 9.0), torch.full((1, 4, 2, 16), 9.0))
            r.cache.commit(hook, frames=1)
        warm = torch.randn(1, C, 4, H, W, generator=torch.Generator().manual_seed(5))
        r.commit(start - 4, warm, [1, 2, 3, 4])
        outs.append(r._predict(frame_noise(0, 0, (C, H, W))[None, :, None], torch.tensor([999.0]), [4],
                               r.cache.reader()))
        assert r.cache.frames == start and r.cache.window_frames == 4
    assert torch.equal(outs[0], outs[1]) and torch.isfinite(outs[0]).all()


def test_rollback_restores_window_exactly():
    cache = CausalKVCache(window=4)
    for f in range(6):
        cache.commit(_fake_hook(cache, 2, 1, f), frames=1)
    before = {l: (k.clone(), v.clone()) for l, (k, v) in cache.window_state().items()}
    mark = cache.snapshot()
    cache.commit(_fake_hook(cache, 2, 3, 100), frames=3)  # pushes 3 frames out of the window
    cache.commit(_fake_hook(cache, 2, 2, 200), frames=2)
    assert cache.window_kv(0)[0][0, ::4, 0, 0].tolist() == [100, 100, 200, 200]
    cache.rollback(cache.frames - mark)
    cache.release()
    after = cache.window_state()
    assert cache.frames == mark == 6
    for l in before:
        assert torch.equal(after[l][0], before[l][0]) and torch.equal(after[l][1], before[l][1])
    assert cache.held_frames == 4  # nothing kept beyond the window once released
    with pytest.raises(ValueError, match="evicted"):
        cache.commit(_fake_hook(cache, 2, 3, 1), frames=3)
        cache.rollback(3)  # no snapshot held: the frames it pushed out are gone


# ---- rollout and speculation -------------------------------------------------------------------

def test_noise_is_a_function_of_seed_and_frame():
    a = frame_noise(3, 41, (C, H, W))
    torch.manual_seed(123)  # global RNG state is irrelevant
    frame_noise(3, 7, (C, H, W))
    assert torch.equal(frame_noise(3, 41, (C, H, W)), a)
    assert not torch.equal(frame_noise(3, 42, (C, H, W)), a)
    assert not torch.equal(frame_noise(4, 41, (C, H, W)), a)
    assert not torch.equal(frame_noise(3, 41, (C, H, W), "context"), a)


def test_speculation_constant_action():
    model = tiny_model()
    actions = [4] * 6
    plain = cat(rollout(model).generate(actions))
    stats = SpeculationStats()
    seq = cat(speculative_generate(rollout(model), actions, draft=4, mode="sequential", stats=stats))
    assert torch.equal(seq, plain)
    assert (stats.drafted, stats.accepted, stats.discarded, stats.drafts) == (6, 6, 0, 2)
    r = rollout(model)
    joint = cat(speculative_generate(r, actions, draft=4, mode="joint"))
    reference = cat(rollout(model).run(nfd_plan(actions, 32, draft=4)))
    torch.testing.assert_close(joint, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(joint[:, :, :1], plain[:, :, :1], atol=1e-6, rtol=0)  # the first draft is exact
    assert r.forwards == 2 * (2 + 1)  # two drafts (4 + 2 frames), each T = 2 steps + 1 commit pass


@pytest.mark.parametrize("window", [32, 3])
def test_speculation_changing_actions(window):
    model = tiny_model()
    actions = [0, 4, 4, 4, 1, 1, 2, 2, 2, 2, 2, 3]
    plain_r = rollout(model, window=window)
    plain = cat(plain_r.generate(actions))
    r, stats = rollout(model, window=window), SpeculationStats()
    seq = cat(speculative_generate(r, actions, draft=4, mode="sequential", stats=stats))
    assert torch.equal(seq, plain)
    assert stats.accepted == len(actions) and stats.drafted == stats.accepted + stats.discarded
    assert stats.discarded > 0
    # the cache after speculation (drafts discarded, rolled back) equals the plain run's
    for l, (k, v) in plain_r.cache.window_state().items():
        k2, v2 = r.cache.window_state()[l]
        assert torch.equal(k, k2) and torch.equal(v, v2)

    stats = SpeculationStats()
    joint = cat(speculative_generate(rollout(model, window=window), actions, draft=4, mode="joint", stats=stats))
    plan = nfd_plan(actions, window, draft=4)
    reference = cat(rollout(model, window=window).run(plan))
    torch.testing.assert_close(joint, reference, atol=1e-6, rtol=0)
    assert stats.drafted == sum(c.frames for c in plan)
    assert stats.discarded == sum(c.frames - c.keep for c in plan)


def test_online_push_rolls_back_and_finishes():
    r = rollout(tiny_model(layers=1), steps=1)
    spec = SpeculativeRollout(r, draft=3)
    spec.push(1)
    assert r.cache.frames == 3 and spec.stats.drafted == 3  # drafts are committed tentatively
    spec.push(1)
    spec.push(2)  # the third draft assumed 1: discarded, rolled back, a new draft under 2
    assert (spec.stats.accepted, spec.stats.discarded, r.cache.frames) == (3, 1, 5)
    spec.finish()  # unused drafts leave the cache
    assert (spec.stats.discarded, r.cache.frames, r.cache._holds) == (3, 3, [])


@pytest.mark.parametrize("window", [32, 3])
def test_fused_commits_make_the_same_video_in_fewer_passes(window):
    """fuse_commit: a frame's commit rides on the next chunk's first pass. Plain NFD and joint
    speculation (with rollbacks) make the unfused videos (fp32, 1e-5) and caches, one pass fewer per chunk."""
    model = tiny_model()
    actions = [0, 4, 4, 4, 1, 1, 2, 2, 2, 2, 2, 3]
    plain_r, fused_r = rollout(model, window=window, context_sigma=0.1), rollout(
        model, window=window, context_sigma=0.1, fuse_commit=True)
    plain, fused = cat(plain_r.generate(actions)), cat(fused_r.generate(actions))
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    assert plain_r.forwards == 12 * 3 and fused_r.forwards == 12 * 2  # T = 2 steps (+ 1 commit unfused)
    assert len(fused_r.pending) == 1  # the last frame waits for a next pass ...
    fused_r.flush()  # ... or is committed on its own
    for l, (k, v) in plain_r.cache.window_state().items():
        k2, v2 = fused_r.cache.window_state()[l]
        torch.testing.assert_close(k2, k, atol=1e-5, rtol=0)
        torch.testing.assert_close(v2, v, atol=1e-5, rtol=0)

    stats, fstats = SpeculationStats(), SpeculationStats()
    joint = cat(speculative_generate(rollout(model, window=window), actions, draft=4, stats=stats))
    fr = rollout(model, window=window, fuse_commit=True)
    fjoint = cat(speculative_generate(fr, actions, draft=4, stats=fstats))
    torch.testing.assert_close(fjoint, joint, atol=1e-5, rtol=0)
    assert fstats == stats and fstats.discarded > 0
    assert fr.forwards == 2 * stats.drafts and fr.cache._holds == []


def test_fused_rollback_drops_pending_drafts_first():
    r = rollout(tiny_model(layers=1), steps=1, fuse_commit=True)
    spec = SpeculativeRollout(r, draft=3)
    spec.push(1)
    assert (r.cache.frames, len(r.pending), r.next_frame) == (0, 3, 3)  # drafts wait, uncommitted
    spec.push(1)
    spec.push(2)  # the third draft is dropped from pending; the new draft's first pass commits 2 frames
    assert (spec.stats.discarded, r.cache.frames, len(r.pending)) == (1, 2, 3)
    spec.finish()
    assert (r.cache.frames, len(r.pending), r.next_frame) == (2, 1, 3)
    with pytest.raises(RuntimeError, match="next frame is 3"):
        r.denoise(2, [1])


def test_context_noise_changes_context_only():
    model = tiny_model()
    actions = [1, 1, 2]
    clean = cat(rollout(model).generate(actions))
    noisy = cat(rollout(model, context_sigma=0.1).generate(actions))
    torch.testing.assert_close(noisy[:, :, 0], clean[:, :, 0], atol=0, rtol=0)  # frame 0 has no context
    assert (noisy[:, :, 1:] - clean[:, :, 1:]).abs().max() > 1e-4


# ---- play CLI -----------------------------------------------------------------------------------

SMALL = ["model.num_layers=1", "model.num_attention_heads=2", "model.attention_head_dim=16", "model.ffn_dim=32",
         "model.text_dim=16", "model.freq_dim=16", "video.height=16", "video.width=16", "sampler.steps=2",
         "schedule.nfd.first_frame=generate", "model.weights="]  # world scenes are 32 or 64 px; random weights


def test_play_writes_requested_frames(tmp_path, capsys):
    from framecast.engine.video_io import read_video, video_info
    from framecast.launch.cli import main as cli_main

    def main(argv):
        return cli_main(["play", *argv])

    out = tmp_path / "play"
    assert main(["--actions", "none,right*3,up", "--frames", "7", "--out", f"{out}/", "--quiet",
                 "--speculate", "3", "--seed", "5", *SMALL]) == 0
    assert video_info(out)["frames"] == 7 and read_video(out).shape == (7, 16, 16, 3)
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "FPS" in line and "drafted" in line and "accepted" in line
    mp4 = tmp_path / "play.mp4"
    assert main(["--actions", "left*5", "--out", str(mp4), "--quiet", *SMALL]) == 0
    assert video_info(mp4)["frames"] == 5


def test_play_bad_action_is_one_line(tmp_path, capsys):
    from framecast.launch.cli import main as cli_main

    def main(argv):
        return cli_main(["play", *argv])
    from framecast.world.captions import ACTIONS

    out = tmp_path / "x.mp4"
    assert main(["--actions", "right*3,jump,up", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("framecast: error:") and "'jump'" in err
    assert all(a in err for a in ACTIONS) and not out.exists()


# ---- no-cache baseline, Engine.stream with schedule nfd -------------------------------------------

def test_no_cache_rollout_equals_cached_until_the_window_slides():
    from framecast.schedulers.nfd import NfdRolloutNoCache

    model = tiny_model()
    actions = [0, 4, 4, 1, 2, 2, 3]
    cached = rollout(model, window=4, context_sigma=0.05)
    ref = cat(cached.generate(actions))
    r = rollout(model, window=4, context_sigma=0.05)
    plain = NfdRolloutNoCache(r.model, r.denoiser, r.new_sampler, r.frame_shape, seed=r.seed, window=4,
                              context_sigma=0.05)
    out = cat(plain.generate(actions))
    # frames 0..4 see windows that never slid (frame 4 attends to frames 0..3): identical up to fp32
    torch.testing.assert_close(out[:, :, :5], ref[:, :, :5], atol=1e-5, rtol=0)
    assert out.shape == ref.shape and plain.forwards == len(actions) * 2  # no commit passes
    assert cached.forwards == len(actions) * 3


def test_engine_streams_nfd_with_actions():
    from framecast.engine.engine import Engine

    engine = Engine.from_preset("tiny-play", SMALL)
    actions = ["none", "right", "right", "up", 2]
    frames = list(engine.stream("", frames=5, seed=4, actions=actions))
    session = engine.play_session(seed=4)
    assert all(np.array_equal(f, session.push(a)) for f, a in zip(frames, actions))
    assert frames[0].shape == (16, 16, 3) and frames[0].dtype == np.uint8
    with pytest.raises(ValueError, match="unknown action 'jump'; valid: none, up, down, left, right"):
        engine.stream("", frames=2, actions=["none", "jump"])
    with pytest.raises(ValueError, match="actions: 3 given for 2 frames"):
        engine.stream("", frames=2, actions=["none", "up", "up"])
    with pytest.raises(ValueError, match="actions: 0 given for 2 frames"):
        engine.stream("", frames=2, actions=[])
    # fewer actions than frames: the last one holds, as `framecast play --frames` does
    held = list(engine.stream("", frames=4, seed=4, actions=["none", "right"]))
    spelled = list(engine.stream("", frames=4, seed=4, actions=["none", "right", "right", "right"]))
    assert all(np.array_equal(a, b) for a, b in zip(held, spelled)) and len(held) == 4
    text = Engine.from_preset("tiny", ["schedule.name=full"])
    with pytest.raises(ValueError, match="actions are taken by schedules with actions"):
        text.stream("a red circle moving right", frames=2, actions=["none", "up"])


@pytest.mark.parametrize("schedule", ["full", "dualparal", "nfd", "rollout"])
def test_every_schedule_streams(schedule):
    from framecast.engine.engine import Engine

    engine = Engine.from_preset("tiny", [f"schedule.name={schedule}", "sampler.steps=2"])
    frames = list(engine.stream("a red circle moving right", frames=9, seed=0))
    assert len(frames) == 9 and all(f.shape == (32, 32, 3) for f in frames)


def test_nfd_text_model_takes_no_actions():
    from framecast.engine.engine import Engine

    engine = Engine.from_preset("tiny", ["schedule.name=nfd", "sampler.steps=2"])
    with pytest.raises(ValueError, match="only 'none' is allowed"):
        list(engine.stream("a red circle moving right", frames=2, actions=["none", "up"]))


def test_world_start_frame_is_frame_zero_and_context():
    from framecast.engine.engine import Engine
    from framecast.world.scenes import sample_play_clip

    engine = Engine.from_preset("tiny-play", SMALL + ["video.height=32", "video.width=32", "schedule.nfd.first_frame=world"])
    frames = list(engine.stream("", frames=3, seed=6, actions=["none", "right", "right"]))
    assert np.array_equal(frames[0], sample_play_clip(6, 1, size=32).frames[0])
    generated = list(Engine.from_preset("tiny-play", SMALL + ["video.height=32", "video.width=32"]).stream("", frames=3, seed=6,
                                                                   actions=["none", "right", "right"]))
    assert not np.array_equal(frames[1], generated[1])  # frame 1 is made on the start frame's K/V
    start = np.zeros((32, 32, 3), dtype=np.uint8)
    session = engine.play_session(seed=6, start=start)
    assert np.array_equal(session.push("none"), start)
    with pytest.raises(ValueError, match=r"start frame must be uint8 \[32, 32, 3\]"):
        engine.play_session(seed=6, start=np.zeros((8, 8, 3), dtype=np.uint8))
