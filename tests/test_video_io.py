import os
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch

from framecast.engine import video_io
from framecast.engine.video_io import iter_video, open_video_writer, read_video, to_uint8, video_info


def frames(n, h=32, w=32, seed=0, step=1):
    """Smooth moving content (compresses well and gives P-frames, like real video); consecutive
    frames differ by ~`step` * 5 levels."""
    y, x = np.mgrid[0:h, 0:w]
    out = [np.stack([np.sin((x + step * i + seed) / 14) * 90 + 128, np.cos((y - step * i) / 15) * 90 + 128,
                     (x + y) * 2 + 20 * seed], -1) for i in range(n)]
    return np.clip(out, 0, 255).astype(np.uint8)


def mean_abs(a, b):
    return np.abs(a.astype(int) - b.astype(int)).mean()


# ------------------------------------------------------------------------------------------- PNG
def test_png_round_trip_is_exact(tmp_path):
    video = np.random.default_rng(0).integers(0, 256, (5, 17, 33, 3), dtype=np.uint8)
    with open_video_writer(f"{tmp_path}/png/", fps=8) as w:
        w.write(video[:2])
        assert sorted(os.listdir(tmp_path / "png")) == ["00000.png", "00001.png"]  # written as they arrive
        w.write(video[2])
        w.write(video[3:])
    assert w.frames_written == 5
    assert np.array_equal(read_video(tmp_path / "png"), video)
    assert sorted(os.listdir(tmp_path / "png")) == [f"{i:05d}.png" for i in range(5)]  # no temporaries left
    assert video_info(tmp_path / "png") == {"frames": 5, "fps": None, "height": 17, "width": 33}


def test_png_overwrite_drops_an_older_longer_video(tmp_path):
    old, new = frames(6, seed=1), frames(3, seed=2)
    with open_video_writer(f"{tmp_path}/png/") as w:
        w.write(old)
    (tmp_path / "png" / "notes.txt").write_text("mine")
    with open_video_writer(tmp_path / "png", overwrite=True) as w:  # an existing folder, no trailing "/"
        w.write(new)
    assert np.array_equal(read_video(tmp_path / "png"), new)
    assert (tmp_path / "png" / "notes.txt").read_text() == "mine"  # only the writer's own files go


def test_non_empty_png_folder_refused(tmp_path):
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        open_video_writer(f"{tmp_path}/png/")
    assert os.listdir(tmp_path / "png") == ["x.txt"]


def test_png_target_that_is_a_file_refused(tmp_path):
    (tmp_path / "png").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        open_video_writer(f"{tmp_path}/png/", overwrite=True)


# ------------------------------------------------------------------------------------------- mp4
@pytest.mark.parametrize("n, h, w", [(1, 32, 32), (20, 32, 32), (7, 17, 33)])
def test_mp4_frame_count_size_and_fps(tmp_path, n, h, w):
    out = tmp_path / "v.mp4"
    video = frames(n, h, w)
    with open_video_writer(out, fps=12) as wr:
        for f in video:
            wr.write(f)
    back = read_video(out)
    assert back.shape == (n, h + h % 2, w + w % 2, 3)  # odd sizes padded to even
    assert mean_abs(back[:, :h, :w], video) < 3
    if h % 2:  # padding repeats the edge
        assert mean_abs(back[:, h], back[:, h - 1]) < 3 and mean_abs(back[:, :, w], back[:, :, w - 1]) < 3
    assert video_info(out) == {"frames": n, "fps": 12, "height": h + h % 2, "width": w + w % 2}


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), 12.5, np.int64(24)])
def test_mp4_fractional_fps_stored(tmp_path, fps):
    with open_video_writer(tmp_path / "v.mp4", fps=fps) as w:
        w.write(frames(3))
    assert video_info(tmp_path / "v.mp4")["fps"] == pytest.approx(float(fps), abs=1e-9)


