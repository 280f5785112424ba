"""A test-time model of NCCL's ordering rules, so communication can be proven valid without a GPU.

Two halves:

* The recorder (`install`, and this file run as a script): patches `torch.distributed`'s `isend`,
  `irecv`, `broadcast`, `all_reduce`, `broadcast_object_list`, `all_gather_object` and `new_group`
  inside a worker process and logs, per rank and in issue order, every communication op: kind,
  communicator, peer, shape, dtype, device type; plus every `wait()` on an op (a sync collective
  is its op followed by its wait) and a "mark" per worker method the executor runs. Each rank writes
  its log as JSON at exit. Run under torchrun around the real entry point:

      python -m torch.distributed.run --nproc_per_node=W --master_addr=127.0.0.1 --master_port=P \\
          tests/nccl_model.py record --log-dir DIR [--ticks-per-call N] -- generate "PROMPT" ... --workers W

  (`partial` instead of `record` runs `framecast generate` in this process and stops it after its
  first resume-record save: a real interrupted run to resume from.)

* The checker (`check`): a pure function over the logs that replays them under NCCL's rules.
  Each rank runs its log in order; an op, once issued, joins the queue of its communicator (P2P:
  one communicator per (group, pair of global ranks), as torch's ProcessGroupNCCL does;
  collectives: the group's communicator); per rank, per communicator, ops complete in issue order;
  a send completes only together with the matching receive at the head of the peer's queue on the
  same communicator; a collective completes only when every rank of the group has it at the head
  of its queue on that communicator; communicators are otherwise independent. A rank's `wait()`
  blocks it until the op completed (under NCCL a wait orders the compute stream after the op, and
  every later op is issued after that stream: the same dependency). If no progress is possible
  while ops are outstanding, that is a deadlock, reported per stuck rank with the op at the head
  of its queue and what that op waits for. Shape/dtype/kind mismatches and tensors whose device
  type is not the group's (`device="cpu"` for these gloo runs; `device="cuda"` flags host tensors
  in a run meant for NCCL) are reported too. Object collectives (`broadcast_object_list`,
  `all_gather_object`) move their payload to the current device themselves and are exempt.
"""
from __future__ import annotations

import atexit
import collections
import inspect
import json
import os
import sys
import threading
from dataclasses import dataclass, field

# ================================================================================ the checker
P2P = ("send", "recv")
OBJECT_COLLECTIVES = ("broadcast_object_list", "all_gather_object")


def load_logs(paths) -> list[dict]:
    return [json.loads(open(p).read()) for p in paths]


@dataclass
class Report:
    deadlock: list = field(default_factory=list)  # one line per stuck rank
    stuck: dict = field(default_factory=dict)  # rank -> the op (event dict) at the head it is stuck behind
    mismatches: list = field(default_factory=list)
    device_violations: list = field(default_factory=list)
    completed: int = 0  # ops completed in the replay

    @property
    def ok(self) -> bool:
        return not (self.deadlock or self.mismatches or self.device_violations)

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.completed} ops complete under NCCL's ordering rules"
        parts = []
        if self.deadlock:
            parts.append("deadlock:\n  " + "\n  ".join(self.deadlock))
        if self.mismatches:
            parts.append("mismatches:\n  " + "\n  ".join(self.mismatches))
        if self.device_violations:
            parts.append("device violations:\n  " + "\n  ".join(self.device_violations))
        return "\n".join(parts)


def comm_of(ev: dict, rank: int, p2p_comm: str = "pair") -> tuple:
    """The communicator an op runs on. P2P: (group, the two global ranks) — `p2p_comm="group"`
    models P2P on the group's own communicator instead (stricter: one queue per group)."""
    if ev["kind"] in P2P:
        if p2p_comm == "group":
            return (ev["group"],)
        return (ev["group"], frozenset((rank, ev["peer"])))
    return (ev["group"],)


