"""DualParal pipeline simulator: replays the plan (framecast.schedulers.dualparal) over W layer
stages with an analytic cost model of Wan2.1-T2V-1.3B and projects latency, speed-up, bubbles and
memory per GPU, beside two sequence-parallel (Ulysses) estimates and the paper's claims.

    python bench/dualparal_sim.py                     # 1,025 frames, N = C = 8, T = 50, W = 1..8
    python bench/dualparal_sim.py --N 4 --C 4 --tflops 150 --bandwidth-gbs 12

A projection, not a measurement: no model runs. Assumptions are printed under the table and
stored in the JSON (bench/results/dualparal_sim.json).

Cost model (per block-pass, CFG batch b = 2, bf16):
- q = (context + own) frames × tokens/frame query tokens, k = q + cached right-context tokens.
- per layer, per batch row: self-attn projections 8qD², attention core 4qkD, cross-attn Q/O 4qD²,
  text K/V 4·S·D² (recomputed every pass, as the reference and framecast do), cross core 4qSD,
  FFN 4qDF. Embedding/head/text projection per stage are added (tiny).
- time = FLOPs / (effective TFLOP/s); P2P per hop = hidden-state bytes / bandwidth, one message at a
  time per link, overlapped with compute (async isend/irecv); last → stage 0 returns the velocity.
- dependencies: block k's step s starts on stage 0 only after its step s − 1 AND its left
  neighbour's step s (the context it reads) have left the last stage and been applied by the
  sampler on stage 0 (the plan's "read latents as of the start of the tick" rule). Stages run the
  items in plan order (newest block first), so the K/V cache order holds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framecast.schedulers.dualparal import DualParalPlan, WorkItem, make_plan  # noqa: E402

GB = 1e9


@dataclass(frozen=True)
class Wan:
    """Wan2.1-T2V-1.3B (diffusers WanTransformer3DModel config)."""
    layers: int = 30
    D: int = 1536  # hidden width
    F: int = 8960  # FFN width
    heads: int = 12
    text_tokens: int = 512  # UMT5 sequence length
    text_dim: int = 4096  # UMT5 width
    freq_dim: int = 256
    channels: int = 16  # latent channels
    patch: tuple = (1, 2, 2)
    vae_t: int = 4  # 1 latent frame = 4 video frames (the first = 1)
    vae_s: int = 8

    def block_params(self) -> int:
        D, F = self.D, self.F
        attn = 4 * (D * D + D) + 2 * D  # q, k, v, o + q/k RMSNorm
        return 2 * attn + (D * F + F + F * D + D) + 2 * D + 6 * D  # self, cross, FFN, norm2, modulation

    def other_params(self) -> int:
        D, p = self.D, self.patch[0] * self.patch[1] * self.patch[2]
        patch_in = self.channels * p * D + D
        text = self.text_dim * D + D + D * D + D
        time = self.freq_dim * D + D + D * D + D + D * 6 * D + 6 * D
        head = D * self.channels * p + self.channels * p + 2 * D
        return patch_in + text + time + head


@dataclass(frozen=True)
class Setup:
    frames: int
    latent_frames: int
    height: int
    width: int
    N: int
    C: int
    T: int
    cfg: int  # batch rows per pass (2 with classifier-free guidance)
    tflops: float  # effective bf16 TFLOP/s per GPU
    bandwidth_gbs: float  # GB/s per P2P hop / per GPU for all-to-all
    sampler_ms: float  # rank-0 sampler update per block-step
    bytes_per: int = 2  # bf16

    @property
    def tokens_per_frame(self) -> int:
        m = Wan()
        return (self.height // m.vae_s // m.patch[1]) * (self.width // m.vae_s // m.patch[2])


def layer_flops(m: Wan, q: int, k: int) -> float:
    """Forward FLOPs of one transformer block for one batch row; q query, k key tokens."""
    D, F, S = m.D, m.F, m.text_tokens
    return 8 * q * D * D + 4 * q * k * D + 4 * q * D * D + 4 * S * D * D + 4 * q * S * D + 4 * q * D * F


def layer_flops_split(m: Wan, q: int, k: int) -> tuple[float, float]:
    """(attention-core FLOPs, everything else) of one block, one batch row."""
    core = 4 * q * k * m.D + 4 * q * m.text_tokens * m.D
    return core, layer_flops(m, q, k) - core


def embed_flops(m: Wan, q: int) -> float:
    """Per-stage conditioning (text projection, time MLP, patch embed) + head: small next to a block."""
    p = m.patch[0] * m.patch[1] * m.patch[2]
    text = 2 * m.text_tokens * (m.text_dim * m.D + m.D * m.D)
    return text + 2 * q * m.channels * p * m.D * 2


def split_layers(layers: int, W: int) -> list[int]:
    base, extra = divmod(layers, W)  # as framecast.parallel.stage.split_layers
    return [base + (1 if r < extra else 0) for r in range(W)]


def item_tokens(s: Setup, it: WorkItem) -> tuple[int, int]:
    tpf = s.tokens_per_frame
    return it.query_frames * tpf, it.key_frames * tpf


# ------------------------------------------------------------------------------------ replay
def replay(plan: DualParalPlan, stage_s, hop_s, back_s, sampler_s: float, W: int) -> tuple[float, list[float]]:
    """Replay the plan's block-passes in order through W stages; returns (latency, busy per stage).
    stage_s(it, r): compute seconds on stage r; hop_s(it): stage r -> r+1 transfer; back_s(it): the
    velocity from the last stage back to stage 0. Each link carries one message at a time; sends are
    asynchronous (a stage does not wait for its send to land)."""
    items = list(plan.iter_items())
    index = {(it.block.index, it.step): j for j, it in enumerate(items)}
    stage_free, link_free, busy = [0.0] * W, [0.0] * W, [0.0] * W
    back = [0.0] * len(items)  # when block-step j has been applied by the sampler on stage 0
    for j, it in enumerate(items):
        k, step = it.block.index, it.step
        # own previous step, and the left neighbour's previous-tick step (the context it reads)
        deps = [index.get((k, step - 1)), index.get((k - 1, step))]
        t = max([back[d] for d in deps if d is not None and d < j], default=0.0)
        for r in range(W):
            if r > 0:
                t = link_free[r - 1] = max(t, link_free[r - 1]) + hop_s(it)
            work = stage_s(it, r)
            t = stage_free[r] = max(t, stage_free[r]) + work
            busy[r] += work
        if W > 1:
            t = link_free[W - 1] = max(t, link_free[W - 1]) + back_s(it)
        back[j] = t + sampler_s
    return back[-1], busy


# ------------------------------------------------------------------------------------ DualParal
def simulate_dualparal(plan: DualParalPlan, s: Setup, W: int) -> dict:
    m = Wan()
    split = split_layers(m.layers, W)
    flops_s, bw = s.tflops * 1e12, s.bandwidth_gbs * GB

    def stage_s(it, r):
        q, k = item_tokens(s, it)
        return s.cfg * (split[r] * layer_flops(m, q, k) + embed_flops(m, q)) / flops_s

    def msg_bytes(it):  # hidden states [b, q, D] bf16
        return s.cfg * item_tokens(s, it)[0] * m.D * s.bytes_per

    def back_s(it):  # CFG-combined velocity [1, 16, n, h, w]
        return m.channels * it.own_frames * s.tokens_per_frame * 4 * s.bytes_per / bw

    latency, busy = replay(plan, stage_s, lambda it: msg_bytes(it) / bw, back_s, s.sampler_ms / 1e3, W)
    biggest = max(msg_bytes(it) for it in plan.iter_items())
    weights = (m.block_params() * split[0] + m.other_params()) * s.bytes_per
    kv = kv_cache_bytes(s, m) * split[0]
    act = activation_bytes(s, m, plan)
    buffers = 4 * biggest if W > 1 else 0.0  # 2 receives posted ahead + at most 2 sends in flight
    return {
        "W": W, "layers_per_stage": split, "latency_s": latency,
        "idle_fraction": 1 - sum(busy) / (W * latency),  # pipeline bubbles + layer imbalance
        "bubble_fraction": 1 - max(busy) / latency,  # idle time of the busiest stage: fill/drain/waits
        "busiest_stage_s": max(busy),
        "memory_per_gpu_gb": {"weights": weights / GB, "kv_cache": kv / GB, "activations": act / GB,
                              "p2p_buffers": buffers / GB, "total": (weights + kv + act + buffers) / GB},
        "rank0_latents_and_sampler_gb": rank0_latent_bytes(s, m, plan) / GB,
        "p2p_gb_per_hop": sum(msg_bytes(it) for it in plan.iter_items()) / GB if W > 1 else 0.0,
    }


def kv_cache_bytes(s: Setup, m: Wan) -> float:
    """Per layer: C frames × tokens × D × 2 (K, V) × CFG batch × bf16."""
    return s.C * s.tokens_per_frame * m.D * 2 * s.cfg * s.bytes_per


def activation_bytes(s: Setup, m: Wan, plan: DualParalPlan) -> float:
    """Peak working set of one block-pass through one layer (eager PyTorch, flash/SDPA attention,
    no L×L matrix): residual x + its norm, then max(attention: Q, K, V, O and the K/V extended
    with the cached right context; FFN: pre- and post-activation hidden)."""
    q = max(it.query_frames for it in plan.iter_items()) * s.tokens_per_frame
    k = max(it.key_frames for it in plan.iter_items()) * s.tokens_per_frame
    rows = s.cfg * s.bytes_per
    attn = (2 * q + 3 * k) * m.D  # Q, O; K, V (own) and K, V concatenated with the cache
    ffn = 2 * q * m.F
    return rows * (2 * q * m.D + max(attn, ffn))


def rank0_latent_bytes(s: Setup, m: Wan, plan: DualParalPlan) -> float:
    """Live blocks' fp32 latents + UniPC (order 2) history ≈ 4 buffers per block; framecast's worker
    keeps them on the host, the reference on GPU 0."""
    live = min(len(plan.blocks), plan.T) + 1  # + the finished left neighbour kept as context
    return live * s.N * m.channels * s.tokens_per_frame * 4 * 4 * 4  # tokens·4 = latent h·w


# ------------------------------------------------------------------------------------ Ulysses
def ulysses_window(plan: DualParalPlan, s: Setup, W: int) -> dict:
    """Ulysses SP over the SAME sliding-window work: every block-pass runs on all W GPUs, tokens
    sharded; heads padded to a multiple of W when 12 % W != 0; all-to-all of Q, K, V, O per layer
    (not overlapped); weights replicated; K/V cache and activations sharded 1/W."""
    m = Wan()
    hp = math.ceil(m.heads / W) / m.heads  # per-GPU share of the attention core

    def pass_s(it, r):
        q, k = item_tokens(s, it)
        core, rest = layer_flops_split(m, q, k)
        comp = s.cfg * (m.layers * (core * hp + rest / W) + embed_flops(m, q))
        a2a = 4 * s.cfg * q / W * m.D * s.bytes_per * (W - 1) / W * m.layers
        return comp / (s.tflops * 1e12) + a2a / (s.bandwidth_gbs * GB)

    t_total, _ = replay(plan, pass_s, lambda it: 0.0, lambda it: 0.0, s.sampler_ms / 1e3, 1)
    weights = (m.block_params() * m.layers + m.other_params()) * s.bytes_per
    kv = kv_cache_bytes(s, m) * m.layers / W
    act = activation_bytes(s, m, plan) / W
    return {"W": W, "latency_s": t_total, "heads_padded": m.heads % W != 0,
            "memory_per_gpu_gb": (weights + kv + act) / GB}


def ulysses_full(s: Setup, W: int) -> dict:
    """Ulysses SP over the WHOLE video at once (what xDiT / Wan generate.py do for one clip):
    L = latent_frames × tokens/frame, full attention, T steps."""
    m = Wan()
    L = s.latent_frames * s.tokens_per_frame
    hp = math.ceil(m.heads / W) / m.heads
    core, rest = layer_flops_split(m, L, L)
    step = s.cfg * m.layers * (core * hp + rest / W) / (s.tflops * 1e12)
    a2a = 4 * s.cfg * L / W * m.D * s.bytes_per * (W - 1) / W * m.layers / (s.bandwidth_gbs * GB)
    weights = (m.block_params() * m.layers + m.other_params()) * s.bytes_per
    rows = s.cfg * s.bytes_per
    act = rows * (2 * L / W * m.D + max(5 * L * m.D * math.ceil(m.heads / W) / m.heads, 2 * L / W * m.F))
    total_flops = s.T * s.cfg * m.layers * layer_flops(m, L, L)
    return {"W": W, "latency_s": s.T * (step + a2a), "memory_per_gpu_gb": (weights + act) / GB,
            "total_pflop": total_flops / 1e15}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=1025, help="video frames (4n+1; 1,025 = 257 latent frames)")
    p.add_argument("--height", type=int, default=480, help="pixels")
    p.add_argument("--width", type=int, default=832, help="pixels")
    p.add_argument("--N", type=int, default=8, help="latent frames per block")
    p.add_argument("--C", type=int, default=8, help="left-context latent frames (<= N)")
    p.add_argument("--T", type=int, default=50, help="denoising steps")
    p.add_argument("--workers", type=int, nargs="+", default=list(range(1, 9)), help="W values to simulate")
    p.add_argument("--tflops", type=float, default=120.0,
                   help="effective bf16 TFLOP/s per GPU (RTX 4090: 165 dense peak with fp32 accumulate; "
                        "120 ≈ what Wan's '5 s 480P in ~4 min on one 4090' implies)")
    p.add_argument("--bandwidth-gbs", type=float, default=20.0,
                   help="GB/s per P2P hop (PCIe 4.0 x16 ~25 peak; 4090s have no P2P, so via host memory)")
    p.add_argument("--sampler-ms", type=float, default=2.0, help="rank-0 sampler update per block-step, ms")
    p.add_argument("--no-cfg", action="store_true", help="guidance off: batch 1 instead of 2")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dualparal_sim.json"))
    a = p.parse_args(argv)

    if a.frames < 1 or (a.frames - 1) % 4:
        p.error(f"--frames must be 4n+1 >= 1, got {a.frames}")
    s = Setup(frames=a.frames, latent_frames=(a.frames - 1) // 4 + 1, height=a.height, width=a.width,
              N=a.N, C=a.C, T=a.T, cfg=1 if a.no_cfg else 2, tflops=a.tflops,
              bandwidth_gbs=a.bandwidth_gbs, sampler_ms=a.sampler_ms)
    try:
        plan = make_plan(s.latent_frames, s.N, s.C, s.T)
    except ValueError as e:
        p.error(str(e))
    if min(a.workers) < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    m = Wan()
    tpf = s.tokens_per_frame

    # FLOPs: DualParal total vs the same blocks without any context (the overhead of the window)
    dp_flops = sum(s.cfg * m.layers * layer_flops(m, *item_tokens(s, it)) for it in plan.iter_items())
    bare = sum(s.cfg * m.layers * layer_flops(m, it.own_frames * tpf, it.own_frames * tpf) for it in plan.iter_items())

    rows = []
    for W in a.workers:
        dp = simulate_dualparal(plan, s, W)
        rows.append({"dualparal": dp, "ulysses_window": ulysses_window(plan, s, W), "ulysses_full": ulysses_full(s, W)})
    w1 = simulate_dualparal(plan, s, 1)
    base, base_mem = w1["latency_s"], w1["memory_per_gpu_gb"]["total"]
    for r in rows:
        r["dualparal"]["speedup_vs_w1"] = base / r["dualparal"]["latency_s"]
        r["ulysses_window"]["speedup_vs_dualparal_w1"] = base / r["ulysses_window"]["latency_s"]

    summary = plan.summary()
    print(f"DualParal simulation — Wan2.1-T2V-1.3B, {s.frames} frames ({s.latent_frames} latent) at "
          f"{s.width}x{s.height} ({tpf} tokens/latent frame), N={s.N} C={s.C} T={s.T}, CFG batch {s.cfg}")
    print(f"plan: {summary['blocks']} blocks (last {summary['last_block_frames']} frames), {summary['ticks']} ticks, "
          f"{summary['block_passes']} block-passes, max {summary['max_live_blocks']} live; "
          f"{dp_flops / 1e15:,.0f} PFLOP ({dp_flops / bare:.2f}x the same blocks without context); "
          f"{a.tflops:g} TFLOP/s/GPU, {a.bandwidth_gbs:g} GB/s/hop; params {m.block_params() * m.layers / 1e9:.2f}B "
          f"in blocks + {m.other_params() / 1e9:.2f}B other")
    print()
    hdr = (f"{'W':>2} {'layers':>6} | {'DualParal s':>11} {'speed-up':>8} {'bubble':>6} {'idle':>6} {'GB/GPU':>6} "
           f"{'(w+kv+act+buf)':>21} | {'Ulys-win s':>10} {'x':>5} {'GB/GPU':>6} | {'Ulys-full s':>11} {'GB/GPU':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        d, u, f = r["dualparal"], r["ulysses_window"], r["ulysses_full"]
        mem = d["memory_per_gpu_gb"]
        parts = f"{mem['weights']:.1f}+{mem['kv_cache']:.1f}+{mem['activations']:.1f}+{mem['p2p_buffers']:.1f}"
        sp = ",".join(map(str, sorted(set(d["layers_per_stage"]), reverse=True)))
        pad = "*" if u["heads_padded"] else " "
        print(f"{d['W']:>2} {sp:>6} | {d['latency_s']:>11,.0f} {d['speedup_vs_w1']:>7.2f}x {d['bubble_fraction']:>6.1%} "
              f"{d['idle_fraction']:>6.1%} "
              f"{mem['total']:>6.2f} {parts:>21} | {u['latency_s']:>9,.0f}{pad} {u['speedup_vs_dualparal_w1']:>4.2f}x "
              f"{u['memory_per_gpu_gb']:>6.2f} | {f['latency_s']:>11,.0f} {f['memory_per_gpu_gb']:>6.2f}")
    full_flops = rows[0]["ulysses_full"]["total_pflop"]
    r0 = rows[0]["dualparal"]["rank0_latents_and_sampler_gb"]
    claims = {"latency_reduction": 6.54, "memory_reduction": 1.48, "frames": 1025, "gpus": "8x RTX 4090",
              "source": "arXiv 2505.21070 abstract; baseline configuration not given in the abstract"}
    notes = [
        "Projection from FLOP counts, not a measurement; efficiency is one flat TFLOP/s for every op.",
        "DualParal: layers split as framecast's split_layers (remainder to the lowest ranks). bubble = idle "
        "share of the busiest stage (fill/drain, dependency waits, transfers); idle = idle share of all "
        "stages (adds layer imbalance, e.g. 5,5,4,4,4,4,4 at W=7). Memory is the busiest stage: its blocks' weights + all non-block "
        "weights (every stage embeds) + K/V cache (C frames x tokens x D x 2 (K,V) x CFG x bf16 per layer) "
        "+ one block-pass's peak activations + 2 recv / 2 send P2P buffers.",
        f"Not counted per GPU: UMT5-XXL text encoder (~5.7B params, ~11.4 GB bf16; run once, then freed "
        f"or on CPU), Wan VAE (~0.25 GB weights; decode activations depend on tiling), rank-0 latents + "
        f"UniPC state of live blocks ~{r0:.2f} GB fp32 (host memory in framecast).",
        "Ulys-win: DeepSpeed-Ulysses on the same sliding-window passes (same FLOPs as DualParal), every "
        "pass across all W GPUs, Q/K/V/O all-to-all per layer at the hop bandwidth, not overlapped; "
        "weights replicated. '*' = 12 heads not divisible by W: heads padded to a multiple of W "
        "(ulysses_anything-style), attention core costs ceil(12/W)/12 per GPU.",
        f"Ulys-full: the whole video as one sequence ({s.latent_frames * tpf:,} tokens), full attention, "
        f"{full_flops:,.0f} PFLOP = {full_flops * 1e15 / dp_flops:.1f}x DualParal's work; flash attention "
        "(no LxL matrix). Wan is trained on 81-frame clips (21 latents): full attention over "
        f"{s.latent_frames} latents is far out of distribution, so this is a cost bound, not a usable baseline.",
        "Paper claims (quoted, not reproduced): up to 6.54x lower latency and 1.48x lower memory for "
        "1,025-frame Wan2.1 videos on 8x RTX 4090, against baselines whose setup the abstract does not give.",
    ]
    print()
    for n in notes:
        print(f"- {n}")
    last = rows[-1]
    d, f = last["dualparal"], last["ulysses_full"]
    comparison = (f"At W={d['W']}: projected speed-up {d['speedup_vs_w1']:.2f}x vs DualParal W=1 (paper claims "
                  f"6.54x at 8 GPUs); memory/GPU {d['memory_per_gpu_gb']['total']:.2f} GB vs {base_mem:.2f} GB at "
                  f"W=1 ({base_mem / d['memory_per_gpu_gb']['total']:.2f}x) and {f['memory_per_gpu_gb']:.2f} GB for "
                  f"Ulys-full ({f['memory_per_gpu_gb'] / d['memory_per_gpu_gb']['total']:.2f}x; paper claims 1.48x).")
    notes.append(comparison)
    print(f"- {comparison}")

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"setup": asdict(s), "model": asdict(Wan()), "plan": summary,
              "params": {"blocks": m.block_params() * m.layers, "other": m.other_params()},
              "dualparal_pflop": dp_flops / 1e15, "context_overhead": dp_flops / bare,
              "rows": rows, "paper_claims": claims, "notes": notes}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
