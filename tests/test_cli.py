"""The `framecast` command line and the Python Engine on the tiny preset (random weights are fine
for behaviour; quality is tested with the shipped weights elsewhere)."""
import json
import os
import stat

import numpy as np
import pytest

from framecast.launch.cli import main

PROMPT = "a red circle moving right"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_info(capsys):
    rc, out, _ = run(capsys, "info")
    assert rc == 0
    assert "torch" in out and "device:" in out
    assert "attention backend sdpa: available" in out and "attention backend flash:" in out
    assert "ray:" in out and "tiny" in out.split("presets: ")[1].split("\n")[0].split(", ")
    assert all(f"attention backend {b}: available" in out for b in ("draft", "grat", "sparse_vdit", "rettention", "sla"))
    assert "feature caches (cache.kind): none, taylorseer" in out


def test_generate_mp4_with_progress_and_summary(tmp_path, capsys):
    from framecast.engine.video_io import read_video

    out = tmp_path / "v.mp4"
    rc, stdout, err = run(capsys, "generate", PROMPT, "--frames", "12", "--out", str(out), "sampler.steps=2")
    assert rc == 0
    assert "denoise" in err and "frames" in err  # tqdm bars
    assert "wrote 12 frames" in stdout and str(out) in stdout and "peak RSS" in stdout
    video = read_video(out)
    assert video.shape == (12, 32, 32, 3) and video.dtype == np.uint8
    assert not (tmp_path / "v.partial.mp4").exists()


def test_seconds_and_png_folder(tmp_path, capsys):
    rc, stdout, _ = run(capsys, "generate", PROMPT, "--seconds", "0.5", "--out", f"{tmp_path}/png/",
                        "sampler.steps=1", "--quiet")
    assert rc == 0
    assert sorted(os.listdir(tmp_path / "png")) == [f"{i:05d}.png" for i in range(4)]  # 0.5 s at 8 fps


