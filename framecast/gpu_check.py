"""One GPU verification run (issue 26.6): `python -m framecast.gpu_check [--only NAME ...] [--json OUT]`.

On a CUDA machine (with flash-attn: `pip install -e ".[wan,gpu]"`) it runs the checks below, each
guarded (an exception gives a FAILED row with its one-line reason; the others still run) and
each with a time budget (loops stop and subprocesses are killed when it runs out; all budgets
together: 9 min), then prints one table and, with --json, writes the rows. Without CUDA it
prints what it would run, with the shapes, and exits 0.

- flash: flash-attn vs sdpa (bf16): Wan-1.3B's 480x832x81 self-attention (21 latent frames x
  30x52 = 32,760 tokens, 12 heads x 128) and a BlockCausal case; max abs error, median ms each.
- dualparal: DualParal W=1 on CUDA bf16 (`framecast generate`, tiny preset, CFG 3, 14 latent frames,
  N=4, C=2, 3 steps, seed 5) against the CPU gloo W=2 fp32 run of the same seed. bf16 changes a
  multi-step CFG generation far beyond atol 1.5e-2 (on CPU: max abs ~2, rel-L2 ~5%), so the
  metric is relative and measured: rel-L2(CUDA bf16, CPU fp32) <= max(2 x rel-L2(CPU bf16, CPU fp32),
  1e-2), i.e. no worse than bf16 rounding itself. Peak GPU memory (torch.cuda.max_memory_allocated)
  is reported by each process through this module's `--peak-of` wrapper (framecast itself reports RSS).
- dualparal-nccl: the same with `--launcher torchrun --workers 2` (NCCL; needs 2 GPUs): vs W=1 on
  CUDA within atol 1.5e-2, rtol 1e-2, vs CPU gloo by the relative metric; peak memory per rank.
- wan-vs-diffusers: a Wan-1.3B-shaped random-weights model, framecast's WanModel vs diffusers'
  WanTransformer3DModel with the same state dict, bf16 (fp32-kept modules as diffusers), one
  forward at latent (1, 16, 21, 60, 104) (480x832, 81 frames): max abs error, rel-L2, ms each.
- nfd-fps: NFD frames per second of a ~310M-parameter NFD-shaped WanModel (NFD_KWARGS; random
  weights) in LATENT space: 384x224 frames as 16-channel 48x28 latents (a VAE /8) with patch
  (1, 2, 2) (336 tokens per frame), 4 steps (euler-wan), window 32, KV cache, fused commits, bf16,
  flash when importable; 64 frames timed after a warm-up; beside NFD's 31 FPS on an A100.
- sparse: every sparse attention backend's GPU path against its CPU path (framecast/gpu_sparse_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

WAN13B_KWARGS = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                     out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30)
WAN13B_LATENT = (1, 16, 21, 60, 104)  # 480x832, 81 frames through Wan's VAE (x8 spatial, x4 temporal)
# NFD-shaped, ~310M parameters (311.3M): width 1024 (16 heads x 64), 18 blocks, FFN 4096, 5 actions
NFD_KWARGS = dict(patch_size=(1, 2, 2), num_attention_heads=16, attention_head_dim=64, in_channels=16,
                  out_channels=16, text_dim=64, freq_dim=256, ffn_dim=4096, num_layers=18, num_actions=5)
NFD_LATENT = (16, 28, 48)  # 384x224 frames, latent /8
DP_ARGS = ["--frames", "14", "--schedule", "dualparal", "--block-frames", "4", "--context-frames", "2",
           "--steps", "3", "--seed", "5", "--quiet", "sampler.guidance_scale=3.0"]
PEAK = "gpu_check-peak"
PAPER_FPS = "paper: 31 FPS on an A100 (NFD+, 310M, 4 steps, speculation + KV cache)"


@dataclass
class Row:
    check: str
    status: str  # pass | FAIL | FAILED (raised) | skip | info
    result: str
    numbers: dict = field(default_factory=dict)
    seconds: float = 0.0


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


# ------------------------------------------------------------------------ helpers (CPU-testable)
def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.float().cpu(), ref.float().cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def bf16_close(a: torch.Tensor, ref: torch.Tensor, atol: float = 1.5e-2, rtol: float = 1e-2) -> bool:
    return bool(torch.allclose(a.float().cpu(), ref.float().cpu(), atol=atol, rtol=rtol))


def median_ms(fn: Callable, budget: Optional[Budget] = None, repeats: int = 5, sync: Callable = lambda: None) -> float:
    """Median wall ms of fn() after one warm-up call; fewer repeats when the budget runs low."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        if budget is not None and budget.left() < 3 * times[-1] / 1e3:
            break
    return statistics.median(times)


