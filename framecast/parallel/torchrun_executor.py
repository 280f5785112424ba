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
        broadcast(("init", (worker, cfg, checkpoint, dims)))
        self.host = WorkerHost(worker, cfg, checkpoint, dims, rank=rank)
        infos = [None] * world
        dist.all_gather_object(infos, self.host.info())
        print(f"framecast: torchrun: {world} workers (pids {', '.join(str(i['pid']) for i in infos)})",
              file=sys.stderr, flush=True)
        # torchrun answers a dead rank by SIGTERM to the others: name the dead one(s) in the error
        signal.signal(signal.SIGTERM, lambda signum, frame: _on_sigterm(infos))

    def collective_rpc(self, method: str, *args) -> list:
        try:
            broadcast((method, args))
            return [self.host.execute(method, *args)]
        except BaseException:
            self.broken = True  # peers may be stuck mid-call: no further broadcast can be trusted
            raise

    def shutdown(self) -> None:
        """Close the workers on every rank (the process group lives as long as the torchrun job);
        after a failed call only this rank's part is closed: the job is ending."""
        if not self.broken:
            broadcast(("close", ()))
        self.host.close()


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


def _on_sigterm(infos: list) -> None:
    """Raise `WorkerLost` once, and not over an error already being handled: rank 0 may have
    seen the dead peer itself (a failed send) and be reporting it when torchrun's SIGTERM comes;
    an exception raised there would escape the report as a bare traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.exc_info()[0] is None:
        _raise_lost(infos)


def _raise_lost(infos: list) -> None:
    from framecast.parallel.ring import WorkerLost

    host = socket.gethostname()
    dead = []
    for i in infos[1:]:
        if i["host"] != host:
            continue
        try:
            os.kill(i["pid"], 0)
        except ProcessLookupError:
            dead.append(i)
    names = ", ".join(f"rank {i['rank']} (pid {i['pid']})" for i in dead) or "a peer rank (see torchrun's report)"
    raise WorkerLost(f"DualParal worker {names} died; torchrun stopped the job")
