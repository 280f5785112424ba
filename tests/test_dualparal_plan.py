"""The DualParal plan, without a model: coverage, step order, tick layout, context, K/V flags."""
import itertools

import pytest

from framecast.schedulers.dualparal import Block, DualParalPlan, Tick, WorkItem, make_plan

GRID = [(L, N, C, T) for L in range(1, 41) for N in range(1, 7) for C in range(N + 1) for T in range(1, 6)]


def check_plan(plan: DualParalPlan) -> None:
    L, N, C, T = plan.latent_frames, plan.N, plan.C, plan.T
    blocks = plan.blocks
    B = len(blocks)

    # blocks tile [0, L) exactly once, in order, all N long except possibly the last
    assert blocks[0].start == 0 and blocks[-1].stop == L
    assert [b.index for b in blocks] == list(range(B))
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    assert all(len(b) == N for b in blocks[:-1]) and 1 <= len(blocks[-1]) <= N
    assert B == -(-L // N)

    assert len(plan.ticks) == B + T - 1
    steps_of = {f: [] for f in range(L)}  # latent frame -> steps in execution order
    seen = {k: [] for k in range(B)}  # block -> ticks it ran in
    live_counts = []
    for i, tick in enumerate(plan.ticks):
        assert tick.index == i
        ks = [it.block.index for it in tick.items]
        live_counts.append(len(ks))
        assert len(set(ks)) == len(ks), "a block twice in one tick"
        assert ks == sorted(ks, reverse=True), "items must go newest block first"
        assert all(a - b == 1 for a, b in zip(ks, ks[1:])), "live blocks are contiguous"
        for prev, it in zip((None,) + tick.items, tick.items):
            k = it.block.index
            assert it.block is blocks[k]
            assert it.step == i - k
            if prev is not None:
                assert it.step - prev.step == 1, "neighbours one step apart, older one cleaner"
            seen[k].append(i)
            for f in it.block.frames:
                steps_of[f].append(it.step)
            # left context: the last min(C, len) frames of block k - 1, right before this block
            if k == 0:
                assert it.context == range(0, 0)
            else:
                left = blocks[k - 1]
                assert it.context == range(left.stop - min(C, len(left)), left.stop)
                assert it.context.stop == it.block.start
            assert it.frames == range(it.block.start - len(it.context), it.block.stop)
            assert it.query_frames == len(it.context) + len(it.block)
            # K/V: keep the first min(C, len) own frames; use them only right after block k + 1
            assert it.keep_kv == min(C, len(it.block))
            assert it.use_kv == (prev is not None and prev.block.index == k + 1)
            if it.use_kv:
                assert it.right_context == range(prev.block.start, prev.block.start + prev.keep_kv)
            else:
                assert len(it.right_context) == 0
            assert it.key_frames == it.query_frames + len(it.right_context)
        assert [b.index for b in tick.finished] == [k for k in ks if i - k == T - 1]

    # every frame gets exactly T steps, in order 0..T-1; every block runs in T consecutive ticks
    assert all(s == list(range(T)) for s in steps_of.values())
    assert all(seen[k] == list(range(k, k + T)) for k in range(B))
    # fill and drain: 1, 2, .., min(B, T), .., 2, 1
    top = min(B, T)
    assert live_counts == [min(i + 1, top, B + T - 1 - i) for i in range(B + T - 1)]
    assert max(live_counts) == top
    # each block finishes exactly once, after its T-th step
    finished = [b.index for t in plan.ticks for b in t.finished]
    assert finished == list(range(B))
    assert list(plan.iter_items()) == [it for t in plan.ticks for it in t.items]

    s = plan.summary()
    assert (s["ticks"], s["blocks"], s["block_passes"], s["max_live_blocks"]) == (B + T - 1, B, B * T, top)
    assert sum(live_counts) == B * T


def test_plan_invariants_over_grid():
    for L, N, C, T in GRID:
        check_plan(make_plan(L, N, C, T))


def test_plan_wan_1025_frames():
    """The benchmark case: 1,025 video frames = 257 latent frames, N = C = 8, T = 50."""
    plan = make_plan(257, 8, 8, 50)
    check_plan(plan)
    s = plan.summary()
    assert (s["blocks"], s["ticks"], s["block_passes"], s["max_live_blocks"], s["last_block_frames"]) == (33, 82, 1650, 33, 1)


def test_small_plan_literal():
    """A hand-written plan: L=10, N=4, C=2, T=3 -> blocks [0,4) [4,8) [8,10)."""
    plan = make_plan(10, 4, 2, 3)
    b0, b1, b2 = Block(0, 0, 4), Block(1, 4, 8), Block(2, 8, 10)
    assert plan.blocks == (b0, b1, b2)
    E = range(0, 0)
    assert plan.ticks[2] == Tick(2, (
        WorkItem(b2, 0, range(6, 8), 2, False, E),
        WorkItem(b1, 1, range(2, 4), 2, True, range(8, 10)),
        WorkItem(b0, 2, E, 2, True, range(4, 6)),
    ), (b0,))
    assert plan.ticks[4] == Tick(4, (WorkItem(b2, 2, range(6, 8), 2, False, E),), (b2,))


def test_no_extra_context_frames():
    """Unlike the reference code, the plan covers exactly the requested latent frames."""
    for L, N, C in itertools.product((1, 7, 8, 9, 40, 257), (1, 4, 8), (0, 1, 4)):
        if C <= N:
            plan = make_plan(L, N, C, 2)
            assert sum(len(b) for b in plan.blocks) == L
            assert min(f for it in plan.iter_items() for f in it.frames) == 0
            assert max(f for it in plan.iter_items() for f in it.frames) == L - 1


def test_plan_is_frozen():
    plan = make_plan(9, 4, 2, 2)
    with pytest.raises(Exception):
        plan.ticks[0].items[0].step = 5  # type: ignore[misc]


@pytest.mark.parametrize("args, field", [
    ((0, 4, 2, 3), "latent_frames"), ((-3, 4, 2, 3), "latent_frames"), ((10, 0, 0, 3), "N"),
    ((10, 4, 5, 3), "C"), ((10, 4, -1, 3), "C"), ((10, 4, 2, 0), "T"), ((10.0, 4, 2, 3), "latent_frames"),
    ((10, True, 0, 3), "N"), ((10, 4, 2, "50"), "T"),
])
def test_validation(args, field):
    with pytest.raises(ValueError) as err:
        make_plan(*args)
    msg = str(err.value)
    assert msg.startswith(field) and "\n" not in msg
    assert ">=" in msg or "in [" in msg
