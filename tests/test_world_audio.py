"""The built-in world's sound (framecast/world/audio.py) and the audio-visual metrics
(framecast/world/av_metrics.py): tones by colour, clicks at bounces, sample-exact with the frames;
the metrics score the world's own clips perfectly and broken audio low."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from framecast.world.audio import (CLICK, COLOUR_HZ, SAMPLE_RATE, TONE_AMPLITUDE, av_world_batches, bounce_frames,
                                   clip_audio, samples_per_frame)
from framecast.world.av_metrics import evaluate_av
from framecast.world.captions import COLOURS
from framecast.world.scenes import bounce_period, sample_clip, world_batches

FPS = 8
SPF = SAMPLE_RATE // FPS


def _tones(tracks, frames, fps=FPS, offset=0):
    n = np.arange(frames * (SAMPLE_RATE // fps)) + offset * (SAMPLE_RATE // fps)
    return sum(TONE_AMPLITUDE * np.sin(2 * np.pi * ((n * COLOUR_HZ[t.colour] / SAMPLE_RATE) % 1.0)) for t in tracks)


def test_six_distinct_pitches():
    assert sorted(COLOUR_HZ) == sorted(COLOURS)
    hz = sorted(COLOUR_HZ.values())
    assert len(set(hz)) == 6 and min(np.diff(hz)) > 200


def test_bounces_are_velocity_flips():
    for seed in range(10):
        clip = sample_clip(seed, 60)
        for t in clip.objects:
            flips = [f for f in range(1, 60) if (t.velocities[f] != t.velocities[f - 1]).any()]
            assert bounce_frames(t) == flips
            assert all(t.positions[f] is not None for f in flips)


def test_clip_audio_is_tones_plus_a_click_at_each_bounce_frame():
    for seed in range(8):
        clip = sample_clip(seed, 48)
        audio = clip_audio(clip.objects, 48, FPS)
        assert audio.shape == (48 * SPF,) and audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
        rest = audio - _tones(clip.objects, 48)
        bounces = sorted({f for t in clip.objects for f in bounce_frames(t)})
        clicks = np.zeros(48 * SPF)
        for t in clip.objects:
            for f in bounce_frames(t):
                clicks[f * SPF:f * SPF + len(CLICK)] += CLICK      # starting at the frame's first sample
        np.testing.assert_allclose(rest, clicks, atol=1e-6)
        if bounces:
            f = bounces[0]
            assert np.abs(rest[:f * SPF]).max() < 1e-6 and np.abs(rest[f * SPF]) > 1e-3


def test_a_window_later_in_the_video_sounds_as_that_part_of_it():
    """offset o: the same video's frames o.., so the same samples (tones in phase, the click of a
    bounce at the window's first frame included)."""
    whole = sample_clip(5, 70)
    audio = clip_audio(whole.objects, 70, FPS)
    bounces = {f for t in whole.objects for f in bounce_frames(t)}
    assert bounces
    for offset in sorted(set(range(1, bounce_period() + 1, 9)) | bounces):  # windows starting at a bounce too
        part = sample_clip(5, 70 - offset, offset=offset)
        np.testing.assert_array_equal(clip_audio(part.objects, 70 - offset, FPS, offset), audio[offset * SPF:])


def test_other_frame_rates():
    clip = sample_clip(2, 10)
    for fps in (10, 16, 25):
        assert clip_audio(clip.objects, 10, fps).shape == (10 * (SAMPLE_RATE // fps),)
    for bad in (7, 0, 3.5, True):
        with pytest.raises(ValueError, match="does not divide the audio sample rate") as e:
            samples_per_frame(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="fps=7"):
        av_world_batches(0, 2, 4, fps=7)  # before any clip is drawn


def test_av_batches_are_world_batches_with_sound():
    av, plain = av_world_batches(3, 2, 6, offset_prob=0.5), world_batches(3, 2, 6, offset_prob=0.5)
    for _ in range(3):
        a, p = next(av), next(plain)
        for k in ("video", "offsets", "tokens"):
            assert torch.equal(a[k], p[k])
        assert a["audio"].shape == (2, 6 * SPF) and a["audio"].dtype == torch.float32
    again = next(iter(av_world_batches(3, 2, 6, offset_prob=0.5)))
    assert torch.equal(again["audio"], next(av_world_batches(3, 2, 6, offset_prob=0.5))["audio"])


# ---- the metrics -------------------------------------------------------------------------------

def _clips(n=6, frames=40):
    for seed in range(n):
        clip = sample_clip(100 + seed, frames, offset=seed * 5)
        yield clip, clip_audio(clip.objects, frames, FPS, seed * 5)


def test_world_clips_score_perfectly():
    bounces = 0
    for clip, audio in _clips():
        m = evaluate_av(clip.frames, audio, FPS)
        bounces += m["sync.bounces"]
        if m["sync.bounces"]:
            assert m["sync.hit_rate"] == 1.0 and m["sync.f1"] == 1.0
        assert m.get("sync.false_click_rate", 0.0) == 0.0
        assert m["pitch.recall"] == 1.0 and m["pitch.precision"] == 1.0 and m["pitch.accuracy"] >= 0.95
    assert bounces >= 6


def test_shifted_clicks_and_wrong_tones_score_low():
    hits, false, acc = [], [], []
    for clip, audio in _clips():
        shifted = np.roll(audio, 3 * SPF)                        # the clicks three frames late
        m = evaluate_av(clip.frames, shifted, FPS)
        if "sync.hit_rate" in m:
            hits.append(m["sync.hit_rate"])
        if "sync.false_click_rate" in m:
            false.append(m["sync.false_click_rate"])
        wrong = [t for t in clip.objects]
        for t in wrong:                                          # every shape hums the next colour's pitch
            t.colour = COLOURS[(COLOURS.index(t.colour) + 1) % len(COLOURS)]
        m = evaluate_av(clip.frames, clip_audio(wrong, len(clip.frames), FPS), FPS)
        acc.append(m["pitch.accuracy"])
    assert np.mean(hits) < 0.5 and np.mean(false) > 0.5
    assert max(acc) < 0.2
    silent = evaluate_av(clip.frames, np.zeros(len(clip.frames) * SPF, np.float32), FPS)
    assert silent["pitch.accuracy"] == 0.0 and silent.get("sync.hit_rate", 0.0) == 0.0


def test_metrics_refuse_audio_of_the_wrong_length():
    clip, audio = next(_clips(1))
    with pytest.raises(ValueError, match=r"expected \(80000,\)"):
        evaluate_av(clip.frames, audio[:-1], FPS)
