"""The P2P ring on its own: real gloo processes on 127.0.0.1. Every rank sends to rank+1 and
receives from rank-1 (the last rank wraps to 0); messages arrive in order, intact, with their shapes
and dtypes; a peer that is gone turns a posted operation into `WorkerLost` naming that peer.

Ranks are spawned processes (`multiprocessing` "spawn") in one gloo group whose timeout bounds
every wait, so nothing can hang: the parent reads results from a queue before a deadline and joins
with a bounded timeout, killing only the processes it started.
"""
import io
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import time
import traceback
from datetime import timedelta

import pytest
import torch

GLOO_TIMEOUT_S = 60  # upper bound on any one gloo wait; the peer-death tests finish long before it
RESULT_TIMEOUT_S = 240  # all ranks together: spawn + import torch + the exchange, on a busy 2-core machine
JOIN_TIMEOUT_S = 60
BIG = (4096, 4096)  # 64 MB of float32: more than any socket buffer, so a send to a dead peer cannot "complete"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _messages(sender: int):
    """What rank `sender` sends, in order: several shapes and dtypes (one non-contiguous, one 0-d),
    with values that depend on the sender, so a message from the wrong rank or out of order differs."""
    g = torch.Generator().manual_seed(100 + sender)
    return [
        torch.randn(2, 3, 4, generator=g) + 1000 * sender,
        torch.randn(5, 7, generator=g, dtype=torch.float64).t(),  # non-contiguous: Ring.send makes it so
        torch.full((3, 1, 2), 10 * sender + 2, dtype=torch.int64),
        (torch.randn(1, 16, 8, generator=g) + sender).to(torch.bfloat16),
        torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4) + sender,
        torch.tensor(float(sender) + 0.5),  # 0-d
    ]


def _init(rank: int, world: int, port: int):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=GLOO_TIMEOUT_S))
    from framecast.parallel.ring import Ring

    return Ring(rank, world, torch.device("cpu"))


def _report(results, rank, fn):
    try:
        results.put((rank, "ok", fn()))
    except BaseException as e:  # noqa: BLE001 — everything goes back to the test process
        results.put((rank, "error", (type(e).__name__, str(e), traceback.format_exc())))


def _exchange_rank(rank, world, port, results, interleaved):
    def body():
        import torch.distributed as dist

        ring = _init(rank, world, port)
        mine, theirs = _messages(rank), _messages(ring.prev)
        got = []
        if interleaved:  # one message at a time: post send and recv, wait both
            for out, like in zip(mine, theirs):
                s, r = ring.send(out), ring.recv(like.shape, like.dtype)
                got.append(r.wait())
                s.wait()
        else:  # all sends posted first, then all receives: order must still hold per pair
            sends = [ring.send(t) for t in mine]
            recvs = [ring.recv(t.shape, t.dtype) for t in theirs]
            got = [r.wait() for r in recvs]
            for s in sends:
                s.wait()
        dist.destroy_process_group()
        buf = io.BytesIO()  # plain bytes: a tensor on an mp queue would share memory with a process that exits
        torch.save(got, buf)
        return {"next": ring.next, "prev": ring.prev, "got": buf.getvalue()}

    _report(results, rank, body)


def _dying_peer_rank(rank, world, port, results, posted, gone, when):
    """The last rank dies without sending. Each survivor that neighbours it posts the operation
    aimed at it: rank 0 a receive (the ring's wrap), rank world-2 a big send. `when="before"`: posted
    while the peer is alive, then the peer exits; `when="after"`: the peer is reaped first, then the
    operations are posted. Reports [(op, where it failed, message)] per operation."""
    dead = world - 1
    if rank == dead:
        _init(rank, world, port)
        if when == "before":
            for e in posted:  # bounded: the survivors posted (or we give up and die anyway)
                e.wait(RESULT_TIMEOUT_S)
        os._exit(0)  # gone: no destroy_process_group, no goodbye on the wire

    def body():
        from framecast.parallel.ring import WorkerLost

        ring = _init(rank, world, port)
        if when == "after":
            assert gone.wait(RESULT_TIMEOUT_S), "the test never saw the peer exit"
        wanted = [("recv", lambda: ring.recv((2, 3), torch.float32))] if ring.prev == dead else []
        wanted += [("send", lambda: ring.send(torch.zeros(BIG)))] if ring.next == dead else []
        outcome, pending = [], []
        for name, post in wanted:
            try:
                pending.append((name, post()))
            except WorkerLost as e:  # refused at post time: the pair already knows the peer is dead
                outcome.append((name, "post", str(e)))
        if when == "before":
            posted[rank].set()
        for name, op in pending:
            try:
                op.wait()
                outcome.append((name, "wait", "completed"))
            except WorkerLost as e:
                outcome.append((name, "wait", str(e)))
        return outcome

    _report(results, rank, body)
    results.close()
    results.join_thread()  # the report is on the pipe before we leave
    os._exit(0)  # skip interpreter teardown of a group with a dead member


