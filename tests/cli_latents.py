"""`framecast generate` in a subprocess, its final latents read back (--latents-out): the shared
helper of the tests that prove a model family's W workers equal one worker."""
import os
import subprocess
import sys
from pathlib import Path

import torch

PROMPT = "a red circle moving right"


def generate_latents(tmp_path: Path, name: str, *args: str) -> torch.Tensor:
    """Run `framecast generate PROMPT --out tmp_path/name/ --latents-out tmp_path/name.pt *args`
    (one thread, as torchrun gives each rank) and return the latents [1, C, F, h, w]."""
    cmd = [sys.executable, "-m", "framecast.launch.cli", "generate", PROMPT, "--out", f"{tmp_path / name}/",
           "--latents-out", str(tmp_path / f"{name}.pt"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / f"{name}.pt")
