"""VDT's tasks against the world's ground truth, beside trivial baselines (issue 30 item 4).

    python bench/vdt_tasks.py [--weights DIR_OR_FILE] [--clips 16] [--seed 0] [--clip-seed 10000]
                              [--out bench/results/vdt_tasks.json] [KEY=VALUE ...]

One Engine of the `tiny-vdt` preset (`model.weights=--weights`; "" = random init, the floor),
reused for every clip and task. Clip i is `sample_clip(clip_seed + i, F)` (F = the preset's window,
8 frames; offset 0, so the caption's directions hold for at least 4 steps): a seed, and an rng
stream, that training never used (`world_batches` draws all its clips from one stream of the
training seed). The world is small (1-2 shapes on a lattice), so a held-out clip is new as a draw,
not necessarily as content. Every task of clip i runs with the clip's caption as prompt and
generation seed `--seed` + i (the same for all tasks of a clip); its condition comes from the clip:

  predict      frames 0-3 given            -> 4-7 generated
  backward     frames 4-7 given            -> 0-3 generated
  interpolate  the keyframes 0 and 4 given (the task schedule's condition form: ceil(F / 4)
               keyframes, placed at 0, 4, ...) -> 1-3 and 5-7 generated (5-7 extrapolated)
  animate      frame 0 given               -> 1-7 generated (schedule.task.animate_frame = 0)
  complete     all frames given outside `--box` (default box:8,8,24,24, the centre 16x16 on the
               4x4 patch grid, on every frame) -> the box generated
  unconditional  nothing given (world metrics only)

The mask of each run is the engine's own (`engine.schedule.layout(request)`), so the model's
given/generated split and the one scored here are the same; `given_exact` (JSON) checks that the
given region of each output equals the clip, pixel for pixel.

Rows: each task with the VDT, and its baselines computed on the same clip and mask without any
model: `repeat` (each generated frame is the nearest given frame; ties go to the earlier one) for
predict, backward, interpolate and animate; `blend` for interpolate (per-pixel linear blend, in
uint8 pixel space rounded half to even, of the two given frames around a frame; a frame with given
frames on one side only repeats the nearest, so frames 5-7 are as in `repeat`); `mean-fill` for
complete (the box of each frame filled with the rounded mean colour of that frame's given pixels:
about the black background; there is no given frame near in time, the box is on every frame).
`world` is the clip itself (world metrics only).

Columns (mean ± sd over the clips; `-` where not defined):
  PSNR        dB, uint8 frames, peak 255, of the generated pixels (M = 1) against the true clip:
              the MSE pooled over all generated pixels of a clip, then 10·log10(255² / MSE).
              For `complete` this is the PSNR inside the mask only. Identical pixels (MSE 0)
              are capped at PSNR_CAP = 100 dB (no inf in means or in the JSON).
  d1 d2 d3 d4+  the same PSNR over the generated frames at distance 1, 2, 3 and >= 4 frames from
              the nearest given frame (predict: frames 4, 5, 6, 7; backward: 3, 2, 1, 0;
              interpolate: 1, 3, 5 | 2, 6 | 7 | -; animate: 1 | 2 | 3 | 4-7). Not for complete.
  presence    over the caption's named colours, the share of generated frames (any frame with
              generated pixels: all frames for complete, unconditional and world) in which that
              colour is found (`metrics.detect_video`, the largest component of the colour).
  direction   over the named objects, the share of the steps t -> t + 1 that touch a generated
              frame in which the object moves as the TRUE clip does at that step: >= MIN_STEP
              (0.25 px) along the true step's axis with its sign and no more across it (a step with
              the object missing in either frame disagrees). Chosen over `prompt.C.direction`
              (evaluate_video against the caption), because that one counts the given frames' steps
              too (3 of predict's 7 steps come for free), stops at the first bounce and cannot say
              whether the generated frames keep the motion the given frames show; the true clip's
              steps hold that motion, bounces included. Not for unconditional: its objects start
              elsewhere than the clip's, so the clip's steps say nothing; there see `prompt_dir`.
  colour_id   the share of those steps (touching a generated frame) whose set of detected colours
              is unchanged (the world's `colour_identity`, on the generated steps).
  prompt_dir  `evaluate_video(video, prompt=caption)`: the mean over named objects of
              `prompt.C.direction` on the whole 8-frame video (given frames included), as
              bench/quality.py reports `direction`. Its whole-video `presence`, `colour_identity`
              and `adherence` are in the JSON (`video_presence`, `video_colour_identity`,
              `adherence`).

World metrics are computed for every row (cheap); predict, animate and unconditional are the ones
issue 30 asks about. A `repeat` baseline never moves its object after the given frames, so its
`direction` is about 0 while `presence` and `colour_id` stay high: read the columns together.

Writes JSON (`--out`) with the command, every per-clip number of every row and the summaries.
Random weights (`--weights ""`) give the floor. Not a test.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

PSNR_CAP = 100.0  # dB for MSE 0 (identical pixels)
BINS = ("d1", "d2", "d3", "d4+")
TASKS = ("predict", "backward", "interpolate", "animate", "complete", "unconditional")
ROWS = (("predict", "vdt"), ("predict", "repeat"), ("backward", "vdt"), ("backward", "repeat"),
        ("interpolate", "vdt"), ("interpolate", "repeat"), ("interpolate", "blend"),
        ("animate", "vdt"), ("animate", "repeat"), ("complete", "vdt"), ("complete", "mean-fill"),
        ("unconditional", "vdt"), ("world", "clip"))
SHOWN = ("psnr", *BINS, "presence", "direction", "colour_id", "prompt_dir")
EXTRA = ("video_presence", "video_colour_identity", "adherence", "given_exact")
DEFAULT_BOX = "box:8,8,24,24"


# ---- pure functions (tests/test_vdt_tasks_bench.py) -------------------------------------------

def mse_to_psnr(mse: float, peak: float = 255.0) -> float:
    """10·log10(peak² / mse) in dB, capped at PSNR_CAP (MSE 0 -> PSNR_CAP, never inf)."""
    if mse <= 0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(peak * peak / mse))


def masked_mse(pred: np.ndarray, true: np.ndarray, where: Optional[np.ndarray] = None) -> Optional[float]:
    """Mean squared error of uint8 frames (F, H, W, 3) over the pixels where `where` (F, H, W) is
    True (all channels), in float64; None when `where` selects nothing."""
    if pred.shape != true.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {true.shape}")
    err = (pred.astype(np.float64) - true.astype(np.float64)) ** 2
    if where is None:
        return float(err.mean())
    where = np.asarray(where, dtype=bool)
    if not where.any():
        return None
    return float(err[where].mean())


def psnr(pred: np.ndarray, true: np.ndarray, where: Optional[np.ndarray] = None) -> Optional[float]:
    """PSNR (dB, peak 255, capped) of uint8 frames over the pixels `where` (F, H, W); None if none."""
    mse = masked_mse(pred, true, where)
    return None if mse is None else mse_to_psnr(mse)


def given_frames(mask_FHW: np.ndarray) -> list[int]:
    """Frames wholly given (M = 0 everywhere) of a task mask (True = generate)."""
    m = np.asarray(mask_FHW, dtype=bool)
    return [f for f in range(m.shape[0]) if not m[f].any()]


def distance_to_given(frames: int, given: Sequence[int]) -> np.ndarray:
    """(F,) int: each frame's distance in frames to the nearest given frame (0 for given frames);
    -1 everywhere when nothing is given."""
    if not given:
        return np.full(frames, -1, dtype=np.int64)
    f = np.arange(frames)[:, None]
    return np.abs(f - np.asarray(sorted(given))[None]).min(1)


def distance_bin(d: int) -> Optional[str]:
    """1, 2, 3 -> "d1".."d3"; >= 4 -> "d4+"; 0 (given) or -1 -> None."""
    return None if d < 1 else BINS[min(d, 4) - 1]


def psnr_by_distance(pred: np.ndarray, true: np.ndarray, given: Sequence[int]) -> dict:
    """{bin: PSNR over the frames at that distance from the nearest given frame, or None}."""
    dist = distance_to_given(len(true), given)
    out = {}
    for b in BINS:
        sel = np.array([distance_bin(int(d)) == b for d in dist])
        out[b] = psnr(pred[sel], true[sel]) if sel.any() else None
    return out


def repeat_nearest(video: np.ndarray, given: Sequence[int]) -> np.ndarray:
    """Each frame replaced by the nearest given frame (ties: the earlier); given frames unchanged."""
    keys = sorted(given)
    if not keys:
        raise ValueError("repeat_nearest needs at least one given frame")
    out = video.copy()
    for f in range(len(video)):
        out[f] = video[min(keys, key=lambda g: (abs(g - f), g))]
    return out


def linear_blend(video: np.ndarray, given: Sequence[int]) -> np.ndarray:
    """Frames between two given frames g0 < f < g1: (1 − a)·v[g0] + a·v[g1], a = (f − g0)/(g1 − g0),
    in pixel space, rounded half to even to uint8; frames with given frames on one side only: the
    nearest given frame (as `repeat_nearest`)."""
    keys = sorted(given)
    out = repeat_nearest(video, keys)
    for g0, g1 in zip(keys, keys[1:]):
        for f in range(g0 + 1, g1):
            a = (f - g0) / (g1 - g0)
            blend = (1 - a) * video[g0].astype(np.float64) + a * video[g1].astype(np.float64)
            out[f] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out


def mean_fill(video: np.ndarray, mask_FHW: np.ndarray) -> np.ndarray:
    """Each frame's masked pixels (M = True) set to the rounded mean colour of its given pixels
    (a frame with none given: of the whole clip's given pixels)."""
    mask = np.asarray(mask_FHW, dtype=bool)
    out = video.copy()
    fallback = video[~mask].astype(np.float64).mean(0) if (~mask).any() else np.zeros(3)
    for f in range(len(video)):
        if not mask[f].any():
            continue
        given = video[f][~mask[f]]
        colour = given.astype(np.float64).mean(0) if len(given) else fallback
        out[f][mask[f]] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
    return out


def step_agrees(step: np.ndarray, true_step: np.ndarray, min_step: float) -> bool:
    """A centroid step (dy, dx) moves as the true step: >= min_step along the true step's main axis
    with its sign, and no more across it."""
    axis = int(np.argmax(np.abs(true_step)))
    sign = np.sign(true_step[axis])
    if sign == 0:  # the world never stands still; a still truth agrees with a still step
        return bool(np.abs(step).max() < min_step)
    along, across = step[axis] * sign, abs(step[1 - axis])
    return bool(along >= min_step and across <= along)


def world_scores(video: np.ndarray, caption: str, generated: Sequence[int],
                 truth: Optional[dict] = None) -> dict:
    """World metrics of a task's output (module docstring): presence / colour_id on the generated
    frames and the steps touching them, direction against `truth` ({colour: (F, 2) true centres
    (y, x)}; None: not defined), prompt_dir and the whole-video numbers of evaluate_video."""
    from framecast.world.captions import parse_prompt
    from framecast.world.metrics import MIN_STEP, detect_video, evaluate_video

    F = len(video)
    gen = set(generated)
    colours = [s.colour for s in parse_prompt(caption)]
    by_colour = []
    for dets in detect_video(video):  # largest first: the first of a colour is its object
        d: dict = {}
        for det in dets:
            d.setdefault(det.colour, det)
        by_colour.append(d)
    frames = sorted(gen)
    steps = [t for t in range(F - 1) if t in gen or t + 1 in gen]
    out: dict = {"presence": (float(np.mean([sum(c in by_colour[f] for f in frames) / len(frames) for c in colours]))
                              if frames and colours else None),
                 "colour_id": (sum(set(by_colour[t]) == set(by_colour[t + 1]) for t in steps) / len(steps)
                               if steps else None),
                 "direction": None}
    if truth is not None and steps and colours:
        agree = total = 0
        for c in colours:
            centres = np.asarray(truth[c], dtype=np.float64)
            for t in steps:
                total += 1
                a, b = by_colour[t].get(c), by_colour[t + 1].get(c)
                if a is not None and b is not None:
                    agree += step_agrees(np.subtract(b.centroid, a.centroid), centres[t + 1] - centres[t], MIN_STEP)
        out["direction"] = agree / total
    m = evaluate_video(video, prompt=caption)
    dirs = [v for k, v in m.items() if k.startswith("prompt.") and k.endswith(".direction")]
    out.update({"prompt_dir": statistics.mean(dirs) if dirs else None, "video_presence": m.get("presence"),
                "video_colour_identity": m.get("colour_identity"), "adherence": m.get("adherence")})
    return out


def summarize(values: list) -> tuple[Optional[float], Optional[float]]:
    """(mean, sd) of the defined values (sd 0 for one; (None, None) for none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


# ---- the run ----------------------------------------------------------------------------------

def condition_of(task: str, clip: np.ndarray, half: int) -> Optional[np.ndarray]:
    """The task's condition frames, taken from the true clip (uint8 [n, H, W, 3])."""
    from framecast.schedulers.task import keyframes

    return {"predict": lambda: clip[:half], "backward": lambda: clip[len(clip) - half:],
            "interpolate": lambda: clip[keyframes(len(clip))], "animate": lambda: clip[:1],
            "complete": lambda: clip, "unconditional": lambda: None}[task]()


def score(task: str, video: np.ndarray, clip, mask: np.ndarray, seed: int) -> dict:
    """Every number of one row on one clip."""
    true = clip.frames
    given = given_frames(mask)
    generated = [f for f in range(len(true)) if mask[f].any()]
    truth = {o.colour: o.positions for o in clip.objects}
    row: dict = {"seed": seed, "caption": clip.caption}
    if task == "world":
        row.update(world_scores(video, clip.caption, range(len(true)), truth))
        return row
    row["given_exact"] = bool(np.array_equal(video[~mask], true[~mask]))
    if task != "unconditional":
        row["psnr"] = psnr(video, true, mask)
    if task in ("predict", "backward", "interpolate", "animate"):
        row.update(psnr_by_distance(video, true, given))
    row.update(world_scores(video, clip.caption, generated, None if task == "unconditional" else truth))
    return row


def baseline(name: str, clip: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if name == "repeat":
        return repeat_nearest(clip, given_frames(mask))
    if name == "blend":
        return linear_blend(clip, given_frames(mask))
    if name == "mean-fill":
        return mean_fill(clip, mask)
    raise ValueError(name)


def cell(mean: Optional[float], sd: Optional[float]) -> str:
    return f"{'-':>14}" if mean is None else f"{mean:>7.2f} ±{sd:>5.2f}" if abs(mean) >= 10 else \
        f"{mean:>7.3f} ±{sd:>5.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="", help='the trained VDT (a train --vdt --out folder or file); "" = random')
    ap.add_argument("--clips", type=int, default=16, help="held-out world clips")
    ap.add_argument("--seed", type=int, default=0, help="generation seed of clip i: SEED + i (all its tasks)")
    ap.add_argument("--clip-seed", type=int, default=10_000, help="clip i is sample_clip(CLIP_SEED + i)")
    ap.add_argument("--box", default=DEFAULT_BOX, help="the --mask SPEC of the complete task")
    ap.add_argument("--out", default="bench/results/vdt_tasks.json")
    ap.add_argument("extra", nargs="*", help="config overrides KEY=VALUE")
    args = ap.parse_args()

    from framecast import Engine
    from framecast.world.scenes import sample_clip

    engine = Engine.from_preset("tiny-vdt", [f"model.weights={args.weights}", *args.extra])
    F = engine.schedule.window()
    size = engine.cfg.video.height
    half = F // 2
    per: dict = {f"{t}/{b}": [] for t, b in ROWS}
    start = time.perf_counter()
    for i in range(args.clips):
        clip = sample_clip(args.clip_seed + i, F, size)
        seed = args.seed + i
        for task in TASKS:
            cond = condition_of(task, clip.frames, half)
            spec = args.box if task == "complete" else None
            req = engine.request(clip.caption, frames=F, seed=seed, task=task, condition=cond, mask=spec)
            mask = engine.schedule.layout(req)[0].numpy()
            video = np.stack(list(engine.stream(clip.caption, frames=F, seed=seed, task=task, condition=cond,
                                                mask=spec)))
            per[f"{task}/vdt"].append(score(task, video, clip, mask, seed))
            for t, b in ROWS:
                if t == task and b != "vdt":
                    per[f"{t}/{b}"].append(score(task, baseline(b, clip.frames, mask), clip, mask, seed))
        per["world/clip"].append(score("world", clip.frames, clip, np.ones(clip.frames.shape[:3], bool), seed))
        print(f"clip {i + 1}/{args.clips} ({clip.caption}) {time.perf_counter() - start:.1f} s", file=sys.stderr,
              flush=True)

    print(f"VDT tasks vs the world's truth: tiny-vdt, weights {args.weights or 'random init'}, {args.clips} clips "
          f"(sample_clip seeds {args.clip_seed}..{args.clip_seed + args.clips - 1}, {F} frames), "
          f"generation seeds {args.seed}..{args.seed + args.clips - 1}, complete mask {args.box}"
          + (f", {' '.join(args.extra)}" if args.extra else "") + "; mean ± sd over clips", flush=True)
    print(f"{'task':>13} {'row':>9} " + " ".join(f"{k:>14}" for k in SHOWN), flush=True)
    summary = {}
    for t, b in ROWS:
        runs = per[f"{t}/{b}"]
        s = {}
        for k in SHOWN + EXTRA:
            mean, sd = summarize([r.get(k) for r in runs])
            s[k], s[f"{k}_sd"] = mean, sd
        summary[f"{t}/{b}"] = s
        print(f"{t:>13} {b:>9} " + " ".join(cell(s[k], s[f"{k}_sd"]) for k in SHOWN), flush=True)
    bad = [k for k, runs in per.items() if any(r.get("given_exact") is False for r in runs)]
    if bad:
        print(f"WARNING: the given region of the output differs from the clip in {', '.join(bad)}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]), "weights": args.weights,
        "clips": args.clips, "seed": args.seed, "clip_seed": args.clip_seed, "frames": F, "box": args.box,
        "extra": args.extra, "psnr_cap_db": PSNR_CAP, "wall_s": time.perf_counter() - start,
        "summary": summary, "per_clip": per}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
