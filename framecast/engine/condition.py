"""The condition of a VDT task (schedule.name=task, docs/vdt.md): the given frames, loaded and
checked before any model work.

A condition is an `.mp4` (decoded with PyAV as `video_io` reads videos), a folder of numbered PNGs
(sorted by name, as the PNG writer names them), or in the Python API a uint8 numpy array
[F, H, W, 3] (or one frame [H, W, 3]). It must be RGB uint8 of the request's size (video.height x
video.width): grey, RGBA, 16-bit or float frames are refused, not converted, so the given frames
of the output are exactly the frames given. How many frames a task needs is the schedule's check
(framecast/schedulers/task.py); this loader reads at most `limit` + 1 frames, so a long video
given where one frame is used costs one frame more.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

ALLOWED = "an .mp4 file, a folder of numbered PNGs, or a uint8 array [F, H, W, 3]"


class ConditionError(ValueError):
    """Bad condition input; one line naming the field `condition`, the value and what is allowed."""


def _shown(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {tuple(value.shape)}"
    return repr(str(value))


def _check_frame(frame: np.ndarray, where: str, height: int, width: int) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        kind = ("grey" if frame.ndim == 2 else "RGBA" if frame.ndim == 3 and frame.shape[-1] == 4
                else f"{frame.dtype} with shape {tuple(frame.shape)}")
        raise ConditionError(f"condition {where}: frames must be RGB uint8 [H, W, 3], got {kind}")
    if frame.shape[:2] != (height, width):
        raise ConditionError(f"condition {where}: frames are {frame.shape[0]}x{frame.shape[1]} (HxW); "
                             f"must be video.height x video.width = {height}x{width}")


def _png_frames(folder: Path) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise ConditionError(f"condition {str(folder)!r}: no PNG frames in the folder; must be {ALLOWED}")
    for f in files:
        yield np.asarray(iio.imread(f))  # as stored: grey / RGBA / 16-bit stay so, and are refused


def _mp4_frames(path: Path) -> Iterator[np.ndarray]:
    from framecast.engine.video_io import iter_video

    try:
        yield from iter_video(path)  # PyAV, decoded to rgb24
    except Exception as e:  # a file PyAV cannot open or decode
        raise ConditionError(f"condition {str(path)!r}: cannot read the video ({type(e).__name__}); "
                             f"must be {ALLOWED}") from None


def load_condition(value, height: int, width: int, limit: int) -> np.ndarray:
    """The condition's frames, uint8 [F, H, W, 3] with 1 <= F <= limit + 1 (reading stops there:
    more than `limit` frames is for the schedule to refuse or cut). `value`: a path (str or
    os.PathLike) or a uint8 numpy array; anything wrong is one ConditionError line."""
    if isinstance(value, np.ndarray):
        frames = value[None] if value.ndim == 3 and value.shape[-1] == 3 else value
        if frames.ndim != 4:
            raise ConditionError(f"condition {_shown(value)}: must be {ALLOWED}")
        source: Iterator[np.ndarray] = iter(frames)
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_dir():
            source = _png_frames(path)
        elif not path.exists():
            raise ConditionError(f"condition {_shown(value)}: does not exist; must be {ALLOWED}")
        elif path.suffix.lower() != ".mp4":
            raise ConditionError(f"condition {_shown(value)}: must be {ALLOWED}")
        else:
            source = _mp4_frames(path)
    else:
        raise ConditionError(f"condition must be {ALLOWED}, got {type(value).__name__}")
    out = []
    for frame in source:
        _check_frame(frame, _shown(value), height, width)
        out.append(frame)
        if len(out) > limit:
            break
    if not out:
        raise ConditionError(f"condition {_shown(value)}: has no frames")
    return np.stack(out)
