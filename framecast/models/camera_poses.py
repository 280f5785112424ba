"""Camera paths for camera-controlled generation: named moves and pose files -> per-frame poses.

    poses = trajectory(parse_move("pan-left:2"), frames=33, height=32, width=32)
    poses = load_pose_file("poses.json")            # docs/camera.md has the format

A `Poses` holds, per video frame, the pinhole intrinsics K (3x3: fx, fy, cx, cy in pixels of the
video frame) and the camera-to-world extrinsics (4x4, OpenCV axes: x right, y down, z forward).
`framecast.models.camera.plucker` turns them into the rays the camera adapter reads.

Moves (`MOVES`), each with a speed in pixels per frame (`pan-left:2`; no speed = 1):
- pan-left / pan-right / pan-up / pan-down: the camera moves that way parallel to the image
  plane, so the scene drifts the OTHER way in the frame, as in film ("pan-left:2": the scene
  slides right 2 px each frame). A translation, not a rotation: for the flat world at depth 1
  (`PLANE_DEPTH`) it shifts the image uniformly by exactly `speed` px per frame at any length,
  where a true pan (a rotation) keystones a plane and its speed saturates towards the horizon.
- zoom-in / zoom-out: the focal length changes; a point at the frame's edge (half the width from
  the centre) moves `speed` px outwards (in) or inwards (out) in the first frame, geometrically
  after (focal length x (1 ± 2·speed/width) per frame).
- still: the camera does not move.
Units: world lengths are in units of the depth of the world's plane (the world of
framecast/world/camera_scenes.py stands at z = 1), so a pan of s px/frame translates the camera by
s / fx per frame with the default focal length fx = frame width.

Shape legend: F frames.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MOVES = ("pan-left", "pan-right", "pan-up", "pan-down", "zoom-in", "zoom-out", "still")
PAN_DIRECTIONS = {"pan-left": (-1, 0), "pan-right": (1, 0), "pan-up": (0, -1), "pan-down": (0, 1)}  # camera (x, y)
MAX_SPEED = 64.0  # px/frame: a move faster than this leaves nothing in common between frames
PLANE_DEPTH = 1.0  # the world's plane stands at z = 1 in the first camera's frame (units of length)
ROTATION_TOL = 1e-4  # |R^T R - I| and |det R - 1| a pose file's rotations may be off by


class CameraError(ValueError):
    """A bad camera move or pose file; one line naming what is wrong."""


@dataclass(frozen=True)
class Move:
    name: str      # one of MOVES
    speed: float   # px/frame (0 for still)

    def __str__(self) -> str:
        return self.name if self.name == "still" else f"{self.name}:{self.speed:g}"


@dataclass(frozen=True)
class Poses:
    K_F33: np.ndarray    # (F, 3, 3) float64 intrinsics, pixels of the video frame
    c2w_F44: np.ndarray  # (F, 4, 4) float64 camera-to-world, OpenCV axes
    source: str = ""     # where they came from, for messages ("camera move pan-left:2", "camera file 'p.json'")

    def __len__(self) -> int:
        return len(self.K_F33)

    def first(self, frames: int) -> "Poses":
        """The first `frames` poses; fewer than that is a CameraError."""
        if len(self) < frames:
            raise CameraError(f"{self.source or 'camera poses'}: {len(self)} poses for a video of {frames} frames; "
                              f"give at least one pose per frame")
        return Poses(self.K_F33[:frames], self.c2w_F44[:frames], self.source)


def parse_move(spec: str) -> Move:
    """'pan-left:2' -> Move('pan-left', 2.0); a move without a speed moves 1 px/frame ('still': 0)."""
    if not isinstance(spec, str):
        raise CameraError(f"camera move must be a string like pan-left:2, got {type(spec).__name__}")
    name, _, speed_text = spec.strip().lower().partition(":")
    if name not in MOVES:
        raise CameraError(f"unknown camera move {spec!r}; moves: {', '.join(MOVES)} (with :SPEED in px/frame, "
                          f"e.g. pan-left:2)")
    if name == "still":
        if speed_text not in ("", "0"):
            raise CameraError(f"camera move {spec!r}: still takes no speed")
        return Move("still", 0.0)
    try:
        speed = float(speed_text) if speed_text else 1.0
    except ValueError:
        raise CameraError(f"camera move {spec!r}: the speed {speed_text!r} is not a number "
                          f"(px/frame, e.g. {name}:2)") from None
    if not math.isfinite(speed) or not 0 < speed <= MAX_SPEED:
        raise CameraError(f"camera move {spec!r}: the speed must be in (0, {MAX_SPEED:g}] px/frame, got {speed_text}")
    return Move(name, speed)


def default_intrinsics(height: int, width: int, zoom: float = 1.0) -> np.ndarray:
    """K with focal length width·zoom px (square pixels) and the principal point at the centre."""
    f = width * zoom
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def trajectory(move: Move | str, frames: int, height: int, width: int) -> Poses:
    """The poses of `move` over `frames` video frames of height x width px, starting at the
    identity pose with `default_intrinsics`."""
    move = parse_move(move) if isinstance(move, str) else move
    if move.name == "zoom-out" and move.speed >= width / 2:
        raise CameraError(f"camera move {move}: a zoom-out moves the frame's edge at most {width / 2:g} px "
                          f"(half the width) per frame; got {move.speed:g}")
    f_F = np.arange(frames, dtype=np.float64)
    zoom_F = np.ones(frames)
    if move.name in ("zoom-in", "zoom-out"):
        rate = 1 + (2 if move.name == "zoom-in" else -2) * move.speed / width
        zoom_F = rate ** f_F
    K_F33 = np.stack([default_intrinsics(height, width, z) for z in zoom_F])
    c2w_F44 = np.tile(np.eye(4), (frames, 1, 1))
    if move.name in PAN_DIRECTIONS:
        dx, dy = PAN_DIRECTIONS[move.name]
        step = move.speed * PLANE_DEPTH / width  # s px on the plane at depth 1, seen with fx = width
        c2w_F44[:, 0, 3] = dx * step * f_F
        c2w_F44[:, 1, 3] = dy * step * f_F
    return Poses(K_F33, c2w_F44, f"camera move {move}")


# ---- pose files ------------------------------------------------------------------------------

POSE_FILE_FORMAT = ('{"frames": [{"K": [[fx,0,cx],[0,fy,cy],[0,0,1]] or "fx","fy","cx","cy", '
                    '"c2w": 4x4 or 3x4 camera-to-world (OpenCV axes)}, ...]}')


def _matrix(value, shape_ok: tuple[tuple[int, int], ...], what: str) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CameraError(f"{what} is not a matrix of numbers") from None
    if m.shape not in shape_ok:
        raise CameraError(f"{what} has shape {list(m.shape)}; expected "
                          f"{' or '.join('x'.join(map(str, s)) for s in shape_ok)}")
    if not np.isfinite(m).all():
        raise CameraError(f"{what} holds a non-finite number")
    return m


def _intrinsics(entry: dict, where: str) -> np.ndarray:
    if "K" in entry:
        K = _matrix(entry["K"], ((3, 3),), f"{where} K")
        if np.abs(K[2] - [0, 0, 1]).max() > 1e-9 or K[1, 0] != 0:
            raise CameraError(f"{where} K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]]")
    else:
        missing = [k for k in ("fx", "fy", "cx", "cy") if k not in entry]
        if missing:
            raise CameraError(f"{where} has no \"K\" and no {', '.join(missing)}")
        fx, fy, cx, cy = (_matrix(entry[k], ((),), f"{where} {k}") for k in ("fx", "fy", "cx", "cy"))
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CameraError(f"{where} focal lengths must be > 0, got fx={K[0, 0]:g}, fy={K[1, 1]:g}")
    return K


def _extrinsics(entry: dict, where: str) -> np.ndarray:
    if "c2w" not in entry:
        raise CameraError(f"{where} has no \"c2w\" (camera-to-world 4x4 or 3x4)")
    m = _matrix(entry["c2w"], ((4, 4), (3, 4)), f"{where} c2w")
    if m.shape == (4, 4) and np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise CameraError(f"{where} c2w: the last row must be [0, 0, 0, 1]")
    R = m[:3, :3]
    off = max(np.abs(R.T @ R - np.eye(3)).max(), abs(np.linalg.det(R) - 1))
    if off > ROTATION_TOL:
        raise CameraError(f"{where} c2w: the 3x3 part is not a rotation (orthonormal with det +1, within "
                          f"{ROTATION_TOL:g}; off by {off:.3g})")
    c2w = np.eye(4)
    c2w[:3] = m[:3]
    return c2w


def parse_poses(data, source: str = "poses") -> Poses:
    """Poses from the decoded JSON of a pose file (POSE_FILE_FORMAT); CameraError names the frame."""
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise CameraError(f"{source}: expected {POSE_FILE_FORMAT}")
    Ks, c2ws = [], []
    for i, entry in enumerate(data["frames"]):
        where = f"{source}: frame {i}"
        if not isinstance(entry, dict):
            raise CameraError(f"{where} is not an object with \"K\" (or fx, fy, cx, cy) and \"c2w\"")
        Ks.append(_intrinsics(entry, where))
        c2ws.append(_extrinsics(entry, where))
    return Poses(np.stack(Ks), np.stack(c2ws), source)


def load_pose_file(path: str | Path) -> Poses:
    """Poses from a JSON pose file (docs/camera.md); every problem is one CameraError line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CameraError(f"camera file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CameraError(f"camera file {str(path)!r} cannot be read ({e.__class__.__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CameraError(f"camera file {str(path)!r}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") \
            from None
    return parse_poses(data, f"camera file {str(path)!r}")


def to_json(poses: Poses) -> dict:
    """The pose-file form of `poses` (what load_pose_file reads back)."""
    return {"frames": [{"K": K.tolist(), "c2w": c2w.tolist()} for K, c2w in zip(poses.K_F33, poses.c2w_F44)]}


def resolve_camera(camera, frames: int, height: int, width: int) -> Poses:
    """A request's camera -> exactly `frames` poses: a move string ('pan-left:2'), a pose file
    (a pathlib.Path) or `Poses` (at least `frames` of them)."""
    if isinstance(camera, Poses):
        poses = camera
    elif isinstance(camera, Path):
        poses = load_pose_file(camera)
    elif isinstance(camera, str):
        return trajectory(parse_move(camera), frames, height, width)
    else:
        raise CameraError(f"camera must be a move like 'pan-left:2', a pose file (pathlib.Path) or Poses, "
                          f"got {type(camera).__name__}")
    return poses.first(frames)
