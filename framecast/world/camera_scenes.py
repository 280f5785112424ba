"""The built-in world seen through a moving camera: still shapes on a plane larger than the frame.

The scene is a flat plane at depth `PLANE_DEPTH` (= 1) in front of the first camera, textured
with the world's shapes (framecast/world/scenes.py draws them: pure colours, hard edges) on black
and tiled periodically every `PLANE_PERIOD` px (48 at 32×32, scaled with the frame), so every
view of it is defined however far the camera goes. Plane pixel (x, y) is the point
((x − W/2)/W, (y − H/2)/W, 1): with the default intrinsics (focal length W, principal point at
the centre) the first frame shows plane pixels [0, W) × [0, H) one to one.

A pinhole camera with per-frame intrinsics K and camera-to-world extrinsics (OpenCV axes: x right,
y down, z forward; framecast/models/camera_poses.py) looks at it; each frame is rendered by
intersecting the ray through every pixel centre with the plane and taking the nearest plane
pixel (nearest sampling: colours stay pure, so metrics.find_objects still finds every shape). A
period of 48 > 32 + 7 keeps two copies of one shape out of one frame unless the camera zooms out.

Camera clips hold 1-2 shapes in distinct colours, standing still (what the camera-following
metric needs: all image motion is the camera's), anywhere in view of the clip's first frame.
Captions: "a red circle still and a blue square still". The frozen tiny text encoder knows only
the world's vocabulary (framecast/world/captions.py), which has "still" but no word for a camera
or its moves, so the caption names the shapes and that they stand still, never the move: the
camera reaches the model only through the adapter's rays. Deterministic per seed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from framecast.models.camera_poses import MOVES, PLANE_DEPTH, Move, Poses, parse_move, trajectory
from framecast.world.captions import COLOURS, MAX_OBJECTS, SHAPES, tokenize, words
from framecast.world.scenes import COLOUR_RGB, RADIUS, RngOrSeed, as_rng, scale_of, shape_mask, to_model_video

PLANE_PERIOD = 48  # px at 32×32: the plane's texture repeats every 48 px on both axes
# training moves: speeds in px/frame drawn uniformly from these ranges (zooms: the frame edge's speed)
PAN_SPEEDS = (0.5, 3.0)
ZOOM_SPEEDS = (0.25, 1.5)
MAX_ZOOM = 3.0  # training clips from later in a zoom stay within zoom factors [1/3, 3] of the first frame


@dataclass(frozen=True)
class StillObject:
    colour: str
    shape: str
    centre: tuple[int, int]  # (y, x) plane px, in [0, period)


@dataclass
class CameraClip:
    frames: np.ndarray          # (F, H, W, 3) uint8
    caption: str
    objects: list[StillObject]
    poses: Poses                # the clip's F poses (relative to the trajectory's frame 0, not the clip's)
    move: Move
    offset: int = 0             # the clip is frames offset .. offset + F - 1 of its camera trajectory


def still_caption(objects: Sequence[StillObject]) -> str:
    return " and ".join(f"a {o.colour} {o.shape} still" for o in objects)


def parse_still_prompt(prompt: str) -> list[tuple[str, str]]:
    """'a red circle still and a blue square still' -> [('red', 'circle'), ('blue', 'square')]."""
    tokenize(prompt, max_len=64)  # unknown words first
    specs = []
    for part in " ".join(words(prompt)).split(" and "):
        m = re.fullmatch(r"(?:a|an|the) (\w+) (\w+) still", part.strip())
        if not m or m.group(1) not in COLOURS or m.group(2) not in SHAPES:
            raise ValueError(f"cannot parse {part.strip()!r}; expected 'a COLOUR SHAPE still'")
        specs.append((m.group(1), m.group(2)))
    if len(specs) > MAX_OBJECTS or len({c for c, _ in specs}) != len(specs):
        raise ValueError(f"{prompt!r}: at most {MAX_OBJECTS} objects, in distinct colours")
    return specs


def plane_period(size: int) -> int:
    return PLANE_PERIOD * scale_of(size)


def draw_plane(objects: Sequence[StillObject], size: int = 32) -> np.ndarray:
    """The plane's texture tile (P, P, 3) uint8, P = plane_period(size); shapes wrap around its edges."""
    p, r = plane_period(size), RADIUS * scale_of(size)
    tile = np.zeros((p, p, 3), dtype=np.uint8)
    d = np.arange(-r, r + 1)
    for o in objects:
        ys, xs = (o.centre[0] + d) % p, (o.centre[1] + d) % p
        tile[np.ix_(ys, xs)] = np.where(shape_mask(o.shape, r)[..., None], np.array(COLOUR_RGB[o.colour], np.uint8),
                                        tile[np.ix_(ys, xs)])
    return tile


