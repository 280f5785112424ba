"""A worker host: builds any worker class inside its process, after the device is pinned.

Every executor (local, torchrun, Ray) runs a `WorkerHost` per rank. The host decides the rank's
device (the one place that does: `host_device`; a Ray actor passes what Ray assigned it), joins the
process group when the executor did not (Ray actors; torchrun ranks joined at start) with
`parallel.timeout_s` as its timeout, builds the layout's named groups (`ParallelDims.new_groups`),
then the worker from its import string:

    worker = WorkerClass(cfg, checkpoint, rank=rank, dims=dims, groups=groups)   # groups None for W=1

with `cfg.device` set to the concrete device the host chose (so the worker's own
`resolve_device(cfg.device)` lands on it), and runs its methods by name. Workers keep no global
state: their groups come in by name.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import socket
from datetime import timedelta
from typing import Optional, Sequence

import torch
import torch.distributed as dist


def resolve(import_string: str):
    """"package.module:Name" -> the object."""
    module, _, name = import_string.partition(":")
    if not name:
        raise ValueError(f"worker {import_string!r} is not an import string 'package.module:Class'")
    return getattr(importlib.import_module(module), name)


def ray_actor_device(requested: str, gpu_ids: Sequence) -> str:
    """The device of a Ray actor from what Ray assigned it (`ray.get_gpu_ids()`), not from the
    driver: Ray makes an actor's GPUs its only visible ones (CUDA_VISIBLE_DEVICES), so with a GPU
    the actor uses its own `cuda:0` — for device=auto, cuda and cuda:N alike (N numbers the driver's
    or the cluster's GPUs, not the actor's); device=cpu stays CPU; without a GPU, auto is CPU and a
    CUDA device is an error naming the cause."""
    from framecast.config import ConfigError

    if requested == "cpu":
        return "cpu"
    if len(gpu_ids):
        return "cuda:0"
    if requested == "auto":
        return "cpu"
    raise ConfigError(f"device={requested!r} but Ray assigned this worker no GPU (the cluster has none "
                      f"free); use device=auto or cpu")


def host_device(requested: str) -> torch.device:
    """The device of a torchrun / local rank: `resolve_device`, with a bare "cuda" made concrete
    (the current device, which launch/torchrun.py set to LOCAL_RANK)."""
    from framecast.engine.components import resolve_device

    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def init_group(backend: str, rank: int, world: int, timeout_s: float, init_method: Optional[str] = None) -> None:
    """`init_process_group` as framecast calls it everywhere: a timeout (a peer that stops answering
    fails the run within it) and, for NCCL, async error handling (a dead peer raises instead of
    hanging the stream)."""
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    kwargs = {"init_method": init_method} if init_method else {}
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s), **kwargs)


class WorkerHost:
    def __init__(self, worker: str, cfg, checkpoint, dims, rank: int, init_method: Optional[str] = None,
                 threads: Optional[int] = None, device: Optional[str] = None):
        """`device`: the device decided by the executor (a Ray actor's assignment); None: from cfg.device."""
        self.rank, self.dims = rank, dims
        self.device = host_device(device if device is not None else cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if threads:
            torch.set_num_threads(threads)
        if cfg.device != str(self.device):  # the worker resolves cfg.device itself: give it the decision
            cfg = dataclasses.replace(cfg, device=str(self.device))
        self.owns_group = dims.world > 1 and not dist.is_initialized()
        if self.owns_group:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            init_group(backend, rank, dims.world, cfg.parallel.timeout_s, init_method)
        groups = dims.new_groups(timeout=timedelta(seconds=cfg.parallel.timeout_s)) if dims.world > 1 else None
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