def describe(ev: dict, rank: int | None = None, p2p_comm: str = "pair") -> str:
    kind = ev["kind"]
    where = f"group {ev['group']}"
    if kind in P2P and p2p_comm == "pair" and rank is not None:
        where = f"communicator ({ev['group']}, ranks {sorted((rank, ev['peer']))})"
    peer = f" {'to' if kind == 'send' else 'from'} rank {ev['peer']}" if kind in P2P else ""
    if ev.get("src") is not None:
        peer = f" from root {ev['src']}"
    what = ""
    if ev.get("object"):
        what = " objects"
    elif ev.get("shape") is not None:
        what = f" {ev.get('dtype')}{list(ev['shape'])}"
    return f"#{ev['i']} {kind}{peer}{what} on {where}"


def check(logs: list[dict], device: str = "cpu", p2p_comm: str = "pair") -> Report:
    """Replay per-rank logs (`{"rank", "events", "groups"}`) under NCCL's rules; see the module doc."""
    rep = Report()
    ranks = sorted(log["rank"] for log in logs)
    events = {log["rank"]: log["events"] for log in logs}
    groups: dict = {}
    for log in logs:
        for gid, members in log.get("groups", {}).items():
            groups.setdefault(gid, sorted(members))
    groups.setdefault("world", ranks)
    by_index = {r: {ev["i"]: ev for ev in events[r] if "i" in ev} for r in ranks}

    for r in ranks:  # device rule
        for ev in events[r]:
            if ev["kind"] in ("wait", "mark", "new_group") or ev.get("object"):
                continue
            if ev.get("device") is not None and ev["device"] != device:
                rep.device_violations.append(f"rank {r}: {describe(ev, r, p2p_comm)} has a {ev['device']} tensor; "
                                             f"the group's device is {device}")

    pc = {r: 0 for r in ranks}
    queues = {r: collections.defaultdict(collections.deque) for r in ranks}  # comm -> deque of event dicts
    done = {r: set() for r in ranks}

    def advance(r) -> bool:
        moved = False
        evs = events[r]
        while pc[r] < len(evs):
            ev = evs[pc[r]]
            if ev["kind"] == "wait":
                if ev["op"] not in done[r]:
                    break
            elif ev["kind"] != "mark":
                queues[r][comm_of(ev, r, p2p_comm)].append(ev)
            pc[r] += 1
            moved = True
        return moved

    def complete(r, comm):
        ev = queues[r][comm].popleft()
        done[r].add(ev["i"])
        rep.completed += 1

    def match(r, comm) -> bool:
        head = queues[r][comm][0]
        if head["kind"] in P2P:
            peer = head["peer"]
            q = queues.get(peer, {}).get(comm) if peer in queues else None
            if not q:
                return False
            other = q[0]
            if other["kind"] not in P2P or other["kind"] == head["kind"] or other["peer"] != r:
                return False
            send, recv = (head, other) if head["kind"] == "send" else (other, head)
            if (list(send["shape"]), send["dtype"]) != (list(recv["shape"]), recv["dtype"]):
                srank, rrank = (r, peer) if head["kind"] == "send" else (peer, r)
                rep.mismatches.append(f"rank {srank} {describe(send, srank, p2p_comm)} meets rank {rrank} "
                                      f"{describe(recv, rrank, p2p_comm)}: shape/dtype differ")
            complete(r, comm)
            complete(peer, comm)
            return True
        members = groups.get(head["group"], ranks)
        heads = {}
        for m in members:
            q = queues.get(m, {}).get(comm)
            if not q:
                return False
            heads[m] = q[0]
        kinds = {(h["kind"], h.get("src"), None if h.get("shape") is None else tuple(h["shape"]), h.get("dtype"))
                 for h in heads.values()}
        if any(h["kind"] in P2P for h in heads.values()) or len(kinds) > 1:
            rep.mismatches.append(f"collective mismatch on group {head['group']}: " + "; ".join(
                f"rank {m} {describe(h, m, p2p_comm)}" for m, h in heads.items()))
        for m in members:
            complete(m, comm)
        return True

    progress = True
    while progress:
        progress = False
        for r in ranks:
            progress |= advance(r)
        for r in ranks:
            for comm in list(queues[r]):
                while queues[r][comm] and match(r, comm):
                    progress = True

    for r in ranks:
        if pc[r] == len(events[r]) and not any(queues[r].values()):
            continue
        if pc[r] < len(events[r]):
            waited = by_index[r][events[r][pc[r]]["op"]]
            comm = comm_of(waited, r, p2p_comm)
            blocked = f"blocked in wait({describe(waited, r, p2p_comm)})"
        else:
            comm = next(c for c, q in queues[r].items() if q)
            blocked = "at exit with ops outstanding"
        head = queues[r][comm][0]
        rep.stuck[r] = head
        rep.deadlock.append(f"rank {r}: {blocked}; head of its queue: {describe(head, r, p2p_comm)}, "
                            f"waiting for {_awaits(head, r, queues, groups, ranks, comm, p2p_comm)}")
    return rep


