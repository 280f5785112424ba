"""VIN (schedule.name=vin): the plan as pure data, the interface module and its read-back in the DiT,
the schedule on one worker (equal to the full schedule when it is one chunk without tokens),
one-line errors before any work, and the chunked training. Multi-worker runs: tests/test_vin_run.py."""
import numpy as np
import pytest
import torch

from framecast.schedulers.vin import VinOptions, fused_steps, make_plan, overlap_weights, split_chunks

PROMPT = "a red circle moving right"


# ---- the plan ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames, chunk, overlap, workers", [
    (1, 1, 0, 1), (15, 4, 2, 3), (21, 8, 3, 2), (20, 5, 4, 4), (9, 9, 2, 1), (257, 20, 12, 8), (31, 6, 0, 5)])
def test_plan_covers_every_frame_once_with_overlaps_of_f_local(frames, chunk, overlap, workers):
    plan = make_plan(frames, chunk, overlap, 10, workers, "early", 0.6, 4)
    owned = [f for c in plan.chunks for f in range(c.own_start, c.stop)]
    assert owned == list(range(frames))                                    # exact frame count, each frame once
    for prev, c in zip(plan.chunks, plan.chunks[1:]):
        assert c.own_start == prev.stop and c.start == prev.stop - overlap  # context = the previous chunk's last F_local
        assert len(prev) - prev.context == chunk                             # only the last chunk is short
    assert all(len(c) <= chunk + overlap for c in plan.chunks)
    # no frame in more than two windows: an overlap is fused by exactly two chunks
    assert max(sum(c.start <= f < c.stop for c in plan.chunks) for f in range(frames)) <= 2
    assert [i for r in plan.workers for i in r] == list(range(len(plan.chunks)))  # contiguous groups, in order
    assert [f for w in range(workers) for f in plan.worker_frames(w)] == list(range(frames))
    assert plan.keyframes == tuple(range(0, frames, 4))
    assert all(plan.owner(f).own_start <= f < plan.owner(f).stop for f in range(frames))


def test_fusion_modes_and_weights():
    assert fused_steps("early", 50, 0.6) == tuple(s < 30 for s in range(50))  # the spec's t > t_α: 30 of 50
    assert fused_steps("late", 10, 0.6) == tuple(s >= 4 for s in range(10))
    assert fused_steps("mid", 10, 0.4) == tuple(3 <= s < 7 for s in range(10))
    assert fused_steps("always", 3, 0.6) == (True,) * 3 and fused_steps("none", 3, 0.6) == (False,) * 3
    w = overlap_weights(4)
    assert w == [0.2, 0.4, 0.6, 0.8] and all(0 < x < 1 for x in w)
    assert [round(a + b, 12) for a, b in zip(w, reversed(w))] == [1.0] * 4  # symmetric: neither side wins
    assert split_chunks(5, 3) == (range(0, 2), range(2, 4), range(4, 5))


@pytest.mark.parametrize("args, needle", [
    ((8, 9, 2, 10, 1), "schedule.vin.chunk_frames=9 is more than the video's 8 latent frames"),
    ((8, 4, 4, 10, 1), "schedule.vin.overlap_frames must be an integer in [0, 3]"),
    ((8, 4, 2, 10, 3), "parallel.workers=3 is more than the 2 chunk(s)"),
])
def test_plan_errors_name_the_field(args, needle):
    with pytest.raises(ValueError) as e:
        make_plan(*args)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_options_check_overlap_below_chunk():
    assert "overlap_frames=4 must be < schedule.vin.chunk_frames=4" in VinOptions(4, 4).check()
    assert VinOptions(4, 3).check() is None


# ---- the interface module and its read-back ------------------------------------------------------------
def small_model(layers=3):
    from framecast.models.wan import WanModel

    torch.manual_seed(0)
    model = WanModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                     out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@torch.no_grad()
def run(model, lat, t, text, z=None, layers=None):
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning
    from framecast.models.vin import InterfaceTokens

    def prepare(ctx):
        ctx.interface = None if z is None else InterfaceTokens(z, layers)
        return ctx
    return run_model(model, lat, t, Conditioning(text), prepare=prepare)


def test_tokens_are_extra_keys_only_at_the_chosen_layers():
    model = small_model()
    g = torch.Generator().manual_seed(1)
    lat, t, text = torch.randn(2, 3, 3, 8, 8, generator=g), torch.tensor([500.0, 500.0]), torch.randn(2, 5, 16, generator=g)
    z = torch.randn(2, 7, 16, generator=g)
    plain = run(model, lat, t, text)
    assert torch.equal(run(model, lat, t, text, z, frozenset()), plain)       # no reading layer: unchanged
    one, every = run(model, lat, t, text, z, frozenset({1})), run(model, lat, t, text, z)
    assert not torch.allclose(one, plain) and not torch.allclose(every, one)
    # keys/values without positions: the tokens' order does not matter
    perm = torch.randperm(7, generator=g)
    assert torch.allclose(run(model, lat, t, text, z[:, perm]), every, atol=1e-6)
    # ... and they are never queries: one batch row's tokens change only that row
    z2 = z.clone()
    z2[1] += 1.0
    other = run(model, lat, t, text, z2)
    assert torch.equal(other[0], every[0]) and not torch.allclose(other[1], every[1])


