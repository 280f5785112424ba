"""VDT's spatial-temporal mask modeling (framecast/models/vdt_tasks.py): every task's given and
generated frames for several frame counts, the training mixture's frequencies, the --mask grammar,
the input rule and the loss mask, and sampling that re-fills the given region from the condition."""
import pytest
import torch

from framecast.models.vdt_tasks import (FRAME_TASKS, TASKS, block_mask, mask_input, masked_mse, parse_mask,
                                        refill, request_mask, sample_with_mask, task_mask, training_mask)
from tiny_vdt import tiny_vdt

FRAME_COUNTS = (1, 2, 3, 5, 8, 16)


def given_frames(mask: torch.Tensor) -> list[int]:
    """Frames wholly given (M = 0 everywhere); asserts every frame is wholly given or wholly generated."""
    per_frame = mask.flatten(1)
    assert bool((per_frame.all(1) | ~per_frame.any(1)).all()), "a frame task must give whole frames"
    return [f for f in range(mask.shape[0]) if not per_frame[f].any()]


@pytest.mark.parametrize("frames", FRAME_COUNTS)
def test_frame_tasks_give_the_right_frames(frames):
    g = torch.Generator().manual_seed(frames)
    shape = (frames, 4, 6)
    for name in FRAME_TASKS:
        assert task_mask(name, *shape, g).shape == shape and task_mask(name, *shape, g).dtype == torch.bool
    assert given_frames(task_mask("predict", *shape)) == list(range(frames // 2))
    assert given_frames(task_mask("backward", *shape)) == list(range(frames - frames // 2, frames))
    assert given_frames(task_mask("interpolate", *shape)) == list(range(0, frames, 4))
    assert given_frames(task_mask("interpolate", *shape, every=2)) == list(range(0, frames, 2))
    assert given_frames(task_mask("unconditional", *shape)) == []
    drawn = {tuple(given_frames(task_mask("animate", *shape, g))) for _ in range(60)}
    assert all(len(d) == 1 for d in drawn) and len(drawn) >= min(frames, 3)   # one frame, not always the same
    assert given_frames(task_mask("animate", *shape, frame=frames - 1)) == [frames - 1]
    for _ in range(5):
        given_frames(task_mask("random", *shape, g))  # whole frames


def test_vdt_table_at_16_frames():
    assert given_frames(task_mask("predict", 16, 2, 2)) == list(range(8))
    assert given_frames(task_mask("backward", 16, 2, 2)) == list(range(8, 16))
    assert given_frames(task_mask("interpolate", 16, 2, 2)) == [0, 4, 8, 12]


def test_random_frames_are_generated_with_p_08():
    g = torch.Generator().manual_seed(0)
    share = torch.stack([task_mask("random", 16, 1, 1, g) for _ in range(1000)]).float().mean()
    assert abs(float(share) - 0.8) < 0.02


@pytest.mark.parametrize("frames", FRAME_COUNTS)
def test_completion_masks_about_half_of_the_patches_on_a_middle_range(frames):
    g = torch.Generator().manual_seed(frames)
    shares = []
    for _ in range(40):
        m = task_mask("complete", frames, 32, 32, g, patch=(4, 4))
        active = [f for f in range(frames) if m[f].any()]
        assert active, "at least one frame has a region to generate"
        assert active == list(range(active[0], active[-1] + 1)) and active[0] <= 3 and frames - 1 - active[-1] <= 3
        assert all(torch.equal(m[f], m[active[0]]) for f in active)   # one region on all of them
        cells = m[active[0]].unflatten(0, (8, 4)).unflatten(2, (8, 4))  # patch-aligned: constant per 4x4 patch
        assert bool((cells.all(1).all(2) | ~cells.any(1).any(2)).all())
        shares.append(float(m[active[0]].float().mean()))
    assert 0.4 <= sum(shares) / len(shares) <= 0.55 and min(shares) > 0.2


def test_block_mask_on_small_grids():
    g = torch.Generator().manual_seed(3)
    for h, w in [(1, 1), (2, 3), (8, 8)]:
        m = block_mask(h, w, g)
        assert m.shape == (h, w) and 0 < int(m.sum()) <= max(1, round(0.5 * h * w))


def test_training_mixture_frequencies():
    g = torch.Generator().manual_seed(0)
    names = [training_mask(8, 8, 8, g)[0] for _ in range(6000)]
    assert abs(names.count("complete") / 6000 - 0.2) < 0.02
    for name in FRAME_TASKS:
        assert abs(names.count(name) / 6000 - 0.8 / 6) < 0.02, name
    name, mask = training_mask(8, 8, 8, torch.Generator().manual_seed(1), spatial_prob=1.0, patch=(2, 2))
    assert name == "complete" and mask.shape == (8, 8, 8)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError, match="valid: predict, backward, interpolate, unconditional, animate, random, "
                                         "complete"):
        task_mask("outpaint", 4, 2, 2)
    assert set(TASKS) == {*FRAME_TASKS, "complete"}


def test_mask_spec_grammar():
    m = parse_mask("box:8,4,24,12", 3, 16, 32)
    assert m.shape == (3, 16, 32) and int(m.sum()) == 3 * 16 * 8
    assert bool(m[:, 4:12, 8:24].all()) and not bool(m[:, :4].any()) and not bool(m[:, :, 24:].any())
    assert given_frames(parse_mask("frames:8-15", 16, 2, 2)) == list(range(8))
    m = parse_mask("box:0,0,2,2@1,3-4; frames:0", 6, 4, 4)
    assert bool(m[0].all()) and int(m[1].sum()) == 4 and not bool(m[2].any()) and int(m[4].sum()) == 4
    assert not bool(m[5].any())
    for bad, why in [("box:1,2,3", "four integers"), ("box:4,0,2,2", "0 <= X0 < X1"), ("frames:2-9", "outside 0..7"),
                     ("frames:x", "not a frame"), ("circle:1", "unknown part"), (" ", "empty")]:
        with pytest.raises(ValueError, match=why):
            parse_mask(bad, 8, 8, 8)


def test_request_mask_from_task_and_spec():
    assert torch.equal(request_mask("complete", 4, 8, 8, "box:0,0,4,4"), parse_mask("box:0,0,4,4", 4, 8, 8))
    assert torch.equal(request_mask("complete", 4, 8, 8, seed=3, patch=(2, 2)),
                       request_mask("complete", 4, 8, 8, seed=3, patch=(2, 2)))      # a function of the seed
    assert torch.equal(request_mask("predict", 6, 2, 2), task_mask("predict", 6, 2, 2))
    assert torch.equal(request_mask("animate", 8, 2, 2, seed=1), request_mask("animate", 8, 2, 2, seed=1))
    with pytest.raises(ValueError, match="--mask is for --task complete"):
        request_mask("predict", 4, 8, 8, "frames:0")


def test_input_rule_and_refill_keep_the_given_region_exactly():
    g = torch.Generator().manual_seed(0)
    clean, noisy = torch.randn(2, 3, 5, 4, 4, generator=g), torch.randn(2, 3, 5, 4, 4, generator=g)
    mask = task_mask("complete", 5, 4, 4, g)
    x = mask_input(clean, noisy, mask)
    m = mask[None, None].expand_as(x)
    assert torch.equal(x[~m], clean[~m]) and torch.equal(x[m], noisy[m])
    assert torch.equal(refill(noisy, clean, mask), x)
    per_clip = torch.stack([task_mask("predict", 5, 4, 4), task_mask("backward", 5, 4, 4)])  # [B, F, H, W]
    x = mask_input(clean, noisy, per_clip)
    assert torch.equal(x[0, :, :2], clean[0, :, :2]) and torch.equal(x[1, :, 3:], clean[1, :, 3:])
    with pytest.raises(ValueError, match="does not fit latents"):
        mask_input(clean, noisy, mask[:, :2])


def test_loss_ignores_given_positions():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 6, 4, 4, generator=g)
    pred = torch.randn(2, 3, 6, 4, 4, generator=g, requires_grad=True)
    mask = task_mask("predict", 6, 4, 4)                             # frames 0-2 given
    loss = masked_mse(pred, target, mask)
    torch.testing.assert_close(loss, ((pred - target)[:, :, 3:] ** 2).mean())
    loss.backward()
    assert not bool(pred.grad[:, :, :3].any()) and bool(pred.grad[:, :, 3:].all())
    moved = pred.detach().clone()
    moved[:, :, :3] += 100.0
    assert torch.equal(masked_mse(moved, target, mask), loss.detach())
    assert float(masked_mse(pred.detach(), target, torch.zeros(6, 4, 4, dtype=torch.bool))) == 0.0  # all given


# ---- sampling ------------------------------------------------------------------------------------

def _denoise(model, text):
    from framecast.models.blocks import run_model
    from framecast.models.conditioning import Conditioning

    @torch.no_grad()
    def denoise(lat, t, step=None, block=0, frames=None):
        return run_model(model, lat, torch.as_tensor(t).expand(lat.shape[0]), Conditioning(text), step=step)
    return denoise


@pytest.mark.parametrize("sampler_name", ["euler", "unipc"])
@pytest.mark.parametrize("task", ["predict", "interpolate", "complete"])
def test_sampling_keeps_the_condition_exactly(sampler_name, task):
    from framecast.schedulers.flow import make_sampler

    g = torch.Generator().manual_seed(1)
    model = tiny_vdt()
    condition, noise = torch.randn(1, 3, 6, 8, 8, generator=g), torch.randn(1, 3, 6, 8, 8, generator=g)
    mask = task_mask(task, 6, 8, 8, g, **({"patch": (2, 2)} if task == "complete" else {}))
    sampler = make_sampler(sampler_name, shift=3.0)
    sampler.set_timesteps(4)
    seen = []
    out = sample_with_mask(_denoise(model, torch.randn(1, 5, 8, generator=g)), condition, mask, noise, sampler,
                           on_step=seen.append)
    m = mask[None, None].expand_as(out)
    assert seen == [0, 1, 2, 3]
    assert torch.equal(out[~m], condition[~m])
    assert not torch.allclose(out[m], condition[m]) and torch.isfinite(out).all()


def test_unconditional_task_is_plain_sampling():
    from framecast.schedulers.flow import make_sampler
    from framecast.schedulers.full import denoise_full

    g = torch.Generator().manual_seed(2)
    denoise = _denoise(tiny_vdt(), torch.randn(1, 5, 8, generator=g))
    noise, condition = torch.randn(1, 3, 4, 8, 8, generator=g), torch.randn(1, 3, 4, 8, 8, generator=g)

    def make():
        s = make_sampler("euler", shift=3.0)
        s.set_timesteps(3)
        return s
    out = sample_with_mask(denoise, condition, task_mask("unconditional", 4, 8, 8), noise, make())
    assert torch.equal(out, denoise_full(denoise, noise, make))