def param_count(kwargs: dict) -> int:
    """Parameters of WanModel(**kwargs), built on the meta device (no memory)."""
    from framecast.models.wan import WanModel

    with torch.device("meta"):
        return sum(p.numel() for p in WanModel(**kwargs).parameters())


def compare_attention(q, k, v, mask, backends=("sdpa", "flash"), budget=None, sync=lambda: None) -> dict:
    """max |a - b| of two attention backends on (q, k, v, mask) and each one's median ms."""
    from framecast.models.attention import attention

    outs, ms = {}, {}
    for b in backends:
        def call(b=b):
            return attention(q, k, v, mask=mask, backend=b)
        outs[b] = call()
        ms[b] = median_ms(call, budget, sync=sync)
    return {"max_abs": max_abs(outs[backends[0]], outs[backends[1]]), **{f"{b}_ms": ms[b] for b in backends}}


def dualparal_cmd(out: Path, name: str, device: str, dtype: str, workers: int, port: int = 0) -> list[str]:
    """`framecast generate` (DualParal, tiny) under the --peak-of wrapper: local W=1, or torchrun W."""
    gen = ["generate", "a red circle moving right", "--out", f"{out / name}/", "--latents-out", str(out / f"{name}.pt"),
           *DP_ARGS, f"device={device}", f"model.dtype={dtype}"]
    me = ["-m", "framecast.gpu_check", "--peak-of", *gen]
    if workers == 1:
        return [sys.executable, *me, "--launcher", "local"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={workers}", "--master_addr=127.0.0.1",
            f"--master_port={port}", *me, "--workers", str(workers)]


def parse_peaks(text: str) -> dict[int, int]:
    """{rank: peak bytes} from the wrapper's `gpu_check-peak rank=R bytes=N` lines."""
    peaks = {}
    for line in text.splitlines():
        if line.startswith(PEAK):
            kv = dict(part.split("=") for part in line.split()[1:])
            peaks[int(kv["rank"])] = int(kv["bytes"])
    return peaks


def run_dualparal(out: Path, name: str, device: str, dtype: str, workers: int, timeout: float):
    """(latents [1, C, F, h, w] fp32, {rank: peak GPU bytes}) of one run in a subprocess."""
    from framecast.parallel.torchrun_executor import free_port

    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.Popen(dualparal_cmd(out, name, device, dtype, workers, free_port()), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the run's own process group (torchrun and its ranks)
        proc.communicate()
        raise RuntimeError(f"{name}: framecast generate still running after {max(timeout, 1):.0f} s (budget)") from None
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{name}: framecast generate exited {proc.returncode}: {tail}")
    return torch.load(out / f"{name}.pt").float(), parse_peaks(stdout)


def peak_of(argv: list[str]) -> int:
    """Run `framecast generate ARGV` (a torchrun rank when LOCAL_RANK is set) and print this
    process's peak GPU memory."""
    if "LOCAL_RANK" in os.environ:
        from framecast.launch.torchrun import main as run
    else:
        from framecast.launch.cli import main as run
    rc = run(argv)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"{PEAK} rank={os.environ.get('RANK', 0)} bytes={torch.cuda.max_memory_allocated()}", flush=True)
    return rc