def test_vin_module_shapes_and_keyframes_as_a_set():
    from framecast.config import load_config
    from framecast.models.vin import VinInterface, pooled_interface

    cfg = load_config("tiny-vin")
    torch.manual_seed(0)
    vin = VinInterface.for_model(cfg.model, cfg.vin).eval()
    g = torch.Generator().manual_seed(2)
    kf = torch.randn(1, 3, 4, 32, 32, generator=g)
    text = torch.randn(2, 16, 64, generator=g)
    with torch.no_grad():
        z = vin(kf, torch.tensor([700.0, 700.0]), text)
        assert z.shape == (2, 64, 128)
        assert torch.allclose(vin(kf[:, :, [2, 0, 3, 1]], torch.tensor([700.0, 700.0]), text), z, atol=1e-5)
        assert not torch.allclose(vin(kf, torch.tensor([100.0, 100.0]), text), z)   # the timestep matters
        pooled = pooled_interface(small_model(), torch.randn(1, 3, 5, 8, 8, generator=g), grid=2)
    assert pooled.shape == (1, 5 * 4, 16)
    assert sum(p.numel() for p in vin.parameters()) < 1_000_000


# ---- the schedule on one worker ----------------------------------------------------------------------
SMALL = ["sampler.steps=3", "schedule.name=vin"]


def stream(preset, overrides, frames, seed=1, prompt=PROMPT):
    from framecast import Engine

    with Engine.from_preset(preset, overrides) as engine:
        return np.stack(list(engine.stream(prompt, frames=frames, seed=seed)))


def test_one_chunk_without_tokens_is_the_full_schedule():
    vin = stream("tiny", SMALL + ["schedule.vin.chunk_frames=9", "schedule.vin.overlap_frames=2",
                                  "schedule.vin.interface=none"], 9)
    full = stream("tiny", ["sampler.steps=3", "schedule.name=full", "schedule.full.lead_frames=0"], 9)
    assert vin.shape == (9, 32, 32, 3) and np.array_equal(vin, full)


@pytest.mark.parametrize("fusion", ["none", "early", "always"])
def test_exact_length_and_deterministic_per_fusion(fusion):
    over = SMALL + ["schedule.vin.chunk_frames=4", "schedule.vin.overlap_frames=2", f"schedule.vin.fusion={fusion}"]
    a, b = stream("tiny", over, 11), stream("tiny", over, 11)
    assert a.shape == (11, 32, 32, 3) and np.array_equal(a, b)


