"""bench/compare_quality.py: pairing quality.py videos by schedule, length, prompt and seed."""
import json
import math
import statistics

import pytest

from bench_module import load_bench


@pytest.fixture(scope="module")
def compare():
    return load_bench("compare_quality")


def result(weights, runs_by_schedule):
    """A quality.py JSON: {schedule: [(prompt, seed, direction, presence), ...]} at 4 s."""
    return {"weights": weights, "rows": [
        {"schedule": s, "seconds": 4.0,
         "runs": [{"prompt": p, "seed": seed, "direction": d, "presence": pr} for p, seed, d, pr in runs]}
        for s, runs in runs_by_schedule.items()]}


def test_paired_matches_videos_and_skips_undefined_metrics(compare):
    a = compare.videos(result("A", {"rollout": [("p", 0, 0.2, 1.0), ("p", 1, 0.4, 1.0), ("q", 0, None, 0.5),
                                                ("q", 9, 0.9, 0.9)],
                                    "full": [("p", 0, 0.1, 0.8)]}))
    b = compare.videos(result("B", {"rollout": [("p", 1, 0.7, 0.5), ("p", 0, 0.6, 1.0), ("q", 0, 0.3, 0.25)],
                                    "full": [("p", 0, 0.1, 0.9)]}))
    direction = compare.paired(a, b, "direction")
    # ("q", 0) has no direction in A and ("q", 9) no video in B: two rollout pairs remain, in any order
    roll = direction[("rollout", 4.0)]
    assert roll["n"] == 2 and roll["a"] == pytest.approx(0.3) and roll["b"] == pytest.approx(0.65)
    assert roll["diff"] == pytest.approx(0.35)
    assert roll["se"] == pytest.approx(statistics.stdev([0.4, 0.3]) / math.sqrt(2))
    assert direction[("full", 4.0)]["n"] == 1 and math.isnan(direction[("full", 4.0)]["se"])
    presence = compare.paired(a, b, "presence")[("rollout", 4.0)]
    assert presence["n"] == 3 and presence["diff"] == pytest.approx((0.0 - 0.5 - 0.25) / 3)


def test_main_writes_rows_and_rejects_results_without_common_videos(compare, tmp_path, capsys):
    paths = []
    for name, runs in (("A", [("p", 0, 0.2, 1.0), ("p", 1, 0.4, 1.0)]), ("B", [("p", 0, 0.5, 1.0), ("p", 1, 0.5, 0.5)]),
                       ("C", [("p", 7, 0.5, 1.0)])):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result(name, {"rollout": runs})))
    out = tmp_path / "cmp.json"
    assert compare.main([str(paths[0]), str(paths[1]), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["weights_b"], r["metric"], r["n"]) for r in rows] == [("B", "direction", 2), ("B", "presence", 2)]
    assert rows[0]["diff"] == pytest.approx(0.2) and rows[1]["diff"] == pytest.approx(-0.25)
    assert "B − A" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no video in common"):
        compare.main([str(paths[0]), str(paths[2]), "--out", str(out)])


def test_rows_pairs_two_rows_of_one_result(compare, tmp_path, capsys):
    """--rows A B: row A's videos against row B's, same length, prompt and seed (one file may be both)."""
    q = tmp_path / "q.json"
    data = result("W", {"vin-no-tokens": [("p", 0, 0.2, 1.0), ("p", 1, 0.4, 0.5)],
                        "vin": [("p", 1, 0.9, 0.5), ("p", 0, 0.3, 1.0)], "rollout": [("p", 0, 0.0, 0.0)]})
    q.write_text(json.dumps({**data, "vin_weights": "V"}))
    out = tmp_path / "cmp.json"
    assert compare.main([str(q), str(q), "--rows", "vin-no-tokens", "vin", "--metrics", "direction",
                         "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["n"] == 2 and row["diff"] == pytest.approx(((0.3 - 0.2) + (0.9 - 0.4)) / 2)
    assert row["weights_a"] == row["weights_b"] == "V"  # the tiny-vin rows ran with the vin weights
    assert "A's row vin-no-tokens against B's row vin" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"no video in common .*\(rows full and vin\)"):
        compare.main([str(q), str(q), "--rows", "full", "vin", "--out", str(out)])