def test_incremental_partial_then_rename(tmp_path):
    out = tmp_path / "v.mp4"
    w = open_video_writer(out, fps=8)
    assert w.path == out and w.partial_path == tmp_path / "v.partial.mp4"
    assert list(tmp_path.iterdir()) == []  # nothing until the first frame
    video = frames(20)
    w.write(video[:10])
    size = w.partial_path.stat().st_size
    assert size > 0 and not out.exists()
    assert len(read_video(w.partial_path)) >= 9  # readable while still being written
    w.write(video[10:])
    assert w.partial_path.stat().st_size > size  # grows as frames arrive, not buffered
    assert w.close() == out
    assert out.exists() and not w.partial_path.exists()
    assert w.frames_written == 20 and len(read_video(out)) == 20
    assert w.close() == out  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(video[0])
    assert sorted(os.listdir(tmp_path)) == ["v.mp4"]


def test_abort_keeps_playable_partial(tmp_path):
    out = tmp_path / "v.mp4"
    video = frames(10)
    with pytest.raises(RuntimeError):
        with open_video_writer(out, fps=8) as w:
            w.write(video)
            raise RuntimeError("boom")
    assert not out.exists()
    back = read_video(tmp_path / "v.partial.mp4")
    assert len(back) == 10 and mean_abs(back, video) < 3  # finalised: every frame, the last included


