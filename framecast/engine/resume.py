"""Resume records for DualParal runs: `OUT.resume/` beside the output holds the request, the rank-0
pipeline state at the last drained call (tick, live latents, per-block samplers) and the latents of
every finished block. `--resume` re-decodes the finished blocks into a fresh output (the video
encoder is deterministic for the same frames) and continues the plan from the saved tick, so the
result is identical to an uninterrupted run. The record is removed when the video completes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch

from framecast.config import ParallelConfig, to_yaml


def record_dir(out) -> Path:
    out = str(out).rstrip("/").rstrip(os.sep)
    return Path(out + ".resume")


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class ResumeRecord:
    def __init__(self, out, identity: dict):
        self.dir = record_dir(out)
        self.identity = identity  # what must match for a resume: request + config

    @classmethod
    def for_request(cls, engine, req, out) -> "ResumeRecord":
        cfg = dataclasses.replace(engine.cfg, parallel=ParallelConfig())  # any W/launcher may resume
        identity = {"request": dict(req.__dict__), "config": to_yaml(cfg),
                    "checkpoint": str(engine.checkpoint) if engine.checkpoint else None}
        return cls(out, identity)

    def create(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "blocks").mkdir(parents=True)
        (self.dir / "request.json").write_text(json.dumps(self.identity, indent=1, default=str))

    def check(self) -> None:
        """Raise ValueError unless a record for exactly this request and config exists."""
        path = self.dir / "request.json"
        if not path.is_file():
            raise ValueError(f"--resume: no resume record at {self.dir}")
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(self.identity, default=str)):
            raise ValueError(f"--resume: the record at {self.dir} is for a different request or config "
                             f"(same prompt, seed, frames and options are needed)")

    def has_state(self) -> bool:
        return (self.dir / "state.pt").is_file()

    def load_state(self) -> dict:
        return torch.load(self.dir / "state.pt", weights_only=False)

    def finished_blocks(self, count: int) -> Iterator[torch.Tensor]:
        """The first `count` finished blocks — the saved state's `finished` (a later block on disk
        from an interrupted save is recomputed, not reused)."""
        for k in range(count):
            yield torch.load(self.dir / "blocks" / f"{k:06d}.pt")

    def save(self, state: dict, finished: list) -> None:
        # blocks first, state last: a state never points past blocks that are not on disk
        for k, _, _, lat in finished:
            _atomic_save(lat, self.dir / "blocks" / f"{k:06d}.pt")
        _atomic_save(state, self.dir / "state.pt")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
