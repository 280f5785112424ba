"""Sparse-vDiT (arXiv 2506.03065): one fixed sparsity pattern per (layer, head), chosen offline.

Shape legend: B batch, L query tokens, S key tokens, N heads, G heads of one mode, H head dim,
Q query blocks, K key blocks.

Tokens are in the model's frame-major raster order (f, h, w) with T = H'·W' tokens per frame, cut
into blocks of `block` tokens for queries and keys alike. A head runs one mode:

- `full`: every key block (plain sdpa on those heads: exact, no gather);
- `diagonal`: key blocks within `diagonal_width` blocks of the query block's own position — the
  spatially (and, at frame edges, temporally) nearest tokens;
- `multi_diagonal`: the same band repeated at offsets of whole frames (d·T tokens, |d| <=
  `multi_frames`, 0 = every frame) with `multi_width` blocks each side — the same spatial
  position in the other frames; d = 0 is the main diagonal, so it contains `diagonal` at equal width;
- `vertical_stripe`: the `stripes` key blocks with the most pooled attention mass (the mean over
  query blocks of `pooled_block_scores`), attended by every query, plus each query block's own
  block. The stripes are picked per call from the pooled map, not stored in the plan: which
  tokens act as sinks depends on the content and on the grid, and the pooled map costs
  1/block² of the attention it prunes. The own block keeps every query's self term;
- `skip`: output zero (a head whose contribution to the layer is negligible).

Heads of one mode in a layer share one `block_sparse_attention` call. The plan (modes per layer
and head) comes from `framecast tune-attention` (framecast/models/sparse_vdit_search.py) and is
loaded once per engine by `load_plan`. Keys may outnumber queries (DualParal's right context:
key token i sits at the query token i's position for i < L, the extra keys are the frames after
it); a `BlockCausal` mask (NFD) runs per query frame on its visible keys with the query frame's
position in the key sequence.

Without a plan file (`plan=""`) every head runs `default_mode` (multi_diagonal by default: the
union of the local and the same-position-in-other-frames patterns, the safe choice when nothing
was measured) and `load_plan` warns once: a model without a tuned plan still runs, and the user
is told how to tune one.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Optional

import torch
import torch.nn.functional as F

from framecast.models.attention import BlockCausal, TeacherForcing
from framecast.models.block_sparse import block_sparse_attention, num_blocks, pooled_block_scores

MODES = ("full", "diagonal", "multi_diagonal", "vertical_stripe", "skip")
PLAN_FORMAT = "framecast.sparse_vdit.plan"
PLAN_VERSION = 1
MAX_CACHED_TABLES = 256  # content-independent tables kept per request (each [Q, K] bool)
GEOMETRY = ("block", "diagonal_width", "multi_width", "multi_frames", "stripes")  # what a plan was tuned with


@dataclass
class SparseVditOptions:
    """attention.sparse_vdit.*"""
    # plan JSON from `framecast tune-attention`: a path, or builtin:NAME (framecast/weights/
    # NAME.sparse_vdit.json); "" = every head runs default_mode (load_plan warns)
    plan: str = ""
    default_mode: str = "multi_diagonal"  # mode of heads the plan lacks (and of all heads without a plan)
    block: int = 64  # tokens per query block and per key block
    diagonal_width: int = 1  # diagonal: key blocks kept on each side of the query block's own
    multi_width: int = 1  # multi_diagonal: key blocks kept on each side of every frame-offset band
    multi_frames: int = 0  # multi_diagonal: frames on each side that get a band (0 = every frame)
    stripes: int = 2  # vertical_stripe: key blocks (by pooled attention mass) that every query attends

    CHOICES: ClassVar[dict] = {"default_mode": MODES}
    MINIMUM: ClassVar[dict] = {"block": 1, "diagonal_width": 0, "multi_width": 0, "multi_frames": 0, "stripes": 1}

    def geometry(self) -> dict:
        return {k: getattr(self, k) for k in GEOMETRY}


@dataclass(frozen=True)
class SparseVditPlan:
    """Modes per (layer, head); layers past the end and a missing plan take `default`."""
    modes: tuple  # tuple per layer of the heads' mode names
    default: str = "multi_diagonal"
    source: str = ""  # the file it came from ("" = none)

    def layer_modes(self, layer: int, heads: int) -> tuple:
        if layer < len(self.modes):
            return self.modes[layer]
        return (self.default,) * heads


# ----------------------------------------------------------------------------------- block tables
def _band(qs_Q, qe_Q, ks_K, ke_K, shift: int, width: int) -> torch.Tensor:
    """[Q, K]: key block overlaps the query block's token range moved by `shift`, widened by `width`."""
    return (ks_K[None] < qe_Q[:, None] + shift + width) & (ke_K[None] > qs_Q[:, None] + shift - width)


