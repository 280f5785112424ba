"""The shared block-sparse core: the CPU gather path and the FlexAttention path (eager on CPU)
against dense attention masked to the same blocks, and the tile layout."""
import pytest
import torch
import torch.nn.functional as F

from framecast.models.block_sparse import (apply_layout, block_sparse_attention, flex_block_sparse_attention,
                                           gather_block_sparse_attention, layout_valid, masked_dense_attention,
                                           num_blocks, tile_layout, undo_layout)


def qkv(B=2, L=200, S=260, N=3, H=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, N, H, generator=g), torch.randn(B, S, N, H, generator=g),
            torch.randn(B, S, N, H, generator=g))


def random_table(B, N, Q, K, density, seed=1, empty_rows=True):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, N, Q, K, generator=g) < density
    if empty_rows:
        keep[0, 0, 1] = False  # a row that keeps nothing -> zero output
    return keep


@pytest.mark.parametrize("path", [gather_block_sparse_attention, block_sparse_attention])
@pytest.mark.parametrize("bq,bk", [(32, 32), (16, 48), (64, 20)])
def test_gather_path_equals_masked_dense_with_ragged_blocks_and_empty_rows(path, bq, bk):
    q, k, v = qkv()
    keep = random_table(2, 3, num_blocks(200, bq), num_blocks(260, bk), 0.3)
    out = path(q, k, v, keep, bq, bk)
    ref = masked_dense_attention(q, k, v, keep, bq, bk)
    assert (out - ref).abs().max() <= 1e-5
    assert out[0, bq:2 * bq, 0].abs().max() == 0.0


def test_uniform_topk_rows_take_the_maskless_path_and_chunking_changes_nothing():
    q, k, v = qkv(L=256, S=256)
    scores = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(3, dim=-1).indices, True)
    ref = masked_dense_attention(q, k, v, keep, 32, 32)
    for max_elements in (1 << 22, 32 * 16 * 3, 1):
        out = gather_block_sparse_attention(q, k, v, keep, 32, 32, max_elements=max_elements)
        assert (out - ref).abs().max() <= 1e-5


def test_table_broadcast_over_batch_scale_and_all_kept_equals_sdpa():
    q, k, v = qkv()
    keep = torch.ones(1, 3, num_blocks(200, 32), num_blocks(260, 32), dtype=torch.bool)
    out = gather_block_sparse_attention(q, k, v, keep, 32, 32, scale=0.3)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=0.3)
    assert (out - ref.transpose(1, 2)).abs().max() <= 1e-5


def test_padding_keys_are_never_attended_and_a_block_of_padding_counts_as_not_kept():
    q, k, v = qkv(L=96, S=128)
    valid = torch.ones(128, dtype=torch.bool)
    valid[40:64] = False   # part of key block 1 (32..63)
    valid[96:] = False     # all of key block 3
    keep = random_table(2, 3, 3, 4, 0.6, seed=5)
    keep[1, 2, 0] = torch.tensor([False, False, False, True])  # only padding -> an empty row
    ref = masked_dense_attention(q, k, v, keep, 32, 32, kv_valid_S=valid)
    for path in (gather_block_sparse_attention, flex_block_sparse_attention):
        out = path(q, k, v, keep, 32, 32, kv_valid_S=valid)
        assert (out - ref).abs().max() <= 1e-5, path.__name__
        assert out[1, :32, 2].abs().max() == 0.0


@pytest.mark.parametrize("L, S, block_q, block_k", [(100, 150, 16, 32), (200, 260, 48, 40), (300, 150, 128, 128)])
def test_flex_path_eager_on_cpu_equals_gather_path(L, S, block_q, block_k):
    """Block sizes that are not multiples of the compiled kernel's tile (FLEX_TILE) go through
    coarse tiles masked exactly by the fine table; multiples map one to one."""
    q, k, v = qkv(L=L, S=S)
    keep = random_table(2, 3, num_blocks(L, block_q), num_blocks(S, block_k), 0.3, seed=7)
    out = flex_block_sparse_attention(q, k, v, keep, block_q, block_k, compile=False)
    ref = gather_block_sparse_attention(q, k, v, keep, block_q, block_k)
    assert (out - ref).abs().max() <= 1e-5


def test_a_table_that_does_not_fit_is_an_error():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="block table .* does not fit"):
        gather_block_sparse_attention(q, k, v, torch.ones(1, 3, 2, 2, dtype=torch.bool), 32, 32)


def test_tile_layout_is_tile_contiguous_pads_ragged_grids_and_round_trips():
    index = tile_layout((2, 3, 5), (1, 2, 2))
    assert index.numel() == 2 * 2 * 3 * 4          # 2 x ceil(3/2) x ceil(5/2) tiles of 4
    assert index[:4].tolist() == [0, 1, 5, 6]       # the first tile: rows 0-1, columns 0-1 of frame 0
    assert index[8:12].tolist() == [4, -1, 9, -1]   # the edge tile of the first tile row: column 4 + padding
    real = index[index >= 0]
    assert sorted(real.tolist()) == list(range(30))
    assert layout_valid(tile_layout((2, 4, 4), (1, 2, 2))) is None and layout_valid(index).sum() == 30
    x = torch.randn(2, 30, 3, 4)
    y = apply_layout(x, index)
    assert y.shape == (2, 48, 3, 4) and y[:, 9].abs().max() == 0.0
    assert torch.equal(undo_layout(y, index, 30), x)
