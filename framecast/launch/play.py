"""`framecast play`: an action-conditioned rollout, frame by frame (NFD), written as it is made.

    framecast play --preset tiny-play --actions none,right*24,up*12 --frames 48 --out play.mp4 \
        [--seed S] [--speculate K] [KEY=VALUE ...]

`--actions` takes the SPEC of `framecast eval --actions` (ACTION or ACTION*COUNT items, or a file
with one action per line): actions[f] moves the player INTO frame f, so actions[0] belongs to the
first frame (normally "none"), and `framecast eval VIDEO --actions SPEC` scores the result. With
`--frames N` longer than the spec, the last action is held. Output is NAME.mp4 or DIR/ (PNGs).
The summary line reports generation FPS (model only) and end-to-end FPS (decode and write
included) separately, as the peers' FPS claims are only comparable that way (spec §7.3).
"""
from __future__ import annotations

import argparse
import time


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny-play", help="config preset of an action model (default tiny-play)")
    parser.add_argument("--actions", required=True,
                        help="one action per frame: SPEC like none,right*24,up*12, or a file with one action "
                             "per line (actions: none, up, down, left, right)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames to generate (default: one per action; more holds the last action)")
    parser.add_argument("--out", required=True, help="output: NAME.mp4, or DIR/ for numbered PNG frames")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the config's seed)")
    parser.add_argument("--speculate", type=int, default=None, metavar="K",
                        help="draft K frames under the current action and keep those the actions confirm "
                             "(1 = off; default schedule.nfd.speculate)")
    parser.add_argument("--draft-mode", choices=("joint", "sequential"), default=None,
                        help="joint: K drafts in one batched pass per step (NFD; drafts see drafts mid-denoise); "
                             "sequential: same video as --speculate 1, no compute saved (default schedule.nfd.draft_mode)")
    parser.add_argument("--window", type=int, default=None,
                        help="committed frames each frame attends to (default schedule.nfd.window)")
    parser.add_argument("--context-sigma", type=float, default=None,
                        help="noise level of committed context frames in [0, 1) (default schedule.nfd.context_sigma)")
    parser.add_argument("--prompt", default="", help="text prompt for the model's cross-attention (default empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides in dotlist form")


def _check_args(args, n_actions: int) -> int:
    frames = n_actions if args.frames is None else args.frames
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    if frames < n_actions:
        raise ValueError(f"--frames {frames} is fewer than the {n_actions} actions given; shorten the spec "
                         f"or drop --frames")
    if args.speculate is not None and args.speculate < 1:
        raise ValueError(f"--speculate must be >= 1 (1 = off), got {args.speculate}")
    if args.window is not None and args.window < 1:
        raise ValueError(f"--window must be >= 1 (frames), got {args.window}")
    if args.context_sigma is not None and not 0.0 <= args.context_sigma < 1.0:
        raise ValueError(f"--context-sigma must be in [0, 1), got {args.context_sigma}")
    return frames


def play_overrides(args) -> list[str]:
    """The flags as schedule.nfd.* overrides (after the user's KEY=VALUE ones, so the flags win)."""
    out = ["schedule.name=nfd"]
    for flag, key in (("speculate", "speculate"), ("draft_mode", "draft_mode"), ("window", "window"),
                      ("context_sigma", "context_sigma")):
        if getattr(args, flag) is not None:
            out.append(f"schedule.nfd.{key}={getattr(args, flag)}")
    return list(args.overrides) + out


def run_play(args: argparse.Namespace) -> int:
    """Validate everything, then generate and write; prints one summary line. Returns 0."""
    from tqdm.auto import tqdm

    from framecast.config import ConfigError, load_config
    from framecast.engine.engine import Engine
    from framecast.engine.video_io import open_video_writer
    from framecast.world.captions import ACTIONS
    from framecast.world.evaluate import parse_action_spec

    names = parse_action_spec(args.actions)  # one-line ValueError naming bad actions and the valid ones
    frames = _check_args(args, len(names))
    names = names + [names[-1]] * (frames - len(names))
    cfg = load_config(args.preset, play_overrides(args))
    if cfg.model.num_actions < len(ACTIONS):
        raise ConfigError(f"preset {args.preset!r} has model.num_actions={cfg.model.num_actions}; play needs an "
                          f"action model with num_actions >= {len(ACTIONS)} (e.g. --preset tiny-play)")
    stride = cfg.vae.spatial_stride
    if cfg.video.height % stride or cfg.video.width % stride:
        raise ConfigError(f"video.height/width={cfg.video.height}x{cfg.video.width} must be multiples of "
                          f"vae.spatial_stride={stride}")
    engine = Engine(cfg)
    engine.model  # build (or load) before the clock starts: FPS counts generation, not start-up
    session = engine.play_session(args.prompt, args.seed, total=frames)  # validates prompt and seed
    writer = open_video_writer(args.out, fps=cfg.video.fps, overwrite=args.overwrite)
    start = time.perf_counter()
    try:
        with tqdm(total=frames, desc="play", unit="frame", disable=args.quiet) as bar:
            for name in names:
                writer.write(session.push(name))
                bar.update()
        session.close()
    except BaseException:
        writer.abort()
        raise
    path = writer.close()
    wall = time.perf_counter() - start
    sc = cfg.schedule.nfd
    spec = (f"speculation K={sc.speculate} ({sc.draft_mode}): {session.stats.summary()}" if sc.speculate > 1
            else "speculation off")
    print(f"framecast: played {frames} frames ({cfg.video.width}x{cfg.video.height}) in {wall:.1f} s: "
          f"{frames / wall:.1f} FPS end-to-end, {frames / max(session.model_s, 1e-9):.1f} FPS generation "
          f"({session.rollout.forwards} model passes, {engine.device.type}); {spec} -> {path}")
    return 0