def mode_table(mode: str, L: int, S: int, frame_tokens: int, opts: SparseVditOptions,
               q_offset: int = 0) -> torch.Tensor:
    """The content-independent [Q, K] table of a mode (vertical_stripe: its own-block part).
    Query token i sits at key position i + q_offset."""
    b = opts.block
    Q, K = num_blocks(L, b), num_blocks(S, b)
    qs_Q = torch.arange(Q) * b + q_offset
    qe_Q = torch.clamp(qs_Q + b, max=L + q_offset)
    ks_K = torch.arange(K) * b
    ke_K = torch.clamp(ks_K + b, max=S)
    if mode == "full":
        return torch.ones(Q, K, dtype=torch.bool)
    if mode == "skip":
        return torch.zeros(Q, K, dtype=torch.bool)
    if mode == "diagonal":
        return _band(qs_Q, qe_Q, ks_K, ke_K, 0, opts.diagonal_width * b)
    if mode == "vertical_stripe":
        return _band(qs_Q, qe_Q, ks_K, ke_K, 0, 0)
    if mode == "multi_diagonal":
        reach = opts.multi_frames or -(-(S + L + abs(q_offset)) // frame_tokens)  # 0: every frame
        keep = torch.zeros(Q, K, dtype=torch.bool)
        for d in range(-reach, reach + 1):
            keep |= _band(qs_Q, qe_Q, ks_K, ke_K, d * frame_tokens, opts.multi_width * b)
        return keep
    raise ValueError(f"sparse_vdit mode {mode!r} is not known; choose one of: {', '.join(MODES)}")


def stripe_columns(q_BLNH, k_BSNH, opts: SparseVditOptions, scale: float) -> torch.Tensor:
    """[B, N, K] bool: the `stripes` key blocks with the most pooled attention mass, per head."""
    b = opts.block
    mass_BNK = pooled_block_scores(q_BLNH, k_BSNH, b, b, scale).mean(dim=2)
    top = min(opts.stripes, mass_BNK.shape[-1])
    cols = torch.zeros_like(mass_BNK, dtype=torch.bool)
    return cols.scatter_(-1, mass_BNK.topk(top, dim=-1).indices, True)


def layer_table(modes, q_BLNH, k_BSNH, frame_tokens: int, opts: SparseVditOptions,
                scale: Optional[float] = None, q_offset: int = 0,
                cache: Optional[dict] = None) -> torch.Tensor:
    """keep_BNQK of one layer (full heads all True, skip heads all False) — what the backend computes.
    `cache`: a dict to keep the content-independent tables in (the request's backend state)."""
    B, L, N, H = q_BLNH.shape
    S = k_BSNH.shape[1]
    scale = 1.0 / math.sqrt(H) if scale is None else scale
    Q, K = num_blocks(L, opts.block), num_blocks(S, opts.block)
    keep_BNQK = torch.zeros(B, N, Q, K, dtype=torch.bool, device=q_BLNH.device)
    for mode in set(modes):
        idx = [n for n, m in enumerate(modes) if m == mode]
        key = (mode, L, S, frame_tokens, q_offset, *opts.geometry().values())
        table_QK = None if cache is None else cache.get(key)
        if table_QK is None:
            table_QK = mode_table(mode, L, S, frame_tokens, opts, q_offset).to(q_BLNH.device)
            if cache is not None:
                cache[key] = table_QK
        keep_BNQK[:, idx] = table_QK
        if mode == "vertical_stripe":
            cols_BGK = stripe_columns(q_BLNH[:, :, idx], k_BSNH[:, :, idx], opts, scale)
            keep_BNQK[:, idx] |= cols_BGK[:, :, None, :]
    return keep_BNQK


# ----------------------------------------------------------------------------------- the backend
def _sparse_heads(q_BLNH, k_BSNH, v_BSNH, modes, frame_tokens, opts, scale, q_offset=0, cache=None):
    """One layer's output: heads grouped by mode, one call per group."""
    B, L, N, H = q_BLNH.shape
    scale = 1.0 / math.sqrt(H) if scale is None else scale
    o_BLNH = q_BLNH.new_zeros(B, L, N, v_BSNH.shape[-1])  # skip heads stay zero
    sparse = [n for n, m in enumerate(modes) if m not in ("full", "skip")]
    full = [n for n, m in enumerate(modes) if m == "full"]
    if full:  # dense heads need no table: plain sdpa on them is exact and skips the gather
        o_BNLH = F.scaled_dot_product_attention(q_BLNH[:, :, full].transpose(1, 2), k_BSNH[:, :, full].transpose(1, 2),
                                                v_BSNH[:, :, full].transpose(1, 2), scale=scale)
        o_BLNH[:, :, full] = o_BNLH.transpose(1, 2)
    if sparse:
        keep_BNQK = layer_table(modes, q_BLNH, k_BSNH, frame_tokens, opts, scale, q_offset, cache)
        for mode in {modes[n] for n in sparse}:
            idx = [n for n in sparse if modes[n] == mode]
            o_BLNH[:, :, idx] = block_sparse_attention(q_BLNH[:, :, idx], k_BSNH[:, :, idx], v_BSNH[:, :, idx],
                                                       keep_BNQK[:, idx], opts.block, opts.block, scale)
    return o_BLNH


def run_modes(q_BLNH, k_BSNH, v_BSNH, modes, grid, opts: SparseVditOptions, *, mask=None, scale=None,
              cache: Optional[dict] = None) -> torch.Tensor:
    """Attention with one mode per head (`modes`, length N) on the query grid (F', H', W')."""
    frame_tokens = grid[1] * grid[2]
    if not isinstance(mask, BlockCausal):
        return _sparse_heads(q_BLNH, k_BSNH, v_BSNH, modes, frame_tokens, opts, scale, 0, cache)
    ft = mask.frame_tokens
    outs = []
    for f in range(q_BLNH.shape[1] // ft):  # each query frame on the keys it may see, at its own position
        start, end = mask.key_start(f), mask.key_end(f)
        offset = (mask.q_start_frame + f) * ft - start
        outs.append(_sparse_heads(q_BLNH[:, f * ft:(f + 1) * ft], k_BSNH[:, start:end], v_BSNH[:, start:end],
                                  modes, frame_tokens, opts, scale, offset, cache))
    return torch.cat(outs, dim=1)


def sparse_vdit_attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, meta=None):
    rt = meta.runtime
    opts = rt.options if rt.options is not None else SparseVditOptions()
    plan = rt.assets if rt.assets is not None else SparseVditPlan((), opts.default_mode)
    modes = plan.layer_modes(meta.layer, q_BLNH.shape[2])
    capture: Optional[Callable] = rt.state.get("capture")
    if capture is not None:  # the offline search (sparse_vdit_search) measures every mode on these inputs
        capture(meta, q_BLNH, k_BSNH, v_BSNH, mask, scale)
    cache = rt.state.setdefault("sparse_vdit_tables", {})
    if len(cache) > MAX_CACHED_TABLES:  # NFD without a window meets a new key length every frame
        cache.clear()
    return run_modes(q_BLNH, k_BSNH, v_BSNH, modes, meta.grid, opts, mask=mask, scale=scale, cache=cache)


def supports(q, k, v, mask) -> Optional[str]:
    if isinstance(mask, TeacherForcing):
        return "teacher-forcing masks (training) are not supported"
    if isinstance(mask, torch.Tensor):
        return "dense masks are not supported"
    if q.shape[-1] != k.shape[-1]:
        return f"query head dim {q.shape[-1]} differs from key head dim {k.shape[-1]}"
    return None


# ----------------------------------------------------------------------------------- plan files
def plan_path(name: str) -> Path:
    """A plan option's file: builtin:NAME -> framecast/weights/NAME.sparse_vdit.json, else a path."""
    if name.startswith("builtin:"):
        import importlib.resources

        return Path(str(importlib.resources.files("framecast.weights").joinpath(
            f"{name.split(':', 1)[1]}.sparse_vdit.json")))
    return Path(name)


def model_fingerprint(cfg) -> dict:
    """What a plan must match: the model family and its attention shapes."""
    m = cfg.model
    return {"kind": m.kind, "layers": m.num_layers, "heads": m.num_attention_heads, "head_dim": m.attention_head_dim}


def load_plan(options: SparseVditOptions, cfg) -> SparseVditPlan:
    """The Backend's `load` hook: the plan file of `options.plan`, checked against the model and
    the options' geometry (a mismatch is refused in one line naming the file and what differs)."""
    if not options.plan:
        warnings.warn(f"attention.sparse_vdit.plan is empty: every head runs {options.default_mode!r}; "
                      f"tune a plan with `framecast tune-attention`", RuntimeWarning, stacklevel=2)
        return SparseVditPlan((), options.default_mode)
    path = plan_path(options.plan)
    if not path.is_file():
        raise ValueError(f"attention.sparse_vdit.plan={options.plan!r}: no such file {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeError) as e:
        raise ValueError(f"attention.sparse_vdit.plan: {str(path)!r} is not JSON ({str(e).splitlines()[0]})") from None
    problem = plan_problem(data, model_fingerprint(cfg), options)
    if problem:
        raise ValueError(f"attention.sparse_vdit.plan: {str(path)!r} {problem}")
    return SparseVditPlan(tuple(tuple(layer) for layer in data["modes"]), options.default_mode, str(path))


def plan_problem(data, fingerprint: dict, options: SparseVditOptions) -> Optional[str]:
    """Why a plan's JSON does not fit this model and these options (one line), or None."""
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        return f"is not a sparse_vdit plan (format {PLAN_FORMAT!r} expected)"
    if data.get("version") != PLAN_VERSION:
        return f"has format version {data.get('version')!r}; this framecast reads version {PLAN_VERSION}"
    model = data.get("model", {})
    diff = [f"{k} {model.get(k)!r} (model: {v!r})" for k, v in fingerprint.items() if model.get(k) != v]
    if diff:
        return f"was tuned for another model: {', '.join(diff)}"
    geometry = data.get("geometry", {})
    diff = [f"{k}={geometry.get(k)!r} (config: {v!r})" for k, v in options.geometry().items() if geometry.get(k) != v]
    if diff:
        return (f"was tuned with other attention.sparse_vdit options: {', '.join(diff)}; "
                f"set them to the plan's or tune again")
    modes = data.get("modes")
    if (not isinstance(modes, list) or len(modes) != fingerprint["layers"]
            or any(not isinstance(layer, list) or len(layer) != fingerprint["heads"] for layer in modes)):
        return f"'modes' is not a list of {fingerprint['layers']} layers x {fingerprint['heads']} heads"
    bad = sorted({m for layer in modes for m in layer if m not in MODES})
    if bad:
        return f"has unknown modes {bad}; known: {', '.join(MODES)}"
    return None
