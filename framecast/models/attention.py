"""Attention backends: one signature, chosen by name.

Shape legend: B batch, L query tokens, S key/value tokens, N heads, H head dim.

    attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, backend="sdpa", meta=None) -> o_BLNH

`meta` (an `AttentionCall`: token grid, layer, sampler step, self or cross, frame block, and the
`AttentionRuntime` — the backend's options, loaded assets and per-request state) is what a sparse
backend needs to know about the call beyond the tensors; `sdpa` and `flash` ignore it.
Sparse backends (`Backend.sparse`) are bypassed for dense `sdpa` in three places, written once
here: cross-attention (text tokens stay dense), the first `dense_steps` sampler steps and the
layers listed in `dense_layers` (the runtime's warm-up, `attention.dense_steps/dense_layers`).
`sdpa` is the default and the reference every other backend is tested against. A backend
declares what it supports through `supports(q, k, v, mask) -> reason | None`; an unsupported
request falls back to `sdpa` with one warning per distinct reason, an unknown name raises and
lists the valid names. The registry maps names to import strings, so importing this module
never imports a CUDA extension.
"""
from __future__ import annotations

import dataclasses
import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BlockCausal:
    """Block-causal mask: tokens come in frames of `frame_tokens`; a query in frame f sees the
    keys of frames <= f. Queries start at key frame `q_start_frame` (queries for the last frames
    of a longer key sequence, e.g. the current frame against a KV cache). With `window`, a query
    frame also sees at most `window` frames before its own (NFD's sliding window: a chunk of
    drafts then sees what plain next-frame generation would, frame by frame)."""

    frame_tokens: int
    q_start_frame: int = 0
    window: Optional[int] = None

    def key_end(self, q_frame: int) -> int:
        """Number of visible keys for query frame index `q_frame` (counted within the queries)."""
        return (self.q_start_frame + q_frame + 1) * self.frame_tokens

    def key_start(self, q_frame: int) -> int:
        """First visible key of query frame index `q_frame` (0 without a window)."""
        if self.window is None:
            return 0
        return max(0, self.q_start_frame + q_frame - self.window) * self.frame_tokens


@dataclass(frozen=True)
class TeacherForcing:
    """The play model's training layout (`framecast.world.causal_training`): 2F frames of
    `frame_tokens`, [clean_0 .. clean_{F-1} | noisy_0 .. noisy_{F-1}]. clean_i sees clean_0..i
    (block-causal); noisy_i sees clean_0..clean_{i-1} and itself — what frame i sees when it is
    denoised on NFD's KV cache. Queries and keys are the same 2F frames."""

    frame_tokens: int


Mask = Union[None, torch.Tensor, BlockCausal, TeacherForcing]


@dataclass
class AttentionRuntime:
    """One engine's attention choice and one request's backend state.

    Built from the config by `framecast.engine.components.make_attention`; every request gets
    `for_request()` (same options and assets, empty state), so state never leaks between
    requests. Backends key their state by what they need (layer, frame block; the CFG branches are
    the batch rows of one call)."""

    backend: str = "sdpa"            # name in BACKENDS
    options: Any = None              # the backend's options (config section attention.NAME), None if it has none
    assets: Any = None               # per-model data the backend loaded once (a head plan, trained projections)
    steps: Optional[int] = None      # sampler steps per frame (None: unknown)
    dense_steps: int = 0             # sparse backends run dense sdpa for sampler steps < dense_steps
    dense_layers: tuple = ()         # ... and in these layers
    state: dict = field(default_factory=dict)  # per-request backend state

    def for_request(self) -> "AttentionRuntime":
        return dataclasses.replace(self, state={})

    def dense(self, meta: "AttentionCall") -> bool:
        """Whether a sparse backend runs dense for this call (cross-attention, warm-up, dense layer)."""
        return (meta.kind != "self" or meta.layer in self.dense_layers
                or (meta.step is not None and meta.step < self.dense_steps))


@dataclass(frozen=True)
class AttentionCall:
    """Per-call metadata a backend may use (a sparse pattern over the token grid, state keyed by
    layer and frame block); the reference backends ignore it."""

    grid: tuple[int, int, int]  # (F', H', W') token grid of the queries
    layer: int                  # block index (`layer_id`)
    step: Optional[int]         # sampler step index, None where the caller does not know it
    kind: str                   # "self" or "cross" attention
    block: int = 0              # frame block of the pass (DualParal block, NFD frame); 0 for one-pass schedules
    runtime: Optional[AttentionRuntime] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Backend:
    name: str
    fn: str  # import string "module:function" of the attention function
    supports: str  # import string of `supports(q, k, v, mask) -> Optional[str]` (None = supported)
    description: str
    sparse: bool = False  # dense sdpa for cross-attention, warm-up steps and dense layers (AttentionRuntime.dense)
    options: str = ""  # import string of its options dataclass: config section attention.NAME ("" = none)
    load: str = ""  # import string of `load(options, cfg) -> assets`, called once per engine/worker ("" = none)
    block_causal: Optional[str] = None  # why it refuses block-causal masks (NFD); None = handles them
    context_keys: Optional[str] = None  # why it refuses extra context keys (DualParal); None = handles them


