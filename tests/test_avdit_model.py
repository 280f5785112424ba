"""AV-DiT (framecast/models/avdit.py; engine-defined, not the paper's): with the fusion gates at
zero the video rows are exactly the frozen backbone's; training moves only the AV parts; the
schedules that move whole latent frames run it; bad inputs are one line."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from framecast.config import ConfigError, load_config
from framecast.engine.wan_checkpoint import CheckpointError
from framecast.models.avdit import AvditConfig, AvditModel, is_backbone_key
from framecast.models.registry import FAMILIES, model_class
from framecast.models.wan import WanModel

KW = dict(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, in_channels=3, out_channels=3,
          text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2)


def _pair(seed: int = 0, randomise: bool = True):
    """A random WanModel and an AvditModel on it as its frozen backbone, the AV parts random too
    (all but the zero-initialised fusion gates)."""
    torch.manual_seed(seed)
    wan = WanModel(**KW).eval()
    av = AvditModel(**KW, avdit=AvditConfig(band_rows=4, lora_rank=2, fusion_ffn=32)).eval()
    av.load_backbone(wan.state_dict())
    if randomise:
        with torch.no_grad():
            for name, p in av.trained_parameters().items():
                if "gate" not in name:
                    p.normal_(0, 0.2)
    return wan, av


def test_video_rows_are_the_frozen_backbones_output():
    wan, av = _pair()
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(2, 3, 3, 20, 16, generator=g)                  # 16 video rows + a 4-row band
    t = torch.tensor([[500.0, 300.0, 900.0], [0.0, 20.0, 999.0]])
    text = torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        out = av(lat, t, text)
        ref = wan(lat[:, :, :, :16], t, text)
        assert out.shape == lat.shape
        torch.testing.assert_close(out[:, :, :, :16], ref, atol=1e-5, rtol=0)
        # the audio band changes the audio rows, never the video rows
        lat2 = lat.clone()
        lat2[:, :, :, 16:] = torch.randn(2, 3, 3, 4, 16, generator=g)
        out2 = av(lat2, t, text)
        assert torch.equal(out2[:, :, :, :16], out[:, :, :, :16])
        assert not torch.allclose(out2[:, :, :, 16:], out[:, :, :, 16:])
        # the fusion block's video gates are the only way audio could reach the video
        av.fusion.gate_video.fill_(0.5)
        assert not torch.allclose(av(lat2, t, text)[:, :, :, :16], ref, atol=1e-3)


def test_tiny_av_is_the_shipped_tiny_model_on_the_video_rows():
    """The AV model built for training (frozen builtin:tiny backbone) against the tiny WanModel."""
    from framecast.engine.components import load_configured_weights
    from framecast.world.avdit_training import build_av_nets

    cfg = load_config("tiny-av", ["model.weights="])
    nets = build_av_nets(cfg, seed=0)
    wan, text = load_configured_weights(load_config("tiny"))
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 3, 4, 36, 32, generator=g)
    t = torch.tensor([[0.0, 700.0, 700.0, 700.0]])
    with torch.no_grad():
        states = text.encode(["a red circle moving right"])
        out = nets["transformer"](lat, t, states)
        torch.testing.assert_close(out[:, :, :, :32], wan(lat[:, :, :, :32], t, states), atol=1e-5, rtol=0)
        states_av = nets["text_encoder"].encode(["a red circle moving right"])
    assert torch.equal(states_av, states)


def test_one_training_step_moves_only_the_av_parts():
    from framecast.engine.audio import codec_for
    from framecast.world.audio import av_world_batches
    from framecast.world.avdit_training import av_loss, build_av_nets
    from framecast.world.captions import tokenize
    from framecast.world.train import TrainOptions, step_generator

    cfg = load_config("tiny-av", ["model.weights="])
    nets = build_av_nets(cfg, seed=0)
    model = nets["transformer"].train()
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    trained = model.trained_parameters()
    assert 0 < sum(p.numel() for p in trained.values()) < 0.25 * sum(p.numel() for p in model.parameters())
    assert all(not p.requires_grad for k, p in model.named_parameters() if is_backbone_key(k))
    assert all(not p.requires_grad for p in nets["text_encoder"].parameters())
    optim = torch.optim.AdamW(list(trained.values()), lr=1e-2, weight_decay=0.01)
    batch = next(av_world_batches(0, 2, 4, offset_prob=0.5))
    opt = TrainOptions(prefix_prob=0.5, prefix_max=1, uniform_prob=1.0)
    empty = torch.tensor([tokenize("", max_len=16)])
    for step in range(2):  # the zero-initialised audio head passes no gradient back until it has moved once
        loss = av_loss(nets, codec_for(cfg), batch, step_generator(0, step), opt, empty)
        optim.zero_grad()
        loss.backward()
        optim.step()
    after = nets.state_dict()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        frozen = k.startswith("text_encoder.") or is_backbone_key(k[len("transformer."):])
        if frozen or "gate_video" in k:
            assert not moved, k  # the video gates get no gradient from the audio loss: they stay 0
        elif k.endswith("up.weight") or "audio_proj_out" in k or "audio_time_proj.weight" in k or "gate_audio" in k:
            assert moved, k
    assert torch.count_nonzero(after["transformer.fusion.gate_video"]) == 0


def _engines(tmp_path):
    """(tiny Engine, tiny-av Engine on a fresh AV model whose AV parts are random but its fusion
    gates zero)."""
    from framecast import Engine
    from framecast.world.avdit_training import build_av_nets
    from framecast.world.train import save_weights

    cfg = load_config("tiny-av", ["model.weights="])
    nets = build_av_nets(cfg, seed=0)
    with torch.no_grad():
        for name, p in nets["transformer"].trained_parameters().items():
            if "gate" not in name:
                p.normal_(0, 0.05)
    path = tmp_path / "av.safetensors"
    save_weights(nets, path)
    fast = ["sampler.steps=3", "sampler.guidance_scale=1"]  # the equality holds at any steps and guidance
    return Engine.from_preset("tiny", fast), Engine.from_preset("tiny-av", [f"model.weights={path}", *fast])


@pytest.mark.parametrize("schedule", ["rollout", "full"])
def test_schedules_move_the_band_with_its_frame(tmp_path, schedule):
    """rollout and full pass whole latent frames: with the same video noise, the AV model's video
    rows are the tiny model's video (its band rows ride along)."""
    from framecast.parallel.noise import video_noise
    from framecast.schedulers.full import denoise_full
    from framecast.schedulers.rollout import rollout

    tiny, av = _engines(tmp_path)
    f, prompt = 5, "a blue square moving down"
    video = video_noise(0, (1, 3, f, 32, 32))
    tall = torch.cat([video, video_noise(1, (1, 3, f, 4, 32))], dim=3)
    outs = []
    for engine, lat in ((tiny, video), (av, tall)):
        den = engine.denoiser(prompt, "")
        if schedule == "rollout":
            o = engine.cfg.schedule.rollout
            outs.append(torch.cat(list(rollout(den, lat, engine.make_sampler, o.chunk_frames, o.chunk_context,
                                               lead_frames=o.lead_frames)), dim=2))
        else:
            outs.append(denoise_full(den, lat, engine.make_sampler, lead_frames=1))
    assert outs[1].shape == (1, 3, f, 36, 32)
    torch.testing.assert_close(outs[1][:, :, :, :32], outs[0], atol=1e-4, rtol=0)
    assert not torch.equal(outs[1][:, :, :, 32:], tall[:, :, :, 32:])  # the band was denoised too


