"""DraftAttention (arXiv 2505.14708; shared/methods/accelerators.md B2), backend `draft`.

Per frame, Q and K are average-pooled over (pool_h, pool_w) token regions; the draft map
softmax(q_pool k_pool^T * scale) per head ranks region pairs, and the top `density` share of the
WHOLE head map (not per row) is kept — the row-wise softmax makes a row's entries comparable,
the global threshold lets busy query regions keep more key regions than quiet ones. A query
region that keeps nothing gets its row's best entry (so no query goes without attention). Tokens
are then reordered so each region is one contiguous block (`tile_layout`), attention runs over
the kept blocks (`block_sparse_attention`) and the order is undone.

Keys may outnumber queries (DualParal's context frames after the window's own): the key grid is
(S / (H' W'), H', W'), pooled the same way. Under a `BlockCausal` mask (NFD) each query frame runs
on the key range it may see. Regions of a grid that the pool does not divide are padded; padding
never takes part in the pooled means or the attention.

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim, Q query blocks,
K key blocks, P layout positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from framecast.models.attention import AttentionCall, BlockCausal, _per_query_frame
from framecast.models.block_sparse import (apply_layout, block_sparse_attention, layout_valid, tile_layout,
                                           undo_layout)


@dataclass
class DraftOptions:
    """attention.draft.*"""
    density: float = 0.1     # share of each head's draft map kept (1 - the paper's sparsity_ratio 0.9)
    pool_h: int = 0          # pooled region height in tokens (0: auto, see `pool_size`)
    pool_w: int = 0          # pooled region width in tokens (0: auto)
    block_tokens: int = 128  # auto pool: at most this many tokens per region (the paper's 8x16 = 128)

    MINIMUM: ClassVar[dict] = {"pool_h": 0, "pool_w": 0, "block_tokens": 1}
    MAXIMUM: ClassVar[dict] = {"density": 1.0}

    def check(self) -> Optional[str]:
        if not self.density > 0:
            return f"attention.draft.density={self.density} is out of range; must be > 0 and <= 1"
        return None


def pool_size(grid_hw: tuple[int, int], options: DraftOptions) -> tuple[int, int]:
    """The (pool_h, pool_w) of a frame of H' x W' tokens. A set size is clipped to the frame; an
    auto one (0) is the region of at most min(block_tokens, H'W'/4) tokens — at least 4 regions a
    frame, so the draft map still sees where in the frame things are — and sides at most 4:1
    (a region is a neighbourhood, not a strip) holding the most real
    tokens per block once padding is counted; ties go to less padding, then squarer regions.
    Tiny model (8 x 8 tokens): 4 x 4; Wan 480p (30 x 52): 15 x 8 (111 real tokens a block, 7%
    padding); HunyuanVideo 768p (48 x 80): 8 x 16 as in the paper."""
    h, w = grid_hw
    target = max(1, min(options.block_tokens, h * w // 4))
    hs = [min(options.pool_h, h)] if options.pool_h else range(1, h + 1)
    ws = [min(options.pool_w, w)] if options.pool_w else range(1, w + 1)
    best, best_key = (1, 1), None
    for ph in hs:
        for pw in ws:
            if (options.pool_h == 0 or options.pool_w == 0) and (ph * pw > target or max(ph, pw) > 4 * min(ph, pw)):
                continue
            padded = math.ceil(h / ph) * ph * math.ceil(w / pw) * pw
            key = (ph * pw * h * w / padded, -padded, -abs(ph - pw))
            if best_key is None or key > best_key:
                best, best_key = (ph, pw), key
    return best


def _options(meta: Optional[AttentionCall]) -> DraftOptions:
    runtime = None if meta is None else meta.runtime
    return runtime.options if runtime is not None and runtime.options is not None else DraftOptions()


def supports(q, k, v, mask) -> Optional[str]:
    if isinstance(mask, torch.Tensor):
        return "dense tensor masks are not supported"
    if mask is not None and not isinstance(mask, BlockCausal):
        return f"{type(mask).__name__} masks are not supported"
    return None


def draft_attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, meta: Optional[AttentionCall] = None):
    if meta is None:
        raise ValueError("draft attention needs the call's token grid (meta)")
    options, (_, h, w) = _options(meta), meta.grid
    if isinstance(mask, BlockCausal):
        return _per_query_frame(lambda q, k, v, s: draft_frames(q, k, v, s, (h, w), options),
                                q_BLNH, k_BSNH, v_BSNH, mask, scale)
    return draft_frames(q_BLNH, k_BSNH, v_BSNH, scale, (h, w), options)


def draft_layout(L: int, S: int, grid_hw: tuple[int, int], options: DraftOptions):
    """(query layout, key layout, block tokens) of L queries and S keys in frames of H' x W'."""
    h, w = grid_hw
    if L % (h * w) or S % (h * w):
        raise ValueError(f"draft attention: {L} query / {S} key tokens are not whole frames of {h}x{w} tokens")
    ph, pw = pool_size((h, w), options)
    return (tile_layout((L // (h * w), h, w), (1, ph, pw)), tile_layout((S // (h * w), h, w), (1, ph, pw)),
            ph * pw)


def draft_keep(q_BPNH: torch.Tensor, k_BPNH: torch.Tensor, block: int, q_valid_P: Optional[torch.Tensor],
               k_valid_P: Optional[torch.Tensor], density: float, scale: float) -> torch.Tensor:
    """The kept blocks [B, N, Q, K] of laid-out Q and K: the top `density` share of each head's
    draft map, plus each empty row's best entry."""
    qp_BNQH, kp_BNKH = _region_means(q_BPNH, block, q_valid_P), _region_means(k_BPNH, block, k_valid_P)
    draft_BNQK = torch.softmax(torch.einsum("bnqh,bnkh->bnqk", qp_BNQH, kp_BNKH) * scale, dim=-1)
    B, N, Q, K = draft_BNQK.shape
    n_keep = min(Q * K, max(1, math.ceil(density * Q * K - 1e-9)))
    flat = draft_BNQK.reshape(B, N, Q * K)
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, flat.topk(n_keep, dim=-1).indices, True)
    keep = keep.view(B, N, Q, K)
    best = torch.zeros_like(keep).scatter_(-1, draft_BNQK.argmax(-1, keepdim=True), True)
    return keep | (best & ~keep.any(-1, keepdim=True))


