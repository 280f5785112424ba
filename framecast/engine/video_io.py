"""Video output and input: frames are written as they arrive, and never to a half-written file.

- `NAME.mp4`: H.264 (libx264, yuv420p) through PyAV, written incrementally to `NAME.partial.mp4`
  and renamed (atomically) on `close()`. The mp4 is fragmented (a fragment per keyframe, a
  keyframe every second, no B-frame lookahead), so if the process dies the partial file still
  plays back every frame up to the last completed fragment (at most one second is lost).
  Odd sizes are padded to even by repeating the last row/column (yuv420p needs even sizes).
- `DIR/` (a path ending in `/`, or an existing folder): numbered lossless PNGs `00000.png`, ...,
  each written to a temporary name and renamed, for exact comparisons.

Refusals happen before anything is written: an existing output (unless `overwrite`), a missing or
unwritable parent folder, an unsupported extension, a bad fps.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

EXTENSIONS = (".mp4",)


def to_uint8(video_CFHW: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] float in [-1, 1] -> uint8 [F, H, W, 3], as diffusers' video postprocess then
    `round(x * 255)`: round(clamp(x / 2 + 0.5, 0, 1) * 255)."""
    if video_CFHW.ndim != 4 or video_CFHW.shape[0] != 3:
        raise ValueError(f"to_uint8 expects [3, F, H, W], got {tuple(video_CFHW.shape)}")
    x = (video_CFHW.float() / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def _is_folder_target(path: str) -> bool:
    return path.endswith("/") or path.endswith(os.sep) or os.path.isdir(path)


def _check_parent(parent: Path, shown: str) -> None:
    if not parent.is_dir():
        raise FileNotFoundError(f"output {shown!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output {shown!r}: folder {str(parent)!r} is not writable")


def open_video_writer(path, fps: float = 16, overwrite: bool = False, codec: str = "libx264",
                      crf: int | None = None) -> "VideoWriter":
    """An mp4 writer for NAME.mp4 or a PNG writer for DIR/ (see the module docstring)."""
    shown = str(path)
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if _is_folder_target(shown):
        folder = Path(shown)
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise FileExistsError(f"output folder {shown!r} exists and is not empty (use --overwrite)")
        _check_parent(folder.resolve().parent, shown)
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"output folder {shown!r} is not writable")
        return PngWriter(folder)
    target = Path(shown)
    if target.suffix.lower() not in EXTENSIONS:
        raise ValueError(f"output {shown!r}: unsupported extension {target.suffix or '(none)'!r}; "
                         f"use .mp4, or a folder path ending in '/' for PNG frames")
    if target.exists() and not overwrite:
        raise FileExistsError(f"output {shown!r} exists (use --overwrite to replace it)")
    _check_parent(target.resolve().parent, shown)
    return Mp4Writer(target, fps, codec, crf)


class VideoWriter:
    path: Path
    partial_path: Path
    frames_written: int = 0

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"write expects uint8 [F, H, W, 3] or [H, W, 3], got {frames.dtype} {frames.shape}")
        for frame in frames:
            self._write(frame)
            self.frames_written += 1

    def _write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class Mp4Writer(VideoWriter):
    def __init__(self, path: Path, fps, codec: str, crf):
        import av

        self.path = path
        self.partial_path = path.with_name(path.stem + ".partial" + path.suffix)
        self.fps, self.codec, self.crf = fps, codec, crf
        self._av = av
        self.container = None
        self.stream = None
        self.size = None
        self.frames_written = 0

    def _open(self, height: int, width: int) -> None:
        av = self._av
        self.size = (height, width)
        self.container = av.open(str(self.partial_path), "w", format="mp4",
                                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof",
                                          "flush_packets": "1"})
        rate = Fraction(self.fps).limit_denominator(1001)
        self.stream = self.container.add_stream(self.codec, rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        gop = max(1, round(float(self.fps)))  # a keyframe (and so a playable fragment) every second
        opts = {"g": str(gop)}
        if self.codec == "libx264":
            opts.update({"tune": "zerolatency", "crf": str(self.crf if self.crf is not None else 18)})
        self.stream.options = opts

    def _write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self.container is None:
            self._open(h, w)
        elif (h, w) != self.size:
            raise ValueError(f"frame size {h}x{w} differs from the video's {self.size[0]}x{self.size[1]}")
        if h % 2 or w % 2:  # yuv420p needs even sizes: repeat the last row / column
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def _finish(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def close(self) -> Path:
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"no frames were written to {str(self.path)!r}")
        self._finish()
        os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Finalise what was written as NAME.partial.mp4 (playable) and leave it there; remove it
        if nothing was written."""
        try:
            self._finish()
        finally:
            if self.frames_written == 0 and self.partial_path.exists():
                self.partial_path.unlink()


class PngWriter(VideoWriter):
    def __init__(self, folder: Path):
        self.path = self.partial_path = folder
        self.frames_written = 0
        self._created = False

    def _write(self, frame: np.ndarray) -> None:
        import imageio.v3 as iio

        if not self._created:
            self.path.mkdir(exist_ok=True)
            self._created = True
        final = self.path / f"{self.frames_written:05d}.png"
        tmp = self.path / f".{self.frames_written:05d}.png.tmp"
        iio.imwrite(tmp, frame, extension=".png")
        os.replace(tmp, final)

    def close(self) -> Path:
        if self.frames_written == 0:
            raise ValueError(f"no frames were written to {str(self.path)!r}")
        return self.path

    def abort(self) -> None:
        pass  # every PNG on disk is complete


def _png_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no PNG frames in {str(folder)!r}")
    return files


def iter_video(path) -> Iterator[np.ndarray]:
    """Frames of an mp4 or a PNG folder, one uint8 [H, W, 3] at a time."""
    path = Path(path)
    if path.is_dir():
        import imageio.v3 as iio
        for f in _png_files(path):
            yield np.asarray(iio.imread(f))[..., :3]
        return
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    import av
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def read_video(path) -> np.ndarray:
    """All frames as uint8 [F, H, W, 3]."""
    return np.stack(list(iter_video(path)))


def video_info(path) -> dict:
    """{"frames": F, "fps": float or None, "height": H, "width": W}."""
    path = Path(path)
    if path.is_dir():
        files = _png_files(path)
        h, w = next(iter_video(path)).shape[:2]
        return {"frames": len(files), "fps": None, "height": h, "width": w}
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return {"frames": frames, "fps": float(stream.average_rate) if stream.average_rate else None,
                "height": stream.height, "width": stream.width}
