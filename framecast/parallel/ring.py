"""The P2P ring between pipeline stages: rank r sends to r+1, the last rank back to rank 0.

Only activations travel (torch.distributed isend/irecv; gloo on CPU, NCCL on GPU); every rank
knows the shape of each message from the plan it replays. A peer that dies turns a pending
operation into `WorkerLost` naming the peer rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class WorkerLost(RuntimeError):
    """A pipeline peer stopped responding (its process died or the connection broke)."""


class Ring:
    """`rank` and `world` count within `group` (the pipeline's named group; None: the default group)."""

    def __init__(self, rank: int, world: int, device: torch.device, group=None):
        self.rank, self.world, self.device, self.group = rank, world, device, group
        self.next, self.prev = (rank + 1) % world, (rank - 1) % world

    def send(self, tensor: torch.Tensor) -> "Pending":
        tensor = tensor.contiguous()
        work = _post(lambda t, peer: dist.isend(t, group=self.group, group_dst=peer), tensor, self.next, "send to")
        return Pending(work, tensor, self.next, "send to")

    def recv(self, shape, dtype) -> "Pending":
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        work = _post(lambda t, peer: dist.irecv(t, group=self.group, group_src=peer), buf, self.prev, "receive from")
        return Pending(work, buf, self.prev, "receive from")


def _lost(peer: int, verb: str, e: Exception) -> WorkerLost:
    return WorkerLost(f"DualParal worker rank {peer} is gone ({verb} rank {peer} failed: "
                      f"{str(e).splitlines()[0][:160]})")


def _post(op, tensor, peer: int, verb: str):
    try:
        return op(tensor, peer)
    except RuntimeError as e:  # gloo refuses to post on a pair whose peer has died
        raise _lost(peer, verb, e) from None


class Pending:
    """An in-flight message; `wait()` returns its tensor (the buffer for a receive)."""

    def __init__(self, work, tensor: torch.Tensor, peer: int, verb: str):
        self.work, self.tensor, self.peer, self.verb = work, tensor, peer, verb

    def wait(self) -> torch.Tensor:
        try:
            self.work.wait()
        except RuntimeError as e:
            raise _lost(self.peer, self.verb, e) from None
        return self.tensor