def plane_points(K_33: np.ndarray, c2w_44: np.ndarray, yx_N2: np.ndarray, size: int, height: int) -> np.ndarray:
    """Plane pixel coordinates (y, x) (continuous, untiled) seen at image points `yx_N2` (continuous
    pixel coordinates: pixel (i, j) spans [i, i + 1) x [j, j + 1)); NaN where the ray misses the plane."""
    pix_3N = np.stack([yx_N2[:, 1], yx_N2[:, 0], np.ones(len(yx_N2))])
    d_3N = c2w_44[:3, :3] @ (np.linalg.inv(K_33) @ pix_3N)
    o_3 = c2w_44[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_N = np.where(d_3N[2] > 0, (PLANE_DEPTH - o_3[2]) / d_3N[2], np.nan)
    X_N, Y_N = o_3[0] + s_N * d_3N[0], o_3[1] + s_N * d_3N[1]
    scale = size / PLANE_DEPTH  # plane px per unit of length (the default focal length, width = size)
    return np.stack([Y_N * scale + height / 2, X_N * scale + size / 2], axis=1)


def image_points(K_33: np.ndarray, c2w_44: np.ndarray, plane_yx_N2: np.ndarray, size: int, height: int) -> np.ndarray:
    """Where plane points (continuous plane px, untiled) appear in the image (continuous px)."""
    scale = size / PLANE_DEPTH
    X = np.stack([(plane_yx_N2[:, 1] - size / 2) / scale, (plane_yx_N2[:, 0] - height / 2) / scale,
                  np.full(len(plane_yx_N2), PLANE_DEPTH)])
    cam = np.linalg.inv(c2w_44) @ np.vstack([X, np.ones(len(plane_yx_N2))])
    uvw = K_33 @ cam[:3]
    return np.stack([uvw[1] / uvw[2], uvw[0] / uvw[2]], axis=1)


def render_view(tile: np.ndarray, K_33: np.ndarray, c2w_44: np.ndarray, height: int, width: int) -> np.ndarray:
    """One frame (H, W, 3) uint8: nearest plane pixel under each pixel centre (black where the
    ray misses the plane)."""
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    yx = plane_points(K_33, c2w_44, np.stack([v.ravel(), u.ravel()], axis=1), width, height)
    hit = np.isfinite(yx).all(axis=1)
    # + 1e-9: a centre that lands exactly on a plane-pixel border (half-pixel speeds) takes the same side
    # whatever the rounding of the pose arithmetic
    idx = np.floor(np.where(hit[:, None], yx, 0) + 1e-9).astype(np.int64) % tile.shape[0]
    out = tile[idx[:, 0], idx[:, 1]]
    out[~hit] = 0
    return out.reshape(height, width, 3)


def render_camera_clip(objects: Sequence[StillObject], poses: Poses, size: int = 32) -> np.ndarray:
    tile = draw_plane(objects, size)
    return np.stack([render_view(tile, K, c2w, size, size) for K, c2w in zip(poses.K_F33, poses.c2w_F44)])


def _random_move(rng: np.random.Generator, moves: Sequence[str]) -> Move:
    name = moves[int(rng.integers(len(moves)))]
    if name == "still":
        return Move("still", 0.0)
    lo, hi = ZOOM_SPEEDS if name.startswith("zoom") else PAN_SPEEDS
    return Move(name, round(float(rng.uniform(lo, hi)), 2))


def _max_offset(move: Move, frames: int, size: int, limit: int) -> int:
    """The latest start (frames into the trajectory) of a clip that keeps a zoom within MAX_ZOOM."""
    if not move.name.startswith("zoom"):
        return limit
    rate = 1 + 2 * move.speed / size
    rate = rate if move.name == "zoom-in" else 1 - 2 * move.speed / size
    return int(np.clip(np.floor(np.log(MAX_ZOOM) / abs(np.log(rate))) - (frames - 1), 0, limit))


def _place_objects(rng: np.random.Generator, n: int, K_33, c2w_44, size: int) -> list[StillObject]:
    """n shapes in distinct colours whose centres are in view of a frame (the shape's radius from
    its edges, at least a shape apart from one another in that frame's pixels). Zoomed out (focal
    length < frame width) shapes are smaller than that and tiled copies are in view: two may
    overlap on the plane (the later one is drawn over the earlier)."""
    r, period = RADIUS * scale_of(size), plane_period(size)
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    placed: list[tuple[float, float]] = []
    objects = []
    for c in colours:
        for _ in range(100):  # rejection: keep shapes apart (two shapes fit easily)
            yx = rng.uniform(r, size - r, size=2)
            if all(max(abs(yx[0] - p[0]), abs(yx[1] - p[1])) >= 2 * r + 2 for p in placed):
                break
        placed.append(tuple(yx))
        plane = plane_points(K_33, c2w_44, yx[None], size, size)[0]
        centre = tuple(int(v) % period for v in np.floor(plane))
        objects.append(StillObject(COLOURS[c], SHAPES[int(rng.integers(len(SHAPES)))], centre))
    return objects


def sample_camera_clip(rng_or_seed: RngOrSeed, frames: int, size: int = 32, move: Optional[Move | str] = None,
                       moves: Sequence[str] = MOVES, max_offset: int = 0) -> CameraClip:
    """A random camera clip: 1-2 still shapes in view of its first frame, `move` (default: one of
    `moves` at a random speed), starting `offset` frames into the trajectory (uniform in
    0 .. max_offset, less for zooms so they stay within MAX_ZOOM)."""
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    rng = as_rng(rng_or_seed)
    move = _random_move(rng, moves) if move is None else move
    move = parse_move(move) if isinstance(move, str) else move
    offset = int(rng.integers(_max_offset(move, frames, size, max_offset) + 1)) if max_offset > 0 else 0
    poses = trajectory(move, offset + frames, size, size)
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = _place_objects(rng, n, poses.K_F33[offset], poses.c2w_F44[offset], size)
    clip_poses = Poses(poses.K_F33[offset:], poses.c2w_F44[offset:], str(move))
    return CameraClip(render_camera_clip(objects, clip_poses, size), still_caption(objects), objects, clip_poses,
                      move, offset)


def prompt_camera_clip(prompt: str, move: Move | str, frames: int, seed: RngOrSeed, size: int = 32) -> CameraClip:
    """The world's own clip for a still-shapes prompt under `move` (placement drawn from `seed`):
    the ground truth a camera model is measured against."""
    specs = parse_still_prompt(prompt)
    move = parse_move(move) if isinstance(move, str) else move
    rng = as_rng(seed)
    poses = trajectory(move, frames, size, size)
    placed = _place_objects(rng, len(specs), poses.K_F33[0], poses.c2w_F44[0], size)
    objects = [StillObject(c, s, p.centre) for (c, s), p in zip(specs, placed)]
    return CameraClip(render_camera_clip(objects, poses, size), still_caption(objects), objects, poses, move, 0)


def clip_rays(clip: CameraClip, size: int) -> torch.Tensor:
    """The clip's Plücker rays [6, F, H, W] relative to its trajectory's frame 0 (as a later window
    of a generated video sees them)."""
    from framecast.models.camera import plucker

    full = trajectory(clip.move, clip.offset + len(clip.frames), size, size)
    return plucker(full.K_F33, full.c2w_F44, size, size)[:, clip.offset:]


def camera_batches(seed: int, batch: int, frames: int, size: int = 32, moves: Sequence[str] = MOVES,
                   max_offset: int = 0, offset_prob: float = 1.0) -> Iterator[dict[str, torch.Tensor]]:
    """Infinite training batches of camera clips, deterministic for a given seed; `offset_prob` of
    them start up to `max_offset` frames into their trajectory (`sample_camera_clip`):
    {"video": float32 (B, 3, F, H, W) in [-1, 1], "tokens": int64 (B, 16) caption ids,
     "camera": float32 (B, 6, F, H, W) Plücker rays (pixel space: one latent frame per frame)}."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch!r}")
    rng = np.random.default_rng(seed)
    while True:
        later = [rng.random() < offset_prob for _ in range(batch)]
        clips = [sample_camera_clip(rng, frames, size, moves=moves, max_offset=max_offset if o else 0) for o in later]
        yield {"video": torch.stack([to_model_video(c.frames) for c in clips]),
               "tokens": torch.tensor([tokenize(c.caption) for c in clips], dtype=torch.int64),
               "camera": torch.stack([clip_rays(c, size) for c in clips])}
