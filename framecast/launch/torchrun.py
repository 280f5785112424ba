"""The torchrun entry point: one rank per GPU (or CPU process), same worker code as Ray.

    torchrun --nproc_per_node=W -m framecast.launch.torchrun generate "PROMPT" --seconds 60 --out v.mp4 \
        --schedule dualparal

Rank 0 is the driver: it runs the normal `framecast generate` (VAE decode, file output, progress)
with the torchrun executor (`framecast/parallel/torchrun_executor.py`), whose `collective_rpc`
broadcasts each call so every rank runs the same method in the same order; ranks > 0 follow.
The process group gets `parallel.timeout_s` as its timeout (read here from the command line's
`parallel.timeout_s=N` or the preset: no config is parsed before the group exists); a peer that
dies or stops answering ends rank 0's call with one line naming it (`framecast: error: ...`), and
ranks > 0 leave the reporting to rank 0.
"""
from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist

from framecast.parallel.torchrun_executor import broadcast, follow, is_comm_error


def _terminate(signum, frame):
    raise SystemExit(f"framecast: stopped by signal {signum} (a peer rank failed or the job was cancelled)")


def _terminate_quietly(signum, frame):
    os._exit(128 + signum)  # a follower: rank 0 (or torchrun's report) says what happened


def timeout_from_argv(argv: list[str]) -> int:
    """parallel.timeout_s for the process group: the last `parallel.timeout_s=N` override, else the
    preset's (`--preset NAME`; tiny, or wan2.1-t2v-1.3b with --checkpoint), else the default.
    Anything unreadable falls back to the default: the command's own parse reports it later."""
    from framecast.config import ParallelConfig, load_config

    overrides = [a for a in argv if a.startswith("parallel.timeout_s=")][-1:]
    preset = "wan2.1-t2v-1.3b" if any(a == "--checkpoint" or a.startswith("--checkpoint=") for a in argv) else "tiny"
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif a.startswith("--preset="):
            preset = a.split("=", 1)[1]
    try:
        return load_config(preset, overrides).parallel.timeout_s
    except Exception:
        return ParallelConfig().timeout_s


def main(argv=None) -> int:
    from framecast.launch import cli
    from framecast.parallel.host import init_group

    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)  # torchrun stops the others when one rank dies
    device_cuda = torch.cuda.is_available() and "device=cpu" not in argv
    if device_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    init_group("nccl" if device_cuda else "gloo", rank, world, timeout_from_argv(argv))
    if rank != 0:
        signal.signal(signal.SIGTERM, _terminate_quietly)
        try:
            follow()
        except RuntimeError as e:
            if not is_comm_error(e):
                raise
            os._exit(1)  # rank 0 or a peer is gone: rank 0 (or torchrun's report) names it
        dist.destroy_process_group()
        return 0
    rc = cli.main(argv + ["--launcher", "torchrun"])
    if rc != 0:  # peers may be gone or waiting: torchrun stops the rest when rank 0 exits non-zero
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the error line stays the last word
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    broadcast(("exit", ()))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
