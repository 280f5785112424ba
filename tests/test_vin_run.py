"""VIN across workers: W = 2 and 3 chunk groups under torchrun and Ray (two Ray nodes) equal W = 1
local, CFG on and off, an odd frame count, with a learned interface module (random weights made
here on top of the shipped tiny model); the torchrun W=3 run is recorded and replayed under
NCCL's ordering rules (tests/nccl_model.py). Latents are compared (max abs diff), frames through PNG."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right"
# 15 latent frames (odd), chunks of 4 + 2 overlap: 4 chunks (3 + ... split 2/2 at W=2, 2/1/1 at W=3);
# 3 steps, fusion early = steps 0-1 fused, step 2 not: both paths and the final cross-fade run.
BASE = ["--frames", "15", "--schedule", "vin", "--chunk-frames", "4", "--overlap-frames", "2", "--steps", "3",
        "--seed", "5", "--quiet", "--preset", "tiny-vin", "schedule.vin.fusion=early"]
CFG = {"cfg": ["sampler.guidance_scale=3.0"], "nocfg": ["sampler.guidance_scale=1.0"]}


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
                PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """tiny's DiT and text encoder plus a random VIN module (vin.*), as `framecast train --vin` writes them."""
    from framecast.config import load_config
    from framecast.world.train import save_weights
    from framecast.world.vin_training import build_vin_nets

    path = tmp_path_factory.mktemp("vin_weights") / "weights.safetensors"
    save_weights(build_vin_nets(load_config("tiny-vin"), "builtin:tiny", seed=3), path)
    return path


def generate(tmp: Path, name: str, weights: Path, cfg: str, *extra, prefix=()) -> subprocess.CompletedProcess:
    cmd = [*prefix, "generate", PROMPT, "--out", f"{tmp / name}/", "--latents-out", str(tmp / f"{name}.pt"),
           *BASE, f"model.weights={weights}", *CFG[cfg], *extra]
    if not prefix:
        cmd = [sys.executable, "-m", "framecast.launch.cli", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights):
    tmp = tmp_path_factory.mktemp("vin_ref")
    for cfg in CFG:
        generate(tmp, f"w1-{cfg}", weights, cfg, "--launcher", "local")
    return tmp


def assert_same(tmp: Path, name: str, reference: Path, cfg: str, what: str) -> None:
    from framecast.engine.video_io import read_video

    got, ref = torch.load(tmp / f"{name}.pt"), torch.load(reference / f"w1-{cfg}.pt")
    assert got.shape == ref.shape == (1, 3, 15, 32, 32)
    diff = (got - ref).abs().max().item()
    frames = np.abs(read_video(tmp / name).astype(int) - read_video(reference / f"w1-{cfg}").astype(int)).max()
    print(f"{what}: max abs diff vs W=1: latents {diff:.3g}, frames {frames}")
    assert diff <= 1e-5 and frames <= 1  # uint8 frames: at most one rounding step where latents differ by ~1e-7


def test_reference_differs_with_and_without_cfg(reference):
    a, b = torch.load(reference / "w1-cfg.pt"), torch.load(reference / "w1-nocfg.pt")
    assert not torch.allclose(a, b)


def test_torchrun_w2_matches_local(reference, weights, tmp_path):
    generate(tmp_path, "tr2", weights, "cfg", "--launcher", "torchrun", "--workers", "2")
    assert_same(tmp_path, "tr2", reference, "cfg", "torchrun W=2, CFG")


def test_torchrun_w3_matches_local_and_is_valid_under_nccl_rules(reference, weights, tmp_path):
    """The run recorded under torchrun (tests/nccl_model.py) and its logs replayed under NCCL's
    rules: per communicator in issue order, collectives on every rank, tensors on the group's device."""
    sys.path.insert(0, str(ROOT / "tests"))
    import nccl_model
    from framecast.parallel.torchrun_executor import free_port

    logs = tmp_path / "logs"
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=3", "--master_addr=127.0.0.1",
              f"--master_port={free_port()}", str(ROOT / "tests" / "nccl_model.py"), "record", "--log-dir",
              str(logs), "--"]
    generate(tmp_path, "tr3", weights, "nocfg", "--workers", "3", prefix=prefix)
    assert_same(tmp_path, "tr3", reference, "nocfg", "torchrun W=3, no CFG")
    recorded = nccl_model.load_logs(sorted(logs.glob("rank*.json")))
    assert len(recorded) == 3
    rep = nccl_model.check(recorded)
    print(f"W=3: {rep}")
    assert rep.ok, str(rep)
    kinds = {e["kind"] for log in recorded for e in log["events"]}
    assert {"all_reduce", "send", "recv"} <= kinds  # keyframes all-reduced, overlaps exchanged
    reduces = [e for e in recorded[1]["events"] if e["kind"] == "all_reduce" and e["shape"] != [1]]
    assert len(reduces) == 3 and reduces[0]["shape"] == [2, 3, 32, 32]  # one per step: 2 keyframes (0, 8)


@pytest.mark.parametrize("workers, cfg, placement", [(2, "cfg", "SPREAD"), (3, "nocfg", "PACK")])
def test_ray_matches_local(reference, weights, tmp_path, ray_cluster, workers, cfg, placement):
    proc = generate(tmp_path, "ray", weights, cfg, "--launcher", "ray", "--workers", str(workers),
                    f"parallel.placement={placement}", "--ray-address", ray_cluster.address)
    assert_same(tmp_path, "ray", reference, cfg, f"ray W={workers} {placement}")
    if placement == "SPREAD":
        assert "2 workers on 2 nodes" in proc.stderr  # one chunk group on each node
