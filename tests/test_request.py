import pytest

from framecast.config import load_config
from framecast.engine.request import RequestError, make_request


@pytest.fixture
def wan():
    return load_config("wan2.1-t2v-1.3b")


@pytest.fixture
def tiny():
    return load_config("tiny")


@pytest.mark.parametrize("prompt", [None, 3, ["a"], b"a"])
def test_prompt_must_be_a_string(tiny, prompt):
    with pytest.raises(RequestError, match="prompt must be a string"):
        make_request(tiny, prompt, frames=4)


def test_empty_prompt(tiny):
    with pytest.raises(RequestError, match="must not be empty"):
        make_request(tiny, "   ", frames=4)


@pytest.mark.parametrize("frames", [0, -3, 2.5, True])
def test_frames_must_be_positive_int(tiny, frames):
    with pytest.raises(RequestError, match="frames must be a positive integer"):
        make_request(tiny, "a red circle moving right", frames=frames)


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), "2"])
def test_seconds_must_be_positive(tiny, seconds):
    with pytest.raises(RequestError, match="seconds must be a positive number"):
        make_request(tiny, "a red circle moving right", seconds=seconds)


def test_seconds_use_fps(tiny):
    req = make_request(tiny, "a red circle moving right", seconds=4)
    assert req.frames == 4 * tiny.video.fps == req.latent_frames


def test_wan_frames_follow_diffusers_rule_with_warning(wan):
    with pytest.warns(UserWarning, match="frames=16 is not of the form 4k\\+1.*using 17"):
        req = make_request(wan, "x", frames=16)
    assert (req.frames, req.latent_frames) == (17, 5)
    req = make_request(wan, "x", frames=81)
    assert (req.frames, req.latent_frames) == (81, 21)


def test_sizes_floored_to_stride_times_patch_with_warning(wan):
    with pytest.warns(UserWarning, match="100x70 is not a multiple of 16x16.*using 96x64"):
        req = make_request(wan, "x", frames=5, height=100, width=70)
    assert (req.height, req.width, req.latent_height, req.latent_width) == (96, 64, 12, 8)


def test_too_small_size_is_an_error(wan):
    with pytest.raises(RequestError, match="too small"):
        make_request(wan, "x", frames=5, height=8, width=64)


def test_frames_and_seconds_exclusive(tiny):
    with pytest.raises(RequestError, match="either frames or seconds"):
        make_request(tiny, "x", frames=3, seconds=1)
