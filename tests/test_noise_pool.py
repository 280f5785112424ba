"""Coordinated noise pool: rows of one pool, no repeat in a [context | own] window, pure in (seed, k)."""
import pytest
import torch

from framecast.parallel.noise import NoisePool
from framecast.schedulers.dualparal import make_plan

SHAPE = (4, 3, 5)  # (C, H, W) of one latent frame


def row_of_pool(pool: NoisePool, frame: torch.Tensor) -> int:
    hits = [i for i in range(pool.pool.shape[0]) if torch.equal(pool.pool[i], frame)]
    assert len(hits) == 1, "every noise frame is exactly one pool row"
    return hits[0]


@pytest.mark.parametrize("L, N, C", [(40, 8, 8), (37, 8, 3), (13, 4, 0), (9, 1, 1), (23, 5, 2), (6, 6, 6)])
def test_rows_of_pool_and_no_repeat_in_window(L, N, C):
    pool = NoisePool(12345, N, C, SHAPE)
    assert pool.pool.shape == (N + C, *SHAPE)
    plan = make_plan(L, N, C, 1)
    rows = {}  # latent frame -> pool row
    for b in plan.blocks:
        noise = pool.block_noise(b.index, len(b))
        assert noise.shape == (len(b), *SHAPE)
        idx = pool.block_indices(b.index, len(b))
        for j, f in enumerate(b.frames):
            rows[f] = row_of_pool(pool, noise[j])
            assert rows[f] == idx[j]
    assert sorted(rows) == list(range(L))
    for it in plan.iter_items():
        window = [rows[f] for f in it.frames]  # [context | own]
        assert len(set(window)) == len(window), f"repeat in window of block {it.block.index}"
    if C == 0:  # no context: still no repeat inside a block
        assert all(len(set(pool.block_indices(k, N))) == N for k in range(len(plan.blocks) - 1))


def test_window_over_many_blocks():
    pool = NoisePool(7, 8, 8, (1,))
    for k in range(1, 200):
        window = pool.block_indices(k - 1, 8)[-8:] + pool.block_indices(k, 8)
        assert sorted(window) == list(range(16))


def test_pure_function_of_seed_and_block():
    a, b = NoisePool(3, 8, 4, SHAPE), NoisePool(3, 8, 4, SHAPE)
    first = a.block_noise(7, 8)  # k = 7 before anything else
    for k in range(7):
        b.block_noise(k, 3)  # other blocks, other (short) lengths first
    assert torch.equal(first, b.block_noise(7, 8))
    assert torch.equal(a.pool, b.pool)
    # global RNG state plays no part
    torch.manual_seed(999)
    c = NoisePool(3, 8, 4, SHAPE)
    torch.randn(100)
    assert torch.equal(c.block_noise(7, 8), first)
    # a different seed gives a different pool and different permutations
    d = NoisePool(4, 8, 4, SHAPE)
    assert not torch.equal(d.pool, a.pool)
    assert any(d.block_indices(k, 8) != a.block_indices(k, 8) for k in range(1, 8))


def test_pool_is_seeded_generator():
    pool = NoisePool(12345, 8, 8, SHAPE)
    ref = torch.randn((16, *SHAPE), generator=torch.Generator("cpu").manual_seed(12345))
    assert torch.equal(pool.pool, ref)
    assert pool.block_indices(0, 8) == list(range(8))


def test_short_last_block_is_prefix():
    pool = NoisePool(5, 6, 2, SHAPE)
    for k in (0, 1, 4):
        full = pool.block_noise(k, 6)
        for n in range(1, 7):
            short = NoisePool(5, 6, 2, SHAPE).block_noise(k, n)
            assert short.shape == (n, *SHAPE)
            assert torch.equal(short, full[:n])


def test_blocks_differ_and_permute():
    pool = NoisePool(0, 8, 2, SHAPE)
    perms = {tuple(pool.block_indices(k, 8)) for k in range(1, 30)}
    assert len(perms) > 20, "permutations vary with k"


def test_dtype_only_rounds():
    f32 = NoisePool(1, 4, 2, SHAPE)
    bf16 = NoisePool(1, 4, 2, SHAPE, dtype=torch.bfloat16)
    assert bf16.block_noise(3, 4).dtype == torch.bfloat16
    assert torch.equal(bf16.block_noise(3, 4), f32.block_noise(3, 4).to(torch.bfloat16))


def test_returned_tensor_is_a_copy():
    pool = NoisePool(1, 4, 2, SHAPE)
    before = pool.pool.clone()
    pool.block_noise(2, 4).zero_()
    assert torch.equal(pool.pool, before)


@pytest.mark.parametrize("kwargs, call, field", [
    ({"seed": -1, "N": 4, "C": 2}, None, "seed"), ({"seed": 0, "N": 0, "C": 0}, None, "N"),
    ({"seed": 0, "N": 4, "C": 5}, None, "C"), ({"seed": 0, "N": 4, "C": 2}, (-1, 2), "k"),
    ({"seed": 0, "N": 4, "C": 2}, (0, 5), "n"), ({"seed": 0, "N": 4, "C": 2}, (0, 0), "n"),
])
def test_validation(kwargs, call, field):
    with pytest.raises(ValueError, match=field):
        pool = NoisePool(frame_shape=SHAPE, **kwargs)
        pool.block_noise(*call)