def nfd_fps(overrides: list[str], frames: int, warmup: int, budget: Optional[Budget] = None) -> dict:
    """Plain NFD (one frame at a time, KV cache, fused commits) on the tiny-play preset with
    `overrides`; frames per second of `frames` frames after `warmup` frames of a separate rollout."""
    from framecast.engine.engine import Engine
    from framecast.schedulers.nfd import NfdRollout

    engine = Engine.from_preset("tiny-play", overrides)
    cfg, model = engine.cfg, engine.model
    shape = (cfg.model.in_channels, cfg.video.height // cfg.vae.spatial_stride, cfg.video.width // cfg.vae.spatial_stride)
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)

    def rollout(n: int) -> tuple[int, float]:
        r = NfdRollout(model, engine.denoiser("", ""), engine.make_sampler, shape, seed=0, window=cfg.schedule.nfd.window,
                       context_sigma=0.0, fuse_commit=True)
        sync()
        t0, done = time.perf_counter(), 0
        for f in range(n):
            a = [f // 8 % cfg.model.num_actions]
            r.commit(f, r.denoise(f, a), a)
            done += 1
            if budget is not None and budget.left() < 5:
                break
        sync()
        return done, time.perf_counter() - t0

    rollout(warmup)
    done, secs = rollout(frames)
    return {"fps": done / secs, "frames": done, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "steps": cfg.sampler.steps, "attn": cfg.model.attn_backend}


def _flash_importable() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------- checks
def check_flash(budget: Budget) -> Row:
    from framecast.models.attention import BlockCausal, flash_supports

    if not _flash_importable():
        return Row("flash", "skip", 'flash_attn not importable (pip install -e ".[gpu]")')
    g = torch.Generator("cuda").manual_seed(0)

    def qkv(lq, lk):
        return [torch.randn(1, n, 12, 128, generator=g, device="cuda", dtype=torch.bfloat16) for n in (lq, lk, lk)]
    nums, ok = {}, True
    for case, (lq, lk), mask in (("full", (32760, 32760), None),
                                 ("blockcausal", (4 * 1560, 8 * 1560), BlockCausal(1560, q_start_frame=4))):
        q, k, v = qkv(lq, lk)
        reason = flash_supports(q, k, v, mask)
        if reason:
            raise RuntimeError(f"flash cannot serve {case}: {reason}")
        r = compare_attention(q, k, v, mask, budget=budget, sync=torch.cuda.synchronize)
        nums.update({f"{case}_{key}": val for key, val in r.items()})
        ok &= r["max_abs"] <= 1e-2
    return Row("flash", "pass" if ok else "FAIL", f"max abs err full {nums['full_max_abs']:.2e}, blockcausal "
               f"{nums['blockcausal_max_abs']:.2e} (<= 1e-2); ms flash/sdpa {nums['full_flash_ms']:.1f}/"
               f"{nums['full_sdpa_ms']:.1f}", nums)


_DP: dict = {}  # runs shared by the two DualParal checks: name -> (latents, peaks)
_DP_DIR: list = []


def _dp(name, device, dtype, workers, budget):
    if not _DP_DIR:
        _DP_DIR.append(Path(tempfile.mkdtemp(prefix="gpu_check-")))
    if name not in _DP:
        _DP[name] = run_dualparal(_DP_DIR[0], name, device, dtype, workers, budget.left())
    return _DP[name]


def _vs_cpu(lat, budget) -> tuple[float, float, bool]:
    ref, _ = _dp("cpu-gloo-w2-fp32", "cpu", "float32", 2, budget)
    yard, _ = _dp("cpu-w1-bf16", "cpu", "bfloat16", 1, budget)
    err, bf16_err = rel_l2(lat, ref), rel_l2(yard, ref)
    return err, bf16_err, err <= max(2 * bf16_err, 1e-2)


def check_dualparal(budget: Budget) -> Row:
    lat, peaks = _dp("cuda-w1-bf16", "cuda", "bfloat16", 1, budget)
    err, bf16_err, ok = _vs_cpu(lat, budget)
    peak = peaks.get(0, 0) / 2**20
    return Row("dualparal", "pass" if ok else "FAIL", f"W=1 CUDA bf16 vs CPU gloo W=2 fp32: rel-L2 {err:.2e} "
               f"(CPU bf16's own {bf16_err:.2e}); peak GPU {peak:.0f} MiB", {"rel_l2": err, "cpu_bf16_rel_l2": bf16_err,
               "peak_MiB_rank0": peak})


def check_dualparal_nccl(budget: Budget) -> Row:
    if torch.cuda.device_count() < 2:
        return Row("dualparal-nccl", "skip", f"needs 2 GPUs ({torch.cuda.device_count()} visible)")
    lat, peaks = _dp("cuda-nccl-w2-bf16", "cuda", "bfloat16", 2, budget)
    w1, _ = _dp("cuda-w1-bf16", "cuda", "bfloat16", 1, budget)
    err, bf16_err, ok = _vs_cpu(lat, budget)
    same = bf16_close(lat, w1)
    mib = {f"peak_MiB_rank{r}": b / 2**20 for r, b in sorted(peaks.items())}
    return Row("dualparal-nccl", "pass" if ok and same else "FAIL",
               f"W=2 NCCL vs W=1: max abs {max_abs(lat, w1):.2e} ({'within' if same else 'NOT within'} "
               f"1.5e-2/1e-2); vs CPU gloo rel-L2 {err:.2e} (bf16's own {bf16_err:.2e}); peak MiB/rank "
               + "/".join(f"{v:.0f}" for v in mib.values()),
               {"max_abs_vs_w1": max_abs(lat, w1), "rel_l2": err, **mib})


def wan_pair(kwargs: dict, device: str, dtype: torch.dtype):
    """(framecast WanModel, diffusers WanTransformer3DModel) with one random state dict, in `dtype`
    with diffusers' fp32-kept modules."""
    from diffusers import WanTransformer3DModel

    from framecast.models.wan import WanModel

    torch.manual_seed(0)
    with torch.device(device):
        ours = WanModel(**kwargs).eval()
        ref = WanTransformer3DModel(**kwargs).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.data = p.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return ours.cast(dtype) if dtype != torch.float32 else ours, ref


def compare_wan(kwargs, latent_shape, device, dtype, budget=None, sync=lambda: None) -> dict:
    ours, ref = wan_pair(kwargs, device, dtype)
    g = torch.Generator(device).manual_seed(1)
    lat = torch.randn(latent_shape, generator=g, device=device).to(dtype)
    text = torch.randn(latent_shape[0], 512, kwargs["text_dim"], generator=g, device=device).to(dtype)
    t = torch.full((latent_shape[0],), 500.0, device=device)
    with torch.no_grad():
        a, b = ours(lat, t, text), ref(hidden_states=lat, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        ms_ours = median_ms(lambda: ours(lat, t, text), budget, repeats=3, sync=sync)
        ms_ref = median_ms(lambda: ref(hidden_states=lat, timestep=t, encoder_hidden_states=text), budget, 3, sync)
    return {"max_abs": max_abs(a, b), "rel_l2": rel_l2(a, b), "framecast_ms": ms_ours, "diffusers_ms": ms_ref}


def check_wan(budget: Budget) -> Row:
    r = compare_wan(WAN13B_KWARGS, WAN13B_LATENT, "cuda", torch.bfloat16, budget, torch.cuda.synchronize)
    ok = r["rel_l2"] <= 1e-2
    return Row("wan-vs-diffusers", "pass" if ok else "FAIL", f"Wan-1.3B-shaped bf16 {WAN13B_LATENT}: max abs "
               f"{r['max_abs']:.2e}, rel-L2 {r['rel_l2']:.2e} (<= 1e-2); ms framecast/diffusers "
               f"{r['framecast_ms']:.0f}/{r['diffusers_ms']:.0f}", r)


def nfd_overrides(device: str = "cuda", attn: str = "sdpa") -> list[str]:
    """tiny-play with NFD_KWARGS' shapes, random weights, 384x224 frames as /8 latents, window 32."""
    shapes = [f"model.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in NFD_KWARGS.items()]
    return ["model.weights=", *shapes, "model.dtype=bfloat16", f"model.attn_backend={attn}", "video.height=224",
            "video.width=384", "vae.spatial_stride=8", "schedule.nfd.window=32", f"device={device}"]


def check_nfd(budget: Budget) -> Row:
    r = nfd_fps(nfd_overrides("cuda", "flash" if _flash_importable() else "sdpa"), 64, 8, budget)
    return Row("nfd-fps", "info", f"{r['fps']:.1f} FPS ({r['params_M']:.0f}M, latent 48x28 = 384x224, {r['steps']} "
               f"steps, KV cache, {r['attn']}, {r['frames']} frames) | {PAPER_FPS}", r)


# name -> (function, budget seconds); what each runs: plan()
def check_sparse(budget: Budget) -> Row:
    from framecast.gpu_sparse_check import check_sparse as run
    return run(budget, rel_l2, median_ms, Row)


CHECKS: dict[str, tuple[Callable[[Budget], Row], float]] = {
    "flash": (check_flash, 60), "dualparal": (check_dualparal, 150), "dualparal-nccl": (check_dualparal_nccl, 90),
    "wan-vs-diffusers": (check_wan, 90), "nfd-fps": (check_nfd, 60), "sparse": (check_sparse, 90)}


def plan() -> dict[str, str]:
    """What each check runs, with its shapes."""
    wan_m, nfd_m = param_count(WAN13B_KWARGS) / 1e6, param_count(NFD_KWARGS) / 1e6
    return {
        "flash": "flash-attn vs sdpa, bf16, 12 heads x 128: full B=1 L=32760 (21x30x52 tokens, Wan-1.3B at "
                 "480x832x81); BlockCausal 4 query frames x 1560 tokens on 8 key frames; max abs error, median ms",
        "dualparal": "framecast generate, tiny preset, DualParal 14 latent frames 32x32, N=4 C=2, 3 steps, CFG 3, "
                     "seed 5: W=1 CUDA bf16 vs CPU gloo W=2 fp32 (rel-L2 <= max(2 x CPU bf16's own, 1e-2)); "
                     "peak GPU memory",
        "dualparal-nccl": "the same with --launcher torchrun --workers 2 on NCCL (needs 2 GPUs): vs W=1 CUDA "
                          "(atol 1.5e-2, rtol 1e-2) and vs CPU gloo; peak GPU memory per rank",
        "wan-vs-diffusers": f"Wan-1.3B-shaped random weights ({wan_m:.0f}M params), framecast WanModel vs "
                            f"diffusers WanTransformer3DModel, same state dict, bf16, one forward at latent "
                            f"{WAN13B_LATENT} (480x832, 81 frames); max abs error, rel-L2, ms each",
        "nfd-fps": f"NFD-shaped WanModel ({nfd_m:.0f}M params: dim 1024 = 16x64, 18 layers, FFN 4096), random "
                   f"weights, latent 16x28x48 (384x224 frames, VAE /8, patch 1x2x2), 4 steps, window 32, KV cache, "
                   f"bf16: FPS over 64 frames after 8 warm-up | {PAPER_FPS}",
        "sparse": "each sparse backend (draft, grat, sparse_vdit, rettention, sla) on CUDA (compiled FlexAttention "
                  "block-sparse kernels) vs its CPU gather path, fp32, Wan-shaped self-attention 4 x 30x52 tokens, "
                  "12 heads x 128 (rel-L2 <= 1e-3); the kernel's ms vs sdpa at 32,760 tokens, 10% density, bf16",
    }


def run_guarded(name: str, fn: Callable[[Budget], Row], seconds: float) -> Row:
    """fn's row, or a FAILED row with the one-line reason; seconds taken; over budget noted."""
    budget, t0 = Budget(seconds), time.monotonic()
    try:
        row = fn(budget)
    except BaseException as e:  # noqa: BLE001 -- one failing check must not stop the others
        if isinstance(e, KeyboardInterrupt):
            raise
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        row = Row(name, "FAILED", f"{type(e).__name__}: {reason}")
    row.seconds = time.monotonic() - t0
    if row.seconds > seconds:
        row.result += f" (over its {seconds:.0f} s budget)"
    return row


def format_table(rows: list[Row]) -> str:
    lines = [f"{'check':<17} {'status':<7} {'seconds':>7}  result", "-" * 100]
    lines += [f"{r.check:<17} {r.status:<7} {r.seconds:>7.1f}  {r.result}" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--peak-of"]:
        return peak_of(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m framecast.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(CHECKS), metavar="NAME", help=f"run only these: {', '.join(CHECKS)}")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the rows (or, without CUDA, the plan) here")
    args = ap.parse_args(argv)
    names = args.only or list(CHECKS)
    what = plan()
    if not torch.cuda.is_available():
        print(f"framecast.gpu_check: no CUDA device here (torch {torch.__version__}); nothing run. "
              f"On a CUDA machine it would run ({sum(CHECKS[n][1] for n in names):.0f} s of budgets):")
        for n in names:
            print(f"  {n:<17} [{CHECKS[n][1]:.0f} s] {what[n]}")
        if args.json:
            Path(args.json).write_text(json.dumps({"cuda": False, "plan": {n: what[n] for n in names}}, indent=1))
        return 0
    flash = "flash-attn importable" if _flash_importable() else "flash-attn NOT importable"
    print(f"framecast.gpu_check on {torch.cuda.device_count()} x {torch.cuda.get_device_name()} "
          f"(torch {torch.__version__}, {flash})", flush=True)
    rows = []
    for n in names:
        print(f"  running {n}: {what[n]}", flush=True)
        rows.append(run_guarded(n, *CHECKS[n]))
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"cuda": True, "device": torch.cuda.get_device_name(),
                                               "rows": [asdict(r) for r in rows]}, indent=1))
    return 0 if all(r.status in ("pass", "skip", "info") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
