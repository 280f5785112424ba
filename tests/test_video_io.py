import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from framecast.engine.video_io import open_video_writer, read_video, to_uint8, video_info


def frames(n, h=32, w=32, seed=0):
    """Smooth moving gradients (compress well, so mp4 error is small)."""
    y, x = np.mgrid[0:h, 0:w]
    out = [np.stack([x * 3 + 2 * i, y * 3 + 20, np.full_like(x, 40 * seed + 3 * i)], -1) for i in range(n)]
    return np.asarray(out, dtype=np.uint8)


def test_png_round_trip_is_exact(tmp_path):
    video = np.random.default_rng(0).integers(0, 256, (5, 17, 33, 3), dtype=np.uint8)
    with open_video_writer(f"{tmp_path}/png/", fps=8) as w:
        w.write(video[:2])
        w.write(video[2])
        w.write(video[3:])
    assert np.array_equal(read_video(tmp_path / "png"), video)
    assert sorted(os.listdir(tmp_path / "png")) == [f"{i:05d}.png" for i in range(5)]


@pytest.mark.parametrize("n, h, w", [(1, 32, 32), (20, 32, 32), (7, 17, 33)])
def test_mp4_frame_count_size_and_fps(tmp_path, n, h, w):
    out = tmp_path / "v.mp4"
    video = frames(n, h, w)
    with open_video_writer(out, fps=12) as wr:
        for f in video:
            wr.write(f)
    back = read_video(out)
    assert back.shape == (n, h + h % 2, w + w % 2, 3)  # odd sizes padded to even
    assert np.abs(back[:, :h, :w].astype(int) - video.astype(int)).mean() < 3
    info = video_info(out)
    assert info["frames"] == n and info["fps"] == 12


def test_incremental_partial_then_rename(tmp_path):
    out = tmp_path / "v.mp4"
    w = open_video_writer(out, fps=8)
    partial = tmp_path / "v.partial.mp4"
    w.write(frames(20))
    assert partial.exists() and partial.stat().st_size > 0 and not out.exists()
    assert len(read_video(partial)) >= 8  # readable while still being written
    w.close()
    assert out.exists() and not partial.exists() and len(read_video(out)) == 20


def test_abort_keeps_playable_partial(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError):
        with open_video_writer(out, fps=8) as w:
            w.write(frames(10))
            raise RuntimeError("boom")
    assert not out.exists()
    assert len(read_video(tmp_path / "v.partial.mp4")) == 10


def test_abort_with_no_frames_leaves_nothing(tmp_path):
    w = open_video_writer(tmp_path / "v.mp4", fps=8)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_playable_partial(tmp_path):
    """SIGKILL after 25 frames at 8 fps: every completed one-second fragment (>= 16 frames) plays."""
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from framecast.engine.video_io import open_video_writer
        w = open_video_writer({str(tmp_path / "v.mp4")!r}, fps=8)
        for i in range(25):
            w.write(np.full((32, 32, 3), i * 9, np.uint8))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    back = read_video(tmp_path / "v.partial.mp4")
    assert 16 <= len(back) <= 25
    assert abs(int(back[10].mean()) - 90) <= 3  # the frames are the ones written, in order


def test_existing_file_refused_and_untouched(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="exists"):
        open_video_writer(out)
    assert out.read_bytes() == b"keep me"
    w = open_video_writer(out, overwrite=True)
    w.write(frames(3))
    assert out.read_bytes() == b"keep me"  # replaced only at the final rename
    w.close()
    assert len(read_video(out)) == 3


def test_non_empty_png_folder_refused(tmp_path):
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        open_video_writer(f"{tmp_path}/png/")


@pytest.mark.parametrize("path, exc, needle", [
    ("missing/v.mp4", FileNotFoundError, "does not exist"),
    ("v.avi", ValueError, "unsupported extension '.avi'; use .mp4"),
    ("v", ValueError, "unsupported extension"),
])
def test_bad_paths(tmp_path, path, exc, needle):
    with pytest.raises(exc, match=needle):
        open_video_writer(tmp_path / path)


@pytest.mark.parametrize("fps", [0, -1, "8"])
def test_bad_fps(tmp_path, fps):
    with pytest.raises(ValueError, match="fps must be a positive number"):
        open_video_writer(tmp_path / "v.mp4", fps=fps)


def test_to_uint8_matches_diffusers_postprocess():
    from diffusers.video_processor import VideoProcessor

    video = torch.randn(1, 3, 4, 8, 8) * 0.7
    ref = VideoProcessor().postprocess_video(video, output_type="np")[0]  # [F, H, W, 3] in [0, 1]
    assert np.array_equal(to_uint8(video[0]), np.round(ref * 255).astype(np.uint8))