def test_capabilities_and_schedule_refusals():
    assert model_class("avdit").produces_audio is True
    assert all(model_class(k).produces_audio is False for k in FAMILIES if k != "avdit")
    from framecast.launch.family_support import family_support

    s = family_support("avdit")
    assert {"full", "rollout"} <= set(s.schedules)
    for name in ("dualparal", "nfd", "vin", "task"):
        line = s.refused[f"schedule.name={name}"]
        assert "model.kind=avdit" in line and "\n" not in line
    for name in ("dualparal", "vin"):
        assert "schedule.name=full or rollout" in s.refused[f"schedule.name={name}"]
    with pytest.raises(ConfigError, match="model.kind=avdit cannot run under schedule.name=dualparal"):
        load_config("tiny-av", ["schedule.name=dualparal"])


def test_bad_inputs_are_one_line(tmp_path):
    _, av = _pair(randomise=False)
    text = torch.zeros(1, 5, 16)
    for shape in ((1, 3, 2, 4, 16), (1, 3, 2, 22, 16), (1, 4, 2, 20, 16)):  # band only / rows not whole patches / C
        with pytest.raises(ValueError, match="does not fit the model") as e:
            av(torch.zeros(shape), torch.zeros(1), text)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.avdit.band_rows=0 is out of range"):
        load_config("tiny-av", ["model.avdit.band_rows=0"])
    with pytest.raises(ValueError, match="band_rows=6 must be a multiple of the patch height 4"):
        AvditModel.from_model_config(load_config("tiny-av", ["model.avdit.band_rows=6", "model.weights="]).model)

    from framecast.engine.components import load_configured_weights
    from framecast.world.avdit_training import build_av_nets
    from framecast.world.train import save_weights

    # AV weights without the frozen backbone; a video-only model's weights; no AV parts
    cfg = load_config("tiny-av", ["model.weights="])
    nets = build_av_nets(cfg, seed=0)
    sd = {k: v for k, v in nets.state_dict().items() if not is_backbone_key(k[len("transformer."):])
          or k.startswith("text_encoder.")}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "parts.safetensors"))
    for weights, match in ((tmp_path / "parts.safetensors", r"needs its frozen backbone \(blocks.\*.base.\*\)"),
                           ("builtin:tiny", "they are a video-only model's: train the AV parts")):
        with pytest.raises(CheckpointError, match=match) as e:
            load_configured_weights(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=str(weights))))
        assert "\n" not in str(e.value)
    save_weights(nets, tmp_path / "full.safetensors")
    full = dataclasses.replace(cfg.model, weights=str(tmp_path / "full.safetensors"))
    load_configured_weights(dataclasses.replace(cfg, model=full))
    # training without its base weights
    with pytest.raises(ConfigError, match="model.avdit.base='/nowhere': the frozen backbone cannot be loaded") as e:
        build_av_nets(load_config("tiny-av", ["model.avdit.base=/nowhere"]), seed=0)
    assert "\n" not in str(e.value)


