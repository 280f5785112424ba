"""Executors run any worker class on W workers, reached only through

    executor.collective_rpc("method", *args) -> [result of rank 0, rank 1, ...]

(vLLM's seam). `local` calls one in-process worker (W=1, the reference); `torchrun` broadcasts the
call from rank 0 to every rank (`torchrun_executor.py`); `ray` calls one actor per worker placed
by a placement group (`ray_executor.py`). Each builds a `WorkerHost` per rank from the worker's
import string and the `ParallelDims` layout. Tensors between workers never pass through the
executor: workers exchange them over their named process groups.
"""
from __future__ import annotations

from framecast.parallel.host import WorkerHost


class LocalExecutor:
    def __init__(self, cfg, checkpoint, worker: str, dims):
        if dims.world != 1:
            raise ValueError(f"parallel.launcher=local runs one worker; got {dims.world} "
                             f"(use --launcher torchrun or ray for more)")
        self.host = WorkerHost(worker, cfg, checkpoint, dims, rank=0)

    def collective_rpc(self, method: str, *args) -> list:
        return [self.host.execute(method, *args)]

    def shutdown(self) -> None:
        self.host.close()


def make_executor(cfg, checkpoint, worker: str, dims):
    """The executor for cfg.parallel.launcher running `worker` (import string) on `dims`."""
    import torch.distributed as dist

    if dims.world != cfg.parallel.workers:
        raise ValueError(f"parallel.workers={cfg.parallel.workers} but the layout {dims} needs {dims.world}")
    launcher = cfg.parallel.launcher
    if launcher == "local":
        return LocalExecutor(cfg, checkpoint, worker, dims)
    if launcher == "torchrun":
        if not dist.is_initialized():
            raise ValueError("parallel.launcher=torchrun: run under torchrun "
                             "(`torchrun --nproc_per_node=W -m framecast.launch.torchrun generate ...`)")
        from framecast.parallel.torchrun_executor import TorchrunExecutor
        return TorchrunExecutor(cfg, checkpoint, worker, dims)
    from framecast.parallel.ray_executor import RayExecutor
    return RayExecutor(cfg, checkpoint, worker, dims)