def test_cli_rejects_bad_vin_values_in_one_line(tmp_path, capsys):
    from framecast.launch.cli import main

    out = tmp_path / "v.mp4"
    cases = [(["--chunk-frames", "4", "--overlap-frames", "4"], "overlap_frames=4 must be < schedule.vin.chunk_frames=4"),
             (["--chunk-frames", "12"], "chunk_frames=12 is more than the video's 8 latent frames"),
             (["--chunk-frames", "6", "--launcher", "ray", "--workers", "3"], "parallel.workers=3 is more than the 2"),
             (["--chunk-frames", "6", "schedule.vin.interface=learned"], "have no VIN module"),
             (["--chunk-frames", "6", "schedule.vin.fusion=sometimes"], "choose one of: none, early, mid, late, always"),
             (["--chunk-frames", "6", "cache.kind=teacache"], "does not run under schedule.name=vin")]
    for argv, needle in cases:
        rc = main(["generate", PROMPT, "--frames", "8", "--out", str(out), "--quiet", "--schedule", "vin",
                   "--overlap-frames", "2", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and err.strip().count("\n") == 0, (argv, err)
        assert not out.exists() and not (tmp_path / "v.partial.mp4").exists()


# ---- chunked training and the learned interface ---------------------------------------------------------
def test_chunked_training_reduces_loss_on_a_fixed_batch():
    from framecast.config import load_config
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches
    from framecast.world.train import TrainOptions
    from framecast.world.vin_training import build_vin_nets, vin_loss

    torch.set_num_threads(1)
    cfg = load_config("tiny-vin", ["vin.layers=[0,3]"])
    nets = build_vin_nets(cfg, "builtin:tiny", seed=0).train()
    batch = next(world_batches(0, 2, 14))
    empty = torch.tensor([tokenize("", max_len=16)])
    opt = TrainOptions(caption_dropout=0.0)
    base = [p for k, p in nets.named_parameters() if not k.startswith("vin.")]
    optim = torch.optim.AdamW([{"params": base, "lr": 1e-4}, {"params": list(nets["vin"].parameters()), "lr": 5e-4}])
    losses = []
    for _ in range(5):  # the same batch and noise every step
        loss = vin_loss(nets, cfg, batch, torch.Generator().manual_seed(0), opt, empty)
        optim.zero_grad()
        loss.backward()
        assert nets["vin"].z_init.grad.abs().sum() > 0  # VIN trains end to end through Z
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_drawn_windows_are_per_clip_and_all_by_default():
    from framecast.world.vin_training import drawn_windows

    gen = torch.Generator().manual_seed(0)
    assert drawn_windows(5, 3, 0, gen) == [{0, 1, 2, 3, 4}] * 3
    assert gen.initial_seed() == 0 and torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())
    drawn = drawn_windows(21, 8, 3, gen)
    assert all(len(d) == 3 and d <= set(range(21)) for d in drawn)
    assert len({frozenset(d) for d in drawn}) > 1  # drawn per clip, not one draw for the batch


def test_windows_per_clip_reads_keyframes_of_the_whole_clip(monkeypatch):
    """--vin-windows N: each clip gives exactly N windows, each reading its own clip's Z, which
    comes from keyframes of the whole clip; N = all of them is the default loss."""
    from framecast.config import load_config
    from framecast.world import vin_training
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches
    from framecast.world.train import TrainOptions

    torch.set_num_threads(1)
    cfg = load_config("tiny-vin")
    nets = vin_training.build_vin_nets(cfg, "builtin:tiny", seed=0).eval()
    batch = next(world_batches(0, 6, 30))  # 5 windows of 6 + 2 per clip, keyframes at 0, 8, 16, 24
    empty = torch.tensor([tokenize("", max_len=16)])
    opt = TrainOptions(caption_dropout=0.0)
    keyframes, zs = [], []
    vin_forward, run_model = nets["vin"].forward, vin_training.run_model

    def spy_vin(x, t, text):
        keyframes.append(x.shape[2])
        return vin_forward(x, t, text)

    def spy_model(model, x, t, cond, prepare):
        zs.append((t, prepare(type("Ctx", (), {})()).interface.z_BND))
        return run_model(model, x, t, cond, prepare=prepare)

    monkeypatch.setattr(nets["vin"], "forward", spy_vin)
    monkeypatch.setattr(vin_training, "run_model", spy_model)
    with torch.no_grad():
        full = vin_training.vin_loss(nets, cfg, batch, torch.Generator().manual_seed(3), opt, empty)
        every = vin_training.vin_loss(nets, cfg, batch, torch.Generator().manual_seed(3), opt, empty,
                                      windows_per_clip=5)
        zs.clear()
        two = vin_training.vin_loss(nets, cfg, batch, torch.Generator().manual_seed(3), opt, empty,
                                    windows_per_clip=2)
    assert torch.allclose(every, full, rtol=1e-6, atol=0) and not torch.allclose(two, full, rtol=1e-4, atol=0)
    assert keyframes == [4, 4, 4]  # Z always reads the whole clip's keyframes
    t, rows = torch.cat([t for t, _ in zs]), torch.cat([z for _, z in zs])
    assert rows.shape[0] == 6 * 2
    readers = [sum(torch.equal(r, other) for other in rows) for r in rows]
    assert readers == [2] * 12  # each clip's Z is read by exactly 2 windows ...
    for i in range(12):  # ... the two at that clip's noise level: its own windows
        assert all(torch.equal(rows[i], rows[j]) == bool(t[i] == t[j]) for j in range(12))


def test_vin_windows_out_of_range_or_without_vin_is_one_line(tmp_path, capsys):
    from framecast.launch.cli import main

    out = tmp_path / "vin"
    assert main(["train", "--vin", "--preset", "tiny-vin", "--out", str(out), "--steps", "1", "--frames", "18",
                 "--vin-windows", "4"]) == 2
    err = capsys.readouterr().err
    assert "--vin-windows 4: a clip of 18 frames has 3 windows" in err and len(err.splitlines()) == 1
    assert main(["train", "--steps", "1", "--vin-windows", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--vin-windows: for the VIN recipe only; add --vin" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_train_command_writes_weights_that_the_tiny_vin_preset_runs(tmp_path, capsys):
    from framecast.launch.cli import main

    out = tmp_path / "vin"
    rc = main(["train", "--vin", "--preset", "tiny-vin", "--out", str(out), "--steps", "1", "--batch", "1",
               "--frames", "8", "--warmup", "1", "--log-every", "0"])
    assert rc == 0 and (out / "weights.safetensors").is_file() and (out / "weights.json").is_file()
    assert "1 steps in" in capsys.readouterr().out
    video = stream("tiny-vin", ["sampler.steps=2", f"model.weights={out}"], 9)
    assert video.shape == (9, 32, 32, 3)


def test_worker_count_is_capped_by_layers_under_dualparal_only():
    """VIN splits the video, not the layers: more workers than layers is fine there (chunks
    permitting), while DualParal needs a layer shard per worker."""
    from framecast.config import ConfigError, load_config

    load_config("tiny", ["schedule.name=vin", "parallel.launcher=torchrun", "parallel.workers=8"])
    with pytest.raises(ConfigError, match="parallel.workers=8 must be <= model.num_layers=6 under schedule.name=dualparal"):
        load_config("tiny", ["schedule.name=dualparal", "parallel.launcher=torchrun", "parallel.workers=8"])
