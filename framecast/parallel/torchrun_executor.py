"""The torchrun executor: one rank per GPU (or CPU process), the same worker code as Ray.

Rank 0 is the driver: it runs the Engine (VAE decode, file output, progress) with an executor
whose `collective_rpc` broadcasts each call (a small pickled control message) so every rank runs
the same method in the same order; ranks > 0 sit in `follow()`. Tensors between workers go over
the layout's named groups, not here. The entry point that starts this is `launch/torchrun.py`.
"""
from __future__ import annotations

import os
import signal
import socket
import sys

import torch.distributed as dist

from framecast.parallel.host import WorkerHost


class TorchrunExecutor:
    def __init__(self, cfg, checkpoint, worker: str, dims):
        rank, world = dist.get_rank(), dist.get_world_size()
        if dims.world != world:
            raise ValueError(f"parallel.workers={dims.world} but torchrun started {world} ranks")
        self.broken = False
        self.timeout_s = cfg.parallel.timeout_s
        broadcast(("init", (worker, cfg, checkpoint, dims)))
        self.host = WorkerHost(worker, cfg, checkpoint, dims, rank=rank)
        infos = [None] * world
        dist.all_gather_object(infos, self.host.info())
        self.infos = infos
        print(f"framecast: torchrun: {world} workers (pids {', '.join(str(i['pid']) for i in infos)})",
              file=sys.stderr, flush=True)
        # torchrun answers a dead rank by SIGTERM to the others: the call in flight (if any) stops
        # with WorkerLost naming the dead rank(s); outside a call the next call does
        self._in_call = self._terminated = False
        self._sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        """Raise only inside a call (worker code: nothing there writes the user's files) and not
        over an error already being handled (rank 0 may have seen the dead peer itself and be
        reporting it): anywhere else an exception could escape the report as a bare traceback.
        Outside a call the next call raises."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._terminated = True
        if self._in_call and sys.exc_info()[0] is None:
            raise lost_error(self.infos, None, self.timeout_s)

    def collective_rpc(self, method: str, *args) -> list:
        if self._terminated:
            self.broken = True
            raise lost_error(self.infos, None, self.timeout_s)
        self._in_call = True
        try:
            broadcast((method, args))
            return [self.host.execute(method, *args)]
        except BaseException as e:
            self.broken = True  # peers may be stuck mid-call: no further broadcast can be trusted
            if isinstance(e, RuntimeError) and (is_comm_error(e) or dead_ranks(self.infos)):
                raise lost_error(self.infos, e, self.timeout_s) from None
            raise
        finally:
            self._in_call = False

    def shutdown(self) -> None:
        """Close the workers on every rank (the process group lives as long as the torchrun job);
        after a failed call only this rank's part is closed: the job is ending."""
        if not self.broken:
            broadcast(("close", ()))
        self.host.close()
        if not self._terminated and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._sigterm)


def broadcast(message):
    obj = [message]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


def follow() -> None:
    """Ranks > 0: run what rank 0 broadcasts until it says exit."""
    host = None
    while True:
        method, args = broadcast(None)
        if method == "exit":
            return
        if method == "init":
            worker, cfg, checkpoint, dims = args
            host = WorkerHost(worker, cfg, checkpoint, dims, rank=dist.get_rank())
            dist.all_gather_object([None] * dist.get_world_size(), host.info())
        elif method == "close":
            host.close()
            host = None
        else:
            host.execute(method, *args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- naming a lost peer --------------------------------------------------------------------------
_COMM_ERRORS = ("DistBackendError", "DistNetworkError", "DistStoreError")
_COMM_TEXT = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "socket",
              "nccl", "connection refused", "peer")


def is_comm_error(e: BaseException) -> bool:
    """An error of the process group itself (a peer gone, a closed connection, a timeout), as
    opposed to an error in the worker's own computation."""
    from framecast.parallel.ring import WorkerLost

    if isinstance(e, WorkerLost) or type(e).__name__ in _COMM_ERRORS:
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(t in text for t in _COMM_TEXT)


def process_state(pid: int) -> str | None:
    """The kernel's state letter of a process on this host (R, S, D, T stopped, Z zombie, ...);
    None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except OSError:  # no /proc: alive unless kill(0) says otherwise
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"


def _local_peers(infos: list) -> list:
    host = socket.gethostname()
    return [i for i in infos if i["host"] == host and i["pid"] != os.getpid()]


def dead_ranks(infos: list) -> list:
    """The workers (infos of `all_gather` of `WorkerHost.info`) on this host whose process is gone."""
    return [i for i in _local_peers(infos) if process_state(i["pid"]) in (None, "Z", "X")]


def lost_error(infos: list, cause: BaseException | None, timeout_s: float):
    """The `WorkerLost` naming the lost rank(s): the dead ones, else a stopped one (a peer that
    stopped answering), else the rank the failed message was for, else the cause as it is."""
    import re

    from framecast.parallel.ring import WorkerLost

    def name(i):
        return f"rank {i['rank']} (pid {i['pid']})"

    dead = dead_ranks(infos)
    if dead:
        return WorkerLost(f"worker {', '.join(map(name, dead))} died; the run is stopped")
    stopped = [i for i in _local_peers(infos) if process_state(i["pid"]) in ("T", "t")]
    timed_out = cause is not None and "time" in str(cause).lower()
    if stopped:
        return WorkerLost(f"worker {', '.join(map(name, stopped))} stopped answering (process "
                          f"stopped; nothing from it within parallel.timeout_s={timeout_s:g} s); the run is stopped")
    m = re.search(r"rank (\d+)", str(cause)) if cause is not None else None
    peer = next((i for i in infos if m and i["rank"] == int(m.group(1))), None)
    if peer is not None and timed_out:
        return WorkerLost(f"worker {name(peer)} stopped answering (nothing from it within "
                          f"parallel.timeout_s={timeout_s:g} s); the run is stopped")
    if peer is not None:
        return WorkerLost(f"worker {name(peer)} is gone "
                          f"({str(cause).splitlines()[0][:200]}); the run is stopped")
    if cause is None:
        return WorkerLost("worker: a peer rank failed and torchrun stopped the job")
    if timed_out:
        return WorkerLost(f"workers: no answer from a peer within parallel.timeout_s={timeout_s:g} s "
                          f"({str(cause).splitlines()[0][:160]}); the run is stopped")
    return WorkerLost(f"workers: {str(cause).splitlines()[0][:200]}; the run is stopped")