def test_same_seed_same_video(tmp_path, capsys):
    from framecast.engine.video_io import read_video

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run(capsys, "generate", PROMPT, "--frames", "4", "--out", f"{tmp_path}/{name}/", "--seed", str(seed),
                   "sampler.steps=2", "--quiet")[0] == 0
    a, b, c = (read_video(tmp_path / n) for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_existing_output_not_overwritten(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"precious")
    rc, _, err = run(capsys, "generate", PROMPT, "--frames", "2", "--out", str(out), "sampler.steps=1", "--quiet")
    assert rc == 2 and "exists" in err and err.count("\n") == 1
    assert out.read_bytes() == b"precious"
    rc, _, _ = run(capsys, "generate", PROMPT, "--frames", "2", "--out", str(out), "sampler.steps=1", "--quiet",
                   "--overwrite")
    assert rc == 0 and out.read_bytes() != b"precious"


@pytest.mark.parametrize("argv, needle", [
    (["--frames", "0"], "frames must be a positive integer"),
    (["--frames", "-4"], "frames must be a positive integer"),
    (["--seconds", "0"], "seconds must be a positive number"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["sampler.stepz=3"], "unknown key 'sampler.stepz'"),
    (["sampler.name=ddpm"], "choose one of: unipc, euler"),
    (["--checkpoint", "/nonexistent/wan"], "does not exist"),
    (["--launcher", "local", "--workers", "2", "--schedule", "dualparal"], "parallel.launcher=local runs one worker"),
])
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "v.mp4"
    rc, _, err = run(capsys, "generate", PROMPT, "--out", str(out), "--quiet", *(["--frames", "2"] if "--frames" not in argv and "--seconds" not in argv else []), *argv)
    assert rc == 2
    assert needle in err and err.strip().count("\n") == 0, err
    assert not out.exists() and not (tmp_path / "v.partial.mp4").exists()


def test_unknown_word_named(tmp_path, capsys):
    rc, _, err = run(capsys, "generate", "a purple elephant", "--frames", "2", "--out", str(tmp_path / "v.mp4"),
                     "--quiet")
    assert rc == 2 and "purple" in err and "elephant" in err
    assert not list(tmp_path.iterdir())


def test_malformed_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model_index.json").write_text("{not json")
    rc, _, err = run(capsys, "generate", "x", "--frames", "5", "--out", str(tmp_path / "v.mp4"), "--checkpoint",
                     str(ckpt), "--quiet")
    assert rc == 2 and "malformed JSON" in err
    (ckpt / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    rc, _, err = run(capsys, "generate", "x", "--frames", "5", "--out", str(tmp_path / "v.mp4"), "--checkpoint",
                     str(ckpt), "--quiet")
    assert rc == 2 and "missing sub-folder(s) transformer, vae, text_encoder, tokenizer, scheduler" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    rc, _, err = run(capsys, "generate", PROMPT, "--frames", "2", "--out", str(locked / "v.mp4"), "--quiet")
    assert rc == 2 and "writable" in err


def test_unwritable_output_dir_as_any_user(tmp_path, capsys, access_as_owner):
    """The twin of test_unwritable_output_dir that also runs as root: the folder's mode bits say
    read-only and access() is asked as the owner would be."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    access_as_owner(tmp_path)
    try:
        for out in (str(locked / "v.mp4"), f"{locked}/frames/"):
            rc, stdout, err = run(capsys, "generate", PROMPT, "--frames", "2", "--out", out, "--quiet")
            assert rc == 2 and "writable" in err and str(locked) in err, err
            assert err.strip().count("\n") == 0 and stdout == "", err
            assert os.listdir(locked) == []
    finally:
        locked.chmod(stat.S_IRWXU)


def test_os_refusing_the_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """Permission checks passed but the OS refuses when the frames folder is made (an ACL, a
    read-only mount, a race): one line naming the folder, exit code 2, nothing left behind."""
    import errno
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    out = tmp_path / "frames"
    rc, stdout, err = run(capsys, "generate", PROMPT, "--frames", "2", "--out", f"{out}/", "--quiet",
                          "sampler.steps=1")
    assert rc == 2 and "Permission denied" in err and str(out) in err, err
    assert err.strip().count("\n") == 0 and stdout == "", err
    assert os.listdir(tmp_path) == []


def test_missing_output_dir(tmp_path, capsys):
    rc, _, err = run(capsys, "generate", PROMPT, "--frames", "2", "--out", str(tmp_path / "no" / "v.mp4"), "--quiet")
    assert rc == 2 and err.strip().count("\n") == 0


def test_size_rounding_warns(tmp_path, capsys):
    rc, _, err = run(capsys, "generate", PROMPT, "--frames", "2", "--out", f"{tmp_path}/p/", "--quiet",
                     "video.height=30", "video.width=36", "sampler.steps=1")
    assert rc == 0 and "warning" in err and "using 28x36" in err


def test_engine_stream_and_generate_from_python(tmp_path):
    from framecast import Engine
    from framecast.engine.request import RequestError

    engine = Engine.from_preset("tiny", ["sampler.steps=2"])
    frames = list(engine.stream(PROMPT, frames=5, seed=1))
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8
    path = engine.generate(PROMPT, frames=5, seed=1, out=tmp_path / "v.mp4")
    assert path == tmp_path / "v.mp4" and path.exists()
    with pytest.raises(RequestError, match="prompt must be a string"):
        engine.generate(42, frames=5, out=tmp_path / "w.mp4")
    assert not (tmp_path / "w.mp4").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--seconds", "1e9"], "is more than schedule.name=rollout can make here: at most"),
    (["--seconds", "1e9", "--schedule", "dualparal"], "its plan lists every block-pass up front"),
    (["--frames", "4", "sampler.guidance_scale=nan"], "sampler.guidance_scale=nan is not a finite number"),
    (["--frames", "4", "model.attn_backend=nope"], "model.attn_backend='nope' is not allowed; choose one of: sdpa"),
    (["--frames", "4", "--out", "missing/dir/a.mp4"], "folder"),
])
def test_refused_in_one_line_before_any_model_work(tmp_path, capsys, monkeypatch, argv, needle):
    """Lengths beyond what the schedule can hold, non-finite or unknown config values, and a missing
    output folder fail with one line before a model is built or any noise is drawn."""
    import framecast.engine.components as components

    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(components, "build_model", no_model)
    monkeypatch.chdir(tmp_path)
    out = [] if "--out" in argv else ["--out", str(tmp_path / "v.mp4")]
    rc, stdout, err = run(capsys, "generate", PROMPT, *out, "--quiet", *argv)
    assert rc == 2 and needle in err and err.strip().count("\n") == 0, err
    assert os.listdir(tmp_path) == []
