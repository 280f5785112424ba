"""Resume records for DualParal runs: `OUT.resume/` beside the output holds the request, the rank-0
pipeline state at the last drained call (tick, live latents, per-block samplers) and the latents of
every finished block. `--resume` re-decodes the finished blocks into a fresh output (the video
encoder is deterministic for the same frames) and continues the plan from the saved tick, so the
result is identical to an uninterrupted run. The record is removed when the video completes.

One run at a time: a run holds the record (`acquire`: an advisory lock on the record's folder,
released by the kernel when the process ends, SIGKILL included); another run for the same output
— a `--resume` while the interrupted job still runs, say — is refused in one line and changes
nothing. A resume that fails never removes the record: it still holds the saved resume point (or a
later one the resume saved itself; every file is replaced atomically).
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
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save (disk full, say) leaves the record as it was
        raise


class RecordBusy(ValueError):
    """Another live framecast run holds this resume record."""


class ResumeRecord:
    def __init__(self, out, identity: dict):
        self.dir = record_dir(out)
        self.identity = identity  # what must match for a resume: request + config
        self._lock_fd = None

    @classmethod
    def for_request(cls, engine, req, out) -> "ResumeRecord":
        cfg = dataclasses.replace(engine.cfg, parallel=ParallelConfig())  # any W/launcher may resume
        identity = {"request": dict(req.__dict__), "config": to_yaml(cfg),
                    "checkpoint": str(engine.checkpoint) if engine.checkpoint else None}
        return cls(out, identity)

    def acquire(self) -> None:
        """Hold the record for this run (its folder must exist); RecordBusy if another live run
        holds it. A no-op where advisory locks do not exist (no fcntl)."""
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:
            return
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = self._owner()
            raise RecordBusy(f"the resume record at {self.dir} is in use by another framecast run"
                             f"{f' (pid {owner})' if owner else ''} still writing this output; wait for it to "
                             f"end or stop it, then run again") from None
        self._lock_fd = fd

    def _owner(self):
        """The pid holding the lock (Linux: /proc/locks; the record itself is never written to)."""
        try:
            st = os.stat(self.dir)
            want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
            for line in Path("/proc/locks").read_text().splitlines():
                parts = line.split()
                if "FLOCK" in parts and want in parts:
                    return int(parts[parts.index(want) - 1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closes the lock with it
            self._lock_fd = None

    def create(self) -> None:
        """A fresh record for a new run (an older one for the same output is replaced, unless a
        live run holds it: RecordBusy)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.acquire()  # the folder itself is kept (the lock is on it); its contents are replaced
        for name in ("blocks", "state.pt", "state.pt.tmp", "request.json"):
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        (self.dir / "blocks").mkdir()
        tmp = self.dir / "request.json.tmp"
        tmp.write_text(json.dumps(self.identity, indent=1, default=str))
        os.replace(tmp, self.dir / "request.json")

    def check(self) -> None:
        """Hold the record (RecordBusy if another live run does) and raise ValueError unless it is
        a record for exactly this request and config. Changes nothing in the record."""
        path = self.dir / "request.json"
        if not path.is_file():
            raise ValueError(f"--resume: no resume record at {self.dir}")
        self.acquire()
        if not (self.dir / "blocks").is_dir():
            raise ValueError(f"--resume: the resume record at {self.dir} is incomplete (no blocks/ folder)")
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
        self.release()
