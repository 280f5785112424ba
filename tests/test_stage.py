"""The DualParal pipeline stage (StageRunner) and its context K/V cache, on a tiny random model.

Shape legend: B batch, S key tokens, N heads, H head dim.
"""
import copy

import pytest
import torch
from torch import nn

from framecast.models.blocks import run_model
from framecast.models.conditioning import Conditioning
from framecast.models.wan import WanModel
from framecast.parallel.kv_cache import ContextKVCache
from framecast.parallel.stage import StageRunner, prune_blocks, split_layers

C, F, H, W = 3, 4, 8, 8  # patch (1, 2, 2): 16 tokens per frame
T = 16


def tiny_model(layers=4):
    torch.manual_seed(0)
    model = WanModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=C,
                     out_channels=C, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, C, F, H, W, generator=g), torch.tensor([700.0, 700.0]), torch.randn(2, 5, 16, generator=g)


def pipeline(model, split):
    """One StageRunner per entry of `split` (layer counts), each on its own pruned copy."""
    ranges = split_layers(len(model.blocks), len(split), split)
    stages = []
    for r, layers in enumerate(ranges):
        shard = copy.deepcopy(model)
        prune_blocks(shard, layers)
        stages.append(StageRunner(shard, layers, first=r == 0, last=r == len(split) - 1))
    return stages


def run_pipeline(stages, x, t, text, **item):
    h = None
    for r, stage in enumerate(stages):
        h = stage.run(x if r == 0 else torch.zeros_like(x), t, text, x_BLD=h, **item)
    return h


ITEM = dict(context_frames=2, keep_frames=2, use_cache=False)


@torch.no_grad()
def test_two_stages_equal_the_whole_model_exactly():
    model = tiny_model()
    x, t, text = inputs()
    whole = run_model(model, x, t, Conditioning(text))
    first, last = pipeline(model, [2, 2])
    hidden = first.run(x, t, text, **ITEM)
    assert hidden.shape == (2, F * T, 16)  # not the last stage: hidden states
    out = last.run(torch.zeros_like(x), t, text, x_BLD=hidden, **ITEM)
    assert out.shape == x.shape  # the last stage: the head's output
    assert torch.equal(out, whole)
    with pytest.raises(ValueError, match="needs the received hidden states"):
        last.run(torch.zeros_like(x), t, text, **ITEM)


@torch.no_grad()
def test_pruned_layers_are_identity_and_never_run():
    model = tiny_model()
    stages = pipeline(model, [1, 3])
    calls = []
    for r, stage in enumerate(stages):
        for i, block in enumerate(stage.model.blocks):
            if i in stage.layers:
                assert isinstance(block, type(model.blocks[i]))
            else:
                assert isinstance(block, nn.Identity)
                block.register_forward_pre_hook(lambda *a, r=r, i=i: calls.append((r, i)))
    x, t, text = inputs()
    run_pipeline(stages, x, t, text, **ITEM)
    assert calls == []


@torch.no_grad()
def test_split_pipeline_with_cache_equals_one_stage():
    """A sequence of block-passes that keep and use the context cache gives the same outputs
    split over 1, 2 or 4 stages (each stage keeps its own layers' K/V)."""
    model = tiny_model()
    items = [dict(context_frames=0, keep_frames=2, use_cache=False),
             dict(context_frames=2, keep_frames=2, use_cache=True),
             dict(context_frames=1, keep_frames=0, use_cache=True),
             dict(context_frames=0, keep_frames=1, use_cache=True)]
    results = []
    for split in ([4], [2, 2], [1, 1, 1, 1]):
        stages = pipeline(model, split)
        outs = [run_pipeline(stages, inputs(seed=j)[0], *inputs()[1:], **item) for j, item in enumerate(items)]
        results.append(torch.cat(outs, dim=2))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    # the cache matters: without it the second item differs
    plain = pipeline(model, [4])
    first = run_pipeline(plain, inputs(seed=0)[0], *inputs()[1:], **items[0])
    no_use = run_pipeline(plain, inputs(seed=1)[0], *inputs()[1:], **{**items[1], "use_cache": False})
    assert torch.equal(first, results[0][:, :, :F])
    assert (no_use - results[0][:, :, F:2 * F]).abs().max() > 1e-4


def test_split_layers():
    assert split_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert split_layers(4, 2, [1, 3]) == [range(0, 1), range(1, 4)]
    with pytest.raises(ValueError, match="summing to 4"):
        split_layers(4, 2, [1, 2])


# ---- the context K/V cache ---------------------------------------------------------------------

def kv(frames, fill, n=2, h=4):
    """K/V of `frames` frames of T tokens: token s of K holds fill + s (V: negated)."""
    k = (fill + torch.arange(frames * T, dtype=torch.float32))[None, :, None, None].expand(1, -1, n, h).clone()
    return k, -k


def test_cache_keeps_exactly_the_chosen_tokens_per_layer_as_clones():
    cache = ContextKVCache()
    hook = cache.for_item(keep_start_token=2 * T, keep_tokens=T, keep_frames=1, use=False)
    assert hook.extra_frames == 0
    for layer, fill in ((0, 0.0), (1, 1000.0)):
        k, v = kv(4, fill)
        k_out, v_out = hook.extend(layer, k, v)
        assert k_out is k and v_out is v  # nothing to attend to yet: the pass's own K/V unchanged
        kept_k, kept_v = cache.kv[layer]
        assert torch.equal(kept_k, k[:, 2 * T:3 * T]) and torch.equal(kept_v, v[:, 2 * T:3 * T])
        # a clone, not a view: the stored K/V do not keep the window's tensors alive
        assert kept_k.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()
        assert kept_v.untyped_storage().data_ptr() != v.untyped_storage().data_ptr()
    assert sorted(cache.kv) == [0, 1] and cache.frames == 1


def test_cache_appends_for_the_next_item_only_when_used_and_replaces_the_store():
    cache = ContextKVCache()
    first = cache.for_item(0, 2 * T, 2, use=False)
    k1, v1 = kv(3, 0.0)
    first.extend(0, k1, v1)

    used = cache.for_item(T, T, 1, use=True)
    assert used.extra_frames == 2  # the previous item's kept frames, for the key positions
    k2, v2 = kv(3, 500.0)
    k_out, v_out = used.extend(0, k2, v2)
    assert torch.equal(k_out, torch.cat([k2, k1[:, :2 * T]], dim=1))  # own keys first, then the context
    assert torch.equal(v_out, torch.cat([v2, v1[:, :2 * T]], dim=1))
    assert torch.equal(cache.kv[0][0], k2[:, T:2 * T]) and cache.frames == 1  # replaced by this item's

    unused = cache.for_item(0, 0, 0, use=False)
    assert unused.extra_frames == 0
    k3, v3 = kv(3, 900.0)
    k_out, v_out = unused.extend(0, k3, v3)
    assert k_out is k3 and v_out is v3  # not used: nothing appended
    assert 0 not in cache.kv and cache.frames == 0  # keep nothing: the store is emptied


def test_cache_clear():
    cache = ContextKVCache()
    cache.for_item(0, T, 1, use=False).extend(0, *kv(2, 0.0))
    assert cache.kv and cache.frames == 1
    cache.clear()
    assert cache.kv == {} and cache.frames == 0
    hook = cache.for_item(0, 0, 0, use=True)
    k, v = kv(2, 7.0)
    k_out, v_out = hook.extend(0, k, v)
    assert hook.extra_frames == 0 and k_out is k and v_out is v
