"""framecast.gpu_check on a CPU machine: the plan, and each check's CPU-runnable core at a tiny size."""
import json
import os
import subprocess
import sys

import pytest
import torch

from framecast import gpu_check as gc


def run_cli(*args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "framecast.gpu_check", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cpu_prints_the_plan_and_exits_0(tmp_path):
    proc = run_cli()
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device here" in proc.stdout
    for name in gc.CHECKS:
        assert f"  {name} " in proc.stdout, name
    assert "32760" in proc.stdout and "(1, 16, 21, 60, 104)" in proc.stdout and "31 FPS" in proc.stdout
    assert "needs 2 GPUs" in proc.stdout

    out = tmp_path / "plan.json"
    proc = run_cli("--only", "nfd-fps", "flash", "--json", str(out))
    assert proc.returncode == 0
    data = json.loads(out.read_text())
    assert data["cuda"] is False and sorted(data["plan"]) == ["flash", "nfd-fps"]
    assert run_cli("--only", "nope").returncode == 2


def test_statistics_helpers():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([1.0, 2.01, 3.0])
    assert gc.max_abs(a, b) == pytest.approx(0.01, abs=1e-6)
    assert gc.rel_l2(a, a) == 0.0
    assert gc.rel_l2(b, a) == pytest.approx(0.01 / a.norm().item(), rel=1e-4)
    assert gc.bf16_close(a, b) and not gc.bf16_close(a, a + 0.1)
    calls = []
    assert gc.median_ms(lambda: calls.append(1), repeats=3) >= 0 and len(calls) == 4  # warm-up + 3


def test_guarded_rows_and_table():
    ok = gc.run_guarded("x", lambda budget: gc.Row("x", "pass", "fine", {"n": 1}), 10)
    assert ok.status == "pass" and ok.seconds >= 0

    def boom(budget):
        raise ValueError("first line\nsecond line")
    bad = gc.run_guarded("y", boom, 10)
    assert bad.status == "FAILED" and bad.result == "ValueError: first line"
    slow = gc.run_guarded("z", lambda budget: gc.Row("z", "info", "done"), 0)
    assert "over its 0 s budget" in slow.result
    # a real GPU check on this CPU machine: a row, not an exception
    row = gc.run_guarded("wan-vs-diffusers", gc.check_wan, 30)
    assert row.status == "FAILED" and "\n" not in row.result
    table = gc.format_table([ok, bad, row])
    assert "FAILED" in table and table.count("\n") == 4


def test_model_sizes():
    nfd = gc.param_count(gc.NFD_KWARGS)
    print(f"NFD-shaped: {nfd / 1e6:.1f}M, Wan-1.3B-shaped: {gc.param_count(gc.WAN13B_KWARGS) / 1e6:.1f}M")
    assert abs(nfd - 310e6) <= 0.1 * 310e6
    assert 1.3e9 <= gc.param_count(gc.WAN13B_KWARGS) <= 1.5e9  # Wan2.1-T2V-1.3B: 1.42B with its text projection
    # the NFD check's config overrides build exactly NFD_KWARGS
    from framecast.config import load_config
    from framecast.engine.components import model_kwargs

    cfg = load_config("tiny-play", gc.nfd_overrides("cpu"))
    assert gc.param_count(model_kwargs(cfg)) == nfd
    assert (cfg.model.in_channels, cfg.video.height // cfg.vae.spatial_stride,
            cfg.video.width // cfg.vae.spatial_stride) == gc.NFD_LATENT


def test_compare_attention_core():
    from framecast.models.attention import BlockCausal

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4 * 16, 2, 32, generator=g) for _ in range(3))
    r = gc.compare_attention(q, k, v, None, backends=("sdpa", "sdpa"))
    assert r["max_abs"] == 0.0 and r["sdpa_ms"] > 0
    r = gc.compare_attention(q[:, :32], k, v, BlockCausal(16, q_start_frame=2), backends=("sdpa", "sdpa"))
    assert r["max_abs"] == 0.0


