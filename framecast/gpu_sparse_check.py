"""The GPU verification script's sparse-attention check (`python -m framecast.gpu_check --only sparse`).

Each sparse backend's GPU path (block-sparse kernels through compiled FlexAttention, see
`framecast.models.block_sparse.flex_block_sparse_attention`) against its CPU path (the gather
kernel, fp32) on the same activations: a Wan-1.3B-shaped self-attention call (12 heads x 128, 480x832
frames = 30 x 52 tokens per latent frame) at a step past the dense warm-up. The backends' options
and assets are the config's (`make_attention`), with the tiny preset's per-model files left out
(their layer/head counts are the tiny model's); Re-ttention runs a calibration step first, so
both devices hold state. Both run in fp32 (in bf16 a data-dependent selection — DraftAttention's
top share, SLA's critical blocks — may pick a different block at a near-tie, which is rounding, not
a kernel error). Pass: rel-L2(GPU, CPU) <= 1e-3. Also: the GPU kernel's time against dense sdpa/flash at
Wan's 81-frame 32,760 tokens and 10% density (speed-up, no pass/fail).

`sparse_outputs` is the CPU-runnable core (tests run it with both devices = cpu).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

SPARSE_BACKENDS = ("draft", "grat", "sparse_vdit", "rettention", "sla")
WAN_HEADS, WAN_HEAD_DIM, WAN_FRAME = 12, 128, (30, 52)
# per-model files the tiny preset names; a Wan-shaped call runs each backend's own fallback instead
NO_TINY_ASSETS = ("attention.sparse_vdit.plan=", "attention.sla.weights=")


def runtime_for(backend: str, layers: int = 1):
    """The attention runtime of `backend` with Wan-1.3B's heads, without the tiny preset's files."""
    from framecast.config import load_config
    from framecast.engine.components import make_attention

    overrides = [f"model.attn_backend={backend}", f"model.num_attention_heads={WAN_HEADS}",
                 f"model.attention_head_dim={WAN_HEAD_DIM}", f"model.num_layers={layers}"]
    cfg = load_config("tiny", overrides + [o for o in NO_TINY_ASSETS if _has_key(o)])
    return make_attention(cfg).for_request()


def _has_key(override: str) -> bool:
    from framecast.config import Config

    node = Config()
    for part in override.split("=")[0].split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def _call(backend: str, runtime, q, k, v, grid, step: int):
    from framecast.models.attention import AttentionCall, attention

    meta = AttentionCall(grid=grid, layer=0, step=step, kind="self", runtime=runtime)
    return attention(q, k, v, backend=backend, meta=meta)


def sparse_outputs(backend: str, frames: int, device: str, dtype: torch.dtype, seed: int = 0,
                   frame=WAN_FRAME, heads: int = WAN_HEADS, head_dim: int = WAN_HEAD_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """(output on `device` in `dtype`, CPU fp32 reference) of one self-attention call past the
    warm-up, on smooth video-like activations (a shared random field plus noise, so the pattern
    is not uniform)."""
    g = torch.Generator().manual_seed(seed)
    L = frames * frame[0] * frame[1]
    field = torch.randn(1, L, heads, head_dim, generator=g)
    q, k, v = (field + 0.5 * torch.randn(1, L, heads, head_dim, generator=g) for _ in range(3))
    grid = (frames, *frame)
    outs = []
    for dev, dt in ((device, dtype), ("cpu", torch.float32)):
        rt = runtime_for(backend)
        args = [x.to(dev, dt) for x in (q, k, v)]
        step = rt.dense_steps
        _call(backend, rt, *args, grid, step)  # a first call (Re-ttention calibrates, the others just run)
        outs.append(_call(backend, rt, *args, grid, step + 1).float().cpu())
    return outs[0], outs[1]


def kernel_speed(tokens: int, density: float, device: str, dtype: torch.dtype, timer: Callable[[Callable], float],
                 block: int = 128) -> dict:
    """Median ms of the block-sparse kernel (a random top-k table at `density`) against dense sdpa."""
    import torch.nn.functional as F

    from framecast.models.block_sparse import block_sparse_attention, num_blocks

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, tokens, WAN_HEADS, WAN_HEAD_DIM, generator=g).to(device, dtype) for _ in range(3))
    nb = num_blocks(tokens, block)
    keep = max(1, math.ceil(density * nb))
    idx = torch.rand(1, WAN_HEADS, nb, nb, generator=g).topk(keep, dim=-1).indices
    table = torch.zeros(1, WAN_HEADS, nb, nb, dtype=torch.bool).scatter_(-1, idx, True).to(device)
    sparse_ms = timer(lambda: block_sparse_attention(q, k, v, table, block, block))
    dense_ms = timer(lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))
    return {"tokens": tokens, "density": keep / nb, "sparse_ms": sparse_ms, "sdpa_ms": dense_ms,
            "speedup": dense_ms / sparse_ms}


def check_sparse(budget, rel_l2: Callable, median_ms: Callable, row_cls):
    """One row: every backend's rel-L2 (GPU vs CPU, fp32) and the kernel's speed-up (bf16)."""
    sync = torch.cuda.synchronize
    errors, failed = {}, []
    for backend in SPARSE_BACKENDS:
        if budget.left() < 20:
            errors[backend] = "no time left"
            failed.append(backend)
            continue
        try:
            gpu, cpu = sparse_outputs(backend, 4, "cuda", torch.float32)
            errors[backend] = rel_l2(gpu, cpu)
            if errors[backend] > 1e-3:
                failed.append(backend)
        except Exception as e:  # noqa: BLE001 -- one backend's failure is reported, the others still run
            errors[backend] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}"
            failed.append(backend)
    speed: Optional[dict] = None
    if budget.left() > 20:
        speed = kernel_speed(21 * WAN_FRAME[0] * WAN_FRAME[1], 0.1, "cuda", torch.bfloat16,
                             lambda fn: median_ms(fn, budget, 3, sync))
    cells = ", ".join(f"{b} {e:.1e}" if isinstance(e, float) else f"{b} {e}" for b, e in errors.items())
    speed_txt = (f"; kernel at {speed['tokens']} tokens, density {speed['density']:.2f}: {speed['sparse_ms']:.0f} ms vs "
                 f"sdpa {speed['sdpa_ms']:.0f} ms ({speed['speedup']:.1f}x)") if speed else ""
    return row_cls("sparse", "FAIL" if failed else "pass",
                   f"rel-L2 GPU vs CPU, fp32 (<= 1e-3): {cells}{speed_txt}",
                   {"rel_l2": errors, "kernel": speed})
