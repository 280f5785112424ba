"""Training layouts of the long-video schedules (framecast/world/layouts.py): DualParal's window
on the sampler's grid, as the DualParal plan and worker lay it out."""
import pytest
import torch

from framecast.config import load_config
from framecast.engine.components import sampler_factory
from framecast.schedulers.dualparal import make_plan
from framecast.world.layouts import dualparal_sigmas
from framecast.world.train import TrainOptions, sample_sigmas


def test_dualparal_layout_matches_the_plan_on_the_sampler_grid():
    cfg = load_config("tiny")
    grid = sampler_factory(cfg)().sigmas
    T, C, N = len(grid) - 1, 4, 8
    sig = dualparal_sigmas(torch.Generator().manual_seed(0), 512, 16, grid, C, N)
    plan = make_plan(40, N, C, T)
    for tick in plan.ticks:  # every item with both neighbours: the levels its window frames sit at
        for item in tick.items:
            if not item.context or not item.use_kv:
                continue
            s = item.step
            want = [float(grid[s + 1])] * C + [float(grid[s])] * N + [float(grid[s - 1])] * C
            assert any(torch.allclose(row, torch.tensor(want)) for row in sig), (s, want)
    steps = {float(row[C]) for row in sig}
    assert steps == {float(g) for g in grid[:-1]}  # every step drawn
    first = sig[sig[:, C] == 1.0]  # step 0: the newer block has not started, its frames are noise
    assert (first[:, C + N:] == 1.0).all() and torch.allclose(first[:, :C], grid[1].expand_as(first[:, :C]))
    last = sig[sig[:, C] == grid[T - 1]]
    assert (last[:, :C] == 0).all()  # the older neighbour is finished at the block's last step


def test_clips_shorter_than_the_window_are_refused_and_longer_ones_padded_with_noise():
    grid = torch.tensor([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="at least context \\+ block = 12"):
        dualparal_sigmas(torch.Generator(), 2, 11, grid, 4, 8)
    sig = dualparal_sigmas(torch.Generator().manual_seed(1), 64, 20, grid, 4, 8)
    assert (sig[:, 16:] == 1.0).all()


def test_sample_sigmas_lays_out_the_requested_share():
    grid = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    opt = TrainOptions(dualparal_prob=0.5, dualparal_context=2, dualparal_block=4)
    sig = sample_sigmas(torch.Generator().manual_seed(0), 400, 8, opt, grid=grid)
    on_grid = torch.isin(sig, torch.cat([grid, torch.ones(1)])).all(dim=1)
    laid = on_grid & (sig[:, :2] <= sig[:, 2:3]).all(1) & (sig[:, 2:6] == sig[:, 2:3]).all(1)
    assert 0.4 < laid.float().mean() < 0.6
    short = sample_sigmas(torch.Generator().manual_seed(0), 8, 5, opt, grid=grid)  # too short: unchanged
    assert torch.equal(short, sample_sigmas(torch.Generator().manual_seed(0), 8, 5, TrainOptions(), grid=grid))


def test_train_refuses_a_dualparal_layout_longer_than_its_clips(tmp_path):
    from framecast.world.train import train

    with pytest.raises(ValueError, match="--dualparal-prob needs clips of at least C \\+ N = 12 frames"):
        train(load_config("tiny"), 1, 2, 8, 0, tmp_path, options=TrainOptions(dualparal_prob=0.5), progress=False)
    assert not any(tmp_path.iterdir())  # refused before anything was written