def _run_ranks(target, world, *args, expect_results=None, ctx_extra=None):
    """Start `world` spawned ranks of `target(rank, world, port, results, *args)`; return
    {rank: payload} for the ranks that report, with every wait bounded."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, results, *args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    expect = list(range(world)) if expect_results is None else expect_results
    out = {}
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    try:
        if ctx_extra:
            ctx_extra(procs)
        for _ in expect:
            try:
                rank, status, payload = results.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue_mod.Empty:
                pytest.fail(f"ranks {sorted(set(expect) - set(out))} reported nothing within {RESULT_TIMEOUT_S} s; "
                            f"exit codes {[p.exitcode for p in procs]}")
            if status == "error":
                pytest.fail(f"rank {rank} failed: {payload[0]}: {payload[1]}\n{payload[2]}")
            out[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=JOIN_TIMEOUT_S)
        for p in procs:
            if p.is_alive():  # only our own processes, by their handle
                p.kill()
                p.join(timeout=JOIN_TIMEOUT_S)
    return out, [p.exitcode for p in procs]


@pytest.mark.parametrize("interleaved", [True, False], ids=["one-by-one", "all-posted"])
@pytest.mark.parametrize("world", [2, 3])
def test_ring_messages_arrive_in_order_intact(world, interleaved):
    out, codes = _run_ranks(_exchange_rank, world, interleaved)
    assert codes == [0] * world
    for rank in range(world):
        prev = (rank - 1) % world
        assert out[rank]["next"] == (rank + 1) % world and out[rank]["prev"] == prev
        got, want = torch.load(io.BytesIO(out[rank]["got"])), _messages(prev)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape and g.dtype == w.dtype, (rank, i, g.shape, g.dtype)
            assert torch.equal(g, w), f"rank {rank} message {i} from rank {prev} differs"


@pytest.mark.parametrize("when", ["before", "after"], ids=["posted-then-peer-dies", "peer-dead-then-posted"])
@pytest.mark.parametrize("world", [2, 3])
def test_gone_peer_raises_worker_lost_naming_it(world, when):
    ctx = mp.get_context("spawn")
    survivors = list(range(world - 1))
    posted, gone = [ctx.Event() for _ in survivors], ctx.Event()
    dead = world - 1

    def reap_then_signal(procs):
        if when == "after":
            procs[dead].join(timeout=RESULT_TIMEOUT_S)
            assert procs[dead].exitcode == 0, "the dying rank did not exit on its own"
            gone.set()

    out, codes = _run_ranks(_dying_peer_rank, world, posted, gone, when, expect_results=survivors,
                            ctx_extra=reap_then_signal)
    assert codes == [0] * world
    # rank 0 receives from the dead rank (the wrap); rank world-2 sends to it (rank 0 too when world=2)
    want = {r: {op for op, peer in (("recv", (r - 1) % world), ("send", (r + 1) % world)) if peer == dead}
            for r in survivors}
    verbs = {"recv": "receive from", "send": "send to"}
    for rank in survivors:
        assert {name for name, _, _ in out[rank]} == want[rank], out[rank]
        for name, where, msg in out[rank]:
            assert msg != "completed", f"rank {rank}: {name} to a dead peer completed"
            assert f"rank {dead}" in msg and verbs[name] in msg and "\n" not in msg, (rank, name, where, msg)
            print(f"world {world}, {when}: rank {rank} {name} failed at {where}: {msg}")
