"""The window schedule (schedule.name=window; timestep-aware dynamic windows, docs/window.md): the plan
as pure data with property tests, the merge rule, one-line errors for bad options, and the schedule
on tiny models — equal to the full schedule when one window holds the whole video, every window one
model call with its frames, any sampler, any family, cancel and the exact frame count."""
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framecast.schedulers.window import (WindowOptions, check_options, denoise_windows, make_plan, merge_weights,
                                         offsets, sweep)

PROMPT = "a red circle moving right"


@st.composite
def options(draw):
    """(l, steps, f, o, p, m, n) drawn over every valid combination."""
    f = draw(st.integers(1, 24))
    o = draw(st.integers(0, f - 1))
    n = draw(st.integers(1, f))
    m = draw(st.integers(0, f - max(n, o + 1)))
    return draw(st.integers(1, 200)), draw(st.integers(1, 12)), f, o, draw(st.integers(0, 6)), m, n


# ---- the plan ----------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(options())
def test_every_frame_covered_at_every_step_by_windows_that_overlap_and_advance(args):
    l, steps, f, o, p, m, n = args
    plan = make_plan(l, steps, f, o, p, m, n)
    assert plan.steps == steps == len(plan.windows) == len(plan.offsets)
    for alpha, windows in zip(plan.offsets, plan.windows):
        covered = set()
        for w in windows:
            assert 0 <= w.start < w.stop <= l                       # within the video
            assert min(n, l) <= len(w) <= f                          # never shorter than n (or the video), never over f
            covered.update(w)
        assert covered == set(range(l))                              # every latent frame at every step
        assert windows[0] == range(0, min(f - alpha, l))            # the first window shrinks by α
        assert windows[-1].stop == l                                 # the last ends at l
        for k, (a, b) in enumerate(zip(windows, windows[1:])):
            assert a.start < b.start and a.stop < b.stop             # each window goes on from the one before
            shared = a.stop - b.start
            last = k + 2 == len(windows)
            # o frames; more only where the last clip was extended backwards
            assert shared == o or (last and shared > o and len(b) == n)
    assert plan.calls == sum(len(w) for w in plan.windows)


