"""The output side of models that make sound (AV-DiT, model.kind=avdit): the mp4's AAC track and
a PNG folder's audio.wav (framecast/engine/video_io.py), the AV latent's split into video rows and
audio band (framecast/engine/vae.py SoundDecoder), Engine.stream's (frame, audio chunk) pairs,
`audio=` / `--audio` and their one-line errors. The AV model is randomly initialised (tiny-av's
geometry, no trained weights needed)."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from framecast.engine.video_io import open_video_writer, read_audio, read_video, video_info
from framecast.launch.cli import main

PROMPT = "a red circle moving right"
RATE, FPS = 16000, 8
SPF = RATE // FPS  # 2000 samples per frame
AAC_FRAME = 1024
# tiny-av's geometry with random weights: the audio parts are untrained, the backbone random too
RANDOM_AV = ["model.weights=", "model.avdit.base=", "sampler.steps=2"]


def soundtrack(n, clicks=(), seed=0):
    """n frames of a 440 Hz hum with a little noise, and a loud click at the start of each frame in `clicks`."""
    t = np.arange(n * SPF) / RATE
    rng = np.random.default_rng(seed)
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)
    for k in clicks:
        wave[k * SPF:k * SPF + 40] = 0.95
    return wave.astype(np.float32).reshape(n, SPF)


def video(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def click_frames(wave):
    """Frames where a click starts (samples above 0.8 after a quiet sample)."""
    loud = np.abs(wave) > 0.8
    starts = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
    if loud[0]:
        starts = np.r_[0, starts]
    return sorted({int(s) // SPF for s in starts})


# -------------------------------------------------------------------------------------- writer
@pytest.mark.parametrize("codec", ["aac", "libopus"])  # libopus: the fallback where a wheel has no AAC
@pytest.mark.parametrize("n, clicks", [(24, (0, 5, 17, 23)), (7, (3,))])
def test_mp4_audio_round_trip(tmp_path, monkeypatch, n, clicks, codec):
    from framecast.engine import video_io

    monkeypatch.setattr(video_io, "AUDIO_CODECS", (codec,))
    out = tmp_path / "av.mp4"
    sound, frames = soundtrack(n, clicks), video(n)
    with open_video_writer(out, fps=FPS, audio_rate=RATE) as w:
        for f, a in zip(frames, sound):  # a chunk per frame, as the Engine writes them
            w.write(f, a)
    back, rate = read_audio(out)
    assert rate % RATE == 0  # Opus decodes at 48 kHz
    back = back[::rate // RATE]
    assert abs(len(back) - n * SPF) <= AAC_FRAME  # duration = frames / fps within one AAC frame
    m = min(len(back), n * SPF)
    assert np.corrcoef(back[:m], sound.reshape(-1)[:m])[0, 1] > 0.99
    found = click_frames(back)
    assert len(found) == len(clicks) and all(abs(a - b) <= 1 for a, b in zip(found, clicks))  # frame k ± 1
    assert len(read_video(out)) == n and video_info(out)["fps"] == FPS  # the video track is intact


def test_mp4_audio_whole_block_writes_equal_frame_writes(tmp_path):
    sound, frames = soundtrack(10, (4,)), video(10)
    with open_video_writer(tmp_path / "a.mp4", fps=FPS, audio_rate=RATE) as w:
        w.write(frames, sound)
    with open_video_writer(tmp_path / "b.mp4", fps=FPS, audio_rate=RATE) as w:
        for i in range(0, 10, 3):
            w.write(frames[i:i + 3], sound[i:i + 3])
    assert np.array_equal(read_audio(tmp_path / "a.mp4")[0], read_audio(tmp_path / "b.mp4")[0])


def test_png_folder_writes_audio_wav(tmp_path):
    sound, frames = soundtrack(5, (2,)), video(5)
    with open_video_writer(f"{tmp_path}/png/", fps=FPS, audio_rate=RATE) as w:
        w.write(frames[:2], sound[:2])
        assert ".audio.wav.tmp" in os.listdir(tmp_path / "png")  # written as frames arrive, hidden
        w.write(frames[2:], sound[2:])
    assert sorted(os.listdir(tmp_path / "png")) == [f"{i:05d}.png" for i in range(5)] + ["audio.wav"]
    back, rate = read_audio(tmp_path / "png")
    assert rate == RATE and np.abs(back - sound.reshape(-1)).max() < 1 / 32767 + 1e-6  # 16-bit PCM
    assert np.array_equal(read_video(tmp_path / "png"), frames)
    # overwritten by a video without sound: the older soundtrack does not stay behind
    with open_video_writer(tmp_path / "png", overwrite=True) as w:
        w.write(frames[:2])
    assert "audio.wav" not in os.listdir(tmp_path / "png")


def test_abort_with_audio_leaves_no_final_file(tmp_path):
    out = tmp_path / "av.mp4"
    with pytest.raises(RuntimeError):
        with open_video_writer(out, fps=FPS, audio_rate=RATE) as w:
            w.write(video(6), soundtrack(6))
            raise RuntimeError("boom")
    assert not out.exists()
    partial = tmp_path / "av.partial.mp4"
    assert len(read_video(partial)) == 6 and len(read_audio(partial)[0]) == 6 * SPF  # finalised, playable
    w = open_video_writer(out, fps=FPS, audio_rate=RATE)
    w.abort()  # no frame written: nothing at all
    assert sorted(os.listdir(tmp_path)) == ["av.partial.mp4"]


def test_killed_writer_with_audio_leaves_playable_partial(tmp_path):
    """SIGKILL after 21 frames: the partial plays all but the last few (the muxer interleaves the
    tracks, so video waits for the audio encoder's lag; video_io's docstring has the bound)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_av_output import soundtrack, video
        from framecast.engine.video_io import open_video_writer
        w = open_video_writer({str(tmp_path / "v.mp4")!r}, fps={FPS}, audio_rate={RATE})
        for f, a in zip(video(21), soundtrack(21, (10,))):
            w.write(f, a)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "v.mp4").exists()
    back = read_video(tmp_path / "v.partial.mp4")
    assert 21 - 1 - int(np.ceil(2 * AAC_FRAME / SPF)) <= len(back) <= 21
    assert click_frames(read_audio(tmp_path / "v.partial.mp4")[0]) == [10]  # its sound, in place


