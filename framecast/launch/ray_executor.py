"""DualParal on Ray: one actor per worker, each holding one GPU (one CPU on a CPU machine), placed
by a placement group (PACK: as few nodes as possible; SPREAD: across nodes). `ray_address=auto`
joins a running cluster. Actors build their worker lazily, after Ray has pinned their device,
then form a torch.distributed group (gloo/NCCL) for the activation ring; the driver only sends
method calls and receives finished latent blocks. A dead actor stops the run within about a
second with `WorkerLost` naming the worker.
"""
from __future__ import annotations

import os
import sys

import torch

from framecast.parallel.ring import WorkerLost

PASS_ENV = ("GLOO_SOCKET_IFNAME", "MASTER_ADDR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class RayWorker:
    """The actor body: a thin holder so the worker is built inside the actor process."""

    def __init__(self):
        self.worker = None

    def address_and_port(self) -> tuple[str, int]:
        import ray

        from framecast.launch.torchrun import free_port
        return ray.util.get_node_ip_address(), free_port()

    def node(self) -> dict:
        import ray
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "ip": ray.util.get_node_ip_address()}

    def init(self, cfg, checkpoint, rank: int, world: int, init_method: str) -> dict:
        from framecast.parallel.worker import DualParalWorker
        threads = 1 if not torch.cuda.is_available() else None
        self.worker = DualParalWorker(cfg, checkpoint, rank, world, init_method=init_method, threads=threads)
        return self.worker.info()

    def execute(self, method: str, *args):
        return getattr(self.worker, method)(*args)


class RayExecutor:
    def __init__(self, cfg, checkpoint):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        if not ray.is_initialized():
            address = cfg.parallel.ray_address or None
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     **({} if address else {"_node_ip_address": "127.0.0.1"}))
        world = cfg.parallel.workers
        gpu = cfg.device != "cpu" and torch.cuda.is_available()
        bundle = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
        self.pg = placement_group([bundle] * world, strategy=cfg.parallel.placement)
        ready, _ = ray.wait([self.pg.ready()], timeout=60)
        if not ready:
            ray.util.remove_placement_group(self.pg)
            raise RuntimeError(f"Ray could not place {world} workers of {bundle} with {cfg.parallel.placement} "
                               f"in 60 s; cluster resources: {ray.cluster_resources()}")
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        actor_cls = ray.remote(RayWorker)
        self.actors = [
            actor_cls.options(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=0,
                              scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
                              runtime_env={"env_vars": env}).remote()
            for r in range(world)]
        self.nodes = self._gather([a.node.remote() for a in self.actors])
        placed = len({n["node_id"] for n in self.nodes})
        print(f"framecast: ray: {world} workers on {placed} node{'s' if placed > 1 else ''} "
              f"({cfg.parallel.placement}; ips {', '.join(n['ip'] for n in self.nodes)}; "
              f"pids {', '.join(str(n['pid']) for n in self.nodes)})", file=sys.stderr)
        addr, port = self._gather([self.actors[0].address_and_port.remote()])[0]
        self._gather([a.init.remote(cfg, checkpoint, r, world, f"tcp://{addr}:{port}")
                      for r, a in enumerate(self.actors)])

    def _name(self, rank: int) -> str:
        node = self.nodes[rank] if getattr(self, "nodes", None) else {}
        return f"DualParal worker rank {rank} (Ray actor pid {node.get('pid', '?')} on node {node.get('ip', '?')})"

    def _gather(self, refs: list) -> list:
        """ray.get for all refs, failing fast when any actor dies (the others may be blocked in a
        receive from it and would never return)."""
        ray = self._ray
        results, left = {}, {ref: i for i, ref in enumerate(refs)}
        while left:
            ready, _ = ray.wait(list(left), num_returns=1, timeout=1.0)
            for ref in ready:
                rank = left.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as e:
                    raise WorkerLost(f"{self._name(rank)} died: {str(e).splitlines()[0][:200]}") from None
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    if isinstance(cause, WorkerLost):
                        raise WorkerLost(f"{self._name(rank)}: {cause}") from None
                    raise
        return [results[i] for i in range(len(refs))]

    def collective_rpc(self, method: str, *args) -> list:
        return self._gather([a.execute.remote(method, *args) for a in self.actors])

    def shutdown(self) -> None:
        ray = self._ray
        for a in getattr(self, "actors", []):
            ray.kill(a)
        ray.util.remove_placement_group(self.pg)
