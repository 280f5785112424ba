"""Attention backends against an explicit softmax(QK^T)V reference."""
import math
import sys
import types

import pytest
import torch

from framecast.models import attention as attn_mod
from framecast.models.attention import AttentionRuntime, BlockCausal, attention, flash_attention, sdpa_attention


def reference(q_BLNH, k_BSNH, v_BSNH, mask_LS=None, scale=None):
    """softmax(q k^T * scale) v in float64; mask_LS True = may attend."""
    q, k, v = (x.double() for x in (q_BLNH, k_BSNH, v_BSNH))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits_BNLS = torch.einsum("blnh,bsnh->bnls", q, k) * scale
    if mask_LS is not None:
        logits_BNLS = logits_BNLS.masked_fill(~mask_LS, float("-inf"))
    return torch.einsum("bnls,bsnh->blnh", logits_BNLS.softmax(-1), v).to(q_BLNH.dtype)


def dense_block_causal(q_frames, k_frames, frame_tokens, q_start_frame=0):
    """[L, S] bool: query frame (q_start_frame + i) sees key frames <= it."""
    qf = torch.arange(q_frames).repeat_interleave(frame_tokens) + q_start_frame
    kf = torch.arange(k_frames).repeat_interleave(frame_tokens)
    return kf[None, :] <= qf[:, None]