@pytest.mark.parametrize("kwargs, needle", [
    ({"fps": 7, "audio_rate": RATE}, "whole number of samples per frame"),
    ({"fps": FPS, "audio_rate": 0}, "audio_rate must be"),
    ({"fps": FPS, "audio_rate": 16000.5}, "audio_rate must be")])
def test_bad_audio_settings_refused_before_writing(tmp_path, kwargs, needle):
    with pytest.raises(ValueError, match=needle) as e:
        open_video_writer(tmp_path / "v.mp4", **kwargs)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_audio_and_writer_must_agree(tmp_path):
    with open_video_writer(tmp_path / "a.mp4", fps=FPS, audio_rate=RATE) as w:
        with pytest.raises(ValueError, match="needs the frames' audio"):
            w.write(video(1)[0])
        with pytest.raises(ValueError, match=r"audio float \[2, 2000\]"):
            w.write(video(2), soundtrack(3))
        w.write(video(1)[0], soundtrack(1)[0])
    with open_video_writer(tmp_path / "b.mp4", fps=FPS) as w:
        with pytest.raises(ValueError, match="has no audio track"):
            w.write(video(1), soundtrack(1))
        w.write(video(1))
    with pytest.raises(ValueError, match="no audio track"):
        read_audio(tmp_path / "b.mp4")


# ----------------------------------------------------------------------------- decoding the band
def test_block_by_block_decoding_equals_all_at_once():
    from framecast.config import load_config
    from framecast.engine.audio import codec_for
    from framecast.engine.vae import IdentityVAE, SoundDecoder

    cfg = load_config("tiny-av", RANDOM_AV)
    codec = codec_for(cfg)
    lat = torch.rand(1, cfg.model.in_channels, 11, cfg.video.height + codec.band_rows, cfg.video.width) * 2 - 1
    whole_video, whole = SoundDecoder(IdentityVAE().decoder(), codec, audio=True).decode(lat)
    dec = SoundDecoder(IdentityVAE().decoder(), codec, audio=True)
    parts = [dec.decode(lat[:, :, a:b]) for a, b in [(0, 1), (1, 7), (7, 8), (8, 11)]]
    assert whole.shape == (11, SPF) and whole_video.shape == (1, 3, 11, cfg.video.height, cfg.video.width)
    assert torch.equal(torch.cat([w for _, w in parts]), whole)  # sample-exact
    assert torch.equal(torch.cat([v for v, _ in parts], dim=2), whole_video)
    video_only, none = SoundDecoder(IdentityVAE().decoder(), codec, audio=False).decode(lat)
    assert none is None and torch.equal(video_only, whole_video)


# --------------------------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def av_engine():
    from framecast.engine.engine import Engine

    return Engine.from_preset("tiny-av", RANDOM_AV)


def test_initial_latents_carry_the_band_below_the_video_noise(av_engine):
    from framecast.engine.engine import Engine

    req = av_engine.request(PROMPT, frames=3, seed=4)
    lat = av_engine.initial_latents(req)
    assert lat.shape == (1, 3, 3, 32 + av_engine.audio_codec.band_rows, 32)
    tiny = Engine.from_preset("tiny")
    assert torch.equal(lat[:, :, :, :32], tiny.initial_latents(tiny.request(PROMPT, frames=3, seed=4)))


