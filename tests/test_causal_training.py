"""The play model's training layout is NFD's inference, exactly; distillation and the LR schedule."""
import math

import numpy as np
import torch
from torch import nn

from framecast.config import load_config
from framecast.engine.causal_cache import CausalKVCache
from framecast.engine.text import BuiltinTextEncoder
from framecast.models.attention import TeacherForcing, attention
from framecast.models.wan import WanModel
from framecast.schedulers.nfd import forward_on_cache
from framecast.world.causal_training import (distill_loss, draft_mask, predict_on_context, share_in_draft,
                                             teacher_forcing_mask)
from framecast.world.train import TrainOptions, lr_at, train

SMALL = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=16",
         "model.ffn_dim=64", "model.text_dim=16", "model.freq_dim=16"]


def nets(seed=0):
    torch.manual_seed(seed)
    model = WanModel(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, in_channels=3,
                     out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, num_actions=5)
    with torch.no_grad():  # the action table starts at zero: make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return nn.ModuleDict({"transformer": model.eval(), "text_encoder": BuiltinTextEncoder(16, 4).eval()})


def test_teacher_forcing_attention_equals_its_dense_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2 * 5 * 4, 2, 8, generator=g) for _ in range(3))  # 5 frames of 4 tokens, twice
    dense = attention(q, k, v, mask=teacher_forcing_mask(5, 4))
    assert torch.allclose(attention(q, k, v, mask=TeacherForcing(4)), dense, atol=1e-6)
    m = teacher_forcing_mask(3, 1)
    assert m.int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                [0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1]]


@torch.no_grad()
def test_training_prediction_equals_denoising_on_the_nfd_cache():
    """Frame i's velocity in the training layout == NFD's: commit frames < i one by one (at their
    own context noise), then denoise frame i on the cache (fp32, 1e-5)."""
    n = nets()
    model = n["transformer"]
    g = torch.Generator().manual_seed(1)
    f = 4
    ctx = torch.randn(1, 3, f, 8, 8, generator=g)
    x = torch.randn(1, 3, f, 8, 8, generator=g)
    sigma_ctx = torch.rand(1, f, generator=g) * 0.1
    sigma = torch.rand(1, f, generator=g)
    actions = torch.tensor([[0, 4, 4, 1]])
    tokens = torch.tensor([[1, 0, 0, 0]])
    text = n["text_encoder"](tokens)
    trained = predict_on_context(n, ctx, sigma_ctx, x, sigma, tokens, actions)

    cache = CausalKVCache(window=32)
    for i in range(f):
        hook = cache.reader()
        out = forward_on_cache(model, x[:, :, i:i + 1], sigma[:, i:i + 1] * 1000, text, actions[:, i:i + 1], hook)
        assert torch.allclose(out, trained[:, :, i:i + 1], atol=1e-5), f"frame {i}"
        hook = cache.writer()
        forward_on_cache(model, ctx[:, :, i:i + 1], sigma_ctx[:, i:i + 1] * 1000, text, actions[:, i:i + 1], hook)
        cache.commit(hook, frames=1)


def test_draft_mask_without_a_draft_is_teacher_forcing():
    masks = draft_mask(3, 2, torch.tensor([3, 1]))
    assert torch.equal(masks[0, 0], teacher_forcing_mask(3, 2))
    frame = draft_mask(3, 1, torch.tensor([1]))[0, 0].int().tolist()
    assert frame == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                     [0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]]  # noisy_2 sees noisy_1, not ctx_1
    assert share_in_draft(torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]]), torch.tensor([1, 4])).tolist() == [
        [1, 2, 2, 2], [1, 2, 3, 4]]


