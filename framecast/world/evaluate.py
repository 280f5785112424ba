"""`framecast eval VIDEO [--prompt P] [--actions SPEC] [--json OUT]`: the world's metrics on a video.

VIDEO is an mp4 or a folder of PNG frames (read with `framecast.engine.video_io.read_video`).
An action SPEC is either comma-separated `ACTION` or `ACTION*COUNT` items ("none,right*24,up*12"),
or the path of a text file with one action per line (blank lines and `#` comments skipped);
it must give one action per frame (see `metrics` for what actions[0] means).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from framecast.world.captions import ACTIONS
from framecast.world.metrics import evaluate_video


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="an mp4 or a folder of PNG frames")
    parser.add_argument("--prompt", default=None, help="the prompt it was made from (prompt adherence)")
    parser.add_argument("--actions", default=None,
                        help="play videos: action SPEC like right*24,up*12, or a file with one action per line")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")


def parse_action_spec(spec: str) -> list[str]:
    """'none,right*24,up*12' or a file path (one action per line) -> a list of action names."""
    if os.path.isfile(spec):
        lines = (line.split("#", 1)[0].strip() for line in Path(spec).read_text().splitlines())
        items = [(line.lower(), 1) for line in lines if line]
        where = f"action file {spec!r}"
    else:
        items, bad_counts = [], []
        for item in (i.strip() for i in spec.split(",")):
            m = re.fullmatch(r"([A-Za-z_-]*)\s*(?:\*\s*(\S+))?", item)
            name, count = (m.group(1).lower(), m.group(2)) if m else (item, None)
            if count is not None and not (count.isdigit() and int(count) > 0):
                bad_counts.append(item)
                continue
            items.append((name, int(count) if count else 1))
        if bad_counts:
            raise ValueError(f"action spec {spec!r}: bad repeat count in {', '.join(map(repr, bad_counts))}; "
                             f"write ACTION*COUNT with COUNT a positive integer")
        where = f"action spec {spec!r}"
    bad = [n for n, _ in items if n not in ACTIONS]
    if bad:
        raise ValueError(f"{where}: unknown action(s) {', '.join(map(repr, dict.fromkeys(bad)))}; "
                         f"actions: {', '.join(ACTIONS)}")
    if not items:
        raise ValueError(f"{where} names no actions; actions: {', '.join(ACTIONS)}")
    return [n for n, c in items for _ in range(c)]


def _read_video(path: str):
    from framecast.engine.video_io import read_video

    return read_video(path)


def format_table(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {v:>8.3f}" for k, v in metrics.items())


def run_eval(args: argparse.Namespace) -> int:
    actions = parse_action_spec(args.actions) if args.actions else None
    frames = _read_video(args.video)
    metrics = evaluate_video(frames, prompt=args.prompt, actions=actions)
    print(format_table(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0