def test_the_band_takes_its_own_guidance():
    """CFG: the video rows at sampler.guidance_scale, the audio band at model.avdit.audio_guidance."""
    from framecast.engine.denoise import Denoiser

    _, av = _pair(randomise=False)
    av.audio_guidance = 1.5
    den = Denoiser(av, torch.zeros(1, 5, 16), torch.zeros(1, 5, 16), 4.0, torch.float32, torch.device("cpu"))
    cond, uncond = torch.full((1, 3, 2, 20, 16), 2.0), torch.full((1, 3, 2, 20, 16), 1.0)
    out = den.combine(torch.cat([cond, uncond]))
    assert torch.equal(out[:, :, :, :16], torch.full((1, 3, 2, 16, 16), 5.0))   # 1 + 4.0 * (2 - 1)
    assert torch.equal(out[:, :, :, 16:], torch.full((1, 3, 2, 4, 16), 2.5))    # 1 + 1.5 * (2 - 1)
    wan, _ = _pair(randomise=False)
    plain = Denoiser(wan, torch.zeros(1, 5, 16), torch.zeros(1, 5, 16), 4.0, torch.float32, torch.device("cpu"))
    assert torch.equal(plain.combine(torch.cat([cond, uncond])), torch.full((1, 3, 2, 20, 16), 5.0))


