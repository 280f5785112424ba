"""GRAT — "Grouping First, Attending Smartly" (arXiv 2505.14687; shared/methods/accelerators.md
B4), backend `grat`.

The token grid is split into non-overlapping groups of group_t x group_h x group_w tokens (the
paper's HunyuanVideo default 4 x 8 x 8 = 256), tokens are reordered group-contiguous
(`tile_layout`), so one group is one attention block, and a fixed group pattern decides which key
groups each query group attends:
- `cross` (GRAT-X, criss-cross): the key groups sharing the query group's t, h or w group
  coordinate (the three group planes through it);
- `surround` (GRAT-B): the key groups within +-radius in every group coordinate (radius 1: the
  3 x 3 x 3 neighbourhood of groups, like STA's (3, 3, 3) window; the paper gives no size).
The pattern does not depend on the activations, so there is no density knob: the share of kept
blocks follows from the grid, the group size and the mode.

Keys may outnumber queries (DualParal's context frames after the window's own): the key grid is
(S / (H' W'), H', W') and the query frames are its first frames. Under a `BlockCausal` mask (NFD)
each query frame runs on the key range it may see, as the last frame of that range. Group sizes
are clipped to the grid; a grid they do not divide is padded (padding is never attended).

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim, Q query groups,
K key groups, P layout positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from framecast.models.attention import AttentionCall, BlockCausal, options_of, per_query_frame
from framecast.models.block_sparse import (apply_layout, block_sparse_attention, layout_valid, num_blocks,
                                           tile_layout, undo_layout)


@dataclass
class GratOptions:
    """attention.grat.*"""
    mode: str = "cross"   # cross: groups sharing a t, h or w group coordinate; surround: groups within +-radius
    group_t: int = 4      # frames per group (paper, HunyuanVideo: 4 x 8 x 8)
    group_h: int = 8      # token rows per group
    group_w: int = 8      # token columns per group
    radius: int = 1       # surround: key groups within +-radius in each group coordinate

    MINIMUM: ClassVar[dict] = {"group_t": 1, "group_h": 1, "group_w": 1, "radius": 0}
    CHOICES: ClassVar[dict] = {"mode": ("cross", "surround")}


def grat_attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, meta: Optional[AttentionCall] = None):
    if meta is None:
        raise ValueError("grat attention needs the call's token grid (meta)")
    options, (_, h, w) = options_of(meta, GratOptions), meta.grid
    if isinstance(mask, BlockCausal):
        def one_frame(q, k, v, s):
            return grat_frames(q, k, v, s, (h, w), options, q_frame0=k.shape[1] // (h * w) - 1)
        return per_query_frame(one_frame, q_BLNH, k_BSNH, v_BSNH, mask, scale)
    return grat_frames(q_BLNH, k_BSNH, v_BSNH, scale, (h, w), options)


def grat_plan(L: int, S: int, grid_hw: tuple[int, int], options: GratOptions, q_frame0: int = 0):
    """(query layout, key layout, query group tokens, key group tokens, keep [1, 1, Q, K]) of L
    queries that are key frames q_frame0.. of S keys, in frames of H' x W' tokens."""
    h, w = grid_hw
    if L % (h * w) or S % (h * w):
        raise ValueError(f"grat attention: {L} query / {S} key tokens are not whole frames of {h}x{w} tokens")
    fq, fk = L // (h * w), S // (h * w)
    gh, gw, gt = min(options.group_h, h), min(options.group_w, w), min(options.group_t, fk)
    # query groups span group_t frames only where they line up with the key groups; otherwise
    # (a lone NFD frame) one frame each, inside one key group
    tq = gt if fq >= gt and q_frame0 % gt == 0 else 1
    iq_P, ik_P = tile_layout((fq, h, w), (tq, gh, gw)), tile_layout((fk, h, w), (gt, gh, gw))
    nh, nw = num_blocks(h, gh), num_blocks(w, gw)
    q_t = (q_frame0 + torch.arange(num_blocks(fq, tq)) * tq) // gt
    qt, qh, qw = (c.reshape(-1) for c in torch.meshgrid(q_t, torch.arange(nh), torch.arange(nw), indexing="ij"))
    kt, kh, kw = (c.reshape(-1) for c in torch.meshgrid(torch.arange(num_blocks(fk, gt)), torch.arange(nh),
                                                       torch.arange(nw), indexing="ij"))
    dt, dh, dw = (a[:, None] - b[None, :] for a, b in ((qt, kt), (qh, kh), (qw, kw)))
    if options.mode == "cross":
        keep_QK = (dt == 0) | (dh == 0) | (dw == 0)
    elif options.mode == "surround":
        r = options.radius
        keep_QK = (dt.abs() <= r) & (dh.abs() <= r) & (dw.abs() <= r)
    else:
        raise ValueError(f"attention.grat.mode={options.mode!r} is not allowed; choose one of: cross, surround")
    return iq_P, ik_P, tq * gh * gw, gt * gh * gw, keep_QK[None, None]


def grat_frames(q_BLNH, k_BSNH, v_BSNH, scale, grid_hw: tuple[int, int], options: GratOptions, q_frame0: int = 0):
    """GRAT attention of whole frames of queries (key frames q_frame0..) against whole frames of keys."""
    L, S, N = q_BLNH.shape[1], k_BSNH.shape[1], q_BLNH.shape[2]
    scale = 1.0 / math.sqrt(q_BLNH.shape[-1]) if scale is None else scale
    iq_P, ik_P, bq, bk, keep = grat_plan(L, S, grid_hw, options, q_frame0)
    iq_P, ik_P = iq_P.to(q_BLNH.device), ik_P.to(q_BLNH.device)
    q, k, v = apply_layout(q_BLNH, iq_P), apply_layout(k_BSNH, ik_P), apply_layout(v_BSNH, ik_P)
    keep = keep.to(q.device).expand(1, N, *keep.shape[-2:])
    o = block_sparse_attention(q, k, v, keep, bq, bk, scale, kv_valid_S=layout_valid(ik_P))
    return undo_layout(o, iq_P, L)
