"""The parallel layout: how many workers each kind of parallelism takes, and their named groups.

    dims = ParallelDims(pp=4)                 # DualParal: 4 pipeline stages (layer shards)
    dims = ParallelDims(pp=2, sp=2, cfg=2)    # world 8: 2 CFG branches x 2 sequence shards x 2 stages

The world size is the product of the degrees. Ranks are laid out row-major over (cfg, sp, pp), so
the pipeline neighbours of a rank are adjacent ranks (on one node with PACK placement).
`new_groups()` creates one process group per dimension and group of ranks; schedules and workers
take theirs by name (`groups.get_group("pp")`), never the default group; with `pp` > 1 there is also
"pp_return" (the pp ranks again: the ring's last -> first direction on a communicator of its own).
Pure data, plus that.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DIM_NAMES = ("cfg", "sp", "pp")


@dataclass(frozen=True)
class ParallelDims:
    pp: int = 1  # pipeline stages: contiguous layer shards (DualParal)
    sp: int = 1  # sequence shards: chunks of the video's tokens (VIN, sequence parallelism)
    cfg: int = 1  # CFG branches on their own workers (cond / uncond)

    def __post_init__(self):
        for name in DIM_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelDims.{name} must be an integer >= 1, got {value!r}")
        if self.cfg > 2:
            raise ValueError(f"ParallelDims.cfg must be 1 or 2 (two CFG branches), got {self.cfg}")

    @property
    def world(self) -> int:
        return self.pp * self.sp * self.cfg

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.cfg, self.sp, self.pp)

    def coords(self, rank: int) -> dict[str, int]:
        """{"cfg": i, "sp": j, "pp": k}: where global `rank` sits in the layout."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} outside the world of {self.world}")
        rest, k = divmod(rank, self.pp)
        i, j = divmod(rest, self.sp)
        return {"cfg": i, "sp": j, "pp": k}

    def group_ranks(self, name: str) -> list[list[int]]:
        """Every group of dimension `name` as its global ranks, in the mesh's order (ranks that
        differ only in that coordinate)."""
        if name not in DIM_NAMES:
            raise ValueError(f"unknown parallel dimension {name!r}; valid: {', '.join(DIM_NAMES)}")
        groups: dict[tuple, list[int]] = {}
        for r in range(self.world):
            c = self.coords(r)
            groups.setdefault(tuple(v for k, v in c.items() if k != name), []).append(r)
        return list(groups.values())

    def new_groups(self, timeout=None) -> "NamedGroups":
        """Create the process groups of every dimension and return this rank's, by name. Every rank
        must call this, in the same order as any other group creation (a collective). `timeout`
        (a timedelta; parallel.timeout_s): a group made without one gets torch's default (30 min
        under gloo), not the world group's, and gloo cannot change it afterwards. torch's
        DeviceMesh builds the same groups, but with gloo its processes now and then abort at exit
        after `destroy_process_group` (torch 2.13, seen in tests/test_executors.py), so the
        groups are made here with `new_group`, in the mesh's row-major order."""
        import torch.distributed as dist

        rank, mine = dist.get_rank(), {}
        for name in DIM_NAMES:
            for ranks in self.group_ranks(name):
                group = dist.new_group(ranks, timeout=timeout)
                if rank in ranks:
                    mine[name] = group
            if name == "pp" and self.pp > 1:
                # "pp_return": the pipeline's ranks again, for the last stage -> first stage message,
                # so that direction has its own NCCL communicator (see parallel/ring.py)
                for ranks in self.group_ranks("pp"):
                    group = dist.new_group(ranks, timeout=timeout)
                    if rank in ranks:
                        mine["pp_return"] = group
        return NamedGroups(mine)


@dataclass(frozen=True)
class NamedGroups:
    """One rank's process group for each parallel dimension."""
    groups: dict = field(default_factory=dict)  # "cfg" / "sp" / "pp" / "pp_return" -> ProcessGroup

    def get_group(self, name: str):
        if name not in self.groups:
            raise ValueError(f"no process group {name!r}; valid: {', '.join(self.groups)}")
        return self.groups[name]