def _awaits(head, r, queues, groups, ranks, comm, p2p_comm) -> str:
    if head["kind"] in P2P:
        peer = head["peer"]
        want = "recv" if head["kind"] == "send" else "send"
        q = queues.get(peer, {}).get(comm)
        there = f"its head there is {describe(q[0], peer, p2p_comm)}" if q else "nothing is queued there"
        return f"a matching {want} at the head of rank {peer}'s queue ({there})"
    missing = [m for m in groups.get(head["group"], ranks) if not queues.get(m, {}).get(comm)
               or queues[m][comm][0]["kind"] != head["kind"]]
    return f"{head['kind']} from every rank of group {head['group']} (not at the head on rank(s) {missing})"


# =============================================================================== the recorder
_LOG: dict = {"rank": None, "world": None, "groups": {}, "events": []}
_GROUP_IDS: dict = {}  # id(ProcessGroup) -> (group id, the object, kept alive)
_STATE = threading.local()


def _emit(ev: dict) -> dict:
    if "kind" in ev and ev["kind"] not in ("wait", "mark"):
        ev["i"] = sum(1 for e in _LOG["events"] if "i" in e)
    _LOG["events"].append(ev)
    return ev


def _gid(group) -> str:
    import torch.distributed as dist

    if group is None or group is dist.GroupMember.WORLD:
        return "world"
    entry = _GROUP_IDS.get(id(group))
    return entry[0] if entry else "unknown"


def _tensor(t) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype), "device": t.device.type}


class _Work:
    """A torch Work whose `wait()` is logged (then done for real)."""

    def __init__(self, work, index: int):
        self._work, self._index = work, index

    def wait(self, *args, **kwargs):
        _emit({"kind": "wait", "op": self._index})
        return self._work.wait(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._work, name)


