"""LatteModel against diffusers' LatteTransformer3DModel on tiny random models (model-zoo §2)."""
import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import LatteTransformer3DModel  # noqa: E402

from framecast.models.conditioning import Conditioning  # noqa: E402
from framecast.models.latte import LatteModel  # noqa: E402

TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2,
            activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False,
            norm_eps=1e-6, caption_channels=12, video_length=5)
S = 7  # text tokens


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """randn · 0.2 everywhere (diffusers leaves some tables at their init); no weight is default."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def pair(**over):
    torch.manual_seed(0)
    ref = LatteTransformer3DModel(**{**TINY, **over}).eval()
    _randomize(ref, 1)
    ours = LatteModel(**dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def inputs(b, f, h, w, seed=2, caption=12, t=None):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(b, 4, f, h, w, generator=g)
    text = torch.randn(b, S, caption, generator=g)
    t = torch.tensor([999, 431][:b]) if t is None else t
    return lat, t, text


def reference(ref, lat, t, text, **kw):
    with torch.no_grad():
        return ref(lat, t, text, return_dict=False, **kw)[0]


CASES = {  # name: (model overrides, (B, F, H, W))
    "odd-frames": ({}, (1, 5, 8, 8)),
    "batch-2": ({}, (2, 5, 8, 8)),
    "non-square": ({"video_length": 3}, (2, 3, 6, 10)),
    "geglu-affine-large-sample": ({"activation_fn": "geglu", "norm_elementwise_affine": True, "sample_size": 128,
                                   "video_length": 3}, (1, 3, 8, 8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_equal_to_diffusers(name):
    over, (b, f, h, w) = CASES[name]
    ref, ours = pair(**over)
    lat, t, text = inputs(b, f, h, w)
    want = reference(ref, lat, t, text)
    with torch.no_grad():
        got = ours(lat, t, text)
    assert got.shape == want.shape == (b, 8, f, h, w)
    diff = (got - want).abs().max().item()
    print(f"{name}: max abs diff {diff:.2e} (|ref| max {want.abs().max().item():.2f})")
    assert diff <= 1e-5


@pytest.mark.parametrize("temporal", [False, True])
def test_image_mode_one_frame(temporal):
    """F = 1: no temporal position; with enable_temporal_attentions=False the temporal blocks are skipped."""
    ref, ours = pair(video_length=1)
    lat, t, text = inputs(2, 1, 8, 8)
    want = reference(ref, lat, t, text, enable_temporal_attentions=temporal)
    with torch.no_grad():
        got = ours(lat, t, text, enable_temporal_attentions=temporal)
    diff = (got - want).abs().max().item()
    print(f"image mode (temporal={temporal}): max abs diff {diff:.2e}")
    assert diff <= 1e-5


def test_state_dict_keys_are_diffusers_and_unique():
    ref, ours = pair()
    assert list(ours.state_dict()) == list(ref.state_dict())  # same keys, same order, nothing twice
    assert len(ours.blocks) == TINY["num_layers"]
    assert not list(ours.blocks.parameters())  # the pairs only reach the diffusers modules
    # a deep copy keeps each pair bound to its own copy's modules
    twin = copy.deepcopy(ours)
    with torch.no_grad():
        twin.transformer_blocks[0].scale_shift_table.add_(1.0)
    lat, t, text = inputs(1, 5, 8, 8)
    with torch.no_grad():
        assert not torch.equal(twin(lat, t, text), ours(lat, t, text))
        assert torch.equal(ours(lat, t, text), pair()[1](lat, t, text))


def test_per_frame_timesteps():
    """t [B, F]: each frame takes its own modulation. Equal t everywhere = the [B] call (to GEMM
    rounding: the embedder runs on B·F rows instead of B); a frame at another level changes the output."""
    _, ours = pair()
    lat, _, text = inputs(2, 5, 8, 8)
    t = torch.tensor([999, 431])
    with torch.no_grad():
        shared = ours(lat, t, text)
        assert (ours(lat, t[:, None].expand(2, 5), text) - shared).abs().max().item() <= 1e-5
        t_bf = t[:, None].repeat(1, 5)
        t_bf[:, 2] = 100
        mixed = ours(lat, t_bf, text)
    assert not torch.allclose(mixed, shared)


def test_per_frame_timesteps_match_per_frame_modulation():
    """With the temporal blocks off, frames are independent: frame k of a [B, F] call equals a
    one-frame call at t[:, k] (no temporal position is added for F = 1 and none reaches spatial blocks)."""
    _, ours = pair()
    lat, _, text = inputs(1, 3, 8, 8)
    t_bf = torch.tensor([[900, 500, 10]])
    with torch.no_grad():
        full = ours(lat, t_bf, text, enable_temporal_attentions=False)
        for k in range(3):
            one = ours(lat[:, :, k:k + 1], t_bf[:, k], text, enable_temporal_attentions=False)
            assert (full[:, :, k:k + 1] - one).abs().max().item() <= 1e-5


class AppendContext:
    """A kv_hook that appends fixed context K/V (token-major, t-major: [B, E·h·w, N, Hd])."""

    def __init__(self, kv):
        self.kv, self.calls = kv, []

    def extend(self, layer_id, k_BSNH, v_BSNH):
        self.calls.append((layer_id, tuple(k_BSNH.shape)))
        k, v = self.kv[layer_id]
        return torch.cat([k_BSNH, k], dim=1), torch.cat([v_BSNH, v], dim=1)


def with_hook(hook):
    def prepare(ctx):
        ctx.kv_hook = hook
        return ctx
    return prepare


def test_kv_hook_extends_temporal_attention():
    """The hook is called once per pair (layer_id = pair index) with the pass's temporal K/V in
    token-major layout; no context changes nothing, context changes every frame."""
    from framecast.models.blocks import run_model

    _, ours = pair()
    lat, t, text = inputs(1, 3, 8, 8)
    b, hw, n, hd = 1, 16, 2, 8
    empty = AppendContext({i: (torch.zeros(b, 0, n, hd),) * 2 for i in range(2)})
    g = torch.Generator().manual_seed(5)
    context = AppendContext({i: (torch.randn(b, 2 * hw, n, hd, generator=g),) * 2 for i in range(2)})
    with torch.no_grad():
        plain = ours(lat, t, text)
        same = run_model(ours, lat, t, Conditioning(text), prepare=with_hook(empty))
        other = run_model(ours, lat, t, Conditioning(text), prepare=with_hook(context))
    assert torch.equal(same, plain)
    assert empty.calls == [(0, (b, 3 * hw, n, hd)), (1, (b, 3 * hw, n, hd))]
    assert all((other[:, :, k] - plain[:, :, k]).abs().max() > 1e-4 for k in range(3))


def test_kv_hook_context_equals_joint_attention():
    """The hook's layout is Wan's: context K/V of frames the pass does not hold, appended token-major,
    act exactly like those frames' keys in a joint temporal attention. One pair, temporal part only:
    attention of frames 0..1 over keys of frames 0..3 (2..3 through the hook) equals frames 0..1 of
    the 4-frame attention when frames 2..3 are the same tokens."""
    _, ours = pair(num_layers=1)
    blk, pair_ = ours.temporal_transformer_blocks[0], ours.blocks[0]
    g = torch.Generator().manual_seed(3)
    b, f, hw, d = 1, 4, 16, 16
    x = torch.randn(b, f * hw, d, generator=g)
    mod = torch.randn(b, f, 6, d, generator=g) * 0.1
    from framecast.models.latte import LatteContext

    def ctx_for(frames, hook=None):
        return LatteContext(mod_BF6D=mod[:, :frames], temb_BFD=None, text_BSD=None, grid=(frames, 4, 4),
                            frame_pos=None, kv_hook=hook)

    class Record:
        def extend(self, layer_id, k, v):
            self.kv = (k[:, 2 * hw:], v[:, 2 * hw:])  # frames 2..3, token-major
            return k, v

    class Give:
        def __init__(self, kv):
            self.kv = kv

        def extend(self, layer_id, k, v):
            return torch.cat([k, self.kv[0]], dim=1), torch.cat([v, self.kv[1]], dim=1)

    rec = Record()
    with torch.no_grad():
        full = pair_.temporal(blk, x, ctx_for(4, rec))
        part = pair_.temporal(blk, x[:, :2 * hw], ctx_for(2, Give(rec.kv)))
    assert (part - full[:, :2 * hw]).abs().max().item() <= 1e-6


def test_place_sets_temporal_positions():
    """place() moves the pass's frames on the time axis: frames at positions 1..3 of a 5-frame
    pass see the temporal embedding of those positions (the output differs from positions 0..2)."""
    _, ours = pair()
    lat, t, text = inputs(1, 3, 8, 8)
    from framecast.models.blocks import run_model

    def at(pos):
        def prepare(ctx):
            return ours.place(ctx, pos, pos)
        return prepare

    with torch.no_grad():
        base = run_model(ours, lat, t, Conditioning(text), prepare=at(torch.arange(3)))
        assert torch.equal(base, ours(lat, t, text))
        moved = run_model(ours, lat, t, Conditioning(text), prepare=at(torch.arange(1, 4)))
    assert not torch.allclose(base, moved)
    with pytest.raises(ValueError, match="query frame positions"):
        ours.place(ours.embed(lat, t, Conditioning(text))[1], torch.arange(2), torch.arange(2))


def test_bf16_cast_close_to_fp32():
    _, ours = pair()
    lat, t, text = inputs(1, 5, 8, 8)
    with torch.no_grad():
        want = ours(lat, t, text)
        got = copy.deepcopy(ours).cast(torch.bfloat16)(lat, t, text).float()
    assert torch.allclose(got, want, atol=0.15, rtol=0.05), (got - want).abs().max()


def test_rejects_what_it_does_not_implement():
    with pytest.raises(NotImplementedError, match="norm_type"):
        LatteModel(**{**TINY, "norm_type": "layer_norm"})
    with pytest.raises(TypeError, match="unknown config key"):
        LatteModel(**TINY, bogus=1)


def test_latte_1_preset_builds():
    """configs/latte-1.yaml: a LatteModel of Latte-1's shape (built on the meta device: no memory)."""
    from framecast.config import load_config
    from framecast.engine.components import new_model

    cfg = load_config("latte-1")
    assert (cfg.model.kind, cfg.sampler.name, cfg.text.kind, cfg.vae.kind) == ("latte", "ddim", "t5", "sd")
    with torch.device("meta"):
        model = new_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    print(f"Latte-1-shaped: {n / 1e6:.0f}M parameters")
    assert isinstance(model, LatteModel) and len(model.blocks) == 28
    assert model.transformer_blocks[0].attn2.to_k.in_features == 1152
    assert model.proj_out.out_features == 2 * 2 * 8
    # 28 pairs = 56 blocks of width 1152 (diffusers counts pairs, the original counts blocks: model-zoo §2)
    assert 1.0e9 <= n <= 1.1e9


def test_from_model_config_rejects_tubelets():
    from framecast.config import load_config
    from framecast.engine.components import new_model

    with pytest.raises(ValueError, match="patch_size"):
        new_model(load_config("latte-1", ["model.patch_size=[2,2,2]"]))
