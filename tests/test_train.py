"""Training the world's tiny models: the loss falls, resume is exact, the shipped weights work."""
import json
from dataclasses import replace
from importlib.resources import files

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framecast.config import load_config
from framecast.world.train import TrainOptions, sample_sigmas, train

# A much smaller model than the tiny preset, so a run of a few dozen steps takes seconds.
SMALL = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=16",
         "model.ffn_dim=64", "model.text_dim=16", "model.freq_dim=16"]


def small_cfg(extra=()):
    return load_config("tiny", SMALL + list(extra))


def test_short_run_lowers_the_loss(tmp_path):
    meta = train(small_cfg(), steps=30, batch=4, frames=4, seed=0, out=tmp_path, progress=False,
                 options=TrainOptions(lr=2e-3, warmup=5))
    losses = meta["losses"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, f"loss did not fall: first 5 steps {first:.4f}, last 5 {last:.4f}"
    # the shipped layout: EMA weights under transformer.* / text_encoder.*, plus metadata and state
    sd = load_file(str(tmp_path / "weights.safetensors"))
    assert {k.split(".", 1)[0] for k in sd} == {"transformer", "text_encoder"}
    assert json.loads((tmp_path / "weights.json").read_text())["steps"] == 30
    assert (tmp_path / "state.pt").is_file()


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # bf16 RMSNorm runs unfused
@pytest.mark.parametrize("play", [False, True])
def test_bf16_autocast_loss_is_the_fp32_loss_and_trains(tmp_path, play):
    """--bf16: the same batch's loss under bf16 autocast is the fp32 loss to bf16 precision
    (3% relative), and a short bf16 run lowers it as fp32 does."""
    from framecast.world.captions import tokenize
    from framecast.world.scenes import world_batches
    from framecast.world.train import build, loss_on, step_generator

    cfg = load_config("tiny-play" if play else "tiny", SMALL)
    opt = TrainOptions(play=play, draft_prob=0.5 if play else 0.0, bf16=True)
    nets = build(cfg, 0)
    with torch.no_grad():  # adaLN-Zero starts every block as the identity: make every weight matter
        for p in nets.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batch = next(world_batches(0, 4, 4, play=play))
    empty = torch.tensor([tokenize("", max_len=cfg.text.max_length)])
    dtypes = []
    nets["transformer"].proj_out.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    fp32 = loss_on(nets, batch, step_generator(0, 0), opt, empty, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss_on(nets, batch, step_generator(0, 0), opt, empty, "cpu")
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.03 * fp32.item()
    assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16  # autocast did run the model in bf16
    meta = train(cfg, steps=30, batch=4, frames=4, seed=0, out=tmp_path, progress=False,
                 options=TrainOptions(lr=2e-3, warmup=5, play=play, bf16=True))
    losses = meta["losses"]
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert json.loads((tmp_path / "weights.json").read_text())["options"]["bf16"] is True
    assert load_file(str(tmp_path / "weights.safetensors"))["transformer.proj_out.weight"].dtype == torch.float32


def test_resume_continues_identically(tmp_path):
    opt = TrainOptions(lr=2e-3, warmup=2, save_every=100)
    straight = train(small_cfg(), steps=6, batch=2, frames=4, seed=3, out=tmp_path / "a", progress=False,
                     options=opt)
    train(small_cfg(), steps=3, batch=2, frames=4, seed=3, out=tmp_path / "b", progress=False, options=opt)
    resumed = train(small_cfg(), steps=6, batch=2, frames=4, seed=3, out=tmp_path / "b", resume=True,
                    progress=False, options=opt)
    assert resumed["losses"] == straight["losses"]
    a = load_file(str(tmp_path / "a" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(tmp_path / "a" / "state.pt", weights_only=False)["nets"]
    sb = torch.load(tmp_path / "b" / "state.pt", weights_only=False)["nets"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_stop_at_keeps_the_schedule_of_the_full_run(tmp_path):
    opt = TrainOptions(lr=2e-3, warmup=2, save_every=100, lr_final=0.1)
    straight = train(small_cfg(), steps=6, batch=2, frames=4, seed=4, out=tmp_path / "a", progress=False,
                     options=opt)
    short = train(small_cfg(), steps=6, batch=2, frames=4, seed=4, out=tmp_path / "b", progress=False,
                  options=opt, stop_at=4)
    assert short["steps"] == 4 and short["losses"] == straight["losses"][:4]
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=False)["step"] == 4
    with pytest.raises(ValueError, match=r"stop_at=7 must lie in \(0, 6\]"):
        train(small_cfg(), steps=6, batch=2, frames=4, seed=4, out=tmp_path / "c", progress=False, stop_at=7)


def test_several_clip_lengths_take_turns_and_resume_identically(tmp_path, monkeypatch):
    """--frames 4 6 --batch 2 1: steps alternate 2 x 4-frame and 1 x 6-frame clips; a resumed run
    replays both data streams and ends with the same losses and weights as a straight one."""
    import framecast.world.train as train_module

    shapes = []
    real_step = train_module.train_step

    def recording_step(nets, ema, optim, batch, *args):
        shapes.append(tuple(batch["video"].shape[:3]))
        return real_step(nets, ema, optim, batch, *args)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    opt = TrainOptions(lr=2e-3, warmup=2, save_every=100, prefix_prob=0.5)
    straight = train(small_cfg(), steps=5, batch=(2, 1), frames=(4, 6), seed=3, out=tmp_path / "a",
                     progress=False, options=opt)
    assert shapes == [(2, 3, 4), (1, 3, 6), (2, 3, 4), (1, 3, 6), (2, 3, 4)]
    meta = json.loads((tmp_path / "a" / "weights.json").read_text())
    assert meta["batch"] == [2, 1] and meta["frames"] == [4, 6]
    train(small_cfg(), steps=5, batch=(2, 1), frames=(4, 6), seed=3, out=tmp_path / "b", progress=False,
          options=opt, stop_at=3)
    resumed = train(small_cfg(), steps=5, batch=[2, 1], frames=[4, 6], seed=3, out=tmp_path / "b", resume=True,
                    progress=False, options=opt)
    assert resumed["losses"] == straight["losses"]
    a = load_file(str(tmp_path / "a" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # one length is the stream of every earlier run; other lengths draw their clips elsewhere
    single = train(small_cfg(), steps=1, batch=2, frames=4, seed=3, out=tmp_path / "c", progress=False, options=opt)
    assert single["losses"] == straight["losses"][:1]
    with pytest.raises(ValueError, match=r"batch=\[2\] frames=\[4, 6\]"):
        train(small_cfg(), steps=1, batch=(2,), frames=(4, 6), seed=3, out=tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="was trained with seed=3 batch=2 frames=4"):
        train(small_cfg(), steps=2, batch=(2, 1), frames=(4, 6), seed=3, out=tmp_path / "c", resume=True,
              progress=False, options=opt)


def test_resume_refuses_other_settings(tmp_path):
    train(small_cfg(), steps=1, batch=2, frames=4, seed=0, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="seed=0"):
        train(small_cfg(), steps=2, batch=2, frames=4, seed=1, out=tmp_path, resume=True, progress=False)


def test_weights_with_another_layer_count_name_the_field(tmp_path):
    """Weights trained with 2 blocks, loaded (init-from or generate) under a 3-block config: one
    error naming model.num_layers and the value that fits, not torch's list of missing keys."""
    from framecast.engine.wan_checkpoint import CheckpointError

    train(small_cfg(), steps=1, batch=1, frames=2, seed=0, out=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"have 2 transformer blocks but model.num_layers=3: "
                                              r"use model.num_layers=2"):
        train(small_cfg(["model.num_layers=3"]), steps=1, batch=1, frames=2, seed=0, out=tmp_path / "b",
              progress=False, options=TrainOptions(init_from=str(tmp_path)))


def test_sigmas_per_frame_or_per_clip():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(g, 64, 8, TrainOptions(uniform_prob=0.5))
    assert s.shape == (64, 8) and 0 < s.min() and s.max() < 1
    uniform = (s == s[:, :1]).all(dim=1)
    assert 10 < uniform.sum() < 54  # about half the clips share one level, the rest do not
    assert not (sample_sigmas(g, 16, 8, TrainOptions(uniform_prob=0.0)) == s[:16, :1]).all()


def test_prefix_clips_have_clean_context_then_one_level():
    opt = TrainOptions(uniform_prob=0.0, prefix_prob=0.5, context_sigma_max=0.1)
    s = sample_sigmas(torch.Generator().manual_seed(0), 256, 8, opt)
    plain = sample_sigmas(torch.Generator().manual_seed(0), 256, 8, TrainOptions(uniform_prob=0.0))
    prefixed = ~(s == plain).all(dim=1)  # the option draws after the plain levels and replaces whole clips
    assert 90 < prefixed.sum() < 170  # about half the clips
    ks = set()
    for row, ref in zip(s[prefixed], plain[prefixed]):
        k = int((row == row[0]).int().cumprod(0).sum())  # the clean run at the start
        assert 1 <= k <= 4 and row[0] <= 0.1
        assert (row[k:] == ref[k]).all()  # the rest share the level frame k was drawn at
        ks.add(k)
    assert ks == {1, 2, 3, 4}


def test_prefix_clips_from_later_in_a_video_keep_offset_clean_min_clean_frames(tmp_path):
    opt = TrainOptions(uniform_prob=0.0, prefix_prob=1.0, prefix_max=3, context_sigma_max=0.1, logit_mean=3.0)
    offsets = torch.tensor([0, 7] * 128)
    s = sample_sigmas(torch.Generator().manual_seed(0), 256, 6, opt, offsets)
    k = ((s <= 0.1).int().cumprod(1)).sum(1)  # the nearly clean run at the start (the rest is at σ ≈ 0.95)
    assert set(k[offsets == 0].tolist()) == {1, 2, 3}  # one frame is enough at a video's start
    assert set(k[offsets > 0].tolist()) == {2, 3}      # later, two frames show which way a shape goes
    one = replace(opt, prefix_max=1, offset_clean_min=1)  # the rollout's layout everywhere, walls included
    k = ((sample_sigmas(torch.Generator().manual_seed(0), 256, 6, one, offsets) <= 0.1).int().cumprod(1)).sum(1)
    assert set(k.tolist()) == {1}
    with pytest.raises(ValueError, match="prefix_max=6 must be below frames=6"):
        train(small_cfg(), steps=1, batch=2, frames=6, seed=0, out=tmp_path / "out", progress=False,
              options=TrainOptions(prefix_prob=0.5, prefix_max=6))
    assert not (tmp_path / "out").exists()


def test_prefix_prob_is_refused_for_play(tmp_path):
    with pytest.raises(ValueError, match="--prefix-prob"):
        train(load_config("tiny-play", SMALL), steps=1, batch=1, frames=2, seed=0, out=tmp_path,
              options=TrainOptions(play=True, prefix_prob=0.5), progress=False)

def test_play_model_is_block_causal():
    from framecast.world.causal_training import predict_on_context
    from framecast.world.train import build

    cfg = load_config("tiny-play", SMALL)
    nets = build(cfg, 0)
    for p in nets.parameters():  # adaLN-Zero starts at the identity; perturb so outputs depend on inputs
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    x, ctx = torch.randn(1, 3, 3, 32, 32), torch.randn(1, 3, 3, 32, 32)
    t, t_ctx, tokens = torch.full((1, 3), 0.5), torch.zeros(1, 3), torch.tensor([[1] + [0] * 15])
    actions = torch.tensor([[0, 1, 2]])
    y = predict_on_context(nets, ctx, t_ctx, x, t, tokens, actions)
    x2, ctx2 = x.clone(), ctx.clone()
    x2[:, :, 2] += 1.0  # changing the last frame must not change earlier frames' predictions
    ctx2[:, :, 2] += 1.0  # nor may its context copy change anything (frame 2 sees context < 2)
    y2 = predict_on_context(nets, ctx2, t_ctx, x2, t, tokens, actions)
    assert torch.equal(y[:, :, :2], y2[:, :, :2])
    assert not torch.equal(y[:, :, 2], y2[:, :, 2])


def _adherence(overrides, prompts, frames=16):
    from framecast import Engine
    from framecast.world.metrics import evaluate_video

    engine = Engine.from_preset("tiny", overrides)
    scores = []
    for i, prompt in enumerate(prompts):
        video = np.stack(list(engine.stream(prompt, frames=frames, seed=i)))
        scores.append(evaluate_video(video, prompt=prompt)["adherence"])
    return float(np.mean(scores))


def test_shipped_tiny_weights_beat_random():
    assert files("framecast.weights").joinpath("tiny.safetensors").is_file()
    meta = json.loads(files("framecast.weights").joinpath("tiny.json").read_text())
    assert {"stages", "metrics"} <= meta.keys()
    assert all({"reproduce", "seed", "steps", "wall_s", "device"} <= s.keys() for s in meta["stages"])
    prompts = ["a red circle moving right", "a blue square moving down"]
    trained = _adherence(["model.weights=builtin:tiny"], prompts)
    random = _adherence(['model.weights=""'], prompts)
    assert trained > random + 0.25, f"trained adherence {trained:.3f} vs random weights {random:.3f}"


def test_shipped_tiny_moves_shapes_the_named_way():
    """The default (rollout schedule, shipped weights) moves each shape in its prompt's direction
    on most frame steps up to its first bounce. Chance is about 0.25; the first shipped weights
    with the full schedule scored 0.26 (weights/tiny.json), random weights 0."""
    from framecast import Engine
    from framecast.world.metrics import evaluate_video

    engine = Engine.from_preset("tiny")
    prompts = ["a red circle moving right", "a blue square moving down", "a green triangle moving left",
               "a yellow circle moving up"]
    scores = []
    for seed in (0, 1):
        for prompt in prompts:
            m = evaluate_video(np.stack(list(engine.stream(prompt, frames=24, seed=seed))), prompt=prompt)
            scores.append(m[f"prompt.{prompt.split()[1]}.direction"])
    assert np.mean(scores) > 0.45, f"direction agreement {np.mean(scores):.3f} over {len(scores)} videos"


def _play_scores(overrides, seeds=(0, 1)):
    from framecast import Engine
    from framecast.world.metrics import evaluate_video

    actions = ["none"] + ["right"] * 6 + ["down"] * 6 + ["left"] * 6
    engine = Engine.from_preset("tiny-play", overrides)
    per = [evaluate_video(np.stack(list(engine.stream("", frames=len(actions), seed=s, actions=actions))),
                          actions=actions) for s in seeds]
    return {k: float(np.mean([m[k] for m in per])) for k in ("action_follow", "colour_identity")}


def test_shipped_tiny_play_weights_beat_random():
    """The few-step student keeps the scene's objects and their colours from frame to frame and
    moves the white player the way the actions say, also with joint speculative drafts (random
    weights scramble the scene at once and never move a player)."""
    assert files("framecast.weights").joinpath("tiny-play.safetensors").is_file()
    meta = json.loads(files("framecast.weights").joinpath("tiny-play.json").read_text())
    assert {"stages", "metrics"} <= meta.keys() and all("command" in s for s in meta["stages"])
    trained = _play_scores(["model.weights=builtin:tiny-play"])
    random = _play_scores(['model.weights=""'])
    assert trained["colour_identity"] > random["colour_identity"] + 0.25, (trained, random)
    assert trained["action_follow"] > random["action_follow"] + 0.5, (trained, random)
    # trained with joint drafts (train --draft-prob): two-frame speculation keeps the player moving
    drafted = _play_scores(["model.weights=builtin:tiny-play", "schedule.nfd.speculate=2"])
    assert drafted["action_follow"] > random["action_follow"] + 0.5, (drafted, random)


def test_train_cli_rejects_bad_play_options_before_any_output(tmp_path, capsys):
    from framecast.launch.cli import main  # what `python -m framecast train` runs

    for argv, message in ((["--play", "--preset", "tiny-play", "--draft-prob", "2"], "--draft-prob must be in [0, 1]"),
                          (["--draft-prob", "0.5"], "are for play models; add --play"),
                          (["--logit-std", "0"], "--logit-std must be > 0"),
                          (["--offset-clean-min", "0"], "--offset-clean-min must be >= 1, got 0"),
                          (["--stop-at", "2"], "--stop-at must lie in [1, --steps] = [1, 1], got 2"),
                          (["--frames", "4", "6", "--batch", "2"],
                           "--batch needs one value per --frames value: got --frames 4 6 and --batch 2")):
        out = tmp_path / "run"
        assert main(["train", "--out", str(out), "--steps", "1", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_python_m_framecast_train_is_the_entry_point(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "framecast", "train", "--out", str(out), "--steps", "1",
                           "--logit-std", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--logit-std must be > 0" in proc.stderr, proc.stderr
    assert not out.exists()