def _region_means(x_BPNH: torch.Tensor, block: int, valid_P: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of the real tokens of each block (padding entries are zeros, so a sum / count)."""
    B, P, N, H = x_BPNH.shape
    sums = x_BPNH.float().view(B, P // block, block, N, H).sum(2)
    counts = torch.full((P // block,), float(block), device=x_BPNH.device) if valid_P is None \
        else valid_P.view(-1, block).sum(-1).float()
    return (sums / counts[None, :, None, None]).permute(0, 2, 1, 3)


def draft_frames(q_BLNH, k_BSNH, v_BSNH, scale, grid_hw: tuple[int, int], options: DraftOptions):
    """DraftAttention of whole frames of queries against whole frames of keys (no mask)."""
    L, S = q_BLNH.shape[1], k_BSNH.shape[1]
    scale = 1.0 / math.sqrt(q_BLNH.shape[-1]) if scale is None else scale
    iq_P, ik_P, block = draft_layout(L, S, grid_hw, options)
    iq_P, ik_P = iq_P.to(q_BLNH.device), ik_P.to(q_BLNH.device)
    q, k, v = apply_layout(q_BLNH, iq_P), apply_layout(k_BSNH, ik_P), apply_layout(v_BSNH, ik_P)
    q_valid, k_valid = layout_valid(iq_P), layout_valid(ik_P)
    keep = draft_keep(q, k, block, q_valid, k_valid, options.density, scale)
    o = block_sparse_attention(q, k, v, keep, block, block, scale, kv_valid_S=k_valid)
    return undo_layout(o, iq_P, L)
