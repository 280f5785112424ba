"""The torchrun entry point: one rank per GPU (or CPU process), same worker code as Ray.

    torchrun --nproc_per_node=W -m framecast.launch.torchrun generate "PROMPT" --seconds 60 --out v.mp4 \
        --schedule dualparal

Rank 0 is the driver: it runs the normal `framecast generate` (VAE decode, file output, progress)
with the torchrun executor (`framecast/parallel/torchrun_executor.py`), whose `collective_rpc`
broadcasts each call so every rank runs the same method in the same order; ranks > 0 follow.
"""
from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

from framecast.parallel.torchrun_executor import broadcast, follow


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
    broadcast(("exit", ()))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