BACKENDS: dict[str, Backend] = {
    "sdpa": Backend(
        "sdpa", "framecast.models.attention:sdpa_attention", "framecast.models.attention:_always",
        "torch scaled_dot_product_attention (reference; any device and dtype)",
    ),
    "flash": Backend(
        "flash", "framecast.models.attention:flash_attention",
        "framecast.models.attention:flash_supports",
        "flash-attn flash_attn_func (CUDA, fp16/bf16, head dim <= 256)",
    ),
    "draft": Backend(
        "draft", "framecast.models.draft_attention:draft_attention", "framecast.models.attention:block_causal_only",
        "DraftAttention: pooled per-frame draft map, top share of each head's map, region-contiguous token order",
        sparse=True, options="framecast.models.draft_attention:DraftOptions",
    ),
    "grat": Backend(
        "grat", "framecast.models.grat_attention:grat_attention", "framecast.models.attention:block_causal_only",
        "GRAT: group-contiguous token order, criss-cross (cross) or surrounding-group (surround) block masks",
        sparse=True, options="framecast.models.grat_attention:GratOptions",
    ),
    "sparse_vdit": Backend(
        "sparse_vdit", "framecast.models.sparse_vdit_attention:sparse_vdit_attention", "framecast.models.sparse_vdit_attention:supports",
        "Sparse-vDiT: per-head full/diagonal/multi-diagonal/vertical-stripe/skip from an offline plan",
        sparse=True, options="framecast.models.sparse_vdit_attention:SparseVditOptions",
        load="framecast.models.sparse_vdit_attention:load_plan",
    ),
    "rettention": Backend(
        "rettention", "framecast.models.rettention:rettention_attention", "framecast.models.rettention:supports",
        "Re-ttention: static sparse mask with the rho correction and a cached residual",
        sparse=True, options="framecast.models.rettention:RettentionOptions",
        block_causal="its residual and rho are calibrated on full attention; a block-causal pass has none to calibrate on",
    ),
    "sla": Backend(
        "sla", "framecast.models.sla_attention:sla_attention", "framecast.models.sla_attention:supports",
        "SLA: critical blocks exact, marginal blocks linear (trained projection), negligible skipped",
        sparse=True, options="framecast.models.sla_attention:SlaOptions", load="framecast.models.sla_attention:load",
        block_causal="SLA ranks key blocks over the whole map; a block-causal mask would need a masked compressed map",
    ),
}


def resolve(import_string: str) -> Callable:
    """The object behind a registry import string "module:name"."""
    module, name = import_string.split(":")
    return getattr(importlib.import_module(module), name)


def check_backend(name: str) -> Backend:
    """Return the registered backend or raise naming the valid ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]


def available_backends() -> dict[str, str]:
    """name -> 'yes' or the reason it cannot run here (checked on a tiny probe on the best device)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    probe = torch.zeros(1, 1, 1, 64, device=device, dtype=dtype)
    out = {}
    for name, b in BACKENDS.items():
        reason = resolve(b.supports)(probe, probe, probe, None)
        out[name] = "yes" if reason is None else reason
    return out


def attention(q_BLNH: torch.Tensor, k_BSNH: torch.Tensor, v_BSNH: torch.Tensor, *,
              mask: Mask = None, scale: Optional[float] = None, backend: str = "sdpa",
              meta: Optional[AttentionCall] = None) -> torch.Tensor:
    b = check_backend(backend)
    if b.sparse and (meta is None or meta.runtime is None or meta.runtime.dense(meta)):
        b = BACKENDS["sdpa"]  # text, warm-up and dense layers (and calls without metadata) stay dense
    if b.name != "sdpa":
        reason = resolve(b.supports)(q_BLNH, k_BSNH, v_BSNH, mask)
        if reason is not None:
            warnings.warn(f"attention backend {backend!r} unsupported here ({reason}); using sdpa",
                          RuntimeWarning, stacklevel=2)
            b = BACKENDS["sdpa"]
    return resolve(b.fn)(q_BLNH, k_BSNH, v_BSNH, mask=mask, scale=scale, meta=meta)


def _always(q, k, v, mask) -> Optional[str]:
    return None


def block_causal_only(q, k, v, mask) -> Optional[str]:
    """`supports` of the sparse backends that take no mask or a BlockCausal one (run per query frame)."""
    if isinstance(mask, torch.Tensor):
        return "dense tensor masks are not supported"
    if mask is not None and not isinstance(mask, BlockCausal):
        return f"{type(mask).__name__} masks are not supported"
    return None