def test_stream_yields_frame_and_audio_pairs(av_engine):
    pairs = list(av_engine.stream(PROMPT, frames=5, seed=1))
    cfg = av_engine.cfg
    assert len(pairs) == 5
    for frame, chunk in pairs:
        assert frame.dtype == np.uint8 and frame.shape == (cfg.video.height, cfg.video.width, 3)
        assert chunk.dtype == np.float32 and chunk.shape == (SPF,) and np.abs(chunk).max() <= 1
    frames = list(av_engine.stream(PROMPT, frames=5, seed=1, audio=False))  # what the server streams
    assert all(isinstance(f, np.ndarray) for f in frames)
    assert all(np.array_equal(f, p[0]) for f, p in zip(frames, pairs))


def test_server_streams_frames_only_for_a_sound_model(av_engine):
    import threading

    from framecast.launch.server import ServerState, _start_stream

    state = ServerState(play_preset="tiny-play", text_preset="tiny-av", max_sessions=1, fps=None,
                        engines={("tiny-av", "rollout"): av_engine})
    args = {"prompt": PROMPT, "frames": 2, "seconds": None, "seed": 0, "schedule": "rollout"}
    _, stream, n = _start_stream(state, args, threading.Event())
    frames = list(stream)
    assert n == 2 and len(frames) == 2 and all(isinstance(f, np.ndarray) and f.ndim == 3 for f in frames)


def test_streamed_audio_equals_decoding_the_whole_latent(av_engine):
    """The schedule hands finished blocks over one by one (rollout: 1 + 6 + 3 frames here); the
    chunks they decode to are exactly the whole latent's band decoded at once."""
    req = av_engine.request(PROMPT, frames=10, seed=2)
    sink = []
    chunks = [c for _, c in av_engine._stream(req, False, None, sink=sink, audio=True)]
    assert len(sink) > 1  # decoded block by block
    band = torch.cat(sink, dim=2)[0, :, :, -av_engine.audio_codec.band_rows:]
    assert np.array_equal(np.concatenate(chunks), av_engine.audio_codec.decode(band, 0).numpy())


def test_generate_writes_the_soundtrack(av_engine, tmp_path):
    out = av_engine.generate(PROMPT, out=tmp_path / "av.mp4", frames=6, seed=3)
    assert len(read_video(out)) == 6
    assert len(read_audio(out)[0]) == 6 * SPF
    png = av_engine.generate(PROMPT, out=f"{tmp_path}/png/", frames=3, seed=3)
    assert len(read_audio(png)[0]) == 3 * SPF and "audio.wav" in os.listdir(png)
    quiet = av_engine.generate(PROMPT, out=tmp_path / "quiet.mp4", frames=3, seed=3, audio=False)
    with pytest.raises(ValueError, match="no audio track"):
        read_audio(quiet)


def test_audio_on_a_model_without_sound_is_one_line_and_writes_nothing(tmp_path):
    from framecast.engine.engine import Engine
    from framecast.engine.request import RequestError

    engine = Engine.from_preset("tiny", ["sampler.steps=1"])
    with pytest.raises(RequestError) as e:
        engine.generate(PROMPT, out=tmp_path / "v.mp4", frames=2, audio=True)
    msg = str(e.value)
    assert "\n" not in msg and "model.kind=wan" in msg and "avdit" in msg
    with pytest.raises(RequestError, match="makes no sound"):
        engine.stream(PROMPT, frames=2, audio=True)  # before any work, not at the first frame
    with pytest.raises(RequestError, match="True, False or None"):
        engine.stream(PROMPT, frames=2, audio="yes")
    assert list(tmp_path.iterdir()) == []
    assert all(isinstance(f, np.ndarray) for f in engine.stream(PROMPT, frames=2))  # frames only, as before


def test_cli_audio_flags(tmp_path, capsys):
    rc = main(["generate", PROMPT, "--frames", "2", "--out", str(tmp_path / "v.mp4"), "--audio", "--quiet",
               "sampler.steps=1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("framecast: error: audio was asked for")
    assert "model.kind=wan" in err and list(tmp_path.iterdir()) == []
    out = tmp_path / "quiet.mp4"
    rc = main(["generate", PROMPT, "--frames", "2", "--out", str(out), "--preset", "tiny-av", "--no-audio",
               "--quiet", *RANDOM_AV])
    capsys.readouterr()
    assert rc == 0 and len(read_video(out)) == 2
    with pytest.raises(ValueError, match="no audio track"):
        read_audio(out)
    out = tmp_path / "av.mp4"  # no flag: the model's default, its soundtrack
    assert main(["generate", PROMPT, "--frames", "2", "--out", str(out), "--preset", "tiny-av", "--quiet",
                 *RANDOM_AV]) == 0
    capsys.readouterr()
    assert len(read_audio(out)[0]) == 2 * SPF
