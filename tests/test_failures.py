"""Failure handling of DualParal runs: the process-group timeout, a dead or hung peer under torchrun
ending with one line naming it (the last line of the output), Ray's device and environment
decisions (pure functions, fake cluster resources), and resume: after a SIGKILL (mp4 and PNG
output, a killed `framecast` whose torchrun job must die with it) a resume equals an uninterrupted
run, and a resume that fails leaves the record exactly as it was and says so in one line.

Waits are on states (files, log lines, processes gone), never on time; only processes the test
started (and the ranks they started) are signalled, by their own ids."""
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from output_lines import last_own_line
from polling import wait_for

PROMPT = "a red circle moving right"
# 30 blocks of 4 latent frames, 6 steps: 35 ticks in 5 calls, a resume point after each
RUN = ["--frames", "120", "--schedule", "dualparal", "--block-frames", "4", "--context-frames", "2",
       "--steps", "6", "--seed", "5", "--quiet", "sampler.guidance_scale=3.0"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")


# ---- pure decisions --------------------------------------------------------------------------------

def test_timeout_is_a_config_field_with_a_minimum():
    from framecast.config import ConfigError, load_config

    assert load_config("tiny").parallel.timeout_s == 600
    assert load_config("tiny", ["parallel.timeout_s=7"]).parallel.timeout_s == 7
    with pytest.raises(ConfigError, match="parallel.timeout_s"):
        load_config("tiny", ["parallel.timeout_s=0"])


def test_torchrun_reads_the_timeout_from_the_command_line():
    from framecast.launch.torchrun import timeout_from_argv

    assert timeout_from_argv(["generate", "p", "--out", "x.mp4"]) == 600
    assert timeout_from_argv(["generate", "p", "parallel.timeout_s=5", "--quiet", "parallel.timeout_s=9"]) == 9
    assert timeout_from_argv(["generate", "p", "--preset", "no-such-preset"]) == 600  # reported later


def test_ray_bundles_come_from_the_cluster_not_the_driver():
    from framecast.config import ConfigError
    from framecast.parallel.ray_executor import worker_bundle

    gpu_cluster = {"CPU": 64.0, "GPU": 8.0, "memory": 1e12, "node:10.0.0.2": 1.0}  # CPU-only head, GPU nodes
    assert worker_bundle("auto", gpu_cluster) == {"CPU": 1, "GPU": 1}
    assert worker_bundle("cuda", gpu_cluster) == {"CPU": 1, "GPU": 1}
    assert worker_bundle("cuda:3", gpu_cluster) == {"CPU": 1, "GPU": 1}
    assert worker_bundle("cpu", gpu_cluster) == {"CPU": 1}
    cpu_cluster = {"CPU": 4.0, "memory": 1e9}
    assert worker_bundle("auto", cpu_cluster) == {"CPU": 1}
    with pytest.raises(ConfigError, match="no GPUs"):
        worker_bundle("cuda:0", cpu_cluster)


def test_ray_actor_device_is_what_ray_assigned_it():
    from framecast.config import ConfigError
    from framecast.parallel.host import ray_actor_device

    for requested in ("auto", "cuda", "cuda:0", "cuda:5"):  # cuda:N numbers the driver's GPUs, not the actor's
        assert ray_actor_device(requested, ["5"]) == "cuda:0"
    assert ray_actor_device("cpu", ["5"]) == "cpu"
    assert ray_actor_device("auto", []) == "cpu"
    with pytest.raises(ConfigError, match="assigned this worker no GPU"):
        ray_actor_device("cuda:1", [])


def test_ray_actors_get_the_communication_and_cuda_environment():
    from framecast.parallel.ray_executor import actor_env

    driver = {"NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "eth0", "CUDA_LAUNCH_BLOCKING": "1",
              "CUDA_VISIBLE_DEVICES": "0,1", "TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_DISTRIBUTED_DEBUG": "DETAIL",
              "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "10.0.0.1", "HF_HOME": "/data/hf", "HF_HUB_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin", "HOME": "/root", "MY_NCCL_THING": "x",
              "OMP_NUM_THREADS": "4"}
    env = actor_env(driver)
    assert env == {**{k: v for k, v in driver.items() if k not in (
        "CUDA_VISIBLE_DEVICES", "PATH", "HOME", "MY_NCCL_THING", "OMP_NUM_THREADS")},
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    assert actor_env({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"})["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "0"


DEVICE_WORKER = '''
class DeviceWorker:
    def __init__(self, cfg, checkpoint, rank, dims, groups=None):
        from framecast.engine.components import resolve_device
        self.device = str(resolve_device(cfg.device))  # what every worker does with cfg.device

    def info(self):
        return {"worker_device": self.device}
'''


def test_the_host_decides_the_device_and_the_worker_follows(tmp_path, monkeypatch):
    from framecast.config import load_config
    from framecast.parallel.dims import ParallelDims
    from framecast.parallel.host import WorkerHost

    (tmp_path / "device_worker.py").write_text(DEVICE_WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config("tiny", ["model.weights=", "device=auto"])
    host = WorkerHost("device_worker:DeviceWorker", cfg, None, ParallelDims(), rank=0, device="cpu")
    assert host.info()["device"] == host.info()["worker_device"] == "cpu"
    assert cfg.device == "auto"  # the caller's config is not changed


# ---- torchrun's output, filtered -------------------------------------------------------------------

TORCHRUN_STDERR = """\
W1206 02:19:40.168000 6531 torch/distributed/run.py:851] 
*****************************************
Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed. 
*****************************************
framecast: torchrun: 2 workers (pids 6536, 6537)
\rframes:  10%|#         | 1/10 [00:01<00:09,  1.00s/frame]\rframes:  20%|##        | 2/10 [00:02<00:08,  1.00s/frame]
framecast: warning: something the user should know
[rank0]: Traceback (most recent call last):
[rank0]:   File "x.py", line 1, in <module>
[rank0]: RuntimeError: Connection closed by peer
W1206 02:19:57.168000 6531 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 6536 closing signal SIGTERM
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 8, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
framecast.launch.torchrun FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-12-06_02:19:57
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 6537)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 6537
============================================================
"""


def _filtered(text: str, rc: int, chunk: int = 7):
    from framecast.launch.cli import TorchrunOutput

    out = io.StringIO()
    f = TorchrunOutput(out)
    for i in range(0, len(text), chunk):  # arbitrary pieces, as a pipe delivers them
        f.feed(text[i:i + chunk])
    rc = f.finish(rc)
    return out.getvalue(), rc


def test_torchrun_report_becomes_one_last_line_naming_the_dead_rank():
    shown, rc = _filtered(TORCHRUN_STDERR, 1)
    lines = [line for line in re.split(r"[\r\n]", shown) if line.strip()]
    assert rc == 1
    assert lines[0] == "framecast: torchrun: 2 workers (pids 6536, 6537)"
    assert "framecast: warning: something the user should know" in lines
    assert any(line.startswith("frames:  20%|") for line in lines)  # progress bars pass as they come
    assert lines[-1] == "framecast: error: worker rank 1 (pid 6537) died (killed by SIGKILL); the run is stopped"
    assert not any(w in shown for w in ("Traceback", "ChildFailedError", "Root Cause", "OMP_NUM_THREADS", "[rank0]"))


def test_torchrun_output_keeps_rank0s_error_as_the_last_line():
    text = TORCHRUN_STDERR.replace(
        "[rank0]: Traceback", "framecast: error: worker rank 1 (pid 6537) died; the run is stopped\n"
        "framecast: stopped by signal 15 (a peer rank failed or the job was cancelled)\n[rank0]: Traceback")
    shown, _ = _filtered(text, 1)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines[-1] == "framecast: error: worker rank 1 (pid 6537) died; the run is stopped"
    assert "Traceback" not in shown
    ok, rc = _filtered("framecast: torchrun: 2 workers (pids 1, 2)\n", 0)
    assert rc == 0 and ok == "framecast: torchrun: 2 workers (pids 1, 2)\n"


def test_a_crash_of_framecast_itself_shows_its_traceback_then_the_line():
    text = TORCHRUN_STDERR.replace("rank      : 1 (local_rank: 1)", "rank      : 0 (local_rank: 0)").replace(
        "exitcode  : -9 (pid: 6537)", "exitcode  : 1 (pid: 6536)")
    shown, rc = _filtered(text, 1)
    lines = shown.splitlines()
    assert "RuntimeError: Connection closed by peer" in lines
    assert lines[-1] == "framecast: error: worker rank 0 (pid 6536) failed (exit code 1); the run is stopped"


# ---- the resume record -----------------------------------------------------------------------------

def _record(tmp_path, name="v.mp4"):
    from framecast.engine.resume import ResumeRecord

    return ResumeRecord(tmp_path / name, {"request": {"seed": 1}, "config": "x", "checkpoint": None})


def test_a_record_held_by_a_live_run_is_refused_and_left_alone(tmp_path):
    from framecast.engine.resume import RecordBusy

    first = _record(tmp_path)
    first.create()
    first.save({"next_tick": 8, "finished": 0, "lat": {}, "samplers": {}}, [])
    before = _digest(first.dir)
    for attempt in (_record(tmp_path).check, _record(tmp_path).create):
        with pytest.raises(RecordBusy, match=f"pid {os.getpid()}"):
            attempt()
        assert _digest(first.dir) == before
    first.release()
    again = _record(tmp_path)
    again.check()  # free once the holder is done (or dead: the kernel drops the lock)
    again.release()


def test_a_failed_save_leaves_no_half_written_file(tmp_path, monkeypatch):
    from framecast.engine import resume

    rec = _record(tmp_path)
    rec.create()
    rec.save({"next_tick": 8}, [])
    before = _digest(rec.dir)

    def full_disk(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resume.torch, "save", full_disk)
    with pytest.raises(OSError):
        rec.save({"next_tick": 16}, [])
    assert _digest(rec.dir) == before
    rec.release()


# ---- whole runs ------------------------------------------------------------------------------------

def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cmd(out, *extra):
    return [sys.executable, "-m", "framecast.launch.cli", "generate", PROMPT, "--out", str(out), *RUN, *extra]


def _run(out, *extra, timeout=600):
    return subprocess.run(_cmd(out, *extra), capture_output=True, text=True, env=ENV, timeout=timeout)


def _last_line(text: str) -> str:
    return last_own_line(text)  # Ray's forwarded raylet lines come in no fixed order with ours


def _pids(log: Path):
    m = re.search(r"framecast: torchrun: \d+ workers \(pids ([\d, ]+)\)", log.read_text())
    return [int(p) for p in m.group(1).split(",")] if m else None


def _alive(pid: int) -> bool:
    from framecast.parallel.torchrun_executor import process_state

    return process_state(pid) not in (None, "Z", "X")


def _start(tmp_path, out, *extra):
    log = tmp_path / (Path(str(out).rstrip("/")).name + ".log")
    proc = subprocess.Popen(_cmd(out, *extra), stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV)
    return proc, log


def _kill_after_first_resume_point(tmp_path, out, *extra):
    """Start a run, SIGKILL it once its first resume point is on disk; the record left behind."""
    from framecast.engine.resume import record_dir

    record = record_dir(out)
    proc, log = _start(tmp_path, out, *extra)
    try:
        wait_for(lambda: (record / "state.pt").exists() or proc.poll() is not None, 600, "the first resume point")
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    assert (record / "state.pt").exists(), log.read_text()[-2000:]
    return record


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: PNG frames and latents."""
    tmp = tmp_path_factory.mktemp("full")
    proc = _run(f"{tmp}/full/", "--latents-out", str(tmp / "full.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def _frames_as_mp4(png_folder: Path, out: Path) -> np.ndarray:
    """The reference frames through framecast's own mp4 writer (deterministic for the same frames)."""
    from framecast.engine.video_io import open_video_writer, read_video

    with open_video_writer(out, fps=8) as w:
        w.write(read_video(png_folder))
    return read_video(out)


@pytest.mark.parametrize("kind", ["mp4", "png"])
def test_resume_after_sigkill_finishes_identically(reference, tmp_path, kind):
    from framecast.engine.video_io import read_video

    out = tmp_path / "v.mp4" if kind == "mp4" else f"{tmp_path}/v/"
    record = _kill_after_first_resume_point(tmp_path, out)
    done = _run(out, "--resume", "--latents-out", str(tmp_path / "resumed.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "resumed.pt"), torch.load(reference / "full.pt"))
    if kind == "mp4":
        assert np.array_equal(read_video(out), _frames_as_mp4(reference / "full", tmp_path / "ref.mp4"))
        assert not (tmp_path / "v.partial.mp4").exists()
    else:
        assert np.array_equal(read_video(out), read_video(reference / "full"))
    assert not record.exists()


def test_killing_framecast_takes_its_torchrun_job_down_and_resume_finishes(reference, tmp_path):
    """The reported defect: a SIGKILLed `framecast generate --launcher torchrun` left its torchrun job
    running; it finished the video and removed the record under the `--resume` that followed."""
    from framecast.engine.resume import record_dir
    from framecast.engine.video_io import read_video

    out = f"{tmp_path}/v/"
    record = record_dir(out)
    proc, log = _start(tmp_path, out, "--launcher", "torchrun", "--workers", "2")
    pids = None
    try:
        pids = wait_for(lambda: _pids(log) or proc.poll() is not None, 600, "worker pids")
        assert pids is not True, log.read_text()[-2000:]
        wait_for(lambda: (record / "state.pt").exists() or proc.poll() is not None, 600, "the first resume point")
        proc.kill()  # framecast itself, not the job
        proc.wait()
        wait_for(lambda: not any(map(_alive, pids)), 120, "the torchrun ranks to end with their framecast")
    finally:
        proc.kill()
        for pid in pids if isinstance(pids, list) else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    kept = _digest(record)
    assert "state.pt" in kept
    done = _run(out, "--resume", "--latents-out", str(tmp_path / "resumed.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "resumed.pt"), torch.load(reference / "full.pt"))
    assert np.array_equal(read_video(out), read_video(reference / "full"))
    assert not record.exists()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A record left by a SIGKILLed PNG run, to copy for each failing resume."""
    tmp = tmp_path_factory.mktemp("interrupted")
    record = _kill_after_first_resume_point(tmp, f"{tmp}/v/")
    return record


def _copy_record(interrupted: Path, tmp_path: Path) -> tuple[str, Path]:
    out = f"{tmp_path}/v/"
    shutil.copytree(interrupted, tmp_path / "v.resume")
    return out, tmp_path / "v.resume"


def test_a_resume_that_does_not_match_leaves_the_record(interrupted, tmp_path):
    out, record = _copy_record(interrupted, tmp_path)
    before = _digest(record)
    proc = _run(out, "--resume", "--seed", "6")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"framecast: error: --resume: the record at {record} is for a different request or config "
        f"(same prompt, seed, frames and options are needed)"]
    assert _digest(record) == before


def test_a_resume_while_the_run_is_alive_is_refused(interrupted, tmp_path):
    from framecast.engine.resume import ResumeRecord

    out, record = _copy_record(interrupted, tmp_path)
    before = _digest(record)
    holder = ResumeRecord(out, {})
    holder.acquire()  # this test process plays the run still writing the output
    try:
        proc = _run(out, "--resume")
    finally:
        holder.release()
    assert proc.returncode == 2
    assert re.fullmatch(r"framecast: error: the resume record at .* is in use by another framecast run "
                        rf"\(pid {os.getpid()}\) still writing this output; .*", proc.stderr.strip())
    assert _digest(record) == before


def test_a_resume_that_cannot_write_leaves_the_record(interrupted, tmp_path):
    out, record = _copy_record(interrupted, tmp_path)
    before = _digest(record)
    (tmp_path / "v" / "00000.png").mkdir(parents=True)  # the first frame cannot be written there
    proc = _run(out, "--resume")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("framecast: error:"), proc.stderr
    assert _digest(record) == before


def test_a_worker_killed_during_a_resume_leaves_the_record(interrupted, tmp_path):
    out, record = _copy_record(interrupted, tmp_path)
    before = _digest(record)
    proc, log = _start(tmp_path, out, "--resume", "--launcher", "torchrun", "--workers", "2")
    try:
        pids = wait_for(lambda: _pids(log) or proc.poll() is not None, 600, "worker pids")
        assert pids is not True, log.read_text()[-2000:]
        os.kill(pids[1], signal.SIGKILL)  # before the resume's first call can finish: it needs rank 1
        rc = proc.wait(timeout=600)
    finally:
        proc.kill()
    text = log.read_text()
    assert rc != 0
    assert re.fullmatch(rf"framecast: error: worker rank 1 \(pid {pids[1]}\) died.*", _last_line(text)), text
    assert "Traceback" not in text and "ChildFailedError" not in text, text
    assert _digest(record) == before


def test_a_stopped_peer_ends_the_run_within_the_timeout(tmp_path):
    """A rank that hangs (SIGSTOP) rather than dies: torchrun does not notice it; the process-group
    timeout (parallel.timeout_s) ends rank 0's wait and the run stops with one line naming it."""
    from framecast.engine.resume import record_dir

    out = tmp_path / "v.mp4"
    proc, log = _start(tmp_path, out, "--launcher", "torchrun", "--workers", "2", "parallel.timeout_s=10")
    pids = None
    try:
        pids = wait_for(lambda: _pids(log) or proc.poll() is not None, 600, "worker pids")
        assert pids is not True, log.read_text()[-2000:]
        wait_for(lambda: (record_dir(out) / "state.pt").exists() or proc.poll() is not None, 600,
                  "the first resume point")
        os.kill(pids[1], signal.SIGSTOP)
        stopped_at = time.monotonic()
        rc = proc.wait(timeout=600)  # 10 s of timeout + torchrun's grace before it SIGKILLs the stopped rank
        took = time.monotonic() - stopped_at
    finally:
        proc.kill()
        for pid in pids if isinstance(pids, list) else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    print(f"stopped peer: the run ended {took:.1f} s after SIGSTOP")
    assert rc != 0
    assert re.fullmatch(rf"framecast: error: worker rank 1 \(pid {pids[1]}\) stopped answering "
                        r".*parallel\.timeout_s=10 s.*", _last_line(text)), text
    assert "Traceback" not in text, text
    assert (record_dir(out) / "state.pt").exists()


def test_joining_ray_is_bounded_and_one_line(monkeypatch):
    """An address that never answers (ray.init retries for minutes) ends after
    parallel.connect_timeout_s with one line naming it; a refusal is one line too. No network:
    ray.init is replaced by a stand-in that blocks or fails."""
    import threading

    ray = pytest.importorskip("ray")
    from framecast.parallel.ray_executor import join_ray

    release = threading.Event()
    monkeypatch.setattr(ray, "init", lambda **kw: release.wait(30))
    try:
        with pytest.raises(TimeoutError, match=r"parallel.ray_address='10.9.9.9:6379': no Ray cluster answered "
                                               r"within parallel.connect_timeout_s=0.5 s"):
            join_ray("10.9.9.9:6379", 0.5)
    finally:
        release.set()

    def refuse(**kw):
        raise ConnectionError("could not connect\nsecond line")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConnectionError, match=r"could not join Ray \(ConnectionError: could not connect\)$"):
        join_ray("auto", 5)


def test_connect_timeout_is_a_checked_config_field():
    from framecast.config import ConfigError, load_config

    assert load_config("tiny").parallel.connect_timeout_s == 30.0
    for bad in ("parallel.connect_timeout_s=0", "parallel.connect_timeout_s=nan", "parallel.timeout_s=0"):
        with pytest.raises(ConfigError):
            load_config("tiny", [bad])
