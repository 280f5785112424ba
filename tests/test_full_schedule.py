"""The full schedule with lead frames (schedule.full.lead_frames): the first L latent frames are denoised
first with the rest held at pure noise, then the rest with them clean."""
import numpy as np
import pytest
import torch

from framecast.schedulers.flow import FlowEuler, FlowUniPC
from framecast.schedulers.full import denoise_full


def make_sampler(kind=FlowEuler):
    s = kind(shift=3.0)
    s.set_timesteps(5)
    return s


def per_frame_denoiser(calls):
    """A velocity that depends only on each frame's own latents and timestep (no mixing across
    frames): then the order frames are denoised in cannot change the result."""
    def denoise(lat_1CFHW, t, step=None, block=0, frames=None):
        t_F = torch.as_tensor(t, dtype=torch.float32).expand(lat_1CFHW.shape[2])
        calls.append(t_F.clone())
        return torch.tanh(lat_1CFHW) * (1 + t_F / 1000)[None, None, :, None, None] - 0.2
    return denoise


@pytest.mark.parametrize("kind", [FlowEuler, FlowUniPC], ids=["euler", "unipc"])
def test_lead_frames_equal_plain_without_temporal_mixing(kind):
    lat = torch.randn(1, 3, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = denoise_full(per_frame_denoiser([]), lat, lambda: make_sampler(kind))
    calls = []
    steps = []
    led = denoise_full(per_frame_denoiser(calls), lat, lambda: make_sampler(kind), on_step=steps.append,
                       lead_frames=2)
    torch.testing.assert_close(led, plain, rtol=0, atol=1e-6)  # the multistep history is per element
    assert steps == list(range(10)) and len(calls) == 10
    ts = make_sampler(kind).timesteps
    for i, t_F in enumerate(calls[:5]):  # pass 1: the lead frames step, the rest sit at the first timestep
        assert torch.equal(t_F, torch.tensor([ts[i]] * 2 + [ts[0]] * 4))
    for i, t_F in enumerate(calls[5:]):  # pass 2: the lead frames are clean context
        assert torch.equal(t_F, torch.tensor([0.0] * 2 + [ts[i]] * 4))


def test_each_pass_moves_only_its_frames():
    lat = torch.randn(1, 3, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []

    def denoise(x, t, step=None, block=0, frames=None):
        seen.append(x.clone())
        return torch.ones_like(x)

    out = denoise_full(denoise, lat, make_sampler, lead_frames=1)
    assert torch.equal(seen[4][:, :, 1:], lat[:, :, 1:])          # the rest untouched through pass 1
    assert not torch.equal(seen[4][:, :, :1], lat[:, :, :1])
    assert torch.equal(out[:, :, :1], seen[5][:, :, :1])          # the lead frame fixed through pass 2
    torch.testing.assert_close(out[:, :, :1], lat[:, :, :1] - 1.0, rtol=0, atol=1e-5)  # Euler, v = 1, σ 1 -> 0


@pytest.mark.parametrize("lead", [0, 6, 9])
def test_no_split_when_lead_covers_nothing_or_everything(lead):
    lat = torch.randn(1, 3, 6, 4, 4, generator=torch.Generator().manual_seed(2))
    calls = []
    out = denoise_full(per_frame_denoiser(calls), lat, make_sampler, lead_frames=lead)
    assert len(calls) == 5 and all(c.unique().numel() == 1 for c in calls)
    torch.testing.assert_close(out, denoise_full(per_frame_denoiser([]), lat, make_sampler), rtol=0, atol=0)


def test_engine_generates_with_lead_frames(tmp_path):
    from framecast import Engine
    from framecast.engine.video_io import read_video

    overrides = ["model.weights=", "sampler.steps=2", "schedule.name=full"]
    a = Engine.from_preset("tiny", overrides + ["schedule.full.lead_frames=1"]).generate(
        "a red circle moving right", frames=6, seed=3, out=f"{tmp_path}/a/")
    b = Engine.from_preset("tiny", overrides + ["schedule.full.lead_frames=0"]).generate(
        "a red circle moving right", frames=6, seed=3, out=f"{tmp_path}/b/")
    va, vb = read_video(a), read_video(b)
    assert va.shape == vb.shape == (6, 32, 32, 3) and not np.array_equal(va, vb)
