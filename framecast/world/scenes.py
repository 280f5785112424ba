"""The built-in world: bouncing coloured shapes on black, and a white player moved by actions.

Everything is drawn with hard edges in pure RGB primaries/secondaries, so `metrics.find_objects`
can recover every object by colour. All randomness comes from a `np.random.Generator` that the
caller passes (or seeds): the same seed gives the same clips, bit for bit.

Geometry at 32×32 (`size` = 64 doubles every length and speed, so a 64×64 clip is the same
world at twice the resolution):
- shapes: a circle, square or triangle of radius 3 px (a 7×7 bounding box) moving 1 px/frame
  left, right, up or down and reflecting off the walls (the velocity component flips). Positions
  live on a lattice of the speed, so a bounce lands exactly on the wall and turns in one frame.
  A clip's caption names each shape's initial direction; a shape starts at least 4 steps away
  from the wall it moves towards, so the caption is visibly true before the first bounce.
- player (play clips): a white 4×4 square moving 2 px per frame by an action in `ACTIONS`,
  stopping at the walls (clamped, so the last step before a wall may be shorter). The player
  is drawn over the shapes and does not collide with them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, Union

import numpy as np
import torch

from framecast.world.captions import ACTIONS, COLOURS, DIRECTIONS, MAX_OBJECTS, SHAPES, ObjectSpec, caption, \
    parse_prompt, tokenize

COLOUR_RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
              "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
PLAYER_RGB = (255, 255, 255)
DIRECTION_VECTORS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx)
ACTION_VECTORS = {"none": (0, 0), **DIRECTION_VECTORS}  # (dy, dx)

BASE_SIZE = 32      # the world's lengths below are given at this frame size
RADIUS = 3          # px at 32×32: a shape's bounding box is 2 * RADIUS + 1 = 7 px
SPEED = 1           # px/frame at 32×32
MIN_RUN = 4         # steps a shape travels in its captioned direction before it can first bounce
PLAYER_SIDE = 4     # px at 32×32
PLAYER_STEP = 2     # px/frame at 32×32

RngOrSeed = Union[np.random.Generator, int, None]


@dataclass
class ObjectTrack:
    colour: str
    shape: str
    direction: str          # initial direction (the one the caption names)
    radius: int             # px; the shape spans centre ± radius
    positions: np.ndarray   # (F, 2) int centre (y, x) in px
    velocities: np.ndarray  # (F, 2) int (dy, dx) px/frame: the step from frame f to f + 1, after any bounce at f


@dataclass
class Clip:
    frames: np.ndarray      # (F, H, W, 3) uint8
    caption: str
    objects: list[ObjectTrack]


@dataclass
class PlayClip:
    frames: np.ndarray      # (F, H, W, 3) uint8
    actions: list[str]      # (F,) actions[f] moved the player INTO frame f; actions[0] is always "none"
    player: np.ndarray      # (F, 2) int top-left (y, x) of the player in px
    player_side: int        # px
    objects: list[ObjectTrack] = field(default_factory=list)


def as_rng(rng_or_seed: RngOrSeed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def scale_of(size: int) -> int:
    if not isinstance(size, int) or size < BASE_SIZE or size % BASE_SIZE:
        raise ValueError(f"world frame size must be a multiple of {BASE_SIZE} (32 or 64), got {size!r}")
    return size // BASE_SIZE


@lru_cache(maxsize=None)
def shape_mask(shape: str, radius: int) -> np.ndarray:
    """(2r + 1, 2r + 1) bool footprint. Fill ratios of the bounding box: square 1.0, circle
    ≈ 0.76, triangle ≈ 0.51 (what `metrics.find_objects` tells them apart by)."""
    d = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    if shape == "square":
        m = np.ones_like(dy, dtype=bool)
    elif shape == "circle":
        m = dy ** 2 + dx ** 2 <= (radius + 0.5) ** 2  # +0.5: a rounder disc at small radii
    elif shape == "triangle":  # apex up: row i from the top has half-width floor(i / 2) (at any radius)
        m = np.abs(dx) <= (dy + radius) // 2
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    m.flags.writeable = False
    return m


def _bounds(size: int) -> tuple[int, int, int, int]:
    """(radius, speed, lo, hi): centre positions lo, lo + speed, ..., hi keep the shape inside the frame."""
    s = scale_of(size)
    radius, speed = RADIUS * s, SPEED * s
    lo = radius
    hi = lo + speed * ((size - 1 - radius - lo) // speed)
    return radius, speed, lo, hi


def _bounce(start: np.ndarray, velocity: np.ndarray, frames: int, lo: int, hi: int):
    """Straight-line motion reflecting off [lo, hi] on each axis -> positions, velocities (F, 2)."""
    pos, vel = start.copy(), velocity.copy()
    positions = np.empty((frames, 2), dtype=np.int64)
    velocities = np.empty((frames, 2), dtype=np.int64)
    for f in range(frames):
        positions[f] = pos
        vel = np.where((pos >= hi) & (vel > 0), -vel, vel)  # at a wall: turn before stepping away
        vel = np.where((pos <= lo) & (vel < 0), -vel, vel)
        velocities[f] = vel
        pos = pos + vel
    return positions, velocities


def start_lattice(direction: str, size: int = 32) -> tuple[range, range]:
    """The centre rows and columns (px) a shape moving `direction` may start on: the speed's
    lattice inside the walls, at least MIN_RUN steps from the wall it moves towards."""
    _, speed, lo, hi = _bounds(size)
    steps = (hi - lo) // speed
    lattice = []
    for v in DIRECTION_VECTORS[direction]:
        k_lo, k_hi = (MIN_RUN if v < 0 else 0), (steps - MIN_RUN if v > 0 else steps)
        lattice.append(range(lo + speed * k_lo, lo + speed * k_hi + 1, speed))
    return lattice[0], lattice[1]


def place_track(spec: ObjectSpec, start: tuple[int, int], frames: int, size: int = 32) -> ObjectTrack:
    """The track of `spec` from centre `start` (y, x), a point of `start_lattice`."""
    radius, speed, lo, hi = _bounds(size)
    vel = np.array(DIRECTION_VECTORS[spec.direction]) * speed
    positions, velocities = _bounce(np.array(start, dtype=np.int64), vel, frames, lo, hi)
    return ObjectTrack(spec.colour, spec.shape, spec.direction, radius, positions, velocities)


def _track(rng: np.random.Generator, spec: ObjectSpec, frames: int, size: int, offset: int = 0) -> ObjectTrack:
    """A random track of `spec`, seen from frame `offset` of its video on (`offset` frames later)."""
    rows, cols = start_lattice(spec.direction, size)
    start = tuple(axis[int(rng.integers(len(axis)))] for axis in (rows, cols))
    track = place_track(spec, start, offset + frames, size)
    track.positions, track.velocities = track.positions[offset:], track.velocities[offset:]
    return track


def bounce_period(size: int = 32) -> int:
    """Frames after which a bouncing shape's motion repeats (there and back across the frame):
    windows starting at offsets 0 .. period - 1 of a video cover every phase of its motion."""
    _, speed, lo, hi = _bounds(size)
    return 2 * (hi - lo) // speed


def _draw(frames: np.ndarray, track: ObjectTrack) -> None:
    mask, r = shape_mask(track.shape, track.radius), track.radius
    rgb = np.array(COLOUR_RGB[track.colour], dtype=np.uint8)
    for f, (y, x) in enumerate(track.positions):
        frames[f, y - r:y + r + 1, x - r:x + r + 1][mask] = rgb


def render_tracks(tracks: list[ObjectTrack], frames: int, size: int) -> np.ndarray:
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)  # (F, H, W, 3)
    for t in tracks:  # later objects are drawn over earlier ones where they cross
        _draw(video, t)
    return video


def _random_specs(rng: np.random.Generator, n: int) -> list[ObjectSpec]:
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    return [ObjectSpec(COLOURS[c], SHAPES[rng.integers(len(SHAPES))], DIRECTIONS[rng.integers(len(DIRECTIONS))])
            for c in colours]


def _check_frames(frames: int) -> None:
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")


def _check_offset(offset: int) -> None:
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, got {offset!r}")


def sample_clip(rng_or_seed: RngOrSeed, frames: int, size: int = 32, offset: int = 0) -> Clip:
    """A random captioned clip: 1-2 shapes in distinct colours. frames: (F, size, size, 3) uint8.
    `offset` > 0: frames offset .. offset + F - 1 of such a video (shapes may be anywhere in their
    bouncing, even at or past a wall); the caption still names each shape's direction at frame 0,
    as a video's caption does for all of it."""
    _check_frames(frames)
    _check_offset(offset)
    rng = as_rng(rng_or_seed)
    specs = _random_specs(rng, int(rng.integers(1, MAX_OBJECTS + 1)))
    tracks = [_track(rng, s, frames, size, offset) for s in specs]
    return Clip(render_tracks(tracks, frames, size), caption(specs), tracks)


