"""Quality metrics for videos of the built-in world, read off the pixels by colour.

Detection: every pixel is snapped to the nearest of black, white and the six world colours; the
4-connected components of each non-black colour with at least `min_area` pixels are objects
(`find_objects`). Within a frame, the object of a colour is its largest component; the player is
the largest white one. A component's shape is guessed from how much of its bounding box it fills
(the world draws squares at 1.0, circles ≈ 0.76-0.81, triangles ≈ 0.5).

`evaluate_video` returns a flat dict of plain floats (JSON-ready); keys that cannot be defined for
a video (e.g. acceleration of an object never seen in three consecutive frames) are left out.

Whole video
  frames, objects        F; size of the modal set of colours (objects per frame)
  count_stability        fraction of frames whose set of colours equals the modal set
  colour_identity        fraction of frame steps t -> t + 1 whose set of colours is unchanged
  presence               mean of C.presence over the tracked colours (modal set + named colours)
  accel, max_jump        mean of C.accel; max of C.max_jump
  wall_return            over the tracked shapes, returns / arrivals (C.wall_return pooled);
                         present only if some shape arrived at a wall
With seams (frames where a schedule's block or chunk begins; `seams=`)
  seam_jump, inner_jump  largest centroid step of a tracked colour into a seam frame (t - 1 -> t,
                         t a seam) and at every other step, px; each only if such a step exists
Per tracked colour C
  C.presence             fraction of frames where C is found
  C.accel                mean |c[t+1] - 2 c[t] + c[t-1]| of the centroid, px/frame² (3 frames present);
                         0 for constant velocity, 2 × speed at each bounce
  C.max_jump             largest centroid step |c[t+1] - c[t]|, px (2 frames present)
  C.shape_consistency    fraction of present frames whose shape guess is C's most common guess
  C.bounce_consistency   fraction of consecutive moving steps (≥ 0.25 px) that keep their sign on
                         each moving axis or reverse it only within 2 px per 32 px of frame of the
                         wall they were heading for (bounces reflect; no turning in mid-air);
                         not for white (the player turns when the actions say so)
  C.wall_arrivals        steps that move C ≥ 0.25 px towards a wall and end with it at that wall
                         (bounding box within 2 px per 32 px of frame), with 3 more steps in the
                         video; not for white
  C.wall_return          of those arrivals, the fraction followed within 3 steps by a step of
                         ≥ 0.25 px away from that wall: the shape bounced, rather than stopping,
                         fading or jumping elsewhere (a missing frame counts as no bounce);
                         only when C arrived at a wall at least once
With a prompt (for each named object C)
  prompt.C.present       fraction of frames where C is found
  prompt.C.shape         fraction of ALL frames where C is found with the named shape
  prompt.C.direction     fraction of the steps t -> t + 1 up to C's first reflection where C moves
                         the named way: ≥ 0.25 px along the named axis with its sign, and no more
                         across it. The first reflection is the first step that turns back within
                         2 px per 32 px of frame of the wall C was seen heading for; it is the last
                         step counted, and agrees if that wall is the named one (after a bounce the
                         motion no longer tells which way was named: C.bounce_consistency covers
                         the rest). A turn before C was seen moving is no reflection (the world
                         starts shapes ≥ 4 steps from the wall they head for). A step with C
                         missing in either frame counts and disagrees.
  prompt.exact_colours   fraction of frames whose colour set is exactly the named colours
  adherence              mean over named objects of mean(present, shape, direction), in [0, 1]
  prompt.C.moving, prompt.C.moving_direction, prompt.C.jumps
                         motion over the whole video in 16-frame windows (motion.py); `moving`,
                         `moving_direction`, `jumps`: their means over the named objects
With actions (one per frame; actions[t] moves the player INTO frame t, so actions[0] is unused)
  player.presence        fraction of frames with a white component
  player.duplicates      fraction of frames with more than one white component
  action_follow          over steps t - 1 -> t (t ≥ 1) whose actions[t] does not press into a wall
                         the player touches at t - 1 (bounding box within 1 px of it): fraction where
                         the player centroid moved ≥ 0.5 px the pressed way and ≤ 0.5 px across it
                         ("none": ≤ 0.5 px either way); a step with the player missing counts as
                         not followed
  action_steps           number of steps that action_follow counts
  player.wall_stop       of the steps pressing into a touched wall, the fraction where the player
                         did not move through it (≤ 0.5 px that way); present only if there were any
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from framecast.world.captions import ACTIONS, COLOURS, parse_prompt
from framecast.world.motion import motion_metrics
from framecast.world.scenes import ACTION_VECTORS, COLOUR_RGB, DIRECTION_VECTORS, PLAYER_RGB

PALETTE_NAMES = ("black", "white") + COLOURS
PALETTE = np.array([(0, 0, 0), PLAYER_RGB] + [COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)  # (8, 3)

SQUARE_FILL, CIRCLE_FILL = 0.88, 0.63  # fill-ratio thresholds between the world's 1.0 / ~0.78 / ~0.5
MIN_STEP = 0.25      # px: least centroid motion that counts as moving (prompt direction)
ACTION_TOL = 0.5     # px: least motion for a pressed action; most motion across it or for "none"


@dataclass(frozen=True)
class Detection:
    colour: str                           # a name in COLOURS, or "white"
    centroid: tuple[float, float]         # (y, x) px
    area: int                             # pixels
    shape_guess: str                      # "square" | "circle" | "triangle" by fill ratio
    bbox: tuple[int, int, int, int]       # (y0, x0, y1, x1), inclusive
    fill: float                           # area / bounding-box area


def default_min_area(height: int, width: int) -> int:
    """8 px at 32×32 (a world shape has 25-49), scaled with the frame area."""
    return max(4, round(8 * height * width / (32 * 32)))


def classify(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> int8 (...) index into PALETTE_NAMES of the nearest palette colour."""
    x = np.asarray(frames, dtype=np.float32)
    # argmin |x - p|² = argmin (|p|² - 2 x·p): one small matmul instead of an (..., 8, 3) difference
    score = (PALETTE ** 2).sum(-1) - 2.0 * (x @ PALETTE.T)
    return score.argmin(-1).astype(np.int8)


