"""DualParal end to end on the tiny preset: W workers under torchrun and Ray equal W=1 local,
multi-node Ray, faults and resume. Latents are compared (max abs diff), frames through PNG."""
import os
import re
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
# CFG on (guidance 3), uneven last block (14 latent frames, N=4), C=2, 3 steps.
BASE = ["--frames", "14", "--schedule", "dualparal", "--block-frames", "4", "--context-frames", "2",
        "--steps", "3", "--seed", "5", "--quiet", "sampler.guidance_scale=3.0"]


def generate(tmp_path: Path, name: str, *extra, env=None, check=True) -> subprocess.CompletedProcess:
    out = tmp_path / f"{name}/"
    cmd = [sys.executable, "-m", "framecast.launch.cli", "generate", PROMPT, "--out", f"{out}/",
           "--latents-out", str(tmp_path / f"{name}.pt"), *BASE, *extra]
    run_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def latents(tmp_path: Path, name: str) -> torch.Tensor:
    return torch.load(tmp_path / f"{name}.pt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    generate(tmp, "w1", "--launcher", "local")
    return tmp


def test_local_reference_is_exact_length_and_deterministic(reference, tmp_path):
    from framecast.engine.video_io import read_video

    lat = latents(reference, "w1")
    assert lat.shape == (1, 3, 14, 32, 32)
    assert read_video(reference / "w1").shape == (14, 32, 32, 3)
    generate(tmp_path, "again", "--launcher", "local")
    assert torch.equal(latents(tmp_path, "again"), lat)


@pytest.mark.parametrize("extra", [
    ("--launcher", "torchrun", "--workers", "2"),
    ("--launcher", "torchrun", "--workers", "3", "parallel.layer_split=[1,2,3]"),
], ids=["torchrun-w2", "torchrun-w3-uneven"])
def test_torchrun_matches_local(reference, tmp_path, extra):
    generate(tmp_path, "tr", *extra)
    diff = (latents(tmp_path, "tr") - latents(reference, "w1")).abs().max().item()
    print(f"{extra}: max abs diff vs W=1 = {diff:.3g}")
    assert diff <= 1e-5


def test_frame_timesteps_torchrun_matches_local(reference, tmp_path):
    """schedule.dualparal.timesteps=frame (each window frame at its own level): W=2 equals W=1, and
    the option changes the video (the context is embedded one step cleaner than the block)."""
    frame = "schedule.dualparal.timesteps=frame"
    generate(tmp_path, "w1", "--launcher", "local", frame)
    generate(tmp_path, "w2", "--launcher", "torchrun", "--workers", "2", frame)
    w1 = latents(tmp_path, "w1")
    assert (latents(tmp_path, "w2") - w1).abs().max().item() <= 1e-5
    assert (w1 - latents(reference, "w1")).abs().max().item() > 1e-3


def test_ray_two_nodes_match_local(reference, tmp_path, ray_cluster):
    proc = generate(tmp_path, "ray", "--launcher", "ray", "--workers", "2", "parallel.placement=SPREAD",
                    "--ray-address", ray_cluster.address)
    diff = (latents(tmp_path, "ray") - latents(reference, "w1")).abs().max().item()
    print(f"ray W=2 over 2 nodes: max abs diff vs W=1 = {diff:.3g}")
    assert diff <= 1e-5
    assert "2 workers on 2 nodes" in proc.stderr  # the executor reports its placement


LONG = ["--frames", "120", "--steps", "6"]  # long enough to be killed mid-run (~10 s)


def _start(tmp_path, name, *extra):
    out = tmp_path / f"{name}.mp4"
    log = open(tmp_path / f"{name}.log", "w")
    cmd = [sys.executable, "-m", "framecast.launch.cli", "generate", PROMPT, "--out", str(out), *BASE, *LONG,
           *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc, out, tmp_path / f"{name}.log"


def _pids(log: Path, marker: str):
    import re
    m = re.search(marker + r".*pids ([\d, ]+)\)", log.read_text())
    return [int(p) for p in m.group(1).split(",")] if m else None


@pytest.mark.parametrize("launcher, marker", [("ray", "framecast: ray:"), ("torchrun", "framecast: torchrun:")])
def test_killed_worker_stops_run_and_resume_finishes_identically(tmp_path, launcher, marker, ray_cluster):
    from framecast.engine.video_io import read_video

    extra = ["--launcher", launcher, "--workers", "2"]
    if launcher == "ray":
        extra += ["--ray-address", ray_cluster.address]
    proc, out, log = _start(tmp_path, "killed", *extra)
    try:
        pids = wait_for(lambda: _pids(log, marker), 120, "worker pids")
        partial = out.with_name("killed.partial.mp4")
        record = Path(str(out) + ".resume")
        wait_for(lambda: (record / "state.pt").exists() and partial.exists(), 120, "first blocks written")
        killed_at = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        rc = proc.wait(timeout=60)
        stopped_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    print(f"{launcher}: stopped {stopped_after:.1f} s after the kill; rc={rc}")
    assert rc != 0 and stopped_after < 30
    # one line naming the dead rank, and it is framecast's last line (no torchrun report, no traceback
    # after it). Ray's log monitor forwards raylet/worker lines ("(raylet) ...", "(Actor pid=...) ...")
    # from its own thread, in no fixed order with ours: they are not framecast's output.
    last = last_own_line(text)
    assert re.fullmatch(rf"framecast: error: worker rank 1 \(.*{pids[1]}.*\).*", last), text[-2000:]
    assert "Traceback" not in text and "ChildFailedError" not in text, text[-2000:]
    assert not out.exists()
    written = read_video(partial)  # what was written stays playable
    assert 0 < len(written) < 120
    assert (record / "state.pt").exists()

    # resume (any launcher may continue; here the local one) == an uninterrupted run
    done = subprocess.run([sys.executable, "-m", "framecast.launch.cli", "generate", PROMPT, "--out", str(out),
                           *BASE, *LONG, "--resume", "--latents-out", str(tmp_path / "resumed.pt")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    full = tmp_path / "full.mp4"
    subprocess.run([sys.executable, "-m", "framecast.launch.cli", "generate", PROMPT, "--out", str(full), *BASE,
                    *LONG, "--latents-out", str(tmp_path / "full.pt")], check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert torch.equal(torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "full.pt"))
    assert np.array_equal(read_video(out), read_video(full))
    assert not record.exists() and not partial.exists()


# ---- workers live as long as the Engine -----------------------------------------------------------

ENGINE_OVERRIDES = ["schedule.name=dualparal", "schedule.dualparal.block_frames=4", "schedule.dualparal.context_frames=2",
                    "sampler.steps=3", "sampler.guidance_scale=3.0"]


def test_ray_engine_keeps_its_workers_across_requests(reference, tmp_path, ray_cluster):
    """Two requests on one Engine run on the same actors (weights loaded once), each equal to W=1;
    close() releases the actors and a later request starts fresh ones."""
    from framecast import Engine

    engine = Engine.from_preset("tiny", ENGINE_OVERRIDES + [
        "parallel.launcher=ray", "parallel.workers=2", f"parallel.ray_address={ray_cluster.address}"])
    with engine:
        engine.generate(PROMPT, frames=14, seed=5, out=f"{tmp_path}/a/", latents_out=tmp_path / "a.pt")
        (executor,) = [p for k, p in engine._parts.items() if isinstance(k, tuple) and k[0] == "executor"]
        first = [n["pid"] for n in executor.nodes]
        engine.generate(PROMPT, frames=14, seed=5, out=f"{tmp_path}/b/", latents_out=tmp_path / "b.pt")
        (again,) = [p for k, p in engine._parts.items() if isinstance(k, tuple) and k[0] == "executor"]
        assert again is executor and [n["pid"] for n in again.nodes] == first
    assert not any(isinstance(k, tuple) and k[0] == "executor" for k in engine._parts)
    for name in ("a", "b"):
        assert (latents(tmp_path, name) - latents(reference, "w1")).abs().max().item() <= 1e-5


TWO_REQUESTS = """
import sys, torch, torch.distributed as dist
from framecast.parallel.torchrun_executor import broadcast, follow
dist.init_process_group("gloo")
if dist.get_rank() != 0:
    follow()
    dist.destroy_process_group()
    sys.exit(0)
from framecast import Engine
out = sys.argv[1]
engine = Engine.from_preset("tiny", %r + ["parallel.launcher=torchrun", "parallel.workers=2"])
with engine:
    for name in ("a", "b"):
        engine.generate(%r, frames=14, seed=5, out=f"{out}/{name}/", latents_out=f"{out}/{name}.pt")
broadcast(("exit", ()))
dist.destroy_process_group()
"""


def test_torchrun_engine_keeps_its_workers_across_requests(reference, tmp_path):
    """Under torchrun the followers keep one worker across two requests of one Engine: the
    workers are built once (one start-up line) and both videos equal W=1."""
    from framecast.parallel.torchrun_executor import free_port

    script = tmp_path / "two.py"
    script.write_text(TWO_REQUESTS % (ENGINE_OVERRIDES, PROMPT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("framecast: torchrun: 2 workers") == 1, proc.stderr[-3000:]
    for name in ("a", "b"):
        assert (latents(tmp_path, name) - latents(reference, "w1")).abs().max().item() <= 1e-5
