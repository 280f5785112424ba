"""The Ray executor: one actor per worker, each holding one GPU (one CPU on a CPU machine), placed
by a placement group (PACK: as few nodes as possible; SPREAD: across nodes). `ray_address=auto`
joins a running cluster. Actors build their worker (a `WorkerHost` for any worker class) lazily,
after Ray has pinned their device, then form a torch.distributed group (gloo/NCCL) and the
layout's named groups; the driver only sends method calls and receives their results. The actors
live until `shutdown()` (the Engine keeps them across requests). A dead actor stops the call
within about a second with `WorkerLost` naming the worker.
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
        self.host = None

    def address_and_port(self) -> tuple[str, int]:
        import ray

        from framecast.parallel.torchrun_executor import free_port
        return ray.util.get_node_ip_address(), free_port()

    def node(self) -> dict:
        import ray
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "ip": ray.util.get_node_ip_address()}

    def init(self, worker: str, cfg, checkpoint, dims, rank: int, init_method: str) -> dict:
        from framecast.parallel.host import WorkerHost

        threads = 1 if not torch.cuda.is_available() else None
        self.host = WorkerHost(worker, cfg, checkpoint, dims, rank, init_method=init_method, threads=threads)
        return self.host.info()

    def execute(self, method: str, *args):
        return self.host.execute(method, *args)


class RayExecutor:
    def __init__(self, cfg, checkpoint, worker: str, dims):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        if not ray.is_initialized():
            # "" = a new local instance on loopback ("local"), never a cluster some other process left running
            address = cfg.parallel.ray_address or "local"
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     **({"_node_ip_address": "127.0.0.1"} if address == "local" else {}))
        world = dims.world
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
        self._gather([a.init.remote(worker, cfg, checkpoint, dims, r, f"tcp://{addr}:{port}")
                      for r, a in enumerate(self.actors)])

    def _name(self, rank: int) -> str:
        node = self.nodes[rank] if getattr(self, "nodes", None) else {}
        return f"worker rank {rank} (Ray actor pid {node.get('pid', '?')} on node {node.get('ip', '?')})"

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
        """Kill the actors (their process groups and weights go with them) and free the placement."""
        ray = self._ray
        for a in getattr(self, "actors", []):
            ray.kill(a)
        self.actors = []
        ray.util.remove_placement_group(self.pg)
