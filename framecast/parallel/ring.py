"""The P2P ring between pipeline stages: rank r sends to r+1, the last rank back to rank 0.

Only activations travel (torch.distributed isend/irecv; gloo on CPU, NCCL on GPU); every rank
knows the shape of each message from the plan it replays. A peer that dies turns a pending
operation into `WorkerLost` naming the peer rank.

Ordering under NCCL: ProcessGroupNCCL runs every point-to-point op between two ranks of one process
group on one communicator, and a rank's ops on one communicator run in the order it issued them.
Forward (r -> r+1) and return (last -> 0) traffic therefore go on two process groups with the same
ranks: `group` ("pp") for activations, `return_group` ("pp_return", made by
`ParallelDims.new_groups`) for the velocity the last rank sends back to rank 0. At W=2 both
directions join the same pair of ranks; on one communicator rank 0's send(act0), recv(v0),
send(act1) and the last rank's recv(act0), recv(act1) (posted ahead), send(v0) wait on each other
(rank 0's recv(v0) needs the last rank's send(v0), which is queued behind its recv(act1), which
needs rank 0's send(act1), which is queued behind recv(v0)): a deadlock that gloo, whose two
directions progress independently, never shows. With two groups each direction has its own
communicator and queue, and each queue is in the same order on both of its ranks. At W>2 the pairs
differ anyway; the return group costs nothing there. Two groups rather than `batch_isend_irecv`: a
batch needs both ranks to post matching sends and receives together (and, under NCCL, every rank of
the group when it is the group's first collective call), which the pipeline's independent send and
receive points (the last rank receives ahead, rank 0 waits for velocities only when a block needs
them) do not have; separate groups keep the code as it is and make the argument a per-queue one
(tests/nccl_model.py checks it on recordings of the real worker). This relies on torch running
single isend/irecv on per-pair communicators, which it does when the process group is initialised
lazily (no `device_id`, as framecast does); with eager init torch runs them on the group's own
communicator, where a middle stage's receive posted ahead would hold up its send (W >= 3;
`nccl_model.check(..., p2p_comm="group")` shows it).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class WorkerLost(RuntimeError):
    """A pipeline peer stopped responding (its process died or the connection broke)."""


class Ring:
    """`rank` and `world` count within `group` (the pipeline's named group; None: the default
    group). `return_group`: a group with the same ranks for the last rank -> rank 0 message (None:
    `group`, fine under gloo; under NCCL at W=2 that shares one communicator both ways, see above)."""

    def __init__(self, rank: int, world: int, device: torch.device, group=None, return_group=None):
        self.rank, self.world, self.device, self.group = rank, world, device, group
        self.return_group = group if return_group is None else return_group
        self.next, self.prev = (rank + 1) % world, (rank - 1) % world
        # the wrap (last -> 0) travels on the return group; every other hop on the forward group
        self.send_group = self.return_group if rank == world - 1 else group
        self.recv_group = self.return_group if rank == 0 else group

    def send(self, tensor: torch.Tensor) -> "Pending":
        tensor = tensor.contiguous()
        work = _post(lambda t, peer: dist.isend(t, group=self.send_group, group_dst=peer), tensor, self.next, "send to")
        return Pending(work, tensor, self.next, "send to")

    def recv(self, shape, dtype) -> "Pending":
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        work = _post(lambda t, peer: dist.irecv(t, group=self.recv_group, group_src=peer), buf, self.prev, "receive from")
        return Pending(work, buf, self.prev, "receive from")


def _lost(peer: int, verb: str, e: Exception) -> WorkerLost:
    return WorkerLost(f"worker rank {peer} is gone ({verb} rank {peer} failed: "
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
