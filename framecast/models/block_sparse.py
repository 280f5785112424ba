"""Block-sparse attention, written once for every sparse backend.

A backend decides WHICH blocks of the attention map to compute — a boolean table `keep_BNQK`
(query block q of head n attends key block k) over blocks of `block_q` query and `block_k` key
tokens, in the token order the backend chose (`tile_layout` builds a tile-contiguous order,
`apply_layout` / `undo_layout` move tokens into it and back). This module computes attention
over exactly those blocks:

- `block_sparse_attention`: the entry point; CUDA tensors go to `flex_block_sparse_attention`
  (compiled FlexAttention with a BlockMask built from the table), CPU tensors to
  `gather_block_sparse_attention`;
- `gather_block_sparse_attention` (the CPU path and the reference for the GPU path): gathers only
  the selected key/value blocks of each query block and runs SDPA on them, so the work scales
  with the number of kept blocks, not with L x S;
- `masked_dense_attention`: dense attention masked to the same blocks (the test reference);
- `pooled_block_scores`: softmax(meanpool(Q) meanpool(K)^T * scale), the compressed map several
  backends rank blocks by.

A query block whose row keeps no block gets a zero output (a skipped head or row), as a
block-sparse kernel returns. Padding: L and S need not be multiples of the block sizes; padded
keys are never attended to and padded queries are dropped. Keys marked False in `kv_valid_S`
(the padding entries of a tile layout) are never attended to either; a kept block holding only
such keys counts as not kept.

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim, Q query blocks,
K key blocks, R rows (batch x head x query block), P positions of a tile layout, T tokens.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def num_blocks(tokens: int, block: int) -> int:
    return -(-tokens // block)


def pad_tokens(x_BTNH: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero tokens appended up to a multiple of `multiple` tokens."""
    pad = num_blocks(x_BTNH.shape[1], multiple) * multiple - x_BTNH.shape[1]
    return F.pad(x_BTNH, (0, 0, 0, 0, 0, pad)) if pad else x_BTNH


# ---------------------------------------------------------------------------------------------
# Tile-contiguous token order


def tile_layout(grid_FHW: Sequence[int], tile_FHW: Sequence[int], device=None) -> torch.Tensor:
    """The tile-major order of a (F, H, W) token grid (tokens row-major, as the model flattens
    them): index_P[p] is the token at position p, or -1 for a padding entry. Tiles come in
    row-major order of the tile grid, tokens row-major inside a tile, so each tile is one
    contiguous run of prod(tile) positions — one attention block. A grid not divisible by the
    tile is padded at its far edges (the edge tiles hold padding entries)."""
    (f, h, w), (tf, th, tw) = tuple(grid_FHW), tuple(tile_FHW)
    if min(tf, th, tw) < 1:
        raise ValueError(f"tile {tuple(tile_FHW)} must be positive in every dimension")
    nf, nh, nw = num_blocks(f, tf), num_blocks(h, th), num_blocks(w, tw)
    # grid coordinate of each position, as (tile index, offset in tile) per dimension:
    # positions run over (f_tile, h_tile, w_tile, f_in, h_in, w_in), row-major
    fi = torch.arange(nf * tf, device=device).view(nf, tf)[:, None, None, :, None, None]
    hi = torch.arange(nh * th, device=device).view(nh, th)[None, :, None, None, :, None]
    wi = torch.arange(nw * tw, device=device).view(nw, tw)[None, None, :, None, None, :]
    index = (fi * h + hi) * w + wi
    index = torch.where((fi < f) & (hi < h) & (wi < w), index, torch.full_like(index, -1))
    return index.reshape(-1)


def layout_valid(index_P: torch.Tensor) -> Optional[torch.Tensor]:
    """Which positions hold a token (None when none is padding: the fast path)."""
    valid_P = index_P >= 0
    return None if bool(valid_P.all()) else valid_P


def apply_layout(x_BTNH: torch.Tensor, index_P: torch.Tensor) -> torch.Tensor:
    """Tokens into the layout order; padding entries are zeros."""
    T = x_BTNH.shape[1]
    if int(index_P.max()) >= T:
        raise ValueError(f"layout of {int(index_P.max()) + 1} tokens applied to {T} tokens")
    padded = F.pad(x_BTNH, (0, 0, 0, 0, 0, 1))  # row T is the zero token padding entries read
    return padded.index_select(1, torch.where(index_P >= 0, index_P, T))


