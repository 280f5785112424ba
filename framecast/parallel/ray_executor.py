"""The Ray executor: one actor per worker, each holding one GPU (one CPU on a CPU machine), placed
by a placement group (PACK: as few nodes as possible; SPREAD: across nodes). `ray_address=auto`
joins a running cluster. Actors build their worker (a `WorkerHost` for any worker class) lazily,
on the device Ray assigned them (decided inside the actor: `ray_actor_device`; the bundles come
from the cluster's resources, not the driver's), then form a torch.distributed group (gloo/NCCL,
with parallel.timeout_s) and the layout's named groups; the driver only sends method calls and receives their results. The actors
live until `shutdown()` (the Engine keeps them across requests). A dead actor stops the call
within about a second with `WorkerLost` naming the worker.
"""
from __future__ import annotations

import os
import sys

from framecast.parallel.ring import WorkerLost

# the driver's environment that reaches the actors: communication (NCCL, gloo, torch.distributed),
# CUDA settings and the Hugging Face cache / offline switches. Never CUDA_VISIBLE_DEVICES: Ray sets
# each actor's own from its assignment.
PASS_ENV_PREFIXES = ("NCCL_", "CUDA_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_", "GLOO_", "HF_")
PASS_ENV = ("MASTER_ADDR", "TRANSFORMERS_OFFLINE")
NEVER_PASS = ("CUDA_VISIBLE_DEVICES",)


def actor_env(environ) -> dict:
    """The environment variables the actors get: the driver's matching PASS_ENV(_PREFIXES), and
    NCCL async error handling on unless the driver set it (a dead peer then fails, not hangs)."""
    env = {k: v for k, v in environ.items()
           if (k in PASS_ENV or k.startswith(PASS_ENV_PREFIXES)) and k not in NEVER_PASS}
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    return env


def worker_bundle(device: str, cluster_resources: dict) -> dict:
    """One worker's placement bundle from the cluster's resources (`ray.cluster_resources()`), not
    the driver's: a GPU per worker when the cluster has GPUs (a CPU-only head node included) and
    device is not cpu; a CPU otherwise. device=cuda[:N] on a cluster without GPUs is an error."""
    from framecast.config import ConfigError

    gpus = cluster_resources.get("GPU", 0)
    if device != "cpu" and gpus >= 1:
        return {"CPU": 1, "GPU": 1}
    if device.startswith("cuda"):
        raise ConfigError(f"device={device!r} but the Ray cluster has no GPUs "
                          f"(resources: {', '.join(f'{k}={v:g}' for k, v in sorted(cluster_resources.items()) if '.' not in k and ':' not in k)}); "
                          f"use device=auto or cpu")
    return {"CPU": 1}


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
        import ray

        from framecast.parallel.host import WorkerHost, ray_actor_device

        device = ray_actor_device(cfg.device, ray.get_gpu_ids())  # decided here, from Ray's assignment
        threads = 1 if device == "cpu" else None
        self.host = WorkerHost(worker, cfg, checkpoint, dims, rank, init_method=init_method, threads=threads,
                               device=device)
        return self.host.info()

    def execute(self, method: str, *args):
        return self.host.execute(method, *args)


def join_ray(address: str, wait_s: float) -> None:
    """ray.init, bounded: "" starts a new local instance on loopback ("local", never a cluster some
    other process left running); an address that does not answer within `wait_s` is one line naming
    it (ray.init itself retries for minutes). The attempt is left to finish in the background."""
    import threading

    import ray

    target = address or "local"
    outcome: dict = {}

    def connect():
        try:
            ray.init(address=target, include_dashboard=False, log_to_driver=True,
                     **({"_node_ip_address": "127.0.0.1"} if target == "local" else {}))
            outcome["ok"] = True
        except Exception as e:  # reported below, in one line
            outcome["error"] = e

    thread = threading.Thread(target=connect, name="ray-init", daemon=True)
    thread.start()
    thread.join(wait_s)
    if "error" in outcome:
        first = str(outcome["error"]).strip().splitlines()[0][:200] if str(outcome["error"]).strip() else ""
        raise ConnectionError(f"parallel.ray_address={target!r}: could not join Ray "
                              f"({type(outcome['error']).__name__}: {first})")
    if "ok" not in outcome:
        raise TimeoutError(f"parallel.ray_address={target!r}: no Ray cluster answered within "
                           f"parallel.connect_timeout_s={wait_s:g} s")


class RayExecutor:
    def __init__(self, cfg, checkpoint, worker: str, dims):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        self._unread: dict = {}  # refs of the last call, left unread if it failed
        wait_s = cfg.parallel.connect_timeout_s
        if not ray.is_initialized():
            join_ray(cfg.parallel.ray_address, wait_s)
        world = dims.world
        bundle = worker_bundle(cfg.device, ray.cluster_resources())
        gpu = "GPU" in bundle
        self.pg = placement_group([bundle] * world, strategy=cfg.parallel.placement)
        ready, _ = ray.wait([self.pg.ready()], timeout=wait_s)
        if not ready:
            ray.util.remove_placement_group(self.pg)
            raise TimeoutError(f"Ray could not place {world} workers of {bundle} with {cfg.parallel.placement} "
                               f"within parallel.connect_timeout_s={wait_s:g} s; cluster resources: "
                               f"{ray.cluster_resources()}")
        env = actor_env(os.environ)
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
        self._unread = left  # what a failed call leaves behind; `shutdown` reads it
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
                    if isinstance(cause, WorkerLost):  # a worker saw its peer go: name the peer
                        import re

                        m = re.search(r"rank (\d+)", str(cause))
                        peer = int(m.group(1)) if m and int(m.group(1)) < len(self.actors) else None
                        if peer is None:
                            raise WorkerLost(f"{self._name(rank)}: {cause}") from None
                        raise WorkerLost(f"{self._name(peer)} is gone (seen by rank {rank}: "
                                         f"{str(cause).splitlines()[0][:200]})") from None
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
        # The calls a failure left unread (the other ranks, blocked on the dead peer) end with the
        # kill; read them, or Ray prints each one as an "Unhandled error" traceback later, after
        # framecast's own one-line report.
        unread, self._unread = list(self._unread), {}
        if unread:
            ray.wait(unread, num_returns=len(unread), timeout=10)
            for ref in unread:
                try:
                    ray.get(ref, timeout=0)
                except Exception:  # the killed actor's error: expected, already reported
                    pass
        ray.util.remove_placement_group(self.pg)
