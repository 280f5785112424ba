"""Paired differences between `bench/quality.py` results: is B better than A, beyond
the noise?

    python bench/compare_quality.py A.json B.json [C.json ...] [--metrics direction presence]
                                             [--out bench/results/compare_quality.json]

Two weights scored on the same prompts and seeds make the same videos' worth of comparisons:
each video of B is paired with A's video of the same schedule, length, prompt and seed, and the
table gives, per schedule and length, the mean of each metric for A and B and the mean of the
paired differences B − A with its standard error (standard deviation of the differences / √n).
A difference within about two standard errors of zero is not evidence either way. Videos where a
metric is undefined in either run (e.g. `wall_return` with no shape at a wall) drop out of that
metric's pairs; the table says how many pairs each row has. Prints the table and writes JSON;
asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

Key = tuple  # (schedule, seconds, prompt, seed)


def videos(result: dict) -> dict[Key, dict]:
    """{(schedule, seconds, prompt, seed): that video's metrics} of one quality.py JSON."""
    return {(row["schedule"], row["seconds"], run["prompt"], run["seed"]): run
            for row in result["rows"] for run in row["runs"]}


def paired(a: dict[Key, dict], b: dict[Key, dict], metric: str) -> dict[tuple, dict]:
    """Per (schedule, seconds): n, mean of A, mean of B, mean difference B − A and its standard error,
    over the videos both runs made and where both define `metric`."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for key in sorted(set(a) & set(b), key=str):
        x, y = a[key].get(metric), b[key].get(metric)
        if x is not None and y is not None:
            groups.setdefault(key[:2], []).append((x, y))
    out = {}
    for group, pairs in groups.items():
        diffs = [y - x for x, y in pairs]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        out[group] = {"n": len(pairs), "a": statistics.mean(x for x, _ in pairs),
                      "b": statistics.mean(y for _, y in pairs), "diff": statistics.mean(diffs), "se": se}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="quality.py JSON of the reference weights (A)")
    ap.add_argument("others", nargs="+", help="quality.py JSONs to compare with it (B, C, ...)")
    ap.add_argument("--metrics", nargs="+", default=["direction", "moving", "moving_direction", "presence"])
    ap.add_argument("--out", default="bench/results/compare_quality.json")
    args = ap.parse_args(argv)
    base = json.loads(Path(args.base).read_text())
    a = videos(base)
    rows = []
    for path in args.others:
        other = json.loads(Path(path).read_text())
        b = videos(other)
        if not set(a) & set(b):
            raise SystemExit(f"{path}: no video in common with {args.base} (same schedule, seconds, prompt and "
                             "seed needed); run quality.py with the same --seconds, --prompts and --seeds")
        for metric in args.metrics:
            for (schedule, seconds), s in paired(a, b, metric).items():
                rows.append({"weights_a": base.get("weights"), "weights_b": other.get("weights"), "schedule": schedule,
                             "seconds": seconds, "metric": metric, **s})
    print(f"A = {base.get('weights')} ({args.base}); B − A paired over the same videos")
    print(f"{'B':>36} {'schedule':>10} {'s':>4} {'metric':>12} {'n':>4} {'A':>7} {'B':>7} {'B − A':>8} {'± se':>7}")
    for r in rows:
        print(f"{str(r['weights_b'])[-36:]:>36} {r['schedule']:>10} {r['seconds']:>4g} {r['metric']:>12} {r['n']:>4} "
              f"{r['a']:>7.3f} {r['b']:>7.3f} {r['diff']:>+8.3f} {r['se']:>7.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "others": args.others, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