def undo_layout(y_BPNH: torch.Tensor, index_P: torch.Tensor, tokens: int) -> torch.Tensor:
    """Back to token order (padding entries dropped): the inverse of `apply_layout`."""
    position_T = torch.empty(tokens, dtype=torch.long, device=index_P.device)
    valid = index_P >= 0
    position_T[index_P[valid]] = torch.arange(index_P.numel(), device=index_P.device)[valid]
    return y_BPNH.index_select(1, position_T)


# ---------------------------------------------------------------------------------------------
# References


def _key_valid(S: int, K: int, block_k: int, kv_valid_S: Optional[torch.Tensor], device) -> torch.Tensor:
    """[K, block_k] bool: which keys of each key block are real (not padding of any kind)."""
    ok = torch.arange(K * block_k, device=device) < S
    if kv_valid_S is not None:
        if kv_valid_S.shape != (S,):
            raise ValueError(f"kv_valid_S has shape {tuple(kv_valid_S.shape)}; expected ({S},)")
        ok[:S] &= kv_valid_S.to(device)
    return ok.view(K, block_k)


def token_mask(keep_BNQK: torch.Tensor, block_q: int, block_k: int, L: int, S: int,
               kv_valid_S: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The [B, N, L, S] boolean token mask of a block table."""
    m = keep_BNQK.repeat_interleave(block_q, dim=2).repeat_interleave(block_k, dim=3)
    m = m[:, :, :L, :S]
    return m if kv_valid_S is None else m & kv_valid_S.to(m.device)


def masked_dense_attention(q_BLNH, k_BSNH, v_BSNH, keep_BNQK, block_q: int, block_k: int,
                           scale: Optional[float] = None, kv_valid_S: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense attention masked to the kept blocks (the reference); rows that keep nothing -> 0."""
    L, S = q_BLNH.shape[1], k_BSNH.shape[1]
    mask_BNLS = token_mask(keep_BNQK, block_q, block_k, L, S, kv_valid_S)
    scale = 1.0 / math.sqrt(q_BLNH.shape[-1]) if scale is None else scale
    s_BNLS = torch.einsum("blnh,bsnh->bnls", q_BLNH.float(), k_BSNH.float()) * scale
    s_BNLS = s_BNLS.masked_fill(~mask_BNLS, float("-inf"))
    p_BNLS = torch.softmax(s_BNLS, dim=-1).nan_to_num(0.0)  # empty rows: all -inf -> nan -> 0
    return torch.einsum("bnls,bsnh->blnh", p_BNLS, v_BSNH.float()).to(q_BLNH.dtype)


def pooled_block_scores(q_BLNH, k_BSNH, block_q: int, block_k: int, scale: Optional[float] = None) -> torch.Tensor:
    """Compressed attention map [B, N, Q, K]: softmax over key blocks of the mean-pooled query and
    key blocks (padded tokens are left out of the means)."""
    scale = 1.0 / math.sqrt(q_BLNH.shape[-1]) if scale is None else scale
    qp = _block_means(q_BLNH, block_q)   # B N Q H
    kp = _block_means(k_BSNH, block_k)   # B N K H
    return torch.softmax(torch.einsum("bnqh,bnkh->bnqk", qp, kp) * scale, dim=-1)


def _block_means(x_BTNH: torch.Tensor, block: int) -> torch.Tensor:
    T = x_BTNH.shape[1]
    n = num_blocks(T, block)
    x = pad_tokens(x_BTNH.float(), block).view(x_BTNH.shape[0], n, block, *x_BTNH.shape[2:])
    counts = torch.full((n,), float(block), device=x.device)
    counts[-1] = T - (n - 1) * block
    return (x.sum(2) / counts[None, :, None, None]).permute(0, 2, 1, 3)  # B N n H


# ---------------------------------------------------------------------------------------------
# The kernels


def block_sparse_attention(q_BLNH: torch.Tensor, k_BSNH: torch.Tensor, v_BSNH: torch.Tensor,
                           keep_BNQK: torch.Tensor, block_q: int, block_k: int,
                           scale: Optional[float] = None, max_elements: int = 1 << 24,
                           kv_valid_S: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention over the kept blocks only. q_BLNH [B, L, N, H], k/v_BSNH [B, S, N, H];
    keep_BNQK: bool [B or 1, N, ceil(L/block_q), ceil(S/block_k)]; kv_valid_S: optional bool [S]
    (False: a padding key, never attended). CUDA tensors run compiled FlexAttention, others the
    gather path; `max_elements` bounds the gathered K (and V) of one chunk on the gather path."""
    if q_BLNH.is_cuda:
        return flex_block_sparse_attention(q_BLNH, k_BSNH, v_BSNH, keep_BNQK, block_q, block_k, scale,
                                           kv_valid_S=kv_valid_S)
    return gather_block_sparse_attention(q_BLNH, k_BSNH, v_BSNH, keep_BNQK, block_q, block_k, scale,
                                         max_elements=max_elements, kv_valid_S=kv_valid_S)


def _prepare(q_BLNH, k_BSNH, keep_BNQK, block_q, block_k, scale, kv_valid_S):
    """Checked sizes, the default scale, the expanded table (blocks without a real key dropped)
    and the key validity [K, block_k]."""
    B, L, N, H = q_BLNH.shape
    S = k_BSNH.shape[1]
    Q, K = num_blocks(L, block_q), num_blocks(S, block_k)
    if keep_BNQK.shape[-2:] != (Q, K) or keep_BNQK.shape[1] != N or keep_BNQK.shape[0] not in (1, B):
        raise ValueError(f"block table {tuple(keep_BNQK.shape)} does not fit batch {B}, {N} heads, "
                         f"{Q} query x {K} key blocks")
    scale = 1.0 / math.sqrt(H) if scale is None else scale
    ok_Kk = _key_valid(S, K, block_k, kv_valid_S, q_BLNH.device)
    keep = keep_BNQK.to(q_BLNH.device, torch.bool).expand(B, N, Q, K)
    real_K = ok_Kk.any(-1)
    if not bool(real_K.all()):          # a key block of padding only counts as not kept
        keep = keep & real_K
    return (B, L, N, H, S, Q, K), scale, keep, ok_Kk


def _to_blocks(x_BTNH: torch.Tensor, block: int) -> torch.Tensor:
    """[B, T, N, H] -> contiguous [B*N*blocks, block, H]: one row per (batch, head, block)."""
    B, _, N, H = x_BTNH.shape
    x = pad_tokens(x_BTNH, block)
    n = x.shape[1] // block
    return x.view(B, n, block, N, H).permute(0, 3, 1, 2, 4).reshape(B * N * n, block, H)


def gather_block_sparse_attention(q_BLNH: torch.Tensor, k_BSNH: torch.Tensor, v_BSNH: torch.Tensor,
                                  keep_BNQK: torch.Tensor, block_q: int, block_k: int,
                                  scale: Optional[float] = None, max_elements: int = 1 << 24,
                                  kv_valid_S: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The CPU path of `block_sparse_attention`. Rows (batch, head, query block) are sorted by how
    many blocks they keep, so each group of equal rows is one contiguous run and each chunk of it
    one dense SDPA call on [rows, 1, block_q, H] queries against their gathered
    [rows, 1, m * block_k, H] keys — no mask at all unless a kept block holds padding keys (those
    rows get an additive -inf bias). Queries are gathered into the sorted order once, and the
    kept block indices of all rows come from one `nonzero` (ascending within a row). Gathered K/V
    go into buffers reused across chunks: fresh multi-MB tensors per chunk cost page faults that
    took longer than the attention itself (measured ~2.4 s -> 0.8 s at 16k tokens, 10% density).
    The default chunk (16M elements, 64 MB of fp32 K and as much V) keeps the calls few: on a
    shared 2-core CPU each op waits for a thread hand-off, and 4M-element chunks made 16k tokens
    at 10% ~30% slower. Returns a [B, L, N, H] view of a head-major buffer (as
    `flex_block_sparse_attention` does); inputs that are such views too (heads before tokens in
    memory, e.g. from draft's region layout) are blocked without a copy."""
    (B, L, N, H, S, Q, K), scale, keep, ok_Kk = _prepare(q_BLNH, k_BSNH, keep_BNQK, block_q, block_k,
                                                        scale, kv_valid_S)
    R, device = B * N * Q, q_BLNH.device
    qb_RqH = _to_blocks(q_BLNH, block_q)
    kb_XkH, vb_XkH = _to_blocks(k_BSNH, block_k), _to_blocks(v_BSNH, block_k)  # X = B*N*K
    keep_RK = keep.reshape(R, K)
    counts_R = keep_RK.sum(-1)
    partial_K = ~ok_Kk.all(-1)                                  # key blocks holding padding
    any_masked = bool(partial_K.any()) and bool((keep_RK & partial_K).any())
    masked_R = (keep_RK & partial_K).any(-1) if any_masked else torch.zeros(R, dtype=torch.bool, device=device)
    if bool((counts_R == K).all()):
        # every row keeps every block: one dense call (gathering would copy K/V once per row)
        bias = None if not any_masked else torch.zeros(1, K * block_k, dtype=q_BLNH.dtype, device=device).masked_fill(
            ~ok_Kk.reshape(1, -1), float("-inf"))
        o = F.scaled_dot_product_attention(qb_RqH.view(B, N, Q * block_q, H), kb_XkH.view(B, N, K * block_k, H),
                                           vb_XkH.view(B, N, K * block_k, H), attn_mask=bias, scale=scale)
        return o.view(B, N, Q * block_q, H).transpose(1, 2)[:, :L]

    # rows sorted by (count, masked): a group is a contiguous run; rows keeping nothing come first
    group_R = counts_R * 2 + masked_R.long()
    group_sorted, perm_R = torch.sort(group_R, stable=True)
    values, sizes = torch.unique_consecutive(group_sorted, return_counts=True)
    groups = list(zip(values.tolist(), sizes.tolist()))
    empty = groups.pop(0)[1] if groups[0][0] == 0 else 0
    if not groups:                                              # no row keeps anything
        return q_BLNH.new_zeros(B, N, Q * block_q, H).transpose(1, 2)[:, :L]
    identity = len(groups) == 1 and empty == 0                  # one group: the stable sort moved nothing
    # flat [B*N*K] key-block index of every kept block, row by row in the sorted order
    rows, kidx = (keep_RK if identity else keep_RK.index_select(0, perm_R)).nonzero(as_tuple=True)
    flat = (perm_R // Q * K).index_select(0, rows) + kidx
    live_R = perm_R[empty:]                                     # sorted rows that keep something
    qs_RqH = qb_RqH if identity else qb_RqH.index_select(0, live_R)
    bias_Kk = torch.zeros(K, block_k, dtype=q_BLNH.dtype, device=device).masked_fill(~ok_Kk, float("-inf"))

    def chunk_rows(m, n_rows):  # as many rows as max_elements allows, spread evenly (no small tail call)
        most = max(1, min(n_rows, max_elements // (m * block_k * H)))
        return -(-n_rows // -(-n_rows // most))

    # one pair of K/V buffers for all groups and chunks (see the docstring: page faults)
    size = max(chunk_rows(g // 2, n) * (g // 2) for g, n in groups)
    kflat, vflat = kb_XkH.new_empty(size, block_k, H), vb_XkH.new_empty(size, block_k, H)
    bflat = bias_Kk.new_empty(size, block_k) if any_masked else None
    out_RqH = qb_RqH.new_zeros(R, block_q, H) if empty else qb_RqH.new_empty(R, block_q, H)
    r0 = f0 = 0                                                 # first row (of live_R) and entry (of flat)
    for g, n_rows in groups:
        m, masked = g // 2, bool(g % 2)
        chunk = chunk_rows(m, n_rows)
        for c0 in range(0, n_rows, chunk):
            c = min(chunk, n_rows - c0)
            a, idx = r0 + c0, flat[f0 + c0 * m:f0 + (c0 + c) * m]
            kg = torch.index_select(kb_XkH, 0, idx, out=kflat[:c * m]).view(c, 1, m * block_k, H)
            vg = torch.index_select(vb_XkH, 0, idx, out=vflat[:c * m]).view(c, 1, m * block_k, H)
            bias = None
            if masked:
                bias = torch.index_select(bias_Kk, 0, idx % K, out=bflat[:c * m]).view(c, 1, 1, m * block_k)
            o = F.scaled_dot_product_attention(qs_RqH[a:a + c].unsqueeze(1), kg, vg, attn_mask=bias, scale=scale)
            if identity:
                out_RqH[a:a + c] = o.view(c, block_q, H)
            else:
                out_RqH.index_copy_(0, live_R[a:a + c], o.view(c, block_q, H))
        r0, f0 = r0 + n_rows, f0 + n_rows * m
    return out_RqH.view(B, N, Q * block_q, H).transpose(1, 2)[:, :L]


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    """flex_attention compiled once per process (compiling is what makes it block-sparse; the
    eager function computes the whole mask)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


FLEX_TILE = 128  # compiled FlexAttention needs block sizes that are multiples of its kernel tile


def flex_block_sparse_attention(q_BLNH: torch.Tensor, k_BSNH: torch.Tensor, v_BSNH: torch.Tensor,
                                keep_BNQK: torch.Tensor, block_q: int, block_k: int,
                                scale: Optional[float] = None, kv_valid_S: Optional[torch.Tensor] = None,
                                compile: Optional[bool] = None) -> torch.Tensor:
    """The GPU path of `block_sparse_attention`: FlexAttention with a BlockMask built from the
    same table; the mask_mod reads the table itself, so eager flex (which ignores the block lists
    and evaluates mask_mod everywhere — CPU tests) is exact too. `compile`: default on CUDA only.

    Block sizes that are multiples of FLEX_TILE map one to one: kept blocks without padding keys
    are "full" (no mask_mod on the GPU), kept blocks with padding "partial". Other sizes (a 15x8
    draft region, a 2-row Re-ttention band, 64-token blocks) would fail the compiled kernel's
    tile check, so the table is coarsened to FLEX_TILE tiles: a tile is visited when any block it
    overlaps is kept, and the mask_mod masks it exactly to the fine blocks."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    (B, L, N, H, S, Q, K), scale, keep, ok_Kk = _prepare(q_BLNH, k_BSNH, keep_BNQK, block_q, block_k,
                                                        scale, kv_valid_S)
    keep = keep.expand(B, N, Q, K)
    valid_S = ok_Kk.reshape(-1)

    def lists(table_BNQK):
        counts = table_BNQK.sum(-1, dtype=torch.int32)
        return counts, torch.sort(table_BNQK.to(torch.int8), dim=-1, descending=True, stable=True).indices.int()

    if block_q % FLEX_TILE == 0 and block_k % FLEX_TILE == 0:
        partial = keep & ~ok_Kk.all(-1)
        (pn, pi), (fn, fi) = lists(partial), lists(keep & ~partial)
        Lp, Sp, tile = Q * block_q, K * block_k, (block_q, block_k)

        def mask_mod(b, h, q_idx, kv_idx):
            return keep[b, h, q_idx // block_q, kv_idx // block_k] & valid_S[kv_idx]
    else:
        Lp, Sp = (num_blocks(n, FLEX_TILE) * FLEX_TILE for n in (Q * block_q, K * block_k))
        valid_S = F.pad(valid_S, (0, Sp - valid_S.numel()))  # keys past the fine blocks: padding
        coarse = _coarsen(_coarsen(keep.float(), block_q, Lp, dim=2), block_k, Sp, dim=3) > 0
        (pn, pi), fn, fi, tile = lists(coarse), None, None, (FLEX_TILE, FLEX_TILE)

        def mask_mod(b, h, q_idx, kv_idx):
            qb = torch.clamp(q_idx // block_q, max=Q - 1)   # padded queries: any row (dropped)
            kb = torch.clamp(kv_idx // block_k, max=K - 1)  # padded keys: masked by valid_S
            return keep[b, h, qb, kb] & valid_S[kv_idx]

    block_mask = BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=tile, mask_mod=mask_mod, seq_lengths=(Lp, Sp))
    attend = _compiled_flex() if (q_BLNH.is_cuda if compile is None else compile) else flex_attention
    q, k, v = (pad_tokens(x, n).transpose(1, 2) for x, n in ((q_BLNH, Lp), (k_BSNH, Sp), (v_BSNH, Sp)))
    with warnings.catch_warnings():
        # eager flex warns that it materialises the scores: intended where it runs (CPU tests)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        o_BNLH = attend(q, k, v, block_mask=block_mask, scale=scale)
    return o_BNLH.transpose(1, 2)[:, :L]


def _coarsen(table: torch.Tensor, block: int, padded: int, dim: int) -> torch.Tensor:
    """Sum a block table along `dim` onto FLEX_TILE tiles: tile t gets every fine block that
    overlaps tokens [t * FLEX_TILE, (t + 1) * FLEX_TILE) (an overlap matrix product)."""
    fine = table.shape[dim]
    start = torch.arange(fine, device=table.device) * block                 # first token of each fine block
    tiles = torch.arange(padded // FLEX_TILE, device=table.device) * FLEX_TILE
    overlap_TF = ((start[None] < tiles[:, None] + FLEX_TILE) & (start[None] + block > tiles[:, None])).to(table.dtype)
    return torch.movedim(torch.tensordot(overlap_TF, torch.movedim(table, dim, 0), dims=1), 0, dim)
