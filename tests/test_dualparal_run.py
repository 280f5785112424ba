"""DualParal end to end on the tiny preset: W workers under torchrun and Ray equal W=1 local,
multi-node Ray, faults and resume. Latents are compared (max abs diff), frames through PNG."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

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
