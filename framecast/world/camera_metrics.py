"""Camera following: does the image motion of still objects match the requested camera motion?

For each frame step f -> f + 1 and each colour seen in frame f (its largest component, by
metrics.detect_video), the measured motion m is the step from its centroid to the nearest
component of that colour in frame f + 1; the expected motion e is where the camera moves the
plane point under that centroid: unproject it from frame f's camera onto the world's plane
(depth 1, camera_scenes.py), project it into frame f + 1's camera. Pans give a uniform e
(speed px/frame against the move: pan-left moves the scene right), zooms a radial e (outwards
for zoom-in), still e = 0. A component touching the frame's border in either frame is skipped
(a shape half out of view has a shifted centroid).

    direction  share of the steps with |e| >= MIN_EXPECTED whose m points within 45 degrees of e
               (m = 0 disagrees); undefined for still
    speed_err  mean | |m| - |e| | over all measured steps, px/frame
    epe        mean |m - e| (end-point error), px/frame
    measured   measured steps / (frame steps x objects the prompt names): how much could be measured

Shape legend: F frames, N points.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from framecast.models.camera_poses import Poses
from framecast.world.camera_scenes import image_points, plane_points
from framecast.world.metrics import detect_video

MIN_EXPECTED = 0.25  # px/frame: expected motion below this has no direction
COS_45 = np.cos(np.pi / 4)


def expected_flow(poses: Poses, f: int, yx_N2: np.ndarray, height: int, width: int) -> np.ndarray:
    """Image motion (dy, dx) from frame f to f + 1 of plane points seen at `yx_N2` (continuous px)."""
    plane = plane_points(poses.K_F33[f], poses.c2w_F44[f], yx_N2, width, height)
    return image_points(poses.K_F33[f + 1], poses.c2w_F44[f + 1], plane, width, height) - yx_N2


def _interior(d, height: int, width: int) -> bool:
    y0, x0, y1, x1 = d.bbox
    return y0 > 0 and x0 > 0 and y1 < height - 1 and x1 < width - 1


def motion_steps(frames: np.ndarray, poses: Poses, colours: Optional[set[str]] = None) -> list[dict]:
    """Per measured (step, colour): {"f", "colour", "measured": (dy, dx), "expected": (dy, dx)}.
    `colours`: only these (default: every colour but white)."""
    frames = np.asarray(frames)
    f_total, height, width = frames.shape[:3]
    if len(poses) < f_total:
        raise ValueError(f"{len(poses)} poses for {f_total} frames")
    dets = detect_video(frames)
    steps = []
    for f in range(f_total - 1):
        seen: set[str] = set()
        for d in dets[f]:  # largest first: the largest component of each colour
            if d.colour == "white" or d.colour in seen or (colours is not None and d.colour not in colours):
                continue
            seen.add(d.colour)
            if not _interior(d, height, width):
                continue
            after = [n for n in dets[f + 1] if n.colour == d.colour and _interior(n, height, width)]
            if not after:
                continue
            c = np.array(d.centroid)
            nxt = min(after, key=lambda n: float(np.hypot(*(np.array(n.centroid) - c))))
            e = expected_flow(poses, f, (c + 0.5)[None], height, width)[0]   # centroid of pixel centres
            steps.append({"f": f, "colour": d.colour, "measured": tuple(np.array(nxt.centroid) - c),
                          "expected": tuple(e)})
    return steps


def camera_follow(frames: np.ndarray, poses: Poses, objects: Optional[int] = None,
                  colours: Optional[set[str]] = None) -> dict:
    """The camera-following scores of a video (module docstring); `objects`: how many the prompt
    names (for `measured`; default: the colours measured)."""
    steps = motion_steps(frames, poses, colours)
    m = np.array([s["measured"] for s in steps]).reshape(-1, 2)
    e = np.array([s["expected"] for s in steps]).reshape(-1, 2)
    nm, ne = np.linalg.norm(m, axis=1), np.linalg.norm(e, axis=1)
    out = {"steps": len(steps)}
    n_obj = objects if objects is not None else len({s["colour"] for s in steps})
    out["measured"] = len(steps) / max(1, (len(frames) - 1) * n_obj)
    if len(steps):
        out["speed_err"] = float(np.abs(nm - ne).mean())
        out["epe"] = float(np.linalg.norm(m - e, axis=1).mean())
        moving = ne >= MIN_EXPECTED
        if moving.any():
            cos = (m[moving] * e[moving]).sum(1) / np.maximum(nm[moving] * ne[moving], 1e-12)
            out["direction"] = float(np.mean((nm[moving] > 0) & (cos >= COS_45)))
    return out
