"""The mel codec of the audio-video models (framecast/engine/audio.py): streamable, sample-exact
decoding; the world's tones and clicks survive encode -> decode; one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from framecast.config import ConfigError, load_config
from framecast.engine.audio import SAMPLE_RATE, MelCodec, codec_for
from framecast.world.audio import COLOUR_HZ, TONE_BANDS, bounce_frames, clip_audio
from framecast.world.av_metrics import click_frames, heard_colours
from framecast.world.scenes import sample_clip

FPS = 8


@pytest.fixture(scope="module")
def codec() -> MelCodec:
    return MelCodec(fps=FPS, channels=3, width=32, band_rows=4, patch=(4, 4))


def _world(seed: int, frames: int = 40, offset: int = 0):
    clip = sample_clip(seed, frames, offset=offset)
    return clip, torch.from_numpy(clip_audio(clip.objects, frames, FPS, offset))


def test_geometry_of_the_tiny_av_band(codec):
    assert (codec.samples_per_frame, codec.hop, codec.hops_per_frame, codec.n_mels) == (2000, 250, 8, 48)
    assert codec_for(load_config("tiny-av", ["model.weights="])).samples_per_frame == 2000
    _, wave = _world(0)
    band = codec.encode(wave)
    assert band.shape == (3, 40, 4, 32) and band.dtype == torch.float32
    assert band.min() >= -1.0 and band.max() <= 1.0
    assert torch.equal(codec.encode(wave[None])[0], band)  # batched = one by one


def test_each_band_token_is_one_hops_spectrum(codec):
    """A 4x4x3 patch of the band holds the 48 mels of one hop: silence everywhere except one hop
    lights exactly one token of the band."""
    wave = torch.zeros(3 * codec.samples_per_frame)
    hop = 1 * codec.hops_per_frame + 5                   # frame 1, hop 5
    wave[hop * codec.hop:(hop + 1) * codec.hop] = torch.randn(codec.hop, generator=torch.Generator().manual_seed(0))
    band = codec.encode(wave)                            # (3, 3, 4, 32)
    loud = (band > -1).any(0).any(1)                     # (F, W)
    assert loud.nonzero().tolist() == [[1, x] for x in range(20, 24)]


def test_decoding_is_streamable_and_sample_exact(codec):
    _, wave = _world(3, frames=24, offset=7)
    band = codec.encode(wave)
    whole = codec.decode(band)
    assert whole.shape == (24 * codec.samples_per_frame,) and whole.dtype == torch.float32
    assert whole.abs().max() <= 1.0
    for cuts in ([0, 1, 24], [0, 5, 6, 13, 24], list(range(25))):
        parts = [codec.decode(band[:, a:b], first_frame=a) for a, b in zip(cuts[:-1], cuts[1:])]
        assert torch.equal(torch.cat(parts), whole)
    # decoding frames [a, b) alone gives exactly those samples of the whole decode
    a, b = 9, 17
    spf = codec.samples_per_frame
    assert torch.equal(codec.decode(band[:, a:b], first_frame=a), whole[a * spf:b * spf])


def test_tones_keep_their_pitch(codec):
    for seed in range(6):
        clip, wave = _world(seed)
        decoded = codec.decode(codec.encode(wave)).numpy()
        colours = {t.colour for t in clip.objects}
        assert set().union(*heard_colours(decoded, FPS)) == colours
        # the strongest frequency of the decoded sound is one of the colours' pitches (within a mel band)
        spectrum = np.abs(np.fft.rfft(decoded))
        peak = np.argmax(spectrum) * SAMPLE_RATE / len(decoded)
        assert min(abs(peak - COLOUR_HZ[c]) for c in colours) < 60.0


def test_clicks_keep_their_frame(codec):
    checked = 0
    for seed in range(8):
        clip, wave = _world(seed, offset=seed * 4)
        truth = sorted({f for t in clip.objects for f in bounce_frames(t, seed * 4)})
        decoded = codec.decode(codec.encode(wave)).numpy()
        assert click_frames(decoded, FPS) == truth == click_frames(wave.numpy(), FPS)
        checked += len(truth)
    assert checked >= 8


def test_pitches_sit_on_distinct_mel_bands(codec):
    bands = sorted(TONE_BANDS.values())
    assert min(np.diff(bands)) >= 3
    for colour, k in TONE_BANDS.items():
        assert COLOUR_HZ[colour] == pytest.approx(float(codec.centres_hz[k]), rel=1e-5)


def test_bad_inputs_are_one_line(codec):
    with pytest.raises(ValueError, match="fps=7 does not divide the audio sample rate") as e:
        MelCodec(fps=7, channels=3, width=32, band_rows=4, patch=(4, 4))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"video.fps=7 does not divide audio.sample_rate=16000") as e:
        load_config("tiny-av", ["video.fps=7"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"does not match the codec: expected \[C=3, F, band_rows=4, W=32\]") as e:
        codec.decode(torch.zeros(3, 2, 8, 32))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not a whole number of video frames"):
        codec.encode(torch.zeros(2500))
    with pytest.raises(ValueError, match="band_rows must be a positive multiple of 4"):
        MelCodec(fps=8, channels=3, width=32, band_rows=6, patch=(4, 4))
