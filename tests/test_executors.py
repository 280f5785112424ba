"""Worker-agnostic executors and the parallel layout: any worker class runs under the local and
torchrun executors through `collective_rpc`, and `ParallelDims` builds named groups whose ranks
are the layout's (checked on four gloo processes)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framecast.parallel.dims import ParallelDims

TOY_WORKER = '''
import os
import torch
import torch.distributed as dist


class SumWorker:
    """Not a DualParal worker: sums a value over its pipeline group."""

    def __init__(self, cfg, checkpoint, rank, dims, groups=None):
        self.rank, self.groups, self.calls = rank, groups, 0

    def add(self, base):
        self.calls += 1
        x = torch.tensor([float(base + self.rank)])
        if self.groups is not None:
            dist.all_reduce(x, group=self.groups.get_group("pp"))
        return {"sum": x.item(), "calls": self.calls, "pid": os.getpid()}
'''


def test_dims_layout_is_row_major_over_cfg_sp_pp():
    d = ParallelDims(pp=2, sp=3, cfg=2)
    assert d.world == 12 and d.shape == (2, 3, 2)
    assert d.coords(0) == {"cfg": 0, "sp": 0, "pp": 0} and d.coords(7) == {"cfg": 1, "sp": 0, "pp": 1}
    assert d.group_ranks("pp")[:2] == [[0, 1], [2, 3]]
    assert d.group_ranks("sp")[0] == [0, 2, 4]
    assert d.group_ranks("cfg")[0] == [0, 6]
    for name in ("pp", "sp", "cfg"):  # every rank in exactly one group of each dimension
        assert sorted(r for g in d.group_ranks(name) for r in g) == list(range(12))
    with pytest.raises(ValueError, match="ParallelDims.pp must be an integer >= 1"):
        ParallelDims(pp=0)
    with pytest.raises(ValueError, match="ParallelDims.cfg must be 1 or 2"):
        ParallelDims(cfg=3)
    with pytest.raises(ValueError, match="unknown parallel dimension 'tp'"):
        d.group_ranks("tp")


GROUPS = '''
import json, sys
import torch.distributed as dist
from framecast.parallel.dims import ParallelDims
dist.init_process_group("gloo")
dims = ParallelDims(pp=2, sp=2)
groups = dims.new_groups()
rank = dist.get_rank()
out = {name: dist.get_process_group_ranks(groups.get_group(name)) for name in ("pp", "sp", "cfg")}
open(f"{sys.argv[1]}/{rank}.json", "w").write(json.dumps(out))
dist.destroy_process_group()
'''


def _torchrun(script: Path, nproc: int, *args) -> subprocess.CompletedProcess:
    from framecast.parallel.torchrun_executor import free_port

    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *args],
                          capture_output=True, text=True, timeout=300, cwd=script.parent,
                          env=dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
                                   PYTHONPATH=f"{script.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"))


def test_named_groups_are_the_layouts_groups(tmp_path):
    import json

    (tmp_path / "groups.py").write_text(GROUPS)
    proc = _torchrun(tmp_path / "groups.py", 4, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    dims = ParallelDims(pp=2, sp=2)
    for rank in range(4):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        for name in ("pp", "sp", "cfg"):
            expected = next(g for g in dims.group_ranks(name) if rank in g)
            assert got[name] == expected, (rank, name, got)


def test_local_executor_runs_any_worker_class(tmp_path, monkeypatch):
    from framecast.config import load_config
    from framecast.parallel.executors import make_executor

    (tmp_path / "toy_worker.py").write_text(TOY_WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config("tiny", ["model.weights="])
    ex = make_executor(cfg, None, "toy_worker:SumWorker", ParallelDims())
    assert ex.collective_rpc("add", 5) == [{"sum": 5.0, "calls": 1, "pid": os.getpid()}]
    assert ex.collective_rpc("add", 1)[0]["calls"] == 2  # the same worker across calls
    ex.shutdown()
    with pytest.raises(ValueError, match="parallel.workers=1 but the layout"):
        make_executor(cfg, None, "toy_worker:SumWorker", ParallelDims(pp=2))
    with pytest.raises(ValueError, match="not an import string"):
        make_executor(cfg, None, "toy_worker.SumWorker", ParallelDims())


TORCHRUN_TOY = '''
import json, sys
import torch.distributed as dist
from framecast.config import load_config
from framecast.parallel.dims import ParallelDims
from framecast.parallel.torchrun_executor import TorchrunExecutor, broadcast, follow
dist.init_process_group("gloo")
if dist.get_rank() != 0:
    follow()
else:
    cfg = load_config("tiny", ["model.weights=", "parallel.launcher=torchrun", "parallel.workers=2"])
    ex = TorchrunExecutor(cfg, None, "toy_worker:SumWorker", ParallelDims(pp=2))
    results = [ex.collective_rpc("add", 10)[0], ex.collective_rpc("add", 20)[0]]
    ex.shutdown()
    json.dump(results, open(sys.argv[1], "w"))
    broadcast(("exit", ()))
dist.destroy_process_group()
'''


def test_torchrun_executor_runs_any_worker_class(tmp_path):
    import json

    (tmp_path / "toy_worker.py").write_text(TOY_WORKER)
    (tmp_path / "run.py").write_text(TORCHRUN_TOY)
    proc = _torchrun(tmp_path / "run.py", 2, str(tmp_path / "out.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = json.loads((tmp_path / "out.json").read_text())
    assert first["sum"] == 10 + 11 and second["sum"] == 20 + 21  # both ranks ran each call, in its group
    assert (first["calls"], second["calls"]) == (1, 2)