@torch.no_grad()
def test_draft_layout_equals_a_joint_draft_on_the_nfd_cache():
    """Clips with a joint draft from frame s: frames >= s in the training layout == NFD's joint
    drafting pass (frames s.. as one chunk at one σ on a cache of the committed frames < s), and
    frames < s still == plain NFD. Clips with different starts and one without a draft (start F:
    it runs apart from the drafted clips, on the mask-free path) in one batch (fp32, 1e-5)."""
    n = nets()
    model = n["transformer"]
    g = torch.Generator().manual_seed(2)
    f, starts = 4, torch.tensor([1, 4, 2])
    ctx = torch.randn(3, 3, f, 8, 8, generator=g)
    x = torch.randn(3, 3, f, 8, 8, generator=g)
    sigma_ctx = torch.rand(3, f, generator=g) * 0.1
    sigma = share_in_draft(torch.rand(3, f, generator=g), starts)
    actions = torch.tensor([[0, 4, 4, 4], [3, 3, 0, 1], [2, 2, 1, 1]])
    tokens = torch.tensor([[1, 0, 0, 0]] * 3)
    trained = predict_on_context(n, ctx, sigma_ctx, x, sigma, tokens, actions, starts)
    plain = predict_on_context(n, ctx, sigma_ctx, x, sigma, tokens, actions)
    assert not torch.allclose(trained[[0, 2]], plain[[0, 2]], atol=1e-3)
    for b, s in enumerate(starts.tolist()):
        text = n["text_encoder"](tokens[b:b + 1])
        cache = CausalKVCache(window=32)
        for i in range(s):
            out = forward_on_cache(model, x[b:b + 1, :, i:i + 1], sigma[b:b + 1, i:i + 1] * 1000, text,
                                   actions[b:b + 1, i:i + 1], cache.reader())
            assert torch.allclose(out, trained[b:b + 1, :, i:i + 1], atol=1e-5), f"clip {b} frame {i}"
            hook = cache.writer()
            forward_on_cache(model, ctx[b:b + 1, :, i:i + 1], sigma_ctx[b:b + 1, i:i + 1] * 1000, text,
                             actions[b:b + 1, i:i + 1], hook)
            cache.commit(hook, frames=1)
        if s == f:
            continue
        drafted = forward_on_cache(model, x[b:b + 1, :, s:], sigma[b:b + 1, s:] * 1000, text,
                                   actions[b:b + 1, s:], cache.reader())
        assert torch.allclose(drafted, trained[b:b + 1, :, s:], atol=1e-5), f"clip {b} draft"


def test_distillation_target_is_the_teachers_substeps():
    """With student = teacher and one substep, the target velocity IS the student's own prediction,
    so the loss is 0; with more substeps it is not."""
    teacher = nets(0)
    x0 = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    actions, tokens = torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 0, 0, 0]] * 2)
    grid = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    same = distill_loss(teacher, teacher, x0, actions, tokens, grid, torch.Generator().manual_seed(0), 0.1, 1)
    assert same.item() < 1e-10
    more = distill_loss(teacher, teacher, x0, actions, tokens, grid, torch.Generator().manual_seed(0), 0.1, 4)
    assert more.item() > 1e-6
    drafts = distill_loss(teacher, teacher, x0, actions, tokens, grid, torch.Generator().manual_seed(0), 0.1, 1,
                          draft_prob=1.0)
    assert drafts.item() < 1e-10


def test_lr_warms_up_then_decays_by_cosine():
    opt = TrainOptions(lr=1e-3, warmup=10, lr_final=0.1)
    assert math.isclose(lr_at(0, opt, 100), 1e-4) and math.isclose(lr_at(9, opt, 100), 1e-3)
    assert math.isclose(lr_at(99, opt, 100), 1e-4)
    mid = lr_at(10 + 89 // 2, opt, 100)
    assert 5.4e-4 < mid < 5.6e-4  # halfway down the cosine from 1e-3 to 1e-4
    assert lr_at(50, TrainOptions(lr=1e-3, warmup=10, lr_final=1.0), 100) == 1e-3


def test_play_training_and_distillation_lower_their_losses(tmp_path):
    cfg = load_config("tiny-play", SMALL)
    teacher = train(cfg, steps=30, batch=4, frames=4, seed=0, out=tmp_path / "teacher", progress=False,
                    options=TrainOptions(lr=2e-3, warmup=5, play=True, draft_prob=0.5))
    losses = teacher["losses"]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    student = train(cfg, steps=20, batch=4, frames=4, seed=1, out=tmp_path / "student", progress=False,
                    options=TrainOptions(lr=1e-3, warmup=2, play=True, distill_from=str(tmp_path / "teacher"),
                                         substeps=2, draft_prob=0.5))
    d = student["losses"]
    assert all(np.isfinite(d)) and np.mean(d[-5:]) < np.mean(d[:5])


def test_foreground_weights_look_only_at_the_previous_frame():
    from framecast.world.causal_training import foreground_weights

    x0 = -torch.ones(1, 3, 3, 16, 16)
    x0[0, 0, 1, 8, 8] = 1.0  # one red pixel in frame 1
    w = foreground_weights(x0, 4.0, reach=2)
    assert w.shape == (1, 1, 3, 16, 16)
    assert torch.equal(w[:, :, :2], torch.ones(1, 1, 2, 16, 16))  # frames 0 and 1 see no object before them
    assert w[0, 0, 2, 8, 8] == 5.0 and w[0, 0, 2, 6, 10] == 5.0 and w[0, 0, 2, 5, 8] == 1.0  # frame 2: ±2 px
    assert torch.equal(foreground_weights(x0, 0.0), torch.ones(1, 1, 3, 16, 16))
