"""How DualParal cuts the model into stages: `split_layers` (which contiguous layers each worker
runs) and `prune_blocks` (a stage frees the blocks it does not run, keeping the module indices so
checkpoint keys still line up)."""
import gc
import weakref

import pytest
from torch import nn

from framecast.parallel.stage import prune_blocks, split_layers


# ------------------------------------------------------------------------------------ split_layers
@pytest.mark.parametrize("num_layers, workers, sizes", [
    (5, 1, [5]),
    (4, 2, [2, 2]),
    (5, 2, [3, 2]),
    (7, 3, [3, 2, 2]),
    (8, 3, [3, 3, 2]),
    (30, 4, [8, 8, 7, 7]),
    (40, 6, [7, 7, 7, 7, 6, 6]),
    (3, 3, [1, 1, 1]),
])
def test_even_split_gives_the_remainder_to_the_lowest_ranks(num_layers, workers, sizes):
    ranges = split_layers(num_layers, workers)
    assert [len(r) for r in ranges] == sizes
    assert ranges[0].start == 0 and ranges[-1].stop == num_layers


@pytest.mark.parametrize("num_layers, explicit", [
    (6, [1, 2, 3]),
    (6, [3, 2, 1]),
    (5, [4, 1]),
    (5, [1, 4]),
    (5, [5]),
])
def test_explicit_split_is_followed_exactly(num_layers, explicit):
    ranges = split_layers(num_layers, len(explicit), explicit)
    assert [len(r) for r in ranges] == explicit
    starts = [sum(explicit[:i]) for i in range(len(explicit))]
    assert ranges == [range(s, s + n) for s, n in zip(starts, explicit)]


def test_every_layer_exactly_once_and_contiguous():
    for num_layers in range(1, 49):
        for workers in range(1, num_layers + 1):
            ranges = split_layers(num_layers, workers)
            assert len(ranges) == workers
            assert all(r.step == 1 and len(r) >= 1 for r in ranges), (num_layers, workers, ranges)
            # contiguous, in rank order, no gap or overlap, covering 0..num_layers-1
            assert [r.start for r in ranges[1:]] == [r.stop for r in ranges[:-1]], (num_layers, workers)
            assert [i for r in ranges for i in r] == list(range(num_layers))
            sizes = [len(r) for r in ranges]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("num_layers, workers, explicit, counts", [
    (2, 3, None, "[1, 1, 0]"),          # more workers than layers
    (6, 3, [1, 2], "[1, 2]"),           # too few entries
    (6, 2, [1, 2, 3], "[1, 2, 3]"),     # too many entries
    (6, 3, [1, 2, 2], "[1, 2, 2]"),     # sums to 5, not 6
    (6, 3, [3, 0, 3], "[3, 0, 3]"),     # a worker with no layer
    (6, 3, [4, -1, 3], "[4, -1, 3]"),   # negative
])
def test_bad_split_raises_naming_the_counts(num_layers, workers, explicit, counts):
    with pytest.raises(ValueError) as e:
        split_layers(num_layers, workers, explicit)
    msg = str(e.value)
    assert counts in msg and f"{workers} workers" in msg and str(num_layers) in msg, msg


# ------------------------------------------------------------------------------------ prune_blocks
def tiny_wan(num_layers=5):
    from framecast.models.wan import WanModel

    return WanModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                    out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=num_layers)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("keep", [range(0, 2), range(2, 4), range(4, 5), range(1, 4), range(0, 5)])
def test_prune_blocks_replaces_exactly_the_others_and_keeps_indices(keep):
    model = tiny_wan()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept = {i: model.blocks[i] for i in keep}
    block_params = [n_params(b) for b in model.blocks]
    total = n_params(model)

    prune_blocks(model, keep)

    assert len(model.blocks) == 5
    for i, block in enumerate(model.blocks):
        if i in keep:
            assert block is kept[i], f"kept block {i} was replaced"
        else:
            assert type(block) is nn.Identity, f"block {i} outside {keep} is {type(block).__name__}"
    after = model.state_dict()
    is_pruned = lambda k: k.startswith("blocks.") and int(k.split(".")[1]) not in keep  # noqa: E731
    # kept blocks and everything outside `blocks` keep their keys (indices unchanged) and values
    assert sorted(after) == sorted(k for k in before if not is_pruned(k))
    assert all((after[k] == before[k]).all() for k in after)
    assert {int(k.split(".")[1]) for k in after if k.startswith("blocks.")} == set(keep)
    assert n_params(model) == total - sum(n for i, n in enumerate(block_params) if i not in keep)


def test_prune_blocks_frees_the_pruned_parameters():
    model = tiny_wan()
    refs = {i: [weakref.ref(p) for p in model.blocks[i].parameters()] for i in range(5)}
    assert all(refs.values())

    prune_blocks(model, range(1, 3))
    gc.collect()

    for i, rs in refs.items():
        alive = [r() is not None for r in rs]
        assert all(alive) if i in (1, 2) else not any(alive), f"block {i}: {sum(alive)}/{len(rs)} params alive"
