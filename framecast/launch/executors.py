"""Executors run a DualParal plan on W workers and hand finished latent blocks back in order.

    executor.collective_rpc("method", *args) -> [result of rank 0, rank 1, ...]

is the only way an executor reaches its workers (vLLM's seam): `local` calls one in-process
worker (W=1, the reference); `torchrun` broadcasts the call from rank 0 to every rank (each rank
runs the same worker code); `ray` calls one actor per worker placed by a placement group. Hidden
states never pass through the executor: workers exchange them over torch.distributed.
"""
from __future__ import annotations

from typing import Iterator

import torch
from tqdm.auto import tqdm

from framecast.engine.request import Request

TICKS_PER_CALL = 8  # each call ends drained (a resume point); enough ticks per call keep the bubble small


class LocalExecutor:
    def __init__(self, cfg, checkpoint):
        from framecast.parallel.worker import DualParalWorker

        if cfg.parallel.workers != 1:
            raise ValueError(f"parallel.launcher=local runs one worker; got parallel.workers="
                             f"{cfg.parallel.workers} (use --launcher torchrun or ray for more)")
        self.worker = DualParalWorker(cfg, checkpoint, rank=0, world=1)

    def collective_rpc(self, method: str, *args) -> list:
        return [getattr(self.worker, method)(*args)]

    def shutdown(self) -> None:
        self.worker.close()


def make_executor(cfg, checkpoint):
    launcher = cfg.parallel.launcher
    if launcher == "local":
        return LocalExecutor(cfg, checkpoint)
    if launcher == "torchrun":
        from framecast.launch.torchrun import TorchrunExecutor
        return TorchrunExecutor(cfg, checkpoint)
    from framecast.launch.ray_executor import RayExecutor
    return RayExecutor(cfg, checkpoint)


def run_schedule(engine, req: Request, progress: bool, record=None) -> Iterator[torch.Tensor]:
    """Yield finished latent blocks [1, C, n, h, w], oldest first. With a resume `record`, blocks it
    already holds are yielded from disk first and the workers continue from its state."""
    import torch.distributed as dist

    if engine.cfg.parallel.launcher == "torchrun" and not dist.is_initialized():
        raise ValueError("parallel.launcher=torchrun: run under torchrun "
                         "(`torchrun --nproc_per_node=W -m framecast.launch.torchrun generate ...`)")
    executor = make_executor(engine.cfg, engine.checkpoint)
    try:
        total = executor.collective_rpc("setup", req)[0]
        start = done = 0
        if record is not None and record.has_state():
            state = record.load_state()
            executor.collective_rpc("load_state", state)
            start, done = state["next_tick"], state["finished"]
            yield from record.finished_blocks(done)
        with tqdm(total=total["blocks"], desc="blocks", unit="block", disable=not progress) as bar:
            bar.update(done)
            for tick in range(start, total["ticks"], TICKS_PER_CALL):
                stop = min(tick + TICKS_PER_CALL, total["ticks"])
                finished = executor.collective_rpc("run_ticks", tick, stop)[0]
                if record is not None:
                    record.save(executor.collective_rpc("state")[0], finished)
                for _, _, _, lat in finished:
                    bar.update()
                    yield lat
    finally:
        executor.shutdown()
