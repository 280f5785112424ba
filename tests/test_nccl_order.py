"""DualParal's communication is valid under NCCL's ordering rules, checked without a GPU.

`tests/nccl_model.py` records, per rank and in issue order, every op the real worker code issues
(under torchrun + gloo, through the real entry point `framecast.launch.torchrun.main`) and replays
the logs under NCCL's rules: per rank, per communicator, ops complete in issue order; a send only
with the matching receive at the head of the peer's queue; a collective only with every rank of
its group. The checker itself is tested on hand-written logs, and on a real W=2 recording of the
code before the per-direction groups (tests/data/nccl_log_w2_single_communicator.json), where it
must find the deadlock that gloo hides.

Every subprocess has a timeout; loopback only (MASTER_ADDR=127.0.0.1, GLOO_SOCKET_IFNAME=lo).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import nccl_model  # noqa: E402
from nccl_model import check  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path(__file__).with_name("nccl_model.py")
DATA = Path(__file__).with_name("data") / "nccl_log_w2_single_communicator.json"
PROMPT = "a red circle moving right"
BASE = ["--frames", "14", "--schedule", "dualparal", "--block-frames", "4", "--context-frames", "2",
        "--steps", "3", "--seed", "5", "--quiet"]
TIMEOUT_S = 300


# ------------------------------------------------------------------- the checker on small logs
def _ev(i, kind, group="pp", peer=None, shape=(2, 3), dtype="torch.float32", device="cpu", **kw):
    ev = {"i": i, "kind": kind, "group": group, "shape": list(shape), "dtype": dtype, "device": device, **kw}
    if peer is not None:
        ev["peer"] = peer
    return ev


def _wait(i):
    return {"kind": "wait", "op": i}


def _logs(*per_rank, groups=None):
    groups = groups or {"pp": [0, 1], "ret": [0, 1]}
    return [{"rank": r, "events": evs, "groups": groups} for r, evs in enumerate(per_rank)]


def test_matched_exchange_passes():
    logs = _logs([_ev(0, "send", peer=1), _ev(1, "recv", peer=1), _wait(0), _wait(1)],
                 [_ev(0, "recv", peer=0), _ev(1, "send", peer=0), _wait(0), _wait(1)])
    rep = check(logs)
    assert rep.ok and rep.completed == 4, rep


def test_crossed_pair_on_one_communicator_deadlocks():
    # rank 0: send a0, recv v0, wait v0, send a1 ... rank 1: recv a0, recv a1 (ahead), wait a0, send v0
    r0 = [_ev(0, "send", peer=1), _ev(1, "recv", peer=1), _wait(1), _ev(2, "send", peer=1), _wait(0), _wait(2)]
    r1 = [_ev(0, "recv", peer=0), _ev(1, "recv", peer=0), _wait(0), _ev(2, "send", peer=0), _wait(1), _wait(2)]
    rep = check(_logs(r0, r1))
    assert not rep.ok and len(rep.deadlock) == 2, rep
    assert rep.stuck[0]["kind"] == "recv" and rep.stuck[0]["i"] == 1
    assert rep.stuck[1]["kind"] == "recv" and rep.stuck[1]["i"] == 1
    assert "rank 0: blocked in wait(#1 recv from rank 1" in str(rep), rep
    assert "waiting for a matching send at the head of rank 1's queue" in str(rep), rep


def test_the_same_on_two_communicators_passes():
    r0 = [_ev(0, "send", peer=1), _ev(1, "recv", "ret", peer=1), _wait(1), _ev(2, "send", peer=1), _wait(0), _wait(2)]
    r1 = [_ev(0, "recv", peer=0), _ev(1, "recv", peer=0), _wait(0), _ev(2, "send", "ret", peer=0), _wait(1), _wait(2)]
    rep = check(_logs(r0, r1))
    assert rep.ok and rep.completed == 6, rep


def test_mismatched_shape_is_reported():
    logs = _logs([_ev(0, "send", peer=1, shape=(2, 3)), _wait(0)],
                 [_ev(0, "recv", peer=0, shape=(3, 2)), _wait(0)])
    rep = check(logs)
    assert not rep.ok and not rep.deadlock and len(rep.mismatches) == 1, rep
    assert "[2, 3]" in rep.mismatches[0] and "[3, 2]" in rep.mismatches[0]
    dtype = check(_logs([_ev(0, "send", peer=1), _wait(0)], [_ev(0, "recv", peer=0, dtype="torch.bfloat16"), _wait(0)]))
    assert len(dtype.mismatches) == 1, dtype


def test_collective_missing_one_rank_is_reported():
    groups = {"world": [0, 1, 2]}
    b = [_ev(0, "broadcast", "world", src=0), _wait(0)]
    rep = check(_logs(b, b, [], groups=groups))
    assert not rep.ok and set(rep.stuck) == {0, 1}, rep
    assert "not at the head on rank(s) [2]" in str(rep), rep
    assert check(_logs(b, b, b, groups=groups)).ok
    # a collective whose ranks disagree on what it is
    other = [_ev(0, "broadcast", "world", src=0, shape=(4,)), _wait(0)]
    assert check(_logs(b, b, other, groups=groups)).mismatches


def test_host_tensor_in_a_collective_is_reported_under_cuda():
    logs = _logs([_ev(0, "broadcast", "pp", src=0, device="cpu"), _wait(0),
                  {"i": 1, "kind": "broadcast_object_list", "group": "world", "src": 0, "object": True}, _wait(1)],
                 [_ev(0, "broadcast", "pp", src=0, device="cuda"), _wait(0),
                  {"i": 1, "kind": "broadcast_object_list", "group": "world", "src": 0, "object": True}, _wait(1)])
    rep = check(logs, device="cuda")
    assert not rep.deadlock and len(rep.device_violations) == 1, rep  # object collectives are exempt
    assert rep.device_violations[0].startswith("rank 0: #0 broadcast") and "cpu tensor" in rep.device_violations[0]
    assert len(check(logs, device="cpu").device_violations) == 1  # now rank 1's cuda tensor is the odd one


# ----------------------------------------------------- the recording of the old code deadlocks
def test_old_single_communicator_recording_deadlocks():
    doc = json.loads(DATA.read_text())
    logs = doc["logs"]
    last = max(log["rank"] for log in logs)
    assert last == 1 and all(log["events"] for log in logs)
    rep = check(logs)
    print(rep)
    assert rep.deadlock and not rep.mismatches and not rep.device_violations, rep
    assert rep.stuck[0]["kind"] == "recv" and rep.stuck[0]["peer"] == last  # rank 0 waits for a velocity
    assert rep.stuck[last]["kind"] == "recv" and rep.stuck[last]["peer"] == 0  # the last rank's receive ahead
    assert rep.stuck[0]["group"] == rep.stuck[last]["group"]  # one communicator both ways
    assert rep.deadlock[0].startswith("rank 0: blocked in wait(#") and " recv from rank 1 " in rep.deadlock[0]
    assert rep.deadlock[1].startswith(f"rank {last}: blocked in wait(#") and " recv from rank 0 " in rep.deadlock[1]
    # gloo ran it to the end: every op of the recording completes when directions are independent
    assert all(log["events"][-1]["kind"] == "wait" for log in logs)


# ------------------------------------------------------------- the real worker, recorded
def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
                PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _record(tmp_path: Path, workers: int, *extra, ticks_per_call=None, out=None):
    from framecast.parallel.torchrun_executor import free_port

    out = out or tmp_path / "video"
    logs = tmp_path / "logs"
    own = ["record", "--log-dir", str(logs)] + (["--ticks-per-call", str(ticks_per_call)] if ticks_per_call else [])
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={workers}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(MODEL), *own, "--",
           "generate", PROMPT, *BASE, "--out", f"{out}/", "--workers", str(workers), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = sorted(logs.glob("rank*.json"))
    assert [p.name for p in paths] == [f"rank{r}.json" for r in range(workers)], proc.stderr[-2000:]
    recorded = nccl_model.load_logs(paths)
    assert all(Path(log["framecast"]) == ROOT / "framecast" for log in recorded)  # this tree's code ran
    return recorded, out


def _check_video(out: Path):
    from framecast.engine.video_io import read_video

    assert read_video(out).shape == (14, 32, 32, 3)


def _p2p(log, kind):
    return [e for e in log["events"] if e["kind"] == kind]


@pytest.mark.parametrize("workers, extra, batch", [
    (2, ["sampler.guidance_scale=3.0"], 2),
    (2, ["sampler.guidance_scale=1.0"], 1),
    (3, ["sampler.guidance_scale=3.0", "parallel.layer_split=[1,2,3]"], 2),
    (3, ["sampler.guidance_scale=1.0"], 1),
    (4, ["sampler.guidance_scale=3.0"], 2),
], ids=["w2-cfg", "w2-nocfg", "w3-uneven-cfg", "w3-nocfg", "w4-cfg"])
def test_real_worker_is_valid_under_nccl_rules(tmp_path, workers, extra, batch):
    logs, out = _record(tmp_path, workers, *extra, ticks_per_call=2 if workers == 3 else None)
    rep = check(logs)
    print(f"W={workers} {extra}: {rep}")
    assert rep.ok, str(rep)
    _check_video(out)
    # what was recorded is the ring: activations r -> r+1 on "pp", the return last -> 0 on another group
    last = workers - 1
    fwd = {e["group"] for e in _p2p(logs[0], "send")}
    back = {e["group"] for e in _p2p(logs[last], "send")}
    assert len(fwd) == 1 and len(back) == 1 and fwd != back
    assert {e["peer"] for e in _p2p(logs[0], "recv")} == {last}
    assert all(e["shape"][0] == batch for log in logs[:-1] for e in _p2p(log, "send"))  # CFG: 2 rows, else 1
    assert len(_p2p(logs[0], "send")) == len(_p2p(logs[last], "send")) == 4 * 3  # blocks x steps


def test_resume_adds_no_communication(tmp_path):
    """A real interrupted run (stopped after its first resume-record save, ticks 0-1) resumed under
    torchrun at W=2: valid under NCCL's rules, and `load_state` / `state` issue no communication."""
    out = tmp_path / "video"
    partial = subprocess.run([sys.executable, str(MODEL), "partial", "--ticks-per-call", "2", "--",
                              "generate", PROMPT, *BASE, "--out", f"{out}/", "--launcher", "local"],
                             capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=tmp_path)
    assert partial.returncode == 0, partial.stderr[-3000:]
    record = Path(f"{out}.resume")
    assert (record / "state.pt").is_file()

    logs, _ = _record(tmp_path, 2, "--resume", ticks_per_call=2, out=out)
    rep = check(logs)
    print(f"resume W=2: {rep}")
    assert rep.ok, str(rep)
    _check_video(out)
    assert not record.exists()
    for log in logs:
        marks = [e.get("method") for e in log["events"] if e["kind"] == "mark"]
        assert marks[:2] == ["setup", "load_state"] and marks.count("run_ticks") == 2, marks  # ticks 2-5 of 6
        assert "state" in marks
        for i, ev in enumerate(log["events"]):  # from the mark to the next control message: nothing
            if ev["kind"] == "mark" and ev["method"] in ("load_state", "state"):
                rest = log["events"][i + 1:]
                upto = next((j for j, e in enumerate(rest) if e["kind"] == "broadcast_object_list"), len(rest))
                assert all(e["kind"] == "mark" for e in rest[:upto]), (log["rank"], ev["method"], rest[:upto])