def render_prompt_clip(prompt: str, frames: int, seed: RngOrSeed, size: int = 32) -> Clip:
    """A clip that satisfies `prompt` exactly (placement drawn from `seed`); its caption is the
    prompt in the canonical grammar."""
    _check_frames(frames)
    specs = parse_prompt(prompt)
    rng = as_rng(seed)
    tracks = [_track(rng, s, frames, size) for s in specs]
    return Clip(render_tracks(tracks, frames, size), caption(specs), tracks)


def random_actions(rng: np.random.Generator, frames: int, repeat_prob: float = 0.8) -> list[str]:
    """The play clips' action rule: actions[0] = "none"; each later action repeats the previous one
    with probability `repeat_prob`, else is drawn uniformly from ACTIONS (actions[1] always drawn)."""
    actions = ["none"]
    for f in range(1, frames):
        keep = f > 1 and rng.random() < repeat_prob
        actions.append(actions[-1] if keep else ACTIONS[rng.integers(len(ACTIONS))])
    return actions


def sample_play_clip(rng_or_seed: RngOrSeed, frames: int, size: int = 32, repeat_prob: float = 0.8,
                     offset: int = 0) -> PlayClip:
    """A white player moved by random actions among 0-2 bouncing shapes.

    actions[f] is the action that moved the player from frame f - 1 INTO frame f; actions[0] is
    "none" (frame 0 is the start). Each later action repeats the previous one with probability
    `repeat_prob`, else is drawn uniformly from ACTIONS (actions[1] is always drawn). `offset` > 0
    shows the shapes `offset` frames into their motion (as later in a long rollout: at walls,
    bouncing); the player starts anywhere either way."""
    _check_frames(frames)
    _check_offset(offset)
    if not 0.0 <= repeat_prob <= 1.0:
        raise ValueError(f"repeat_prob must lie in [0, 1], got {repeat_prob!r}")
    rng = as_rng(rng_or_seed)
    s = scale_of(size)
    side, step = PLAYER_SIDE * s, PLAYER_STEP * s
    specs = _random_specs(rng, int(rng.integers(0, MAX_OBJECTS + 1)))
    tracks = [_track(rng, sp, frames, size, offset) for sp in specs]

    actions = random_actions(rng, frames, repeat_prob)
    player = np.empty((frames, 2), dtype=np.int64)
    player[0] = rng.integers(0, size - side + 1, size=2)
    for f in range(1, frames):
        player[f] = np.clip(player[f - 1] + np.array(ACTION_VECTORS[actions[f]]) * step, 0, size - side)

    video = render_tracks(tracks, frames, size)
    for f, (y, x) in enumerate(player):  # drawn last: the player is never hidden
        video[f, y:y + side, x:x + side] = PLAYER_RGB
    return PlayClip(video, actions, player, side, tracks)


