"""The rollout schedule (schedule.name=rollout): chunks of latent frames made one after another,
each with the last context frames given clean."""
import numpy as np
import pytest
import torch

from framecast.config import ConfigError, load_config
from framecast.schedulers.flow import FlowEuler, FlowUniPC
from framecast.schedulers.full import denoise_full
from framecast.schedulers.rollout import chunks, rollout


def make_sampler(kind=FlowEuler):
    s = kind(shift=3.0)
    s.set_timesteps(4)
    return s


def per_frame_denoiser(calls):
    """A velocity from each frame's own latents and timestep only: then the order frames are made
    in cannot change the result (a small copy of test_full_schedule's)."""
    def denoise(lat_1CFHW, t, step=None, block=0, frames=None):
        t_F = torch.as_tensor(t, dtype=torch.float32).expand(lat_1CFHW.shape[2])
        calls.append((lat_1CFHW.clone(), t_F.clone()))
        return torch.tanh(lat_1CFHW) * (1 + t_F / 1000)[None, None, :, None, None] - 0.2
    return denoise


def test_chunks_cover_the_clip_in_order():
    assert chunks(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert chunks(4, 4) == [range(0, 4)] and chunks(2, 5) == [range(0, 2)]
    assert chunks(7, 3, lead_frames=1) == [range(0, 1), range(1, 4), range(4, 7)]
    assert chunks(2, 3, lead_frames=4) == [range(0, 2)]


@pytest.mark.parametrize("kind", [FlowEuler, FlowUniPC], ids=["euler", "unipc"])
@pytest.mark.parametrize("lead, sizes", [(0, [3, 3, 1]), (1, [1, 3, 3])])
def test_rollout_equals_full_without_temporal_mixing(kind, lead, sizes):
    lat = torch.randn(1, 3, 7, 4, 4, generator=torch.Generator().manual_seed(0))
    full = denoise_full(per_frame_denoiser([]), lat, lambda: make_sampler(kind))
    calls, steps = [], []
    parts = list(rollout(per_frame_denoiser(calls), lat, lambda: make_sampler(kind), 3, 2, on_step=steps.append,
                         lead_frames=lead))
    assert [p.shape[2] for p in parts] == sizes
    torch.testing.assert_close(torch.cat(parts, dim=2), full, rtol=0, atol=1e-6)  # multistep history per element
    assert steps == list(range(12)) and len(calls) == 12


def test_each_chunk_sees_the_finished_frames_before_it_clean():
    lat = torch.randn(1, 3, 7, 4, 4, generator=torch.Generator().manual_seed(1))
    calls = []
    parts = list(rollout(per_frame_denoiser(calls), lat, make_sampler, 3, 2))
    done = torch.cat(parts, dim=2)
    ts = make_sampler().timesteps
    expected_t = [[ts[i]] * 3 for i in range(4)]                           # chunk 0: no context
    expected_t += [[0.0] * 2 + [ts[i]] * 3 for i in range(4)]              # chunk 1: frames 1, 2 clean
    expected_t += [[0.0] * 2 + [ts[i]] for i in range(4)]                  # chunk 2: frames 4, 5 clean
    assert [c[1].tolist() for c in calls] == [[float(x) for x in row] for row in expected_t]
    for i in range(4, 8):
        assert torch.equal(calls[i][0][:, :, :2], done[:, :, 1:3])          # the context is final output
    for i in range(8, 12):
        assert torch.equal(calls[i][0][:, :, :2], done[:, :, 4:6])
    assert torch.equal(calls[4][0][:, :, 2:], lat[:, :, 3:6])              # a chunk starts from its noise
    assert max(c[0].shape[2] for c in calls) == 5                         # context + chunk, never more


def test_lead_chunk_gives_the_next_chunk_one_clean_frame():
    lat = torch.randn(1, 3, 5, 4, 4, generator=torch.Generator().manual_seed(3))
    calls = []
    list(rollout(per_frame_denoiser(calls), lat, make_sampler, 4, 4, lead_frames=1))
    ts = make_sampler().timesteps
    assert [c[1].tolist() for c in calls] == ([[float(t)] for t in ts] + [[0.0] + [float(t)] * 4 for t in ts])


def test_no_context_makes_chunks_independent():
    lat = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    calls = []
    list(rollout(per_frame_denoiser(calls), lat, make_sampler, 2, 0))
    assert [c[0].shape[2] for c in calls] == [2] * 8 and all(c[1].unique().numel() == 1 for c in calls)


def test_config_names_the_field():
    assert load_config("tiny", ["schedule.name=rollout"]).schedule.name == "rollout"
    with pytest.raises(ConfigError, match="schedule.rollout.chunk_frames=0 is out of range; must be >= 1"):
        load_config("tiny", ["schedule.name=rollout", "schedule.rollout.chunk_frames=0"])


def test_engine_streams_each_chunk_when_it_is_done(tmp_path):
    from framecast import Engine
    from framecast.engine.video_io import read_video

    overrides = ["model.weights=", "sampler.steps=2", "schedule.name=rollout", "schedule.rollout.chunk_frames=2",
                 "schedule.rollout.chunk_context=1", "schedule.rollout.lead_frames=0", "sampler.guidance_scale=1"]
    engine = Engine.from_preset("tiny", overrides)
    calls = []  # model passes: the first block runs once per pass
    engine.model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    frames = engine.stream("a red circle moving right", frames=6, seed=3)
    first = next(frames)
    assert first.shape == (32, 32, 3) and len(calls) == 2                   # one chunk's steps only
    rest = list(frames)
    assert len(rest) == 5 and len(calls) == 6
    path = Engine.from_preset("tiny", overrides).generate("a red circle moving right", frames=6, seed=3,
                                                          out=f"{tmp_path}/a/")
    video = read_video(path)
    assert np.array_equal(video, np.stack([first, *rest]))                 # same seed, same video
