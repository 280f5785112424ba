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
    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device
        self.next, self.prev = (rank + 1) % world, (rank - 1) % world

    def send(self, tensor: torch.Tensor) -> "Pending":
        tensor = tensor.contiguous()
        return Pending(dist.isend(tensor, self.next), tensor, self.next, "send to")

    def recv(self, shape, dtype) -> "Pending":
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        return Pending(dist.irecv(buf, self.prev), buf, self.prev, "receive from")


class Pending:
    """An in-flight message; `wait()` returns its tensor (the buffer for a receive)."""

    def __init__(self, work, tensor: torch.Tensor, peer: int, verb: str):
        self.work, self.tensor, self.peer, self.verb = work, tensor, peer, verb

    def wait(self) -> torch.Tensor:
        try:
            self.work.wait()
        except RuntimeError as e:
            raise WorkerLost(f"DualParal worker rank {self.peer} is gone ({self.verb} rank {self.peer} failed: "
                             f"{str(e).splitlines()[0]})") from None
        return self.tensor