def to_model_video(frames_FHWC: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (3, F, H, W) in [-1, 1]; `video_io.to_uint8` inverts it exactly."""
    return torch.from_numpy(frames_FHWC).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def clip_batches(seed: int, batch: int, frames: int, size: int = 32, play: bool = False,
                 repeat_prob: float = 0.8, offset_prob: float = 0.0) -> Iterator[tuple[list, list[int]]]:
    """The clips behind `world_batches` (same arguments, same draws): (clips, offsets) per batch,
    for streams that need more of a clip than its pixels (its tracks: world/audio.py)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch!r}")
    if not 0.0 <= offset_prob <= 1.0:
        raise ValueError(f"offset_prob must lie in [0, 1], got {offset_prob!r}")
    rng = np.random.default_rng(seed)
    period = bounce_period(size)
    while True:
        offsets = [0] * batch
        if offset_prob > 0:
            offsets = [int(rng.integers(1, period)) if rng.random() < offset_prob else 0 for _ in range(batch)]
        if play:
            yield [sample_play_clip(rng, frames, size, repeat_prob, o) for o in offsets], offsets
        else:
            yield [sample_clip(rng, frames, size, o) for o in offsets], offsets


def world_batches(seed: int, batch: int, frames: int, size: int = 32, play: bool = False,
                  repeat_prob: float = 0.8, offset_prob: float = 0.0) -> Iterator[dict[str, torch.Tensor]]:
    """Infinite training batches, deterministic for a given seed.

    `offset_prob`: the share of clips that are windows from later in their video, at an offset
    drawn uniformly from 1 .. bounce_period - 1 (so shapes are seen at walls and bouncing); the
    rest start at frame 0. At 0 no offsets are drawn: the stream is that of earlier versions.

    yields {"video": float32 (B, 3, F, H, W) in [-1, 1],
            "offsets": int64 (B,)          each clip's first frame in its video,
            "tokens": int64 (B, 16)}      caption ids (text clips), or
           {"video": ..., "offsets": ..., "actions": int64 (B, F)}  indices into ACTIONS (play clips)."""
    for clips, offsets in clip_batches(seed, batch, frames, size, play, repeat_prob, offset_prob):
        if play:
            cond = {"actions": torch.tensor([[ACTIONS.index(a) for a in c.actions] for c in clips],
                                            dtype=torch.int64)}
        else:
            cond = {"tokens": torch.tensor([tokenize(c.caption) for c in clips], dtype=torch.int64)}
        yield {"video": torch.stack([to_model_video(c.frames) for c in clips]),
               "offsets": torch.tensor(offsets, dtype=torch.int64), **cond}
