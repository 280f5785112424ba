"""The audio band run behind its video (model.avdit.audio_lag; framecast/schedulers/band.py): each
part takes exactly its sampler's steps, the video is the same whatever the lag, and the schedules,
progress counts and config checks know the extra calls (that the band's own timesteps reach only
the audio tokens: tests/test_avdit_model.py). AV models here are random (tiny-av's geometry), no
trained weights needed."""
from __future__ import annotations

import pytest
import torch

from framecast.config import ConfigError, load_config
from framecast.schedulers.band import BandLag
from framecast.schedulers.flow import make_sampler

RANDOM_AV = ["model.weights=", "model.avdit.base=", "sampler.steps=3"]


def test_lagged_loop_levels_and_calls():
    sampler = make_sampler("euler", shift=3.0)
    sampler.set_timesteps(4)
    ts = [float(t) for t in sampler.timesteps]
    loop = BandLag(sampler, (4, 2), 20, torch.device("cpu"))
    assert loop.calls == 6
    assert [loop.levels(i) for i in range(6)] == list(zip(ts + [0.0, 0.0], [ts[0], ts[0]] + ts))
    with pytest.raises(ValueError, match="does not fit"):
        BandLag(sampler, (20, 2), 20, torch.device("cpu"))


@pytest.mark.parametrize("lag", [1, 3, 4])
@pytest.mark.parametrize("lead", [0, 1])
def test_each_part_takes_exactly_its_steps(lag, lead):
    """A constant velocity of 1: Euler takes every moving value from its start through the whole σ
    grid (σ 1 -> 0), so it ends exactly 1 lower, video rows and band alike; the calls see the levels
    BandLag gives, held frames at their held level."""
    from framecast.schedulers.full import denoise_full

    calls = []

    def denoise(lat, t, step, block, frames, band_t=None):
        calls.append((torch.as_tensor(t).clone(), torch.as_tensor(band_t).clone()))
        return torch.ones_like(lat)

    def fresh():
        s = make_sampler("euler", shift=3.0)
        s.set_timesteps(4)
        return s

    lat = torch.randn(1, 3, 3, 20, 16)
    out = denoise_full(denoise, lat, fresh, lead_frames=lead, band=(4, lag))
    torch.testing.assert_close(out, lat - 1.0, atol=1e-6, rtol=0)
    assert len(calls) == (2 if lead else 1) * (4 + lag)
    ts = [float(t) for t in fresh().timesteps]
    video_t, band_t = calls[0]  # frame 0 moves in the first pass either way
    assert float(video_t[0]) == ts[0] and float(band_t[0]) == ts[0]
    video_t, band_t = calls[4 + lag - 1]  # the first pass's last call: video clean, band at its last level
    assert float(video_t[0]) == 0.0 and float(band_t[0]) == ts[-1]
    if lead:  # the other frames wait at pure noise in the first pass, and are given clean in the second
        assert float(video_t[1]) == ts[0] == float(band_t[1])
        assert float(calls[-1][0][0]) == 0.0 == float(calls[-1][1][0])


@pytest.mark.parametrize("schedule", ["full", "rollout", "window"])
def test_the_video_is_the_same_whatever_the_lag(schedule):
    """Same seed: the frames are equal at lag 0 and lag 2 (video never sees audio), the sound is not,
    and the progress count is the calls made."""
    from framecast import Engine

    over = [*RANDOM_AV, f"schedule.name={schedule}", "schedule.window.window_frames=4",
            "schedule.window.overlap_frames=1", "schedule.window.min_frames=2", "schedule.window.max_offset=2"]
    outs = []
    for lag in (0, 2):
        engine = Engine.from_preset("tiny-av", [*over, f"model.avdit.audio_lag={lag}"])
        assert engine.loop_steps == 3 + lag
        torch.manual_seed(0)
        with torch.no_grad():  # AV parts that make some sound (the audio head starts at zero)
            for name, p in engine.model.trained_parameters().items():
                if "gate_video" not in name:
                    p.normal_(0, 0.05)
        calls = []
        embed = engine.model.embed
        engine.model.embed = lambda *a, **k: (calls.append(1), embed(*a, **k))[1]  # counts the model calls
        items = list(engine.stream("a red circle moving right", frames=7, seed=3, audio=True))
        outs.append((items, len(calls), engine.schedule.total_steps(engine.request("x", frames=7, seed=3))))
    (items0, n0, total0), (items2, n2, total2) = outs
    assert all(torch.equal(torch.as_tensor(a[0]), torch.as_tensor(b[0])) for a, b in zip(items0, items2))
    assert any(not torch.equal(torch.as_tensor(a[1]), torch.as_tensor(b[1])) for a, b in zip(items0, items2))
    assert (n0, n2) == (total0, total2) and n2 > n0  # no CFG here: one model call per counted step


def test_config_checks_the_lag():
    with pytest.raises(ConfigError, match=r"model.avdit.audio_lag=11 must be at most sampler.steps=10") as e:
        load_config("tiny-av", ["model.avdit.audio_lag=11"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cache.kind=fbcache does not run with model.avdit.audio_lag=2"):
        load_config("tiny-av", ["model.avdit.audio_lag=2", "cache.kind=fbcache"])
    with pytest.raises(ConfigError, match="audio_lag"):
        load_config("tiny-av", ["model.avdit.audio_lag=-1"])
