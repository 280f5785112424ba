"""AV-DiT's event cue (framecast/models/event_cue.py, model.avdit.event_cue): it starts as nothing, never
reaches the video rows, knows where the borders are, and `framecast train --av --cue-weight` trains it
against the frames that click."""
from __future__ import annotations

import pytest
import torch

from framecast.config import load_config
from framecast.models.avdit import AvditConfig, AvditModel
from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.event_cue import EDGE_REACH, EventCue, edge_features

KW = dict(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, in_channels=3, out_channels=3,
          text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2)


def _models():
    """(AvditModel without a cue, the same with one), the AV parts random, the fusion gates as training
    leaves them (video 0, audio open)."""
    torch.manual_seed(0)
    plain = AvditModel(**KW, avdit=AvditConfig(band_rows=4, lora_rank=2, fusion_ffn=32)).eval()
    cued = AvditModel(**KW, avdit=AvditConfig(band_rows=4, lora_rank=2, fusion_ffn=32, event_cue=True)).eval()
    with torch.no_grad():
        for name, p in plain.trained_parameters().items():
            if "gate" not in name:
                p.normal_(0, 0.2)
        plain.fusion.gate_audio.fill_(0.5)
    missing, unexpected = cued.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("event_cue.") for k in missing) and not unexpected
    return plain, cued


def test_edge_features_are_distances_to_the_four_borders():
    feats = edge_features(5, 7).view(5, 7, 4, EDGE_REACH + 1)
    assert (feats.sum(-1) == 1).all()                                  # one-hot per border
    dist = feats.argmax(-1)                                            # (h, w, 4): top, bottom, left, right
    assert dist[0, 0].tolist() == [0, 3, 0, 3] and dist[4, 6].tolist() == [3, 0, 3, 0]
    assert dist[2, 3].tolist() == [2, 2, 3, 3] and dist[1, 5].tolist() == [1, 3, 3, 1]


def test_the_cue_starts_at_nothing_and_never_reaches_the_video():
    plain, cued = _models()
    x, t, text = torch.randn(2, 3, 3, 20, 16), torch.tensor([400.0, 700.0]), torch.randn(2, 5, 16)
    seen = []
    with torch.no_grad():
        before = run_model(plain, x, t, Conditioning(text))
        assert torch.equal(run_model(cued, x, t, Conditioning(text), prepare=lambda c: seen.append(c) or c), before)
        assert seen[0].event_logits_BF.shape == (2, 3)
        cued.event_cue.to_audio.weight.normal_(0, 0.2)
        after = run_model(cued, x, t, Conditioning(text))
    assert torch.equal(after[..., :16, :], before[..., :16, :])       # the video rows: still the backbone's
    assert (after[..., 16:, :] - before[..., 16:, :]).abs().max() > 1e-3


def test_the_cue_reads_place_time_and_neighbouring_frames():
    torch.manual_seed(0)
    cue = EventCue(dim=32, hidden=16).eval()
    with torch.no_grad():
        cue.to_audio.weight.normal_(0, 0.2)
    xv, temb = torch.randn(1, 5, 12, 32), torch.randn(1, 5, 32)
    logits, audio = cue(xv, (3, 4), temb)
    assert logits.shape == (1, 5) and audio.shape == (1, 5, 32)
    moved = xv.clone()
    moved[:, 2] = xv[:, 2].roll(1, dims=1)                            # frame 2's tokens one place on
    assert (cue(moved, (3, 4), temb)[0][:, 2] - logits[:, 2]).abs() > 1e-6     # place matters
    changed = cue(moved, (3, 4), temb)[0]
    assert torch.equal(changed[:, [0, 4]], logits[:, [0, 4]])         # frames 2 away: untouched (kernel 3)
    assert (changed[:, [1, 3]] - logits[:, [1, 3]]).abs().min() > 1e-7  # neighbours read frame 2
    assert (cue(xv, (3, 4), temb + 1.0)[0] - logits).abs().max() > 1e-6    # the noise level matters


