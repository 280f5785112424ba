"""Shared test settings: fixed seeds, loopback-only networking, a small thread count."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import stat

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def access_as_owner(monkeypatch):
    """`access_as_owner(under)`: from then on `os.access` answers for paths below `under` from the
    owner's mode bits, as it does for an unprivileged owner (root's access() ignores them), so a
    permission test also runs as root; every other path is asked as usual."""
    real = os.access

    def install(under):
        def access(path, mode, *args, **kwargs):
            full = os.path.abspath(path)
            if full != str(under) and not full.startswith(str(under) + os.sep):
                return real(path, mode, *args, **kwargs)
            try:
                st_mode = os.stat(full).st_mode
            except OSError:
                return False
            need = [(os.R_OK, stat.S_IRUSR), (os.W_OK, stat.S_IWUSR), (os.X_OK, stat.S_IXUSR)]
            return all(st_mode & bit for flag, bit in need if mode & flag)

        monkeypatch.setattr(os, "access", access)

    return install


@pytest.fixture(scope="module")
def ray_cluster():
    """A two-node Ray cluster on loopback (head + one added node), two CPUs each (SPREAD puts one
    worker on each node); one per test module."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