def qkv(L=12, S=12, N=2, H=8, B=2, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    mk = lambda n: torch.randn(B, n, N, H, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return mk(L), mk(S), mk(S)


def test_sdpa_matches_reference():
    q, k, v = qkv(L=10, S=14)
    torch.testing.assert_close(attention(q, k, v), reference(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, scale=0.3), reference(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)
    # a dense boolean mask is passed through
    m = torch.rand(10, 14, generator=torch.Generator().manual_seed(1)) > 0.3
    m[:, 0] = True
    torch.testing.assert_close(attention(q, k, v, mask=m), reference(q, k, v, m), atol=1e-5, rtol=1e-5)


def test_block_causal_matches_dense_mask():
    q, k, v = qkv(L=12, S=12)  # 3 frames of 4 tokens
    got = attention(q, k, v, mask=BlockCausal(frame_tokens=4))
    want = reference(q, k, v, dense_block_causal(3, 3, 4))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - attention(q, k, v)).abs().max() > 1e-3  # the mask matters


def test_block_causal_query_offset_against_longer_keys():
    q, k, v = qkv(L=8, S=20)  # queries = frames 3, 4 of 5 key frames
    got = attention(q, k, v, mask=BlockCausal(frame_tokens=4, q_start_frame=3))
    want = reference(q, k, v, dense_block_causal(2, 5, 4, q_start_frame=3))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # q_start_frame=2 leaves the last key frame unseen
    got2 = attention(q, k[:, :16], v[:, :16], mask=BlockCausal(frame_tokens=4, q_start_frame=2))
    torch.testing.assert_close(got2, reference(q, k[:, :16], v[:, :16], dense_block_causal(2, 4, 4, 2)),
                               atol=1e-5, rtol=1e-5)


def test_windowed_block_causal_matches_dense_mask():
    """window=W: query frame f sees key frames f-W .. f only (NFD's sliding window inside a chunk)."""
    q, k, v = qkv(L=12, S=24)  # queries = frames 3, 4, 5 of 6 key frames
    mask = dense_block_causal(3, 6, 4, q_start_frame=3)
    qf = torch.arange(3).repeat_interleave(4) + 3
    kf = torch.arange(6).repeat_interleave(4)
    mask &= kf[None, :] >= qf[:, None] - 2
    got = attention(q, k, v, mask=BlockCausal(frame_tokens=4, q_start_frame=3, window=2))
    torch.testing.assert_close(got, reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    unwindowed = attention(q, k, v, mask=BlockCausal(frame_tokens=4, q_start_frame=3))
    assert (got - unwindowed).abs().max() > 1e-3  # the window matters
    # a window at least as long as the history changes nothing
    wide = attention(q, k, v, mask=BlockCausal(frame_tokens=4, q_start_frame=3, window=5))
    torch.testing.assert_close(wide, unwindowed, atol=0, rtol=0)


def test_block_causal_errors():
    q, k, v = qkv(L=10, S=12)
    with pytest.raises(ValueError, match="multiple of frame_tokens"):
        attention(q, k, v, mask=BlockCausal(frame_tokens=4))
    q, k, v = qkv(L=8, S=8)
    with pytest.raises(ValueError, match="needs 12 keys"):
        attention(q, k, v, mask=BlockCausal(frame_tokens=4, q_start_frame=1))


def test_unknown_backend_lists_names():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'") as e:
        attention(q, k, v, backend="xformers")
    assert "flash" in str(e.value) and "sdpa" in str(e.value)


@pytest.fixture
def fake_flash(monkeypatch):
    """A stand-in `flash_attn` with flash-attn's signature and (B, L, N, H) layout."""
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        assert dropout_p == 0.0 and causal is False
        assert q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:] and k.shape == v.shape
        calls.append((tuple(q.shape), tuple(k.shape)))
        return reference(q, k, v, scale=softmax_scale)

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    return calls


def test_flash_function_matches_sdpa(fake_flash):
    q, k, v = qkv(L=12, S=20)
    torch.testing.assert_close(flash_attention(q, k, v), sdpa_attention(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flash_attention(q, k, v, scale=0.2), sdpa_attention(q, k, v, scale=0.2),
                               atol=1e-5, rtol=1e-5)
    for mask in (BlockCausal(4), BlockCausal(4, q_start_frame=2)):
        kk, vv = (k, v) if mask.q_start_frame else (k[:, :12], v[:, :12])
        torch.testing.assert_close(flash_attention(q, kk, vv, mask=mask), sdpa_attention(q, kk, vv, mask=mask),
                                   atol=1e-5, rtol=1e-5)
    assert len(fake_flash) == 2 + 3 + 3  # block-causal: one call per query frame
    with pytest.raises(ValueError, match="dense masks"):
        flash_attention(q, k, v, mask=torch.ones(12, 20, dtype=torch.bool))


def test_flash_on_cpu_falls_back_to_sdpa(fake_flash):
    q, k, v = qkv()
    with pytest.warns(RuntimeWarning, match="CUDA"):
        got = attention(q, k, v, backend="flash")
    assert torch.equal(got, attention(q, k, v))
    assert fake_flash == []  # the stand-in was never called


def test_flash_missing_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ImportError
    q, k, v = qkv()
    with pytest.warns(RuntimeWarning, match="not importable"):
        assert torch.equal(attention(q, k, v, backend="flash"), attention(q, k, v))


def test_registry_lists_the_backends_and_sdpa_runs_here():
    """(What importing the registry loads is checked in test_imports.py, in a fresh interpreter.)"""
    assert set(attn_mod.BACKENDS) >= {"sdpa", "flash"}
    assert attn_mod.available_backends()["sdpa"] == "yes"


def _has_flash():
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_flash(), reason="needs CUDA and flash_attn")
def test_flash_vs_sdpa_bf16_cuda():
    q, k, v = qkv(L=4 * 64, S=6 * 64, N=4, H=64, dtype=torch.bfloat16, device="cuda")
    cases = [(None, k, v), (BlockCausal(64), k[:, :256], v[:, :256]), (BlockCausal(64, q_start_frame=2), k, v)]
    for mask, kk, vv in cases:
        got = attention(q, kk, vv, mask=mask, backend="flash")
        want = attention(q, kk, vv, mask=mask, backend="sdpa")
        torch.testing.assert_close(got.float(), want.float(), atol=1.5e-2, rtol=1e-2)


def test_model_sends_call_metadata_to_the_backend(monkeypatch):
    """A registered backend receives, for every layer, self- and cross-attention with the token
    grid, the layer index and the step; the model runs through the block loop with that backend."""
    from framecast.engine.denoise import Denoiser
    from framecast.models.attention import AttentionCall, Backend
    from framecast.models.wan import WanModel

    calls = []

    def recording(q, k, v, *, mask=None, scale=None, meta=None):
        calls.append(meta)
        return sdpa_attention(q, k, v, mask=mask, scale=scale)

    fake = types.ModuleType("fake_recording_backend")
    fake.recording = recording
    monkeypatch.setitem(sys.modules, "fake_recording_backend", fake)
    monkeypatch.setitem(attn_mod.BACKENDS, "recording", Backend(
        "recording", "fake_recording_backend:recording", "framecast.models.attention:_always", "test"))

    torch.manual_seed(0)
    model = WanModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                     out_channels=3, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3).eval()
    text = torch.randn(1, 5, 16)
    lat = torch.randn(1, 3, 2, 8, 6)
    sdpa_den = Denoiser(model, text, None, 1.0, torch.float32, torch.device("cpu"))
    den = Denoiser(model, text, None, 1.0, torch.float32, torch.device("cpu"),
                   attention=AttentionRuntime("recording"))
    out = den(lat, 500.0, step=2)
    assert calls == [AttentionCall(grid=(2, 4, 3), layer=i, step=2, kind=kind)
                     for i in range(3) for kind in ("self", "cross")]
    assert torch.equal(out, sdpa_den(lat, 500.0))  # the recorder computes what sdpa does

    calls.clear()
    model(lat, torch.tensor([500.0]), text)  # a plain forward: the default backend, sdpa
    assert calls == []
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        Denoiser(model, text, None, 1.0, torch.float32, torch.device("cpu"), attention=AttentionRuntime("nope"))
