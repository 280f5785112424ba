"""Self-attention time of every sparse backend in the registry against dense `sdpa`, on video-shaped
token grids (frames of 32 x 32 tokens, 12 heads x 64, fp32 by default), at several densities.

    python bench/attention.py [--sizes 4k 16k 64k] [--densities 0.1 0.05] [--repeats 3] [--quick]

Rows: `sdpa` (dense, the reference), `kernel` (the shared `block_sparse_attention` with a random
top-k table of 128 x 128 blocks, the same number of blocks in every row), and each sparse backend
called by name through `framecast.models.attention.attention` with its default options from the
config (`make_attention`, with its assets; density set where the options have a `density` field; a
backend with a fixed pattern runs with its defaults, GRAT also with `mode=surround`; per-model files
of the tiny preset are left out, so sparse_vdit runs its default mode in every head and sla its zero
projection). A backend that raises or refuses the call (`supports`) is listed with the reason and
not timed. Backends
see sampler steps 20, 21, ... of 50 (past any dense warm-up) with one runtime per (size, density),
so per-request state builds up as in a run. Times are medians; `--repeats` applies up to 16k tokens,
64k runs once (dense sdpa takes minutes there on 2 cores). Prints a table and writes
bench/results/attention.json. Not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framecast.models.attention import (BACKENDS, AttentionCall, AttentionRuntime, attention,  # noqa: E402
                                        resolve, sdpa_attention)
from framecast.models.block_sparse import block_sparse_attention, num_blocks  # noqa: E402

GRIDS = {"4k": (4, 32, 32), "16k": (16, 32, 32), "64k": (64, 32, 32)}
# fixed-pattern backends: settings timed besides the defaults
EXTRA_VARIANTS = {"grat": [{"mode": "surround"}]}
# the option that sets the kept share of blocks, where it is not called `density`
DENSITY_FIELD = {"sla": "critical"}
# per-model files a tiny preset names do not fit these shapes: each backend's fallback runs instead
# (sparse_vdit: every head its default mode; sla: zero projections = block-sparse over the critical blocks)
NO_MODEL_FILES = ["attention.sparse_vdit.plan=", "attention.sla.weights="]


def configured_runtime(name: str, heads: int, head_dim: int) -> AttentionRuntime:
    """The backend's runtime as the config builds it (options, assets via Backend.load), for a
    one-layer model of these heads."""
    from framecast.config import load_config
    from framecast.engine.components import make_attention

    cfg = load_config("tiny", [f"model.attn_backend={name}", f"model.num_attention_heads={heads}",
                               f"model.attention_head_dim={head_dim}", "model.num_layers=1", *NO_MODEL_FILES])
    return make_attention(cfg).for_request()


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        seconds.append(time.perf_counter() - t0)
    return seconds


def topk_table(B, N, Q, K, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = max(1, round(density * K))
    idx = torch.rand(B, N, Q, K, generator=g).topk(m, dim=-1).indices
    return torch.zeros(B, N, Q, K, dtype=torch.bool).scatter_(-1, idx, True)


def backend_rows(name, q, k, v, grid, densities, repeats):
    """One row per density (or one row for a fixed-pattern backend), or a skipped row with the reason."""
    b = BACKENDS[name]
    base = {"backend": name}
    reason = resolve(b.supports)(q, k, v, None)
    if reason is not None:
        return [{**base, "note": f"skipped: {reason}"}]
    configured = configured_runtime(name, q.shape[2], q.shape[3])
    options_cls = type(configured.options) if configured.options is not None else None
    key = DENSITY_FIELD.get(name, "density")
    has_density = options_cls is not None and key in {f.name for f in dataclasses.fields(options_cls)}
    variants = [({key: d}, d) for d in densities] if has_density else [({}, None)]
    variants += [(dict(v), None) for v in EXTRA_VARIANTS.get(name, [])]
    rows = []
    for changes, density in variants:
        options = dataclasses.replace(configured.options, **changes) if changes else configured.options
        runtime = dataclasses.replace(configured, options=options, steps=50, dense_steps=0, dense_layers=())

        def call(i):
            meta = AttentionCall(grid=grid, layer=0, step=20 + i, kind="self", runtime=runtime)
            return attention(q, k, v, backend=name, meta=meta)

        try:
            seconds = timed(call, repeats)
        except NotImplementedError:
            return [{**base, "note": "skipped: not implemented yet"}]
        except Exception as e:  # a broken backend must not stop the others' rows
            return [{**base, "note": f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:80]}"}]
        shown = {k: v for k, v in changes.items() if k != key}
        note = "" if density is not None else f"fixed pattern ({shown or 'default options'})"
        rows.append({**base, "density": density, "seconds": seconds, "note": note})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["4k", "16k"], choices=sorted(GRIDS),
                    help="token counts to run (grids of 32x32-token frames)")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05], help="kept share of blocks")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row up to 16k tokens (64k: 1)")
    ap.add_argument("--backends", nargs="+", default=[n for n, b in BACKENDS.items() if b.sparse],
                    help="sparse backends to time (default: every sparse backend in the registry)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="4k tokens, one density (0.1), one run per row")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention.json"))
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.densities, args.repeats = ["4k"], [0.1], 1
    dtype = getattr(torch, args.dtype)
    rows = []
    for size in args.sizes:
        grid = GRIDS[size]
        L = grid[0] * grid[1] * grid[2]
        repeats = 1 if L > 16384 else args.repeats
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, L, args.heads, args.head_dim, generator=g).to(dtype) for _ in range(3))
        dense = timed(lambda i: sdpa_attention(q, k, v), repeats)
        found = [{"backend": "sdpa", "density": 1.0, "seconds": dense, "note": "dense reference"}]
        for density in args.densities:
            Q = num_blocks(L, 128)
            keep = topk_table(1, args.heads, Q, Q, density)
            found.append({"backend": "kernel", "density": density,
                          "seconds": timed(lambda i: block_sparse_attention(q, k, v, keep, 128, 128), repeats),
                          "note": "block_sparse_attention, random top-k of 128x128 blocks"})
        for name in args.backends:
            found += backend_rows(name, q, k, v, grid, args.densities, repeats)
        for r in found:
            r.update(tokens=L, grid=list(grid))
            if "seconds" in r:
                r["median_s"] = statistics.median(r["seconds"])
                r["speedup"] = statistics.median(dense) / r["median_s"]
        rows += found
        print_table([r for r in found], size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "heads": args.heads, "head_dim": args.head_dim, "dtype": args.dtype,
        "repeats": args.repeats, "rows": rows}, indent=1))
    print(f"wrote {out}")


def print_table(rows, size) -> None:
    print(f"\n{size} tokens  grid {rows[0]['grid']}  (median seconds; speedup = sdpa / backend)")
    print(f"{'backend':<12} {'density':>8} {'median s':>9} {'speedup':>8}  note")
    for r in rows:
        density = "-" if r.get("density") is None else f"{r['density']:.2f}"
        if "median_s" in r:
            print(f"{r['backend']:<12} {density:>8} {r['median_s']:>9.3f} {r['speedup']:>7.2f}x  {r.get('note', '')}")
        else:
            print(f"{r['backend']:<12} {density:>8} {'-':>9} {'-':>8}  {r['note']}")


if __name__ == "__main__":
    main()
