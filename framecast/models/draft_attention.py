"""DraftAttention (arXiv 2505.14708; shared/methods/accelerators.md B2), backend `draft`.

Per frame, Q and K are average-pooled over (pool_h, pool_w) token regions; the draft map
softmax(q_pool k_pool^T * scale) per head ranks region pairs, and the top `density` share of the
WHOLE head map (not per row) is kept — the row-wise softmax makes a row's entries comparable,
the global threshold lets busy query regions keep more key regions than quiet ones. A query
region that keeps nothing gets its row's best entry (so no query goes without attention). Each
query region's count is then rounded up to one of at most `buckets` sizes with the region's
next-best entries (a superset, so `density` is a lower bound per head and per row): the CPU
kernel makes one SDPA call per distinct count, and 8 sizes instead of ~20 counts took 16k tokens
at 10% from 4.5x to 5.0x over dense (2 shared CPU cores) for ~4% more blocks. Tokens are then reordered so
each region is one contiguous block (in one copy, heads first, as the kernel blocks them), attention
runs over the kept blocks (`block_sparse_attention`) and the order is undone.

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

import numpy as np
import torch

from framecast.models.attention import AttentionCall, BlockCausal, options_of, per_query_frame
from framecast.models.block_sparse import block_sparse_attention, layout_valid, tile_layout


@dataclass
class DraftOptions:
    """attention.draft.*"""
    density: float = 0.1     # share of each head's draft map kept (1 - the paper's sparsity_ratio 0.9)
    pool_h: int = 0          # pooled region height in tokens (0: auto, see `pool_size`)
    pool_w: int = 0          # pooled region width in tokens (0: auto)
    block_tokens: int = 128  # auto pool: at most this many tokens per region (the paper's 8x16 = 128)
    buckets: int = 8         # kept blocks per query region rounded up to at most this many sizes (0: exact)

    MINIMUM: ClassVar[dict] = {"pool_h": 0, "pool_w": 0, "block_tokens": 1, "buckets": 0}
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


def draft_attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, meta: Optional[AttentionCall] = None):
    if meta is None:
        raise ValueError("draft attention needs the call's token grid (meta)")
    options, (_, h, w) = options_of(meta, DraftOptions), meta.grid
    if isinstance(mask, BlockCausal):
        return per_query_frame(lambda q, k, v, s: draft_frames(q, k, v, s, (h, w), options),
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
               k_valid_P: Optional[torch.Tensor], density: float, scale: float, buckets: int = 0) -> torch.Tensor:
    """The kept blocks [B, N, Q, K] of laid-out Q and K. Each head keeps the top `density` share of
    its draft map: a query region keeps its best entries, as many as it has among the head's top
    share, and at least one (no query goes without attention). With `buckets`, each region's
    count is then rounded up to one of at most `buckets` sizes (`bucket_sizes`), the region's
    next-best entries filling the added places: a superset of the selection, so `density` is a
    lower bound, per head and per query region."""
    qp_BNQH, kp_BNKH = _region_means(q_BPNH, block, q_valid_P), _region_means(k_BPNH, block, k_valid_P)
    draft_BNQK = torch.softmax(torch.matmul(qp_BNQH, kp_BNKH.transpose(-1, -2)) * scale, dim=-1)
    B, N, Q, K = draft_BNQK.shape
    n_keep = min(Q * K, max(1, math.ceil(density * Q * K - 1e-9)))
    # how many of each head's top n_keep entries fall in each row; the row keeps its best that many
    top_BNn = draft_BNQK.reshape(B, N, Q * K).topk(n_keep, dim=-1, sorted=False).indices // K
    counts_BNQ = torch.zeros(B, N, Q, dtype=torch.long, device=top_BNn.device)
    counts_BNQ = counts_BNQ.scatter_add_(-1, top_BNn, torch.ones_like(top_BNn)).clamp_(min=1)
    if buckets:
        sizes = bucket_sizes(counts_BNQ, buckets)
        counts_BNQ = sizes[torch.searchsorted(sizes, counts_BNQ)]  # the smallest size >= the count
    order_BNQK = draft_BNQK.argsort(dim=-1, descending=True)
    take_BNQK = torch.arange(K, device=counts_BNQ.device) < counts_BNQ[..., None]
    return torch.zeros_like(take_BNQK).scatter_(-1, order_BNQK, take_BNQK)


def bucket_sizes(counts: torch.Tensor, buckets: int) -> torch.Tensor:
    """At most `buckets` sizes (ascending, the largest count among them) such that rounding every
    count up to the next size adds the fewest blocks: an exact dynamic programme over the distinct
    counts. Why: the block-sparse CPU kernel makes one SDPA call per distinct count (per chunk),
    and on a shared CPU each call costs a thread hand-off; 8 sizes add ~4% blocks at 16k tokens."""
    values, n = np.unique(counts.cpu().numpy(), return_counts=True)
    if values.size <= buckets:
        return torch.from_numpy(values).to(counts.device)
    v, n = values.astype(np.float64), n.astype(np.float64)
    rows, weight = np.cumsum(n), np.cumsum(n * v)
    # cost[i, j]: the counts v_i..v_j all rounded up to v_j (inf where i > j); prefix sums before i
    cost = v[None, :] * (rows[None, :] - (rows - n)[:, None]) - (weight[None, :] - (weight - n * v)[:, None])
    cost[np.tril_indices(v.size, -1)] = np.inf
    best, starts = cost[0], []          # best[j]: v_0..v_j covered by the sizes so far, v_j the last
    for _ in range(buckets - 1):
        total = np.concatenate([[0.0], best[:-1]])[:, None] + cost  # [i, j]: one more size, v_j for v_i..v_j
        starts.append(total.argmin(0))
        best = total.min(0)
    sizes, j = [v.size - 1], v.size - 1
    for start in reversed(starts):      # walk back: each segment's first index
        i = int(start[j])
        if i == 0:
            break
        j = i - 1
        sizes.append(j)
    return torch.from_numpy(values[sorted(sizes)]).to(counts.device)


def _region_means(x_BPNH: torch.Tensor, block: int, valid_P: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean [B, N, P / block, H] of the real tokens of each block (padding entries are zeros, so a
    sum / count), in float32; summed head-major, as `_to_regions` lays the tokens out."""
    B, P, N, H = x_BPNH.shape
    x_BNQbH = x_BPNH.transpose(1, 2).reshape(B, N, P // block, block, H)
    if valid_P is None:
        return x_BNQbH.mean(3, dtype=torch.float32)
    counts = valid_P.view(-1, block).sum(-1).float()
    return x_BNQbH.sum(3, dtype=torch.float32) / counts[:, None]


def draft_frames(q_BLNH, k_BSNH, v_BSNH, scale, grid_hw: tuple[int, int], options: DraftOptions):
    """DraftAttention of whole frames of queries against whole frames of keys (no mask)."""
    L, S = q_BLNH.shape[1], k_BSNH.shape[1]
    scale = 1.0 / math.sqrt(q_BLNH.shape[-1]) if scale is None else scale
    iq_P, ik_P, block = draft_layout(L, S, grid_hw, options)
    pool = pool_size(grid_hw, options)
    q, k, v = (_to_regions(x, grid_hw, pool) for x in (q_BLNH, k_BSNH, v_BSNH))
    q_valid, k_valid = layout_valid(iq_P), layout_valid(ik_P)
    keep = draft_keep(q, k, block, q_valid, k_valid, options.density, scale, options.buckets)
    o = block_sparse_attention(q, k, v, keep, block, block, scale, kv_valid_S=k_valid)
    return _from_regions(o, L, grid_hw, pool)


def _to_regions(x_BTNH: torch.Tensor, grid_hw: tuple[int, int], pool: tuple[int, int]) -> torch.Tensor:
    """`apply_layout` with the draft's `tile_layout` (1, pool_h, pool_w), in one copy: a [B, P, N, H]
    view of a head-major [B, N, P, H] buffer, which the block-sparse kernel blocks without a copy."""
    (h, w), (ph, pw) = grid_hw, pool
    B, T, N, H = x_BTNH.shape
    nh, nw = -(-h // ph), -(-w // pw)
    x = x_BTNH.reshape(B, T // (h * w), h, w, N, H)
    if nh * ph != h or nw * pw != w:  # padding entries are zeros at the far edges, as in tile_layout
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, nw * pw - w, 0, nh * ph - h))
    x = x.view(B, -1, nh, ph, nw, pw, N, H).permute(0, 6, 1, 2, 4, 3, 5, 7)  # B N F nh nw ph pw H
    return x.reshape(B, N, -1, H).transpose(1, 2)


def _from_regions(o_BPNH: torch.Tensor, tokens: int, grid_hw: tuple[int, int], pool: tuple[int, int]) -> torch.Tensor:
    """`undo_layout` of `_to_regions`: back to token order, padding entries dropped."""
    (h, w), (ph, pw) = grid_hw, pool
    B, _, N, H = o_BPNH.shape
    nh, nw = -(-h // ph), -(-w // pw)
    o = o_BPNH.transpose(1, 2).reshape(B, N, -1, nh, nw, ph, pw, H).permute(0, 2, 3, 5, 4, 6, 1, 7)
    o = o.reshape(B, -1, nh * ph, nw * pw, N, H)  # B F H' W' N H
    return o[:, :, :h, :w].reshape(B, tokens, N, H)
