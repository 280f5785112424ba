"""Re-ttention (NeurIPS 2025, arXiv 2505.22918; shared/methods/accelerators.md B3).

A static sparse mask S renormalises each query's softmax over its kept keys only, shifting
probability mass. Re-ttention corrects that with statistics of full attention refreshed now and
then:
- warm-up: the first `warmup` share of the sampler steps run dense (paper: 15 of 50 steps; on
  top of the dispatcher's `attention.dense_steps`, whichever is longer);
- calibration steps (the first step after warm-up, then every `calib_every` steps): full attention
  O_full (the step's output); per query row ρ_i = Σ_{j∈S_i} e^{s_ij} / Σ_j e^{s_ij}; the
  ρ-corrected sparse output O_s = ρ_i · softmax_S(s_i) V; the residual R = O_full − O_s is kept;
- other steps: O = ρ_i · softmax_S(s_i) V + R (the sparse softmax scaled by the cached ρ, plus
  the cached residual), then ρ_i += λ (clamped to <= 1).
The sparse part runs on the block-sparse core (`block_sparse_attention`); ρ comes from the dense
pass of the calibration step (computed in query chunks, never a whole L x S map).

The static mask S (block granularity, the same for every head and batch row): tokens are laid out
frame-major, row-major; a block is `block_rows` rows of one frame (one row when `block_rows` does
not divide H'). A query block in frame f, row band r keeps the key blocks of row bands
r - window .. r + window — a local window of its frame — in every key frame (`frames = -1`: the
window replicated across all frames, as the reference CogVideoX processor), or only in key frames
within `frames` of f. Appended context keys (DualParal) are whole frames after the window's own
and are windowed the same way.

State (`meta.runtime.state`, fresh per request) is keyed by (layer, frame block): ρ and R have the
batch rows of the call, so the CFG branches (one batch) keep theirs, and DualParal blocks at
different steps never share. A new pass (the step goes back, or the shapes change) recalibrates.
Calls without a step index (`meta.step is None`: the caller cannot say which step it is) run dense.

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim, Q query blocks,
K key blocks, c a chunk of query tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from framecast.models.block_sparse import block_sparse_attention


@dataclass
class RettentionOptions:
    """attention.rettention.*"""
    block_rows: int = 2         # token-grid rows per block (a block = block_rows x W' tokens of one frame)
    window: int = 1             # row bands kept on each side of the query's own band, in each key frame
    frames: int = -1            # key frames within this distance of the query's frame (-1: every frame)
    warmup: float = 0.3         # share of the sampler steps run dense first (paper: 15 of 50)
    calib_every: int = 5        # a calibration step (full attention, new ρ and residual) every this many steps
    lam: float = 0.04           # λ: ρ grows by this per sparse step (paper's one ablated knob), clamped to 1
    correction: bool = True     # False: the static mask alone (plain sparse softmax), the baseline it corrects

    MINIMUM: ClassVar[dict] = {"block_rows": 1, "window": 0, "frames": -1, "warmup": 0.0, "calib_every": 1,
                               "lam": 0.0}
    MAXIMUM: ClassVar[dict] = {"warmup": 1.0, "lam": 1.0}


def supports(q, k, v, mask) -> Optional[str]:
    if mask is not None:
        return "Re-ttention's static mask and cached statistics assume full attention; masks unsupported"
    return None


def static_blocks(grid: tuple[int, int, int], key_tokens: int, o: RettentionOptions,
                  device=None) -> tuple[torch.Tensor, int]:
    """(keep_11QK, block tokens): the static mask for queries on `grid` = (F', H', W') and
    `key_tokens` keys (whole frames of H' x W')."""
    f, h, w = grid
    rows = o.block_rows if h % o.block_rows == 0 else 1
    bands = h // rows
    kf = key_tokens // (h * w)
    q_frame, q_band = torch.arange(f * bands, device=device).div(bands, rounding_mode="floor"), \
        torch.arange(f * bands, device=device) % bands
    k_frame, k_band = torch.arange(kf * bands, device=device).div(bands, rounding_mode="floor"), \
        torch.arange(kf * bands, device=device) % bands
    keep_QK = (q_band[:, None] - k_band[None, :]).abs() <= o.window
    if o.frames >= 0:
        keep_QK &= (q_frame[:, None] - k_frame[None, :]).abs() <= o.frames
    return keep_QK[None, None], rows * w


def full_attention_and_rho(q_BLNH, k_BSNH, v_BSNH, keep_11QK, block: int, scale: float,
                           max_elements: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """(O_full [B, L, N, H] fp32, ρ [B, L, N] fp32) in query chunks of at most `max_elements`
    scores: ρ_i = exp(logsumexp over kept keys − logsumexp over all keys)."""
    B, L, N, H = q_BLNH.shape
    S = k_BSNH.shape[1]
    k_BNSH, v_BNSH = k_BSNH.float().transpose(1, 2), v_BSNH.float().transpose(1, 2)
    chunk = max(1, max_elements // max(1, B * N * S))
    outs, rhos = [], []
    for c0 in range(0, L, chunk):
        q_BNcH = q_BLNH[:, c0:c0 + chunk].float().transpose(1, 2)
        rows_c = torch.arange(c0, c0 + q_BNcH.shape[2], device=q_BLNH.device) // block
        mask_cS = keep_11QK[0, 0][rows_c].repeat_interleave(block, dim=1)[:, :S]
        s_BNcS = q_BNcH @ k_BNSH.transpose(-1, -2) * scale
        lse_BNc = torch.logsumexp(s_BNcS, dim=-1)
        lse_kept_BNc = torch.logsumexp(s_BNcS.masked_fill(~mask_cS, float("-inf")), dim=-1)
        rhos.append(torch.exp(lse_kept_BNc - lse_BNc).transpose(1, 2))             # B c N (0 for empty rows)
        outs.append((torch.softmax(s_BNcS, dim=-1) @ v_BNSH).transpose(1, 2))       # B c N H
    return torch.cat(outs, 1), torch.cat(rhos, 1)


def sparse_part(q_BLNH, k_BSNH, v_BSNH, keep_11QK, block: int, scale: float) -> torch.Tensor:
    """softmax_S(s) V: attention renormalised over the static mask (the block-sparse core)."""
    N = q_BLNH.shape[2]
    return block_sparse_attention(q_BLNH, k_BSNH, v_BSNH, keep_11QK.expand(1, N, -1, -1), block, block, scale)


def first_sparse_step(rt, o: RettentionOptions) -> int:
    """The first step that is not dense: after the own warm-up share and the dispatcher's dense_steps."""
    own = math.ceil(o.warmup * rt.steps - 1e-9) if rt.steps else 0
    return max(own, rt.dense_steps)


def rettention_attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, meta=None) -> torch.Tensor:
    if mask is not None:
        raise ValueError("rettention backend: masks are not supported")
    rt = None if meta is None else meta.runtime
    o = rt.options if rt is not None and rt.options is not None else RettentionOptions()
    _, h, w = meta.grid if meta is not None else (0, 0, 0)
    first = None if rt is None or meta.step is None else first_sparse_step(rt, o)
    if first is None or meta.step < first or h * w == 0 or k_BSNH.shape[1] % (h * w):
        return _sdpa(q_BLNH, k_BSNH, v_BSNH, scale)  # no step, warm-up, or keys that are not whole frames
    scale = 1.0 / math.sqrt(q_BLNH.shape[-1]) if scale is None else scale
    keep_11QK, block = static_blocks(meta.grid, k_BSNH.shape[1], o, q_BLNH.device)
    if not o.correction:
        return sparse_part(q_BLNH, k_BSNH, v_BSNH, keep_11QK, block, scale)
    key = ("rettention", meta.layer, meta.block)
    st = rt.state.get(key)
    shape = (tuple(q_BLNH.shape), tuple(k_BSNH.shape))
    calibrate = (st is None or st["shape"] != shape or meta.step < st["step"]
                 or (meta.step - first) % o.calib_every == 0)
    os_BLNH = sparse_part(q_BLNH, k_BSNH, v_BSNH, keep_11QK, block, scale).float()
    if calibrate:
        full_BLNH, rho_BLN = full_attention_and_rho(q_BLNH, k_BSNH, v_BSNH, keep_11QK, block, scale)
        rt.state[key] = {"shape": shape, "step": meta.step, "rho_BLN": rho_BLN,
                         "resid_BLNH": full_BLNH - rho_BLN[..., None] * os_BLNH}
        return full_BLNH.to(q_BLNH.dtype)
    out_BLNH = st["rho_BLN"][..., None] * os_BLNH + st["resid_BLNH"]
    st["rho_BLN"] = (st["rho_BLN"] + o.lam).clamp(max=1.0)
    st["step"] = meta.step
    return out_BLNH.to(q_BLNH.dtype)


def _sdpa(q_BLNH, k_BSNH, v_BSNH, scale):
    return F.scaled_dot_product_attention(q_BLNH.transpose(1, 2), k_BSNH.transpose(1, 2), v_BSNH.transpose(1, 2),
                                          scale=scale).transpose(1, 2)