def label_components(cls_FHW: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-black class within each frame.

    (F, H, W) classes -> (F, H, W) int64 labels: the smallest flat pixel index in the component,
    -1 on black. Min-label propagation with pointer jumping (pure numpy, a few dozen passes)."""
    F, H, W = cls_FHW.shape
    n = F * H * W
    fg = cls_FHW != 0
    lab = np.where(fg, np.arange(n).reshape(F, H, W), n)
    join_x = fg[:, :, 1:] & (cls_FHW[:, :, 1:] == cls_FHW[:, :, :-1])  # pixel and its left neighbour
    join_y = fg[:, 1:, :] & (cls_FHW[:, 1:, :] == cls_FHW[:, :-1, :])  # pixel and the one above
    while True:
        new = lab.copy()
        new[:, :, 1:] = np.where(join_x, np.minimum(new[:, :, 1:], lab[:, :, :-1]), new[:, :, 1:])
        new[:, :, :-1] = np.where(join_x, np.minimum(new[:, :, :-1], lab[:, :, 1:]), new[:, :, :-1])
        new[:, 1:, :] = np.where(join_y, np.minimum(new[:, 1:, :], lab[:, :-1, :]), new[:, 1:, :])
        new[:, :-1, :] = np.where(join_y, np.minimum(new[:, :-1, :], lab[:, 1:, :]), new[:, :-1, :])
        flat = new.reshape(-1)
        on = flat < n
        for _ in range(2):  # a label is a pixel of the same component: follow it to its own label
            flat[on] = flat[flat[on]]
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(fg, lab, -1)


def _shape_guess(fill: float) -> str:
    return "square" if fill >= SQUARE_FILL else "circle" if fill >= CIRCLE_FILL else "triangle"


def detect_video(frames: np.ndarray, min_area: Optional[int] = None) -> list[list[Detection]]:
    """uint8 (F, H, W, 3) -> per frame, the components of ≥ min_area pixels, largest first."""
    frames = _check_video(frames)
    F, H, W, _ = frames.shape
    min_area = default_min_area(H, W) if min_area is None else min_area
    cls = classify(frames)
    lab = label_components(cls).reshape(-1)
    pix = np.flatnonzero(lab >= 0)
    out: list[list[Detection]] = [[] for _ in range(F)]
    if pix.size == 0:
        return out
    order = np.argsort(lab[pix], kind="stable")
    pix = pix[order]
    comp = lab[pix]
    starts = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1]])
    area = np.diff(np.r_[starts, comp.size])
    keep = area >= min_area
    f_idx, rem = np.divmod(pix, H * W)
    y, x = np.divmod(rem, W)
    stats = {name: fn.reduceat(v, starts)[keep] for name, fn, v in
             (("y0", np.minimum, y), ("y1", np.maximum, y), ("x0", np.minimum, x), ("x1", np.maximum, x),
              ("sy", np.add, y), ("sx", np.add, x))}
    area, rep = area[keep], comp[starts][keep]
    frame_of, colour_of = f_idx[starts][keep], cls.reshape(-1)[rep]
    for i in range(area.size):
        box = (stats["y1"][i] - stats["y0"][i] + 1) * (stats["x1"][i] - stats["x0"][i] + 1)
        fill = float(area[i] / box)
        out[int(frame_of[i])].append(Detection(
            PALETTE_NAMES[int(colour_of[i])], (float(stats["sy"][i] / area[i]), float(stats["sx"][i] / area[i])),
            int(area[i]), _shape_guess(fill),
            (int(stats["y0"][i]), int(stats["x0"][i]), int(stats["y1"][i]), int(stats["x1"][i])), fill))
    for dets in out:
        dets.sort(key=lambda d: -d.area)
    return out


def find_objects(frame: np.ndarray, min_area: Optional[int] = None) -> list[Detection]:
    """uint8 (H, W, 3) -> its coloured and white components of ≥ min_area pixels, largest first."""
    frame = np.asarray(frame)
    if frame.ndim != 3:
        raise ValueError(f"find_objects expects one frame (H, W, 3), got shape {frame.shape}")
    return detect_video(frame[None], min_area)[0]


def _check_video(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"expected uint8 frames (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    return frames


def _largest_by_colour(dets: list[Detection]) -> dict[str, Detection]:
    out: dict[str, Detection] = {}
    for d in dets:  # largest first
        out.setdefault(d.colour, d)
    return out


def _track_metrics(track: list[Optional[Detection]], height: int, width: int,
                   bounces: bool = True) -> dict[str, float]:
    F = len(track)
    present = [d is not None for d in track]
    m = {"presence": sum(present) / F}
    c = [np.array(d.centroid) if d is not None else None for d in track]
    jumps = [float(np.linalg.norm(c[t + 1] - c[t])) for t in range(F - 1) if present[t] and present[t + 1]]
    accels = [float(np.linalg.norm(c[t + 1] - 2 * c[t] + c[t - 1])) for t in range(1, F - 1)
              if present[t - 1] and present[t] and present[t + 1]]
    if accels:
        m["accel"] = float(np.mean(accels))
    if jumps:
        m["max_jump"] = max(jumps)
    bounce = _bounce_consistency(track, height, width) if bounces else None
    if bounce is not None:
        m["bounce_consistency"] = bounce
    if bounces:
        arrivals, returns = _wall_returns(track, height, width)
        m["wall_arrivals"] = arrivals
        if arrivals:
            m["wall_return"] = returns / arrivals
    shapes = [d.shape_guess for d in track if d is not None]
    if shapes:
        m["shape_consistency"] = Counter(shapes).most_common(1)[0][1] / len(shapes)
    return m


def _near_wall(d: Detection, axis: int, sign: float, extent: int) -> bool:
    """Is the bounding box within `margin` of the wall on side `sign` of `axis`?"""
    margin = 2.0 * extent / 32  # a generated bounce may turn a pixel or two short of the wall
    return d.bbox[axis + 2] >= extent - 1 - margin if sign > 0 else d.bbox[axis] <= margin


def _direction_agreement(track: list[Optional[Detection]], direction: str, height: int, width: int) -> float:
    """Fraction of steps up to the first reflection that move the named way (module docstring)."""
    dy, dx = DIRECTION_VECTORS[direction]
    axis, sign = (0, dy) if dy else (1, dx)
    extent = (height, width)[axis]
    heading = 0  # the way it was last seen moving along the axis (0: not yet seen moving)
    agree = steps = 0
    for t in range(len(track) - 1):
        a, b = track[t], track[t + 1]
        steps += 1
        if a is None or b is None:
            continue
        d = np.subtract(b.centroid, a.centroid)
        along, across = d[axis], abs(d[1 - axis])
        if heading and -along * heading >= MIN_STEP and _near_wall(a, axis, heading, extent):
            # the first reflection: after it, the motion no longer tells which way was named
            agree += heading == sign  # bounced off the wall it was named to move to: agrees
            break
        agree += along * sign >= MIN_STEP and across <= along * sign
        if abs(along) >= MIN_STEP:
            heading = np.sign(along)
    return agree / max(1, steps)


def _bounce_consistency(track: list[Optional[Detection]], height: int, width: int) -> Optional[float]:
    """Fraction of consecutive moving steps that keep their direction on each moving axis, or
    reverse it only near the wall they were heading for."""
    ok = pairs = 0
    prev = None  # (detection at the start of the last moving step, that step)
    for t in range(len(track) - 1):
        a, b = track[t], track[t + 1]
        if a is None or b is None:
            prev = None
            continue
        d = np.subtract(b.centroid, a.centroid)
        if np.abs(d).max() < MIN_STEP:
            continue
        if prev is not None:
            pd = prev
            good = True
            for axis, extent in ((0, height), (1, width)):
                if abs(pd[axis]) >= MIN_STEP and d[axis] * pd[axis] < 0:
                    good &= _near_wall(a, axis, np.sign(pd[axis]), extent)
            ok += good
            pairs += 1
        prev = d
    return ok / pairs if pairs else None


def _wall_returns(track: list[Optional[Detection]], height: int, width: int, within: int = 3) -> tuple[int, int]:
    """(arrivals, returns): steps that move C towards a wall and end at it, and how many of them
    are followed within `within` steps by a step away from that wall. After an arrival the next
    one is looked for from the step after its return (or after the `within` steps)."""
    arrivals = returns = 0
    t = 1
    while t + within < len(track):  # an arrival counts only with `within` steps left to return in
        a, b = track[t - 1], track[t]
        wall = None
        if a is not None and b is not None:
            d = np.subtract(b.centroid, a.centroid)
            for axis, extent in ((0, height), (1, width)):
                if abs(d[axis]) >= MIN_STEP and _near_wall(b, axis, np.sign(d[axis]), extent):
                    wall = axis, np.sign(d[axis])
        if wall is None:
            t += 1
            continue
        axis, sign = wall
        arrivals += 1
        back = next((u for u in range(t, t + within)
                     if track[u] is not None and track[u + 1] is not None
                     and (track[u + 1].centroid[axis] - track[u].centroid[axis]) * sign <= -MIN_STEP), None)
        returns += back is not None
        t = (back if back is not None else t + within) + 2
    return arrivals, returns


def _action_metrics(frames_dets: list[list[Detection]], actions: Sequence[str], height: int, width: int) -> dict:
    F = len(frames_dets)
    if len(actions) != F:
        raise ValueError(f"got {len(actions)} actions for a video of {F} frames; give one action per frame "
                         f"(actions[t] moves the player into frame t)")
    bad = sorted({a for a in actions if a not in ACTIONS}, key=list(actions).index)
    if bad:
        raise ValueError(f"unknown action(s) {', '.join(map(repr, bad))}; actions: {', '.join(ACTIONS)}")
    whites = [[d for d in dets if d.colour == "white"] for dets in frames_dets]
    player = [w[0] if w else None for w in whites]
    m = {"player.presence": sum(p is not None for p in player) / F,
         "player.duplicates": sum(len(w) > 1 for w in whites) / F}
    followed = counted = stopped = at_wall = 0
    for t in range(1, F):
        a, b = player[t - 1], player[t]
        vy, vx = ACTION_VECTORS[actions[t]]
        pressing_wall = a is not None and (
            (vy < 0 and a.bbox[0] <= 1) or (vy > 0 and a.bbox[2] >= height - 2)
            or (vx < 0 and a.bbox[1] <= 1) or (vx > 0 and a.bbox[3] >= width - 2))
        d = np.subtract(b.centroid, a.centroid) if a is not None and b is not None else None
        if pressing_wall:
            at_wall += 1
            if d is not None:
                stopped += (d[0] * vy + d[1] * vx) <= ACTION_TOL
            continue
        counted += 1
        if d is None:
            continue
        if actions[t] == "none":
            followed += bool(np.abs(d).max() <= ACTION_TOL)
        else:
            along, across = d[0] * vy + d[1] * vx, abs(d[0] * vx) + abs(d[1] * vy)
            followed += along >= ACTION_TOL and across <= ACTION_TOL
    m["action_follow"] = followed / counted if counted else 0.0
    m["action_steps"] = float(counted)
    if at_wall:
        m["player.wall_stop"] = stopped / at_wall
    return m


def _seam_jumps(tracks: list[list[Optional[Detection]]], seams: Sequence[int]) -> dict[str, float]:
    """Largest centroid step into a seam frame and elsewhere, over the tracks (module docstring)."""
    seam_steps = {t for t in seams if t >= 1}
    at_seam, inside = [], []
    for track in tracks:
        for t in range(1, len(track)):
            if track[t - 1] is not None and track[t] is not None:
                step = float(np.linalg.norm(np.subtract(track[t].centroid, track[t - 1].centroid)))
                (at_seam if t in seam_steps else inside).append(step)
    return {**({"seam_jump": max(at_seam)} if at_seam else {}), **({"inner_jump": max(inside)} if inside else {})}


def evaluate_video(frames: np.ndarray, prompt: Optional[str] = None, actions: Optional[Sequence[str]] = None,
                   min_area: Optional[int] = None, seams: Optional[Sequence[int]] = None) -> dict[str, float]:
    """uint8 (F, H, W, 3) -> the metrics in the module docstring (plain floats). `seams`: video
    frames where a schedule's block or chunk begins (adds seam_jump and inner_jump)."""
    frames = _check_video(frames)
    F, H, W, _ = frames.shape
    specs = parse_prompt(prompt) if prompt is not None else []
    dets = detect_video(frames, min_area)
    by_colour = [_largest_by_colour(d) for d in dets]
    sets = [frozenset(b) for b in by_colour]
    modal = Counter(sets).most_common(1)[0][0]
    tracked = sorted(modal, key=PALETTE_NAMES.index)
    tracked += [s.colour for s in specs if s.colour not in tracked]

    out: dict[str, float] = {"frames": float(F), "objects": float(len(modal)),
                             "count_stability": sum(s == modal for s in sets) / F,
                             "colour_identity": sum(sets[t] == sets[t + 1] for t in range(F - 1)) / max(1, F - 1)}
    # the player (white) turns whenever the actions say so: no bounce consistency for it
    per = {c: _track_metrics([b.get(c) for b in by_colour], H, W, bounces=c != "white") for c in tracked}
    out["presence"] = float(np.mean([per[c]["presence"] for c in tracked])) if tracked else 0.0
    accels = [per[c]["accel"] for c in tracked if "accel" in per[c]]
    jumps = [per[c]["max_jump"] for c in tracked if "max_jump" in per[c]]
    if accels:
        out["accel"] = float(np.mean(accels))
    if jumps:
        out["max_jump"] = float(max(jumps))
    arrivals = sum(per[c].get("wall_arrivals", 0) for c in tracked)
    if arrivals:
        out["wall_return"] = sum(per[c].get("wall_return", 0) * per[c].get("wall_arrivals", 0)
                                 for c in tracked) / arrivals
    for c in tracked:
        out.update({f"{c}.{k}": float(v) for k, v in per[c].items()})
    if seams is not None:
        out.update(_seam_jumps([[b.get(c) for b in by_colour] for c in tracked], seams))

    if specs:
        scores, motion = [], []
        for s in specs:
            track = [b.get(s.colour) for b in by_colour]
            present = sum(d is not None for d in track) / F
            shape = sum(d is not None and d.shape_guess == s.shape for d in track) / F
            direction = _direction_agreement(track, s.direction, H, W)
            out.update({f"prompt.{s.colour}.present": present, f"prompt.{s.colour}.shape": shape,
                        f"prompt.{s.colour}.direction": direction})
            motion.append(motion_metrics(track, s.direction, H, W))
            out.update({f"prompt.{s.colour}.{k}": v for k, v in motion[-1].items()})
            scores.append((present + shape + direction) / 3)
        named = frozenset(s.colour for s in specs)
        out["prompt.exact_colours"] = sum(s == named for s in sets) / F
        out["adherence"] = float(np.mean(scores))
        for key in ("moving", "moving_direction", "jumps"):
            values = [m[key] for m in motion if key in m]
            if values:
                out[key] = float(np.mean(values))
    if actions is not None:
        out.update({k: float(v) for k, v in _action_metrics(dets, list(actions), H, W).items()})
    return {k: float(v) for k, v in out.items()}
