"""A worker host: builds any worker class inside its process, after the device is pinned.

Every executor (local, torchrun, Ray) runs a `WorkerHost` per rank. The host joins the process
group when the executor did not (Ray actors; torchrun ranks joined at start), builds the
layout's named groups (`ParallelDims.new_groups`), then the worker from its import string:

    worker = WorkerClass(cfg, checkpoint, rank=rank, dims=dims, groups=groups)   # groups None for W=1

and runs its methods by name. Workers keep no global state: their groups come in by name.
"""
from __future__ import annotations

import importlib
import os
import socket
from typing import Optional

import torch
import torch.distributed as dist


def resolve(import_string: str):
    """"package.module:Name" -> the object."""
    module, _, name = import_string.partition(":")
    if not name:
        raise ValueError(f"worker {import_string!r} is not an import string 'package.module:Class'")
    return getattr(importlib.import_module(module), name)


class WorkerHost:
    def __init__(self, worker: str, cfg, checkpoint, dims, rank: int, init_method: Optional[str] = None,
                 threads: Optional[int] = None):
        from framecast.engine.components import resolve_device

        if threads:
            torch.set_num_threads(threads)
        self.rank, self.dims = rank, dims
        self.device = resolve_device(cfg.device)
        self.owns_group = dims.world > 1 and not dist.is_initialized()
        if self.owns_group:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            kwargs = {"init_method": init_method} if init_method else {}
            dist.init_process_group(backend, rank=rank, world_size=dims.world, **kwargs)
        groups = dims.new_groups() if dims.world > 1 else None
        self.worker = resolve(worker)(cfg, checkpoint, rank=rank, dims=dims, groups=groups)

    def info(self) -> dict:
        info = {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(self.device)}
        return {**info, **(self.worker.info() if hasattr(self.worker, "info") else {})}

    def execute(self, method: str, *args):
        return getattr(self.worker, method)(*args)

    def close(self) -> None:
        if hasattr(self.worker, "close"):
            self.worker.close()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
