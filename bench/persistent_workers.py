"""Workers that live as long as the Engine: 4-second DualParal generations (tiny preset, Ray, W=2)
from one Python process. `first` includes Ray start-up, actor placement and weight loading;
`second` reuses the same actors; `restarted` runs after `engine.close()` on the still-running Ray
instance, so it starts and loads fresh workers: what every request cost before workers were kept.

    python bench/persistent_workers.py [--seconds 4] [--rounds 3]

Each round is a fresh Engine (and a fresh local Ray instance): first request, then second request.
Prints a table of medians over the rounds and writes bench/results/persistent_workers.json. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")

from framecast import Engine  # noqa: E402

PROMPT = "a red circle moving right"


def one_round(seconds: float, workers: int) -> dict:
    import ray

    overrides = ["schedule.name=dualparal", "parallel.launcher=ray", f"parallel.workers={workers}"]
    times = []
    with tempfile.TemporaryDirectory() as tmp, Engine.from_preset("tiny", overrides) as engine:
        for i in range(3):
            if i == 2:
                engine.close()  # the actors go; Ray stays up
            start = time.perf_counter()
            engine.generate(PROMPT, seconds=seconds, seed=i, out=f"{tmp}/{i}.mp4")
            times.append(time.perf_counter() - start)
    ray.shutdown()
    return {"first_s": times[0], "second_s": times[1], "restarted_s": times[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="video length of each request")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (pipeline stages)")
    ap.add_argument("--rounds", type=int, default=3, help="fresh engines (medians are over these)")
    args = ap.parse_args()
    rounds = [one_round(args.seconds, args.workers) for _ in range(args.rounds)]
    first = statistics.median(r["first_s"] for r in rounds)
    second = statistics.median(r["second_s"] for r in rounds)
    restarted = statistics.median(r["restarted_s"] for r in rounds)
    ratios = [r["first_s"] / r["second_s"] for r in rounds]
    kept = [r["restarted_s"] / r["second_s"] for r in rounds]
    print(f"DualParal, preset tiny, Ray W={args.workers}, {args.seconds:g} s videos, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds")
    print(f"{'request':<10} {'median s':>9}  runs")
    for name, median in (("first", first), ("second", second), ("restarted", restarted)):
        runs = ", ".join(f"{r[name + '_s']:.2f}" for r in rounds)
        print(f"{name:<10} {median:>9.2f}  {runs}")
    per_round = ", ".join(f"{x:.2f}" for x in ratios)
    print(f"first / second: median {statistics.median(ratios):.2f}x (per round {per_round})")
    per_round = ", ".join(f"{x:.2f}" for x in kept)
    print(f"restarted / second: median {statistics.median(kept):.2f}x (per round {per_round})")
    out = Path(__file__).resolve().parent / "results" / "persistent_workers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"seconds": args.seconds, "workers": args.workers, "rounds": rounds,
                               "median_first_s": first, "median_second_s": second,
                               "median_restarted_s": restarted, "median_first_over_second": statistics.median(ratios),
                               "median_restarted_over_second": statistics.median(kept)}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