def test_click_hops_are_weighted():
    from framecast.engine.audio import MelCodec
    from framecast.world.audio import bounce_frames, clip_audio
    from framecast.world.avdit_training import click_weights
    from framecast.world.scenes import sample_clip

    codec = MelCodec(fps=8, channels=3, width=32, band_rows=4, patch=(4, 4))
    clip = sample_clip(0, 30)
    band = codec.encode(torch.from_numpy(clip_audio(clip.objects, 30, 8)))
    hops = codec.unpack(click_weights(codec, band[None], 10.0))[0]            # (F, hops, M)
    heavy = (hops == 10.0).all(-1).nonzero().tolist()
    assert heavy == [[f, 0] for f in sorted({f for t in clip.objects for f in bounce_frames(t)})] and heavy
    assert ((hops == 10.0) | (hops == 1.0)).all()


def test_shipped_tiny_av_keeps_the_tiny_backbone_and_closed_video_gates():
    """builtin:tiny-av: its backbone is builtin:tiny's bit for bit, its fusion video gates are 0
    (so its video rows are the tiny model's), its text encoder is tiny's."""
    from safetensors.torch import load_file

    from framecast.engine.components import configured_weights_path

    av = load_file(str(configured_weights_path(load_config("tiny-av"))[0]))
    tiny = load_file(str(configured_weights_path(load_config("tiny"))[0]))
    for k, v in tiny.items():
        parts = k.split(".")
        if parts[0] == "transformer" and parts[1] == "blocks":
            parts.insert(3, "base")
        assert torch.equal(av[".".join(parts)], v), k
    assert torch.count_nonzero(av["transformer.fusion.gate_video"]) == 0
    assert torch.count_nonzero(av["transformer.fusion.gate_audio"]) > 0


def test_fusion_positions_start_at_nothing_and_never_reach_the_video():
    """model.avdit.fusion_positions: zero at init (the same output as without), and once trained the
    audio rows read them while the video rows stay the backbone's."""
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning

    _, av = _pair()
    placed = AvditModel(**KW, avdit=AvditConfig(band_rows=4, lora_rank=2, fusion_ffn=32, fusion_positions=True)).eval()
    missing, unexpected = placed.load_state_dict(av.state_dict(), strict=False)
    assert sorted(missing) == ["fusion.positions.bias", "fusion.positions.weight"] and not unexpected
    x, t, text = torch.randn(1, 3, 2, 20, 16), torch.tensor([400.0]), torch.randn(1, 5, 16)
    with torch.no_grad():
        for m in (av, placed):
            m.fusion.gate_audio.fill_(0.5)  # an open audio gate (the video's stays 0, as training leaves it)
        before = run_model(av, x, t, Conditioning(text))
        assert torch.equal(run_model(placed, x, t, Conditioning(text)), before)
        placed.fusion.positions.weight.normal_(0, 0.2)
        after = run_model(placed, x, t, Conditioning(text))
    assert torch.equal(after[..., :16, :], before[..., :16, :])
    assert (after[..., 16:, :] - before[..., 16:, :]).abs().max() > 1e-3


def test_band_timesteps_reach_only_the_audio_tokens():
    """Conditioning.audio_timesteps (model.avdit.audio_lag's band level): the video's timesteps given
    again change nothing; other ones change the band rows only."""
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning

    _, av = _pair()
    with torch.no_grad():
        av.fusion.gate_audio.normal_(0, 0.2)  # an open audio gate; the video's stays 0, as training leaves it
    x, text = torch.randn(2, 3, 3, 20, 16), torch.randn(2, 5, 16)
    t = torch.tensor([[900.0, 500.0, 100.0], [300.0, 300.0, 0.0]])
    with torch.no_grad():
        plain = run_model(av, x, t, Conditioning(text))
        same = run_model(av, x, t, Conditioning(text, audio_timesteps=t))
        other = run_model(av, x, t, Conditioning(text, audio_timesteps=torch.full((2,), 1000.0)))
    assert torch.equal(plain, same)  # the video's timesteps given again: nothing changes
    assert torch.equal(other[..., :16, :], plain[..., :16, :])       # the video rows never read the band's time
    assert (other[..., 16:, :] - plain[..., 16:, :]).abs().max() > 1e-3