def test_abort_with_no_frames_leaves_nothing(tmp_path):
    w = open_video_writer(tmp_path / "v.mp4", fps=8)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_playable_partial(tmp_path):
    """SIGKILL right after write() returned for 21 frames: the partial plays >= 20 of them (all
    but the last, whose fragment is emitted only when a next frame arrives), in order."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_video_io import frames
        from framecast.engine.video_io import open_video_writer
        w = open_video_writer({str(tmp_path / "v.mp4")!r}, fps=8)
        for f in frames(21, 48, 64):
            w.write(f)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "v.mp4").exists()
    back = read_video(tmp_path / "v.partial.mp4")
    assert 20 <= len(back) <= 21
    assert mean_abs(back, frames(21, 48, 64)[:len(back)]) < 3  # the frames written, in order


def test_torn_last_fragment_is_skipped(tmp_path):
    """A kill in mid-write can cut the last fragment short: readers stop before it and return
    intact frames only (a torn packet is never decoded into a half-concealed frame)."""
    out = tmp_path / "v.mp4"
    video = frames(12, 64, 64, step=4)
    with open_video_writer(out, fps=8) as w:
        w.write(video)
    data = out.read_bytes()
    counts = set()
    for cut in range(len(data) - 1500, len(data), 37):
        torn = tmp_path / "torn.mp4"
        torn.write_bytes(data[:cut])
        back = read_video(torn)
        assert len(back) == video_info(torn)["frames"]
        assert mean_abs(back, video[:len(back)]) < 3
        assert max(mean_abs(a, b) for a, b in zip(back, video)) < 3  # neighbours differ by ~20
        counts.add(len(back))
    assert len(counts) > 1 and max(counts) == 12  # the cuts did reach into frame data


def test_existing_file_refused_and_untouched(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="exists") as e:
        open_video_writer(out)
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert out.read_bytes() == b"keep me" and sorted(os.listdir(tmp_path)) == ["v.mp4"]
    w = open_video_writer(out, overwrite=True)
    w.write(frames(3))
    assert out.read_bytes() == b"keep me"  # replaced only at the final rename
    w.abort()
    assert out.read_bytes() == b"keep me"  # an aborted run never touches it
    with open_video_writer(out, overwrite=True) as w:
        w.write(frames(3))
    assert len(read_video(out)) == 3


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("path, exc, needle", [
    ("missing/v.mp4", FileNotFoundError, "does not exist"),
    ("afile/v.mp4", FileNotFoundError, "does not exist"),
    ("missing/png" + os.sep, FileNotFoundError, "does not exist"),
    ("v.avi", ValueError, "unsupported extension '.avi'; use .mp4"),
    ("v", ValueError, "unsupported extension"),
])
def test_bad_paths(tmp_path, path, exc, needle):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(exc, match=needle) as e:
        open_video_writer(f"{tmp_path}{os.sep}{path}")
    assert str(tmp_path / path) in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["afile"]


def test_unwritable_parent_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io.os, "access", lambda p, mode: os.path.abspath(p) != str(tmp_path))
    for target in (tmp_path / "v.mp4", f"{tmp_path}/png/"):
        with pytest.raises(PermissionError, match="not writable"):
            open_video_writer(target)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_parent_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            open_video_writer(ro / "v.mp4")
    finally:
        ro.chmod(0o700)


def test_read_only_parent_refused_as_any_user(tmp_path, access_as_owner):
    """The twin of test_read_only_parent_refused that also runs as root: the same 0o500 folder, with
    access() answered from its owner's mode bits as for an unprivileged owner (root's ignores them)."""
    access_as_owner(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        for target in (ro / "v.mp4", f"{ro}/png/"):
            with pytest.raises(PermissionError, match="not writable") as e:
                open_video_writer(target)
            assert str(ro) in str(e.value) and "\n" not in str(e.value)
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_os_refusing_the_png_folder_leaves_nothing(tmp_path, monkeypatch):
    """The checks pass but the OS refuses when the PNG folder is made (an ACL, a read-only mount, a
    race): PermissionError naming the folder, nothing left behind; runs as root too."""
    import errno

    real_mkdir = video_io.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(video_io.Path, "mkdir", mkdir)
    with pytest.raises(PermissionError) as e:
        with open_video_writer(f"{tmp_path}/png/") as w:
            w.write(frames(2))
    assert str(tmp_path / "png") in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fps", [0, -1, "8", float("nan"), float("inf"), True, None])
def test_bad_fps(tmp_path, fps):
    with pytest.raises(ValueError, match="fps must be a positive number"):
        open_video_writer(tmp_path / "v.mp4", fps=fps)


def test_bad_codec_and_crf(tmp_path):
    with pytest.raises(ValueError, match="no encoder 'nope'"):
        open_video_writer(tmp_path / "v.mp4", codec="nope")
    with pytest.raises(ValueError, match="crf applies to"):
        open_video_writer(tmp_path / "v.mp4", codec="mpeg4", crf=20)
    assert os.listdir(tmp_path) == []


def test_bad_frames_refused(tmp_path):
    with open_video_writer(tmp_path / "v.mp4") as w:
        for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((1, 4, 4, 4), np.uint8)):
            with pytest.raises(ValueError, match="uint8"):
                w.write(bad)
        w.write(np.zeros((4, 4, 3), np.uint8))
        with pytest.raises(ValueError, match="differs"):
            w.write(np.zeros((6, 4, 3), np.uint8))


def test_iter_video_streams_frames(tmp_path):
    video = frames(4)
    with open_video_writer(tmp_path / "v.mp4") as w:
        w.write(video)
    it = iter_video(tmp_path / "v.mp4")
    first = next(it)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8 and mean_abs(first, video[0]) < 3
    assert len(list(it)) == 3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "nope.mp4")


# ------------------------------------------------------------------------------------- to_uint8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_to_uint8_matches_diffusers_postprocess(dtype):
    from diffusers.video_processor import VideoProcessor

    g = torch.Generator().manual_seed(0)
    video = (torch.randn(1, 3, 4, 8, 8, generator=g) * 0.7).to(dtype)  # some values beyond [-1, 1]
    video[0, :, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255, -1 / 255]).to(dtype)
    ref = VideoProcessor().postprocess_video(video, output_type="np")[0]  # [F, H, W, 3] in [0, 1]
    got = to_uint8(video[0])
    assert got.dtype == np.uint8 and got.shape == (4, 8, 8, 3)
    assert np.array_equal(got, np.round(ref * 255).astype(np.uint8))
    assert got.min() == 0 and got.max() == 255  # clamped


def test_to_uint8_inverts_model_scaling_exactly():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)  # [F, H, W, 3]
    x = torch.from_numpy(u).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # as world.scenes.to_model_video
    assert np.array_equal(to_uint8(x), u)
    with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
        to_uint8(x.permute(1, 0, 2, 3))
