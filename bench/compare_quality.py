"""Paired differences between `bench/quality.py` results: is B better than A, beyond
the noise?

    python bench/compare_quality.py A.json B.json [C.json ...] [--metrics direction presence]
                                             [--rows ROW_A ROW_B] [--out bench/results/compare_quality.json]

Two weights scored on the same prompts and seeds make the same videos' worth of comparisons:
each video of B is paired with A's video of the same schedule, length, prompt and seed, and the
table gives, per schedule and length, the mean of each metric for A and B and the mean of the
paired differences B − A with its standard error (standard deviation of the differences / √n).
A difference within about two standard errors of zero is not evidence either way. Videos where a
metric is undefined in either run (e.g. `wall_return` with no shape at a wall) drop out of that
metric's pairs; the table says how many pairs each row has. `--rows ROW_A ROW_B` pairs two rows
instead of one schedule in both: A's videos of row ROW_A with B's of row ROW_B (the same file may be
both A and B: `q.json q.json --rows vin-no-tokens vin` is what the learned tokens change). Prints the
table and writes JSON; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

Key = tuple  # (schedule, seconds, prompt, seed)


def videos(result: dict, row: str | None = None, as_row: str | None = None) -> dict[Key, dict]:
    """{(schedule, seconds, prompt, seed): that video's metrics} of one quality.py JSON; `row`: that
    row's videos only, keyed as `as_row` (default: its own name) so that two rows can pair."""
    return {(as_row or r["schedule"], r["seconds"], run["prompt"], run["seed"]): run
            for r in result["rows"] if row is None or r["schedule"] == row for run in r["runs"]}


def weights_of(result: dict, row: str) -> str | None:
    """The weights a quality.py row ran with: `vin_weights` for the tiny-vin rows, else `weights`."""
    return result.get("vin_weights") if row.startswith("vin") and "vin_weights" in result else result.get("weights")


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
    ap.add_argument("--rows", nargs=2, metavar=("ROW_A", "ROW_B"), default=None,
                    help="pair A's row ROW_A with B's row ROW_B (default: each schedule with itself)")
    ap.add_argument("--out", default="bench/results/compare_quality.json")
    args = ap.parse_args(argv)
    row_a, row_b = args.rows or (None, None)
    base = json.loads(Path(args.base).read_text())
    a = videos(base, row_a, row_b)
    rows = []
    for path in args.others:
        other = json.loads(Path(path).read_text())
        b = videos(other, row_b)
        if not set(a) & set(b):
            rows_hint = f" (rows {row_a} and {row_b})" if args.rows else ""
            raise SystemExit(f"{path}: no video in common with {args.base}{rows_hint} (same schedule, seconds, "
                             "prompt and seed needed); run quality.py with the same --seconds, --prompts and --seeds")
        for metric in args.metrics:
            for (schedule, seconds), s in paired(a, b, metric).items():
                rows.append({"weights_a": weights_of(base, row_a or schedule),
                             "weights_b": weights_of(other, schedule), "schedule": schedule,
                             "seconds": seconds, "metric": metric, **s})
    rows_note = f", A's row {row_a} against B's row {row_b}" if args.rows else ""
    print(f"A = {weights_of(base, row_a or '')} ({args.base}){rows_note}; B − A paired over the same videos")
    print(f"{'B':>36} {'schedule':>14} {'s':>4} {'metric':>12} {'n':>4} {'A':>7} {'B':>7} {'B − A':>8} {'± se':>7}")
    for r in rows:
        print(f"{str(r['weights_b'])[-36:]:>36} {r['schedule']:>14} {r['seconds']:>4g} {r['metric']:>12} {r['n']:>4} "
              f"{r['a']:>7.3f} {r['b']:>7.3f} {r['diff']:>+8.3f} {r['se']:>7.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "others": args.others, "paired_rows": args.rows, "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