def options_of(meta: Optional[AttentionCall], default: type):
    """A backend's options: the runtime's (config `attention.NAME`), else `default()`."""
    runtime = None if meta is None else meta.runtime
    return runtime.options if runtime is not None and runtime.options is not None else default()


def per_query_frame(fn, q_BLNH, k_BSNH, v_BSNH, mask: BlockCausal, scale):
    """Block-causal attention without a dense L x S mask: each query frame attends, unmasked, to
    the key range it may see."""
    ft = mask.frame_tokens
    if q_BLNH.shape[1] % ft:
        raise ValueError(f"BlockCausal: {q_BLNH.shape[1]} query tokens is not a multiple of frame_tokens={ft}")
    outs = []
    for f in range(q_BLNH.shape[1] // ft):
        end = mask.key_end(f)
        if end > k_BSNH.shape[1]:
            raise ValueError(f"BlockCausal: query frame {f} needs {end} keys, got {k_BSNH.shape[1]}")
        start = mask.key_start(f)
        outs.append(fn(q_BLNH[:, f * ft:(f + 1) * ft], k_BSNH[:, start:end], v_BSNH[:, start:end], scale))
    return torch.cat(outs, dim=1)


def _teacher_forcing(fn, q_BLNH, k_BSNH, v_BSNH, mask: TeacherForcing, scale):
    """TeacherForcing without a dense mask: the clean half is block-causal (key prefixes), each
    noisy frame attends to the clean prefix before it plus its own keys."""
    ft, total = mask.frame_tokens, q_BLNH.shape[1]
    if total % (2 * ft) or k_BSNH.shape[1] != total:
        raise ValueError(f"TeacherForcing: {total} query / {k_BSNH.shape[1]} key tokens is not 2F frames of "
                         f"frame_tokens={ft} each")
    half = total // 2
    clean = per_query_frame(fn, q_BLNH[:, :half], k_BSNH[:, :half], v_BSNH[:, :half], BlockCausal(ft), scale)
    outs = [clean]
    for f in range(half // ft):
        own = slice(half + f * ft, half + (f + 1) * ft)
        k = torch.cat([k_BSNH[:, :f * ft], k_BSNH[:, own]], dim=1)
        v = torch.cat([v_BSNH[:, :f * ft], v_BSNH[:, own]], dim=1)
        outs.append(fn(q_BLNH[:, own], k, v, scale))
    return torch.cat(outs, dim=1)


def _sdpa(q_BLNH, k_BSNH, v_BSNH, scale, attn_mask=None):
    # SDPA wants heads before tokens: (B, N, L, H).
    o_BNLH = F.scaled_dot_product_attention(
        q_BLNH.transpose(1, 2), k_BSNH.transpose(1, 2), v_BSNH.transpose(1, 2),
        attn_mask=attn_mask, dropout_p=0.0, is_causal=False, scale=scale)
    return o_BNLH.transpose(1, 2)


def sdpa_attention(q_BLNH, k_BSNH, v_BSNH, *, mask: Mask = None, scale=None, meta: Optional[AttentionCall] = None):
    if isinstance(mask, BlockCausal):
        return per_query_frame(_sdpa, q_BLNH, k_BSNH, v_BSNH, mask, scale)
    if isinstance(mask, TeacherForcing):
        return _teacher_forcing(_sdpa, q_BLNH, k_BSNH, v_BSNH, mask, scale)
    return _sdpa(q_BLNH, k_BSNH, v_BSNH, scale, attn_mask=mask)


def _flash_func():
    return importlib.import_module("flash_attn").flash_attn_func


def flash_supports(q, k, v, mask) -> Optional[str]:
    try:
        _flash_func()
    except (ImportError, AttributeError) as e:
        return f"flash_attn not importable: {e.__class__.__name__}"
    if not q.is_cuda:
        return "needs a CUDA tensor"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"needs fp16/bf16, got {q.dtype}"
    if q.shape[-1] > 256 or q.shape[-1] % 8:
        return f"head dim {q.shape[-1]} not a multiple of 8 up to 256"
    if isinstance(mask, torch.Tensor):
        return "dense masks are not supported"
    return None


def _flash(q_BLNH, k_BSNH, v_BSNH, scale):
    # flash-attn takes (B, L, N, H) directly: no transpose.
    return _flash_func()(q_BLNH, k_BSNH, v_BSNH, dropout_p=0.0, softmax_scale=scale, causal=False)


def flash_attention(q_BLNH, k_BSNH, v_BSNH, *, mask: Mask = None, scale=None,
                    meta: Optional[AttentionCall] = None):
    if isinstance(mask, BlockCausal):
        return per_query_frame(_flash, q_BLNH, k_BSNH, v_BSNH, mask, scale)
    if isinstance(mask, TeacherForcing):
        return _teacher_forcing(_flash, q_BLNH, k_BSNH, v_BSNH, mask, scale)
    if mask is not None:
        raise ValueError("flash backend: dense masks are not supported")
    return _flash(q_BLNH, k_BSNH, v_BSNH, scale)