def install(log_dir: str):
    """Patch torch.distributed in this process; returns the writer of LOG_DIR/rank{R}.json (also run at exit)."""
    import torch.distributed as dist

    P2P_FUNCS = ("isend", "irecv")

    def wrap(name, record):
        orig = getattr(dist, name)
        sig = inspect.signature(orig)

        def patched(*args, **kwargs):
            if getattr(_STATE, "inside", False):  # torch's own nested calls are part of this op
                return orig(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            ev = record(bound.arguments)
            _STATE.inside = True
            try:
                out = orig(*args, **kwargs)
            finally:
                _STATE.inside = False
            if name == "new_group":
                members = bound.arguments["ranks"] or list(range(dist.get_world_size()))
                gid = f"g{len(_LOG['groups'])}"  # creation order: the same on every rank
                if dist.get_rank() in members:
                    _GROUP_IDS[id(out)] = (gid, out)
                _LOG["groups"][gid] = sorted(members)
                ev["new"] = gid
                _emit({"kind": "wait", "op": ev["i"]})
                return out
            if name in P2P_FUNCS or bound.arguments.get("async_op"):
                return _Work(out, ev["i"]) if out is not None else out
            _emit({"kind": "wait", "op": ev["i"]})  # a sync collective: its op, then its wait
            return out
        setattr(dist, name, patched)

    def peer(args, local_key, global_key):
        group = args.get("group")
        if args.get(local_key) is not None:
            return dist.get_global_rank(group, args[local_key]) if group is not None else args[local_key]
        return args[global_key]

    def src(args):
        return peer(args, "group_src", "src") if "group_src" in args else args.get("src")

    wrap("isend", lambda a: _emit({"kind": "send", "group": _gid(a["group"]), "peer": peer(a, "group_dst", "dst"),
                                   **_tensor(a["tensor"])}))
    wrap("irecv", lambda a: _emit({"kind": "recv", "group": _gid(a["group"]), "peer": peer(a, "group_src", "src"),
                                   **_tensor(a["tensor"])}))
    wrap("broadcast", lambda a: _emit({"kind": "broadcast", "group": _gid(a["group"]), "src": src(a),
                                       **_tensor(a["tensor"])}))
    wrap("all_reduce", lambda a: _emit({"kind": "all_reduce", "group": _gid(a["group"]), **_tensor(a["tensor"])}))
    wrap("broadcast_object_list", lambda a: _emit({"kind": "broadcast_object_list", "group": _gid(a["group"]),
                                                   "src": src(a), "object": True}))
    wrap("all_gather_object", lambda a: _emit({"kind": "all_gather_object", "group": _gid(a["group"]),
                                               "object": True}))
    # new_group is a collective over the default group (every rank, in the same order)
    wrap("new_group", lambda a: _emit({"kind": "new_group", "group": "world",
                                       "ranks": sorted(a["ranks"]) if a["ranks"] else None}))

    from framecast.parallel import host

    execute = host.WorkerHost.execute

    def marked(self, method, *args):
        _emit({"kind": "mark", "method": method})
        return execute(self, method, *args)
    host.WorkerHost.execute = marked

    def write():
        if not dist.is_initialized() and _LOG["rank"] is None:
            return
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, f"rank{_LOG['rank']}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(_LOG, f, indent=None, separators=(",", ":"))
        os.replace(path + ".tmp", path)
    import framecast

    _LOG["framecast"] = os.path.dirname(os.path.abspath(framecast.__file__))  # which code was recorded
    _LOG["rank"] = int(os.environ.get("RANK", 0))
    _LOG["world"] = int(os.environ.get("WORLD_SIZE", 1))
    atexit.register(write)
    return write


def _set_ticks_per_call(n) -> None:
    if n:
        import framecast.schedulers.dualparal as dp

        dp.TICKS_PER_CALL = n


def _partial(generate_args: list) -> int:
    """Run `framecast generate` here and stop it right after its first resume-record save."""
    from framecast.engine import resume
    from framecast.launch import cli

    save = resume.ResumeRecord.save

    class Stop(Exception):
        pass

    def save_then_stop(self, state, finished):
        save(self, state, finished)
        raise Stop
    resume.ResumeRecord.save = save_then_stop
    try:
        cli.main(generate_args)
    except Stop:
        print("nccl_model: stopped after the first resume-record save", file=sys.stderr)
        return 0
    print("nccl_model: the run was never stopped", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["record", "partial", "check"])
    p.add_argument("--log-dir")
    p.add_argument("--ticks-per-call", type=int)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(own)
    if a.mode == "check":
        rep = check(load_logs(sorted(os.path.join(a.log_dir, f) for f in os.listdir(a.log_dir)
                                     if f.endswith(".json"))), device=a.device)
        print(rep)
        return 0 if rep.ok else 1
    _set_ticks_per_call(a.ticks_per_call)
    if a.mode == "partial":
        return _partial(rest)
    write = install(a.log_dir)
    from framecast.launch import torchrun

    rc = torchrun.main(rest)
    # Leave without interpreter finalisation: the recorder keeps the process groups it saw alive
    # past destroy_process_group, and gloo then now and then aborts in their destructors at exit
    # ("terminate called without an active exception"), failing a run whose work is done.
    write()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