@settings(max_examples=200, deadline=None)
@given(options())
def test_offsets_cycle_by_the_shift_step_up_to_the_max_offset(args):
    l, steps, f, o, p, m, n = args
    alphas = offsets(steps, p, m)
    if p == 0 or p > m:
        assert alphas == (0,) * steps                                  # fixed windows
    else:
        assert alphas == tuple((i % (m // p + 1)) * p for i in range(steps))  # 0, p, 2p, ... <= m, then 0 again
    plan = make_plan(l, steps, f, o, p, m, n)
    for alpha, windows in zip(plan.offsets, plan.windows):
        assert windows == sweep(l, f, o, n, alpha)                    # a step's windows depend on its α alone
    if p == 0:
        assert len(set(plan.windows)) == 1                             # shift 0: the same windows every step
    if l <= f - m:
        assert all(w == (range(0, l),) for w in plan.windows)         # shorter than a window: one window, the video


def test_worked_example_of_the_spec_loop():
    plan = make_plan(30, 5, 8, 2, 1, 3, 4)
    assert plan.offsets == (0, 1, 2, 3, 0)
    spans = [[(w.start, w.stop) for w in ws] for ws in plan.windows]
    assert spans[0] == [(0, 8), (6, 14), (12, 20), (18, 26), (24, 30)]
    assert spans[3] == [(0, 5), (3, 11), (9, 17), (15, 23), (21, 29), (26, 30)]  # [29, 30) extended back to 4
    assert spans[4] == spans[0]
    assert plan.edges(0) == (6, 8, 12, 14, 18, 20, 24, 26)
    # as printed the loop stops at `while e < l` before the last window; here it is always made
    assert make_plan(14, 1, 8, 2, 0, 0, 1).windows[0] == (range(0, 8), range(6, 14))


@settings(max_examples=200, deadline=None)
@given(options())
def test_merge_weights_cross_fade_and_cover_every_frame(args):
    l, steps, f, o, p, m, n = args
    for windows in set(make_plan(l, steps, f, o, p, m, n).windows):
        weights = merge_weights(windows)
        total = np.zeros(l)
        for w, ws in zip(windows, weights):
            assert len(ws) == len(w) and all(0 < x <= 1 for x in ws)
            total[w.start:w.stop] += ws
        assert (total > 0).all()
        for k, (a, b) in enumerate(zip(windows, windows[1:])):
            shared = a.stop - b.start
            three = ((k > 0 and windows[k - 1].stop > b.start)
                     or (k + 2 < len(windows) and windows[k + 2].start < a.stop))
            if shared > 0 and not three:  # two windows on these frames: vin's cross-fade, summing to 1
                left = weights[k][len(a) - shared:]
                right = weights[k + 1][:shared]
                assert right == pytest.approx([(j + 1) / (shared + 1) for j in range(shared)])
                assert [x + y for x, y in zip(left, right)] == pytest.approx([1.0] * shared)
    assert merge_weights((range(0, 5),)) == [[1.0] * 5]


BAD = [  # (f, o, p, m, n), what the line must name
    ((0, 0, 0, 0, 1), "schedule.window.window_frames=0 is not allowed; must be an integer >= 1"),
    ((8, 8, 0, 0, 1), "schedule.window.overlap_frames=8 is not allowed; must be an integer in [0, 7]"),
    ((8, -1, 0, 0, 1), "schedule.window.overlap_frames=-1"),
    ((8, 2, 0, 0, 9), "schedule.window.min_frames=9 is not allowed; must be an integer in [1, 8]"),
    ((8, 2, 0, 0, 0), "schedule.window.min_frames=0"),
    ((8, 2, -1, 0, 4), "schedule.window.shift_step=-1 is not allowed; must be an integer >= 0"),
    ((8, 2, 1, 5, 4), "schedule.window.max_offset=5 is not allowed; must be an integer in [0, 4]"),
    ((8, 5, 1, 3, 2), "schedule.window.max_offset=3 is not allowed; must be an integer in [0, 2]"),
    ((8, 2, 1, -1, 4), "schedule.window.max_offset=-1"),
    ((8.0, 2, 1, 1, 4), "schedule.window.window_frames=8.0"),
]


@pytest.mark.parametrize("opts, needle", BAD)
def test_bad_options_give_one_line_naming_the_field_and_the_allowed_values(opts, needle):
    with pytest.raises(ValueError) as e:
        check_options(*opts)
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError):
        make_plan(20, 3, *opts)
    if all(isinstance(v, int) for v in opts):
        assert needle in WindowOptions(*opts).check()
    assert WindowOptions().check() is None


def test_config_and_command_line_refuse_bad_values_in_one_line(tmp_path, capsys):
    from framecast.config import ConfigError, load_config
    from framecast.launch.cli import main

    assert load_config("tiny", ["schedule.name=window"]).schedule.window == WindowOptions()
    for over, needle in [(["schedule.window.overlap_frames=8"], "schedule.window.overlap_frames=8"),
                         (["schedule.window.shift_step=-2"], "schedule.window.shift_step=-2 is out of range"),
                         (["schedule.name=window", "cache.kind=teacache"], "does not run under schedule.name=window")]:
        with pytest.raises(ConfigError) as e:
            load_config("tiny", over)
        assert needle in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "v.mp4"
    rc = main(["generate", PROMPT, "--frames", "8", "--out", str(out), "--quiet", "--schedule", "window",
               "schedule.window.max_offset=7"])
    err = capsys.readouterr().err
    assert rc == 2 and "schedule.window.max_offset=7" in err and err.strip().count("\n") == 0, err
    assert not out.exists() and not (tmp_path / "v.partial.mp4").exists()


# ---- running the plan without a model -------------------------------------------------------------------
class Identity:
    """A sampler whose step returns the merged prediction: the merge itself is what comes out."""
    timesteps = [900.0, 500.0, 100.0]

    def step(self, v, t, x):
        return v


def test_each_window_is_one_call_with_its_frames_and_predictions_merge_by_the_weights():
    plan = make_plan(23, 3, 8, 3, 1, 2, 4)
    calls = []

    def denoise(lat, t, step, block, frames):
        calls.append((step, block, frames, lat.shape[2], float(t)))
        return torch.full_like(lat, float(len(calls)))               # each call predicts its own number

    lat = torch.zeros(1, 2, 23, 2, 2)
    out = denoise_windows(denoise, lat, Identity(), plan)
    assert [(s, f) for s, _, f, _, _ in calls] == [(i, w) for i, ws in enumerate(plan.windows) for w in ws]
    assert all(b == f.start and n == len(f) <= 8 and t == Identity.timesteps[s] for s, b, f, n, t in calls)
    numbers = iter(range(1, len(calls) + 1))   # the last step's calls come last
    for _ in range(plan.calls - len(plan.windows[-1])):
        next(numbers)
    expect, norm = torch.zeros(23), torch.zeros(23)
    for w, ws in zip(plan.windows[-1], merge_weights(plan.windows[-1])):
        expect[w.start:w.stop] += next(numbers) * torch.tensor(ws)
        norm[w.start:w.stop] += torch.tensor(ws)
    assert torch.allclose(out[0, 0, :, 0, 0], expect / norm, atol=1e-6)


def test_windows_that_agree_merge_to_the_same_prediction():
    """A denoiser that predicts a function of the global frame (read from `frames`): the merge
    gives it back wherever windows overlap (a camera read for the frames would agree the same way)."""
    plan = make_plan(40, 3, 8, 5, 1, 2, 6)

    def denoise(lat, t, step, block, frames):
        return torch.tensor([float(f) for f in frames])[None, None, :, None, None].expand_as(lat).clone()

    out = denoise_windows(denoise, torch.zeros(1, 1, 40, 1, 1), Identity(), plan)
    assert torch.allclose(out.flatten(), torch.arange(40.0), atol=1e-5)


# ---- the schedule on tiny models ----------------------------------------------------------------------
def stream(preset, overrides, frames, seed=1, **kw):
    from framecast import Engine

    with Engine.from_preset(preset, overrides) as engine:
        return np.stack(list(engine.stream(PROMPT, frames=frames, seed=seed, **kw)))


ONE_WINDOW = ["sampler.steps=3", "schedule.name=window", "schedule.window.window_frames=9",
              "schedule.window.max_offset=0", "schedule.window.min_frames=1"]
FULL = ["sampler.steps=3", "schedule.name=full", "schedule.full.lead_frames=0"]


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_one_window_over_the_whole_video_is_the_full_schedule_exactly(sampler):
    over = [f"sampler.name={sampler}"]
    window = stream("tiny", ONE_WINDOW + over, 9)
    full = stream("tiny", FULL + over, 9)
    assert window.shape == (9, 32, 32, 3) and np.array_equal(window, full)


def test_model_calls_see_their_windows_frames_and_the_video_has_the_exact_length(monkeypatch):
    from framecast import Engine
    from framecast.engine.denoise import Denoiser

    seen = []
    call = Denoiser.__call__

    def spy(self, lat, t, step=None, block=0, frames=None):
        seen.append((step, frames, lat.shape[2]))
        return call(self, lat, t, step=step, block=block, frames=frames)

    monkeypatch.setattr(Denoiser, "__call__", spy)
    over = ["sampler.steps=4", "schedule.name=window", "sampler.name=unipc"]
    with Engine.from_preset("tiny", over) as engine:
        req = engine.request(PROMPT, frames=19, seed=2)
        plan = engine.schedule.plan(req)
        frames = list(engine.stream(PROMPT, frames=19, seed=2))
        assert engine.schedule.total_steps(req) == plan.calls == len(seen)
        assert engine.schedule.seams(req) == plan.edges(3)
        assert engine.schedule.max_frames(req) == engine.schedule._noise_limit(req)
    assert len(frames) == 19 and all(f.shape == (32, 32, 3) for f in frames)
    assert [(s, f) for s, f, _ in seen] == [(i, w) for i, ws in enumerate(plan.windows) for w in ws]
    assert max(n for _, _, n in seen) <= 8                            # no call holds more than a window
    fixed = stream("tiny", over + ["schedule.window.shift_step=0"], 19, seed=2)
    assert fixed.shape == (19, 32, 32, 3) and not np.array_equal(fixed, np.stack(frames))  # TDW moves the windows


def test_shorter_than_one_window_and_deterministic():
    over = ["sampler.steps=2", "schedule.name=window"]
    a, b = stream("tiny", over, 3), stream("tiny", over, 3)
    assert a.shape == (3, 32, 32, 3) and np.array_equal(a, b)


def test_cancel_stops_between_model_calls():
    from framecast.schedulers.base import Cancelled

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        stream("tiny", ["sampler.steps=2", "schedule.name=window"], 12, cancel=cancel)


@pytest.fixture(scope="module")
def vdt_weights(tmp_path_factory) -> list[str]:
    from framecast.config import load_config
    from framecast.world.vdt_training import save_random_vdt
    from test_families import VDT

    folder = tmp_path_factory.mktemp("vdt")
    save_random_vdt(load_config("tiny-vdt", VDT), folder)
    return VDT + [f"model.weights={folder}"]


@pytest.mark.parametrize("family", ["latte", "vdt"])
def test_other_families_run_and_one_window_equals_full(family, vdt_weights):
    from test_latte_schedules import LATTE

    preset, over = ("tiny", LATTE) if family == "latte" else ("tiny-vdt", vdt_weights)
    window = stream(preset, over + ONE_WINDOW, 9)
    assert np.array_equal(window, stream(preset, over + FULL, 9))
    size = (16, 16) if family == "latte" else window.shape[1:3]
    tdw = stream(preset, over + ["sampler.steps=2", "schedule.name=window", "schedule.window.window_frames=4",
                                 "schedule.window.overlap_frames=1", "schedule.window.min_frames=2",
                                 "schedule.window.max_offset=2"], 11)
    assert tdw.shape == (11, *size, 3) and np.isfinite(tdw).all()


def test_a_camera_adapter_reads_each_windows_rays(tmp_path, monkeypatch):
    """With a (random) camera adapter, each window's call gets the rays of its own frames."""
    from safetensors.torch import save_file

    from framecast import Engine
    from framecast.config import load_config
    from framecast.engine.denoise import Denoiser
    from framecast.models.camera import CameraAdapter, camera_rays

    torch.manual_seed(0)
    adapter = CameraAdapter.for_config(load_config("tiny-camera"))
    state = {f"camera.{k}": (v + 0.05 * torch.randn_like(v)).contiguous() for k, v in adapter.state_dict().items()}
    save_file(state, str(tmp_path / "camera.safetensors"))
    seen = []
    conditioning = Denoiser.conditioning

    def spy(self, text, frames):
        cond = conditioning(self, text, frames)
        whole = camera_rays(self.camera.poses, self.camera.temporal_stride, self.camera.height, self.camera.width)
        seen.append(torch.equal(cond.camera_BRFHW[:1], whole[:, :, frames.start:frames.stop]))
        return cond

    monkeypatch.setattr(Denoiser, "conditioning", spy)
    over = ["sampler.steps=2", "schedule.name=window", f"camera.weights={tmp_path / 'camera.safetensors'}"]
    with Engine.from_preset("tiny-camera", over) as engine:
        moved = np.stack(list(engine.stream(PROMPT, frames=14, seed=3, camera="pan-left:2")))
        still = np.stack(list(engine.stream(PROMPT, frames=14, seed=3, camera="still")))
    assert moved.shape == (14, 32, 32, 3) and len(seen) == 2 * engine.schedule.plan(
        engine.request(PROMPT, frames=14)).calls and all(seen)
    assert not np.array_equal(moved, still)
