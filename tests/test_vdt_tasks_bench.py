"""bench/vdt_tasks.py's pure functions: PSNR, distance to the given frames, baselines (no model)."""
import math

import numpy as np
import pytest

from bench_module import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("vdt_tasks")


def ramp(frames=8, step=10):
    """Frame f is the constant f·step: a linear ramp in time."""
    return np.broadcast_to((np.arange(frames) * step).astype(np.uint8)[:, None, None, None],
                           (frames, 4, 4, 3)).copy()


def test_psnr_identical_is_capped_not_inf(bench):
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    assert bench.psnr(a, a) == bench.PSNR_CAP == 100.0
    assert bench.mse_to_psnr(0.0) == 100.0


def test_psnr_value_and_mask(bench):
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, :2] = 255  # half of frame 0 is off by 255
    where = np.zeros((2, 4, 4), bool)
    where[0, :2] = True
    assert bench.psnr(a, b, where) == pytest.approx(0.0)  # MSE 255² inside the mask
    assert bench.psnr(a, b, ~where) == 100.0  # identical outside it
    assert bench.psnr(a, b) == pytest.approx(10 * math.log10(4))  # a quarter of the pixels: MSE 255²/4
    assert bench.psnr(a, b, np.zeros((2, 4, 4), bool)) is None


def test_distance_to_given(bench):
    assert bench.distance_to_given(8, [0, 1, 2, 3]).tolist() == [0, 0, 0, 0, 1, 2, 3, 4]
    assert bench.distance_to_given(8, [4, 5, 6, 7]).tolist() == [4, 3, 2, 1, 0, 0, 0, 0]
    assert bench.distance_to_given(8, [0, 4]).tolist() == [0, 1, 2, 1, 0, 1, 2, 3]
    assert bench.distance_to_given(8, [0]).tolist() == list(range(8))
    assert bench.distance_to_given(3, []).tolist() == [-1, -1, -1]
    assert [bench.distance_bin(d) for d in (0, 1, 2, 3, 4, 7, -1)] == [None, "d1", "d2", "d3", "d4+", "d4+", None]


def test_repeat_of_a_still_clip_is_perfect(bench):
    still = np.broadcast_to(np.random.default_rng(1).integers(0, 256, (1, 4, 4, 3), dtype=np.uint8), (8, 4, 4, 3))
    for given in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 4], [0]):
        out = bench.repeat_nearest(still.copy(), given)
        assert np.array_equal(out, still)
        assert bench.psnr(out, still) == 100.0
        assert all(v in (None, 100.0) for v in bench.psnr_by_distance(out, still, given).values())


def test_repeat_takes_the_nearest_earlier_on_ties(bench):
    v = ramp()
    out = bench.repeat_nearest(v, [0, 4])
    assert out[:, 0, 0, 0].tolist() == [0, 0, 0, 40, 40, 40, 40, 40]  # frame 2: tie between 0 and 4 -> 0


def test_linear_blend_of_a_linear_ramp_is_exact(bench):
    v = ramp()
    out = bench.linear_blend(v, [0, 4])
    assert np.array_equal(out[:5], v[:5])  # between the keyframes: exact
    assert out[5:, 0, 0, 0].tolist() == [40, 40, 40]  # after the last keyframe: the nearest one
    assert np.array_equal(bench.linear_blend(v, [0, 7]), v)
    inside = bench.psnr_by_distance(out[:5], v[:5], [0, 4])
    assert inside == {"d1": 100.0, "d2": 100.0, "d3": None, "d4+": None}
    # over all 8 frames d2 pools frames 2 (exact) and 6 (repeated, off by 20): finite
    assert bench.psnr_by_distance(out, v, [0, 4])["d2"] == pytest.approx(10 * math.log10(255 ** 2 / (20 ** 2 / 2)))


def test_mean_fill_uses_the_frames_given_colour(bench):
    v = np.zeros((2, 4, 4, 3), np.uint8)
    v[1] = 60
    v[1, 0, 0] = 90  # one given pixel of frame 1 off the background
    mask = np.zeros((2, 4, 4), bool)
    mask[:, 1:3, 1:3] = True
    v[:, 1:3, 1:3] = 200  # the object under the mask
    out = bench.mean_fill(v, mask)
    assert np.array_equal(out[~mask], v[~mask])
    assert (out[0][mask[0]] == 0).all()
    assert (out[1][mask[1]] == round((60 * 11 + 90) / 12)).all()


def test_given_frames_of_a_mask(bench):
    m = np.ones((8, 4, 4), bool)
    m[[0, 4]] = False
    assert bench.given_frames(m) == [0, 4]
    m[:, 1:3, 1:3] = True
    assert bench.given_frames(m) == []


def test_step_agrees(bench):
    assert bench.step_agrees(np.array([0.0, 1.0]), np.array([0, 1]), 0.25)
    assert not bench.step_agrees(np.array([0.0, -1.0]), np.array([0, 1]), 0.25)  # the wrong way
    assert not bench.step_agrees(np.array([0.0, 0.1]), np.array([0, 1]), 0.25)  # too small
    assert not bench.step_agrees(np.array([2.0, 1.0]), np.array([0, 1]), 0.25)  # more across than along
    assert bench.step_agrees(np.array([-1.0, 0.0]), np.array([-1, 0]), 0.25)


def test_summarize(bench):
    assert bench.summarize([1.0, None, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert bench.summarize([5.0]) == (5.0, 0.0)
    assert bench.summarize([None]) == (None, None)