def _train_setup(cue: bool):
    from framecast.engine.audio import codec_for
    from framecast.world.audio import av_world_batches
    from framecast.world.avdit_training import build_av_nets
    from framecast.world.captions import tokenize
    from framecast.world.train import TrainOptions

    cfg = load_config("tiny-av", ["model.weights=", f"model.avdit.event_cue={str(cue).lower()}"])
    nets = build_av_nets(cfg, seed=0)
    nets["transformer"].train()
    batch = next(av_world_batches(2, 4, 8, offset_prob=0.5))  # 2 frames click
    opt = TrainOptions(prefix_prob=0.5, prefix_max=1, uniform_prob=1.0)
    return nets, codec_for(cfg), batch, opt, torch.tensor([tokenize("", max_len=16)])


def test_cue_weight_trains_the_cue_against_the_click_frames():
    from framecast.world.avdit_training import av_loss, click_hops
    from framecast.world.train import step_generator

    nets, codec, batch, opt, empty = _train_setup(cue=True)
    assert click_hops(codec, codec.encode(batch["audio"])).any()      # the batch has clicks to learn
    cue = nets["transformer"].event_cue
    plain = av_loss(nets, codec, batch, step_generator(0, 0), opt, empty)
    plain.backward()
    assert cue.logit.weight.grad is None or not cue.logit.weight.grad.any()  # no cue loss: no detector gradient
    nets.zero_grad(set_to_none=True)
    total = av_loss(nets, codec, batch, step_generator(0, 0), opt, empty, cue_weight=1.0)
    assert total > plain                                              # the cross-entropy is added
    total.backward()
    assert cue.logit.weight.grad.abs().sum() > 0 and cue.token[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for k, p in nets["transformer"].named_parameters() if ".base." in k)


def test_cue_weight_without_a_cue_is_one_line():
    from framecast.world.avdit_training import av_loss
    from framecast.world.train import step_generator

    nets, codec, batch, opt, empty = _train_setup(cue=False)
    with pytest.raises(ValueError, match="model.avdit.event_cue=true"):
        av_loss(nets, codec, batch, step_generator(0, 0), opt, empty, cue_weight=1.0)


def test_weights_and_config_must_agree_on_the_cue():
    plain, cued = _models()
    assert "(set model.avdit.event_cue=true)" in plain.weights_problem(set(cued.state_dict()))
    assert "(set model.avdit.event_cue=false)" in cued.weights_problem(set(plain.state_dict()))
    assert cued.weights_problem(set(cued.state_dict())) is None


def test_av_training_stop_at_and_av_only_options(tmp_path, capsys):
    """`framecast train --av --steps N --stop-at K` (how a run cut by --max-minutes is reproduced): K steps
    and their weights; a --stop-at outside [1, N], or AV options without --av, are one line, nothing written."""
    import json

    from framecast.launch.cli import main

    common = ["train", "--av", "--preset", "tiny-av", "--batch", "1", "--frames", "2", "--steps", "40", "--warmup", "1",
              "--cue-weight", "0.5", "--log-every", "0"]
    out = tmp_path / "bad"
    assert main([*common, "--stop-at", "41", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--stop-at must lie in [1, --steps] = [1, 40], got 41" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    out = tmp_path / "plain"
    assert main(["train", "--steps", "1", "--cue-weight", "0.5", "--click-weight", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--click-weight, --cue-weight: for AV-DiT's audio parts only; add --av" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main([*common, "--stop-at", "2", "--out", str(tmp_path / "cut")]) == 0
    meta = json.loads((tmp_path / "cut" / "weights.json").read_text())
    assert meta["steps"] == 2 and len(meta["losses"]) == 2 and meta["cue_weight"] == 0.5
    assert (tmp_path / "cut" / "weights.safetensors").exists()
