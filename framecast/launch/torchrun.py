"""DualParal under torchrun: one rank per GPU (or CPU process), same worker code as Ray.

    torchrun --nproc_per_node=W -m framecast.launch.torchrun generate "PROMPT" --seconds 60 --out v.mp4 \
        --schedule dualparal

Rank 0 is the driver: it runs the normal `framecast generate` (VAE decode, file output, progress)
with an executor whose `collective_rpc` broadcasts each call (a small pickled control message) so
every rank runs the same method in the same order. Activations go over the P2P ring, not here.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import torch
import torch.distributed as dist


class TorchrunExecutor:
    def __init__(self, cfg, checkpoint):
        from framecast.parallel.worker import DualParalWorker

        rank, world = dist.get_rank(), dist.get_world_size()
        if cfg.parallel.workers != world:
            raise ValueError(f"parallel.workers={cfg.parallel.workers} but torchrun started {world} ranks")
        _broadcast(("init", (cfg, checkpoint)))
        self.worker = DualParalWorker(cfg, checkpoint, rank=rank, world=world)
        infos = [None] * world
        dist.all_gather_object(infos, self.worker.info())
        print(f"framecast: torchrun: {world} workers (pids {', '.join(str(i['pid']) for i in infos)})",
              file=sys.stderr, flush=True)
        # torchrun answers a dead rank by SIGTERM to the others: name the dead one(s) in the error
        signal.signal(signal.SIGTERM, lambda signum, frame: _on_sigterm(infos))

    def collective_rpc(self, method: str, *args) -> list:
        _broadcast((method, args))
        return [getattr(self.worker, method)(*args)]

    def shutdown(self) -> None:
        pass  # the process group lives as long as the torchrun job; `main` ends it


def _broadcast(message):
    obj = [message]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


def follow() -> None:
    """Ranks > 0: run what rank 0 broadcasts until it says exit."""
    from framecast.parallel.worker import DualParalWorker

    worker = None
    while True:
        method, args = _broadcast(None)
        if method == "exit":
            return
        if method == "init":
            cfg, checkpoint = args
            worker = DualParalWorker(cfg, checkpoint, rank=dist.get_rank(), world=dist.get_world_size())
            dist.all_gather_object([None] * dist.get_world_size(), worker.info())
        else:
            getattr(worker, method)(*args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], workers: int) -> int:
    """`framecast generate --launcher torchrun` outside torchrun: start a single-node torchrun job
    on loopback running this module with the same arguments."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={workers}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "framecast.launch.torchrun", *argv]
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return subprocess.call(cmd, env=env)


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


def _terminate(signum, frame):
    raise SystemExit(f"framecast: stopped by signal {signum} (a peer rank failed or the job was cancelled)")


def main(argv=None) -> int:
    from framecast.launch import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)  # torchrun stops the others when one rank dies
    device_cuda = torch.cuda.is_available() and "device=cpu" not in argv
    if device_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device_cuda else "gloo")
    rank = dist.get_rank()
    if rank != 0:
        try:
            follow()
        finally:
            dist.destroy_process_group()
        return 0
    rc = cli.main(argv + ["--launcher", "torchrun"])
    if rc != 0:  # peers may be gone or waiting: torchrun stops the rest when rank 0 exits non-zero
        sys.stderr.flush()
        os._exit(rc)
    _broadcast(("exit", ()))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
