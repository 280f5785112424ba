"""Feature caches under DualParal, end to end: W = 2 stages under torchrun equal W = 1 local with
the cache on (rank 0 decides each pass and sends the decision before the hidden states), and the
cache really changes the video (it reused something)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROMPT = "a red circle moving right"
BASE = ["--frames", "10", "--schedule", "dualparal", "--block-frames", "4", "--context-frames", "2",
        "--steps", "8", "--seed", "5", "--quiet", "sampler.guidance_scale=3.0"]
CACHES = {
    "fbcache": ["cache.kind=fbcache", "cache.fbcache.threshold=0.5", "cache.fbcache.warmup=1"],
    "cg_taylor": ["cache.kind=cg_taylor", "cache.cg_taylor.threshold=0.5", "cache.cg_taylor.warmup=2"],
    "delta_dit": ["cache.kind=delta_dit", "cache.delta_dit.interval=2", "cache.delta_dit.warmup=1"],
}


def generate(tmp_path: Path, name: str, *extra) -> torch.Tensor:
    out = tmp_path / f"{name}/"
    cmd = [sys.executable, "-m", "framecast.launch.cli", "generate", PROMPT, "--out", f"{out}/",
           "--latents-out", str(tmp_path / f"{name}.pt"), *BASE, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / f"{name}.pt")


@pytest.fixture(scope="module")
def uncached(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("none"), "w1", "--launcher", "local")


@pytest.mark.parametrize("kind", list(CACHES))
def test_two_workers_equal_one_with_the_cache_on(tmp_path, uncached, kind):
    one = generate(tmp_path, "w1", "--launcher", "local", *CACHES[kind])
    two = generate(tmp_path, "w2", "--launcher", "torchrun", "--workers", "2", *CACHES[kind])
    diff = (two - one).abs().max().item()
    print(f"{kind}: max abs diff W=2 vs W=1 = {diff:.3g}; vs uncached {(one - uncached).abs().max().item():.3g}")
    assert diff <= 1e-5
    assert not torch.equal(one, uncached)  # the cache reused something


def test_decision_flags_are_valid_under_nccl_rules(tmp_path):
    """Recorded under torchrun + gloo and replayed under NCCL's rules (tests/nccl_model.py): the flag
    goes before each pass's hidden states on the forward group, on the device, and a middle stage
    forwards it; the return path is unchanged."""
    sys.path.insert(0, str(Path(__file__).parent))
    from nccl_model import check
    from test_nccl_order import _p2p, _record

    logs, _ = _record(tmp_path, 3, "sampler.guidance_scale=3.0", *CACHES["fbcache"])
    rep = check(logs)
    assert rep.ok, str(rep)
    for log in logs[:-1]:  # ranks 0 and 1: (flag, hidden) per pass, in that order
        sends = _p2p(log, "send")
        assert len(sends) == 2 * 4 * 3  # blocks x steps x 2 messages
        assert all(e["shape"] == [1] for e in sends[0::2]) and all(e["shape"][0] == 2 for e in sends[1::2])
    assert all(e["shape"] != [1] for e in _p2p(logs[-1], "send"))  # the velocity return carries no flag