def test_wan_vs_diffusers_core():
    pytest.importorskip("diffusers")
    tiny = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)
    r = gc.compare_wan(tiny, (1, 4, 2, 8, 8), "cpu", torch.float32)
    print(f"tiny fp32: {r}")
    assert r["max_abs"] <= 1e-5
    r = gc.compare_wan(tiny, (1, 4, 2, 8, 8), "cpu", torch.bfloat16)
    assert r["rel_l2"] <= 1e-2


def test_dualparal_core(tmp_path):
    assert gc.parse_peaks("x\ngpu_check-peak rank=1 bytes=42\ngpu_check-peak rank=0 bytes=7\n") == {0: 7, 1: 42}
    cmd = gc.dualparal_cmd(tmp_path, "w2", "cuda", "bfloat16", 2, port=1234)
    assert "torch.distributed.run" in cmd and "--master_port=1234" in cmd and cmd[-2:] == ["--workers", "2"]
    lat, peaks = gc.run_dualparal(tmp_path, "cpu-w1", "cpu", "float32", 1, timeout=300)
    assert lat.shape == (1, 3, 14, 32, 32) and peaks == {}  # no CUDA: no peak line
    # the check's CPU reference: W=2 on gloo through the wrapper under torchrun
    gloo, peaks = gc.run_dualparal(tmp_path, "cpu-gloo-w2", "cpu", "float32", 2, timeout=300)
    print(f"gloo W=2 vs W=1: max abs {gc.max_abs(gloo, lat):.3g}")
    assert gc.max_abs(gloo, lat) <= 1e-5 and peaks == {}


def test_nfd_fps_core():
    r = gc.nfd_fps(["device=cpu"], frames=3, warmup=1)  # the shipped tiny-play model
    print(r)
    assert r["frames"] == 3 and r["fps"] > 0 and r["steps"] == 4


def test_gpu_mode_driver(monkeypatch, tmp_path, capsys):
    """main() as on a CUDA machine (CUDA faked, checks replaced): every row in one table and the
    JSON, a raising check is a FAILED row, exit 1 when a check fails; the NCCL check skips on 1 GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    nccl = gc.check_dualparal_nccl(gc.Budget(10))
    assert nccl.status == "skip" and "needs 2 GPUs (1 visible)" in nccl.result

    def raises(budget):
        raise RuntimeError("CUDA error: out of memory")
    fake = {"flash": (lambda b: gc.Row("flash", "pass", "max abs err 1e-3", {"max_abs": 1e-3}), 5),
            "dualparal-nccl": (gc.check_dualparal_nccl, 5), "nfd-fps": (raises, 5)}
    monkeypatch.setattr(gc, "CHECKS", fake)
    monkeypatch.setattr(gc, "plan", lambda: {n: f"plan of {n}" for n in fake})
    out = tmp_path / "rows.json"
    assert gc.main(["--json", str(out)]) == 1
    text = capsys.readouterr().out
    print(text)
    assert "FakeGPU" in text and "RuntimeError: CUDA error: out of memory" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["check"], r["status"]) for r in rows] == [("flash", "pass"), ("dualparal-nccl", "skip"),
                                                         ("nfd-fps", "FAILED")]
    assert gc.main(["--only", "flash"]) == 0


@pytest.mark.parametrize("backend", ["draft", "grat", "sparse_vdit", "rettention", "sla"])
def test_sparse_check_core_runs_every_backend_on_cpu(backend):
    """The sparse check's core at a tiny size, both 'devices' the CPU: each backend runs with its
    configured options (no tiny-model files) and a second call (Re-ttention: after calibrating)."""
    from framecast.gpu_sparse_check import sparse_outputs

    out, ref = sparse_outputs(backend, 2, "cpu", torch.float32, frame=(8, 8), heads=2, head_dim=16)
    assert out.shape == (1, 2 * 64, 2, 16) and torch.isfinite(out).all()
    assert torch.equal(out, ref)


def test_sparse_check_is_in_the_plan():
    assert "sparse" in gc.CHECKS and "sparse" in gc.plan()
