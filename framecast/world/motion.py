"""Motion over a long video, in windows: does a named object keep moving, the named way, bouncing?

`prompt.C.direction` (metrics.py) stops at C's first reflection, so over a minute it scores a few
dozen frames near the start and says nothing about an object that then sits still. These
measures look at the whole video in WINDOW-frame windows (non-overlapping; a last shorter window
of at least SPAN + 1 frames counts too):

  C.moving            share of windows in which C moves at least half the world's speed: the mean
                      over the window's frames t of |c[t + SPAN] − c[t]| / SPAN (centroids, both
                      frames present, t + SPAN inside the window) is ≥ 0.5 × SPEED px/frame (scaled
                      with the frame size). A SPAN-frame displacement, not the step length, so a
                      blob that jitters in place does not count as moving; a bounce inside a span
                      shortens it, but a world object bouncing once in a window still moves ≈ 0.75.
                      A window without one measurable span counts as still.
  C.moving_direction  over the steps t → t + 1 of the moving windows: the share that move the
                      expected way — ≥ MIN_STEP px along the named axis with the expected sign and
                      no more across it. The expected sign starts as the named one and flips when C
                      is seen turning back near the wall it was expected to reach (a bounce); a turn
                      in mid-air does not flip it, so the steps after it disagree until C turns again.
                      A step with C missing in either frame disagrees. Absent if no window moves.
  C.jumps             share of steps (C in both frames) longer than JUMP × the world's speed: the
                      world never moves a shape more than SPEED px a frame.

`moving`, `moving_direction` and `jumps` in `evaluate_video` are the means over the named objects
(for `moving_direction`, over those with a moving window).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from framecast.world.scenes import BASE_SIZE, DIRECTION_VECTORS, SPEED

WINDOW = 16       # frames per window
SPAN = 4          # frames over which a window's speed is measured
MIN_SPEED = 0.5   # share of the world's speed that counts as moving
JUMP = 3.0        # steps longer than this many times the world's speed are jumps
MIN_STEP = 0.25   # px at 32×32: least motion along the axis that counts as a step the named way


def windows(frames: int) -> list[range]:
    """The WINDOW-frame windows of a video of `frames` frames (the last may be shorter, ≥ SPAN + 1)."""
    out = [range(s, min(s + WINDOW, frames)) for s in range(0, frames, WINDOW)]
    return [w for w in out if len(w) > SPAN]


def window_speeds(centroids: Sequence[Optional[np.ndarray]]) -> list[Optional[float]]:
    """Per window: mean |c[t + SPAN] − c[t]| / SPAN over its measurable spans, px/frame (None: none)."""
    out = []
    for w in windows(len(centroids)):
        spans = [np.linalg.norm(centroids[t + SPAN] - centroids[t]) / SPAN
                 for t in range(w.start, w.stop - SPAN) if centroids[t] is not None and centroids[t + SPAN] is not None]
        out.append(float(np.mean(spans)) if spans else None)
    return out


def expected_signs(track: Sequence, axis: int, sign: int, extent: int, margin: float, min_step: float) -> list[int]:
    """Per step t → t + 1: the sign along `axis` a world object named to move `sign` would have now,
    flipped at each turn seen near the wall it was expected to reach (module docstring)."""
    expected, last, out = sign, 0, []
    for t in range(len(track) - 1):
        a, b = track[t], track[t + 1]
        if a is not None and b is not None:
            along = b.centroid[axis] - a.centroid[axis]
            if abs(along) >= min_step:
                turned = last and np.sign(along) != last
                lo, hi = a.bbox[axis], a.bbox[axis + 2]
                at_wall = hi >= extent - 1 - margin if expected > 0 else lo <= margin
                if turned and at_wall and np.sign(along) == -expected:
                    expected = -expected
                last = int(np.sign(along))
        else:
            last = 0
        out.append(expected)
    return out


def motion_metrics(track: Sequence, direction: str, height: int, width: int) -> dict[str, float]:
    """`track`: per frame the named object's detection (with .centroid (y, x) and .bbox) or None."""
    scale = width / BASE_SIZE
    speed, min_step = SPEED * scale, MIN_STEP * scale
    dy, dx = DIRECTION_VECTORS[direction]
    axis, sign = (0, dy) if dy else (1, dx)
    extent = (height, width)[axis]
    centroids = [np.array(d.centroid) if d is not None else None for d in track]
    speeds = window_speeds(centroids)
    moving = [s is not None and s >= MIN_SPEED * speed for s in speeds]
    out = {"moving": sum(moving) / len(moving) if moving else 0.0}
    steps = [float(np.linalg.norm(centroids[t + 1] - centroids[t])) for t in range(len(track) - 1)
             if centroids[t] is not None and centroids[t + 1] is not None]
    out["jumps"] = sum(s > JUMP * speed for s in steps) / len(steps) if steps else 0.0
    expected = expected_signs(track, axis, sign, extent, 2.0 * extent / BASE_SIZE, min_step)
    agree = counted = 0
    for w, move in zip(windows(len(track)), moving):
        if not move:
            continue
        for t in range(w.start, w.stop - 1):
            counted += 1
            if centroids[t] is None or centroids[t + 1] is None:
                continue
            d = centroids[t + 1] - centroids[t]
            along, across = d[axis] * expected[t], abs(d[1 - axis])
            agree += along >= min_step and across <= along
    if counted:
        out["moving_direction"] = agree / counted
    return out
