"""SLA — Sparse-Linear Attention (arXiv 2509.24006; shared/methods/accelerators.md B5).

Every query block ranks the key blocks by the compressed map
P_c = softmax(meanpool(Q) · meanpool(K)ᵀ · scale) (`block_sparse.pooled_block_scores`) and splits
its row in three:
- critical: the top `critical` share of the row's key blocks, attended exactly
  (`block_sparse.block_sparse_attention`) -> O_s;
- negligible: the bottom `negligible` share, skipped;
- marginal: the rest, through linear attention with φ = softmax over the head dim:
      O_l = φ(Q) (Σ_marg φ(K)ᵀ V) / (φ(Q) · Σ_marg φ(K))
  over the marginal blocks of the row (`linear_keys=marginal`: the paper's definition and the
  fused kernel's). The reference PyTorch module sums over every key instead (`linear_keys=all`).
The output is O_s + Proj(O_l), Proj a per-layer head_dim x head_dim linear (shared by the heads),
zero-initialised, so an untrained SLA is exactly block-sparse attention over the critical blocks.
The projections are per-model assets, loaded once by `load` from `attention.sla.weights` (keys
`sla.proj.{layer}.weight/bias`; `framecast.world.sla_training` writes them next to the fine-tuned
model's `transformer.*`/`text_encoder.*` keys). Without weights the projections are zero and the
linear branch is skipped (it would be multiplied by zero).

Stateless: nothing is kept between calls, so requests, CFG branches and frame blocks cannot mix.
Token order: frame-major, row-major as the model lays tokens out; a block of `block_q` tokens is
`block_q / W'` rows of one frame when it divides W' (the tiny preset: 16 tokens = 2 rows of 8).

Shape legend: B batch, L query tokens, S key tokens, N heads, H head dim, Q query blocks,
K key blocks, b tokens in a block, X/Y head dim (the H x H state of linear attention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from framecast.models.block_sparse import block_sparse_attention, num_blocks, pad_tokens, pooled_block_scores, token_mask

PHI = ("softmax", "elu1", "relu")


@dataclass
class SlaOptions:
    """attention.sla.*"""
    block_q: int = 64              # query tokens per block (paper / thu-ml/SLA: 64)
    block_k: int = 64              # key tokens per block
    critical: float = 0.05         # k_h: share of each row's key blocks attended exactly (at least one)
    negligible: float = 0.10       # k_l: share of each row's key blocks skipped; the rest are marginal
    linear: bool = True            # the linear branch on the marginal blocks (False: plain block-sparse
                                   # attention over the critical blocks, the ablation)
    linear_keys: str = "marginal"  # marginal: the row's marginal blocks (paper); all: every key (reference module)
    phi: str = "softmax"           # feature map of the linear branch: softmax over the head dim, elu(x)+1, relu
    weights: str = ""              # trained projections: builtin:NAME or a .safetensors path ("" = zero)

    MINIMUM: ClassVar[dict] = {"block_q": 1, "block_k": 1, "critical": 0.0, "negligible": 0.0}
    MAXIMUM: ClassVar[dict] = {"critical": 1.0, "negligible": 1.0}
    CHOICES: ClassVar[dict] = {"linear_keys": ("marginal", "all"), "phi": PHI}

    def check(self) -> Optional[str]:
        if self.critical + self.negligible > 1.0:
            return (f"attention.sla.critical + attention.sla.negligible = {self.critical + self.negligible:g} "
                    "must be <= 1")
        return None


def supports(q, k, v, mask) -> Optional[str]:
    if mask is not None:
        return "SLA ranks blocks over the whole attention map; masks (block-causal, teacher forcing, dense) unsupported"
    return None


# ---------------------------------------------------------------------------------------------
# the projections (assets)
# ---------------------------------------------------------------------------------------------

def zero_projections(num_layers: int, head_dim: int) -> nn.ModuleList:
    """Proj of every layer, zero-initialised (SLA == block-sparse attention before fine-tuning)."""
    proj = nn.ModuleList(nn.Linear(head_dim, head_dim) for _ in range(num_layers))
    for p in proj.parameters():
        nn.init.zeros_(p)
    return proj


def projection_state(proj: nn.ModuleList) -> dict[str, torch.Tensor]:
    """The projections as the weights file stores them: sla.proj.{layer}.weight / .bias."""
    return {f"sla.proj.{k}": v.detach().float().cpu().contiguous() for k, v in proj.state_dict().items()}


def weights_path(source: str) -> Path:
    if source.startswith("builtin:"):
        import importlib.resources

        name = source.split(":", 1)[1]
        path = Path(str(importlib.resources.files("framecast.weights").joinpath(f"{name}.safetensors")))
        if not path.is_file():
            raise _error(source, f"no shipped weights named {name!r}")
        return path
    path = Path(source) / "weights.safetensors" if Path(source).is_dir() else Path(source)
    if not path.is_file():
        raise _error(source, "no such file; use builtin:NAME, a .safetensors file or a sla_training --out folder")
    return path


def _error(source: str, why: str) -> ValueError:
    # a ValueError: `make_attention` reports it as the config error it is (models never import config)
    return ValueError(f"attention.sla.weights={source!r}: {why}")


def load(options: SlaOptions, cfg) -> Optional[nn.ModuleList]:
    """The Backend `load` hook: the per-layer projections of `options.weights` (None when there
    are none: zero projections, the linear branch is skipped). A file made for another model
    (layer count or head dim) is refused."""
    if not options.weights:
        return None
    from safetensors.torch import load_file

    sd = load_file(str(weights_path(options.weights)))
    part = {k[len("sla.proj."):]: v for k, v in sd.items() if k.startswith("sla.proj.")}
    layers, head_dim = cfg.model.num_layers, cfg.model.attention_head_dim
    found = sorted({int(k.split(".")[0]) for k in part})
    shapes = {tuple(v.shape) for k, v in part.items() if k.endswith("weight")}
    if not part:
        raise _error(options.weights, "holds no SLA projections (keys sla.proj.*)")
    if found != list(range(layers)) or shapes != {(head_dim, head_dim)}:
        got = f"{len(found)} layers x {sorted(shapes)}"
        raise _error(options.weights, f"projections for another model ({got}); this model has {layers} layers x "
                                      f"head dim {head_dim}")
    proj = zero_projections(layers, head_dim)
    proj.load_state_dict(part, strict=True)
    return proj.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# block classes and the two branches
# ---------------------------------------------------------------------------------------------

def classify_blocks(pc_BNQK: torch.Tensor, critical: float, negligible: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(critical_BNQK, marginal_BNQK) boolean tables from the compressed map: per row the top
    ceil(critical·K) blocks (at least one) are critical, the bottom floor(negligible·K) negligible
    (never eating into the critical ones), the rest marginal."""
    K = pc_BNQK.shape[-1]
    n_crit = min(K, max(1, math.ceil(critical * K - 1e-9)))
    n_neg = min(K - n_crit, math.floor(negligible * K + 1e-9))
    # rank 0 = the highest score; a stable sort keeps ties in key order (deterministic)
    order_BNQK = torch.sort(pc_BNQK, dim=-1, descending=True, stable=True).indices
    rank_BNQK = torch.empty_like(order_BNQK)
    rank_BNQK.scatter_(-1, order_BNQK, torch.arange(K, device=pc_BNQK.device).expand_as(order_BNQK))
    return rank_BNQK < n_crit, (rank_BNQK >= n_crit) & (rank_BNQK < K - n_neg)


def feature_map(x: torch.Tensor, phi: str) -> torch.Tensor:
    if phi == "softmax":
        return torch.softmax(x, dim=-1)
    if phi == "elu1":
        return F.elu(x) + 1.0
    return F.relu(x)


def linear_attention(q_BLNH, k_BSNH, v_BSNH, keys_BNQK: Optional[torch.Tensor], block_q: int, block_k: int,
                     phi: str = "softmax") -> torch.Tensor:
    """O_l = φ(Q)(Σ φ(K)ᵀV) / (φ(Q)·Σ φ(K)), summed per query block over the key blocks in
    `keys_BNQK` (None: every key). Rows with no such key give 0. Computed in fp32 from per-key-block
    states φ(K_blk)ᵀV_blk [H x H], summed per row: O((L + S)·H² + Q·K·H²), never an L x S map."""
    B, L, N, H = q_BLNH.shape
    S = k_BSNH.shape[1]
    Q, K = num_blocks(L, block_q), num_blocks(S, block_k)
    fk_BSNH = feature_map(k_BSNH.float(), phi)
    fk_BKbNH = pad_tokens(fk_BSNH, block_k).view(B, K, block_k, N, H)  # padded keys are zero rows
    v_BKbNH = pad_tokens(v_BSNH.float(), block_k).view(B, K, block_k, N, H)
    kv_BNKXY = torch.einsum("bkjnx,bkjny->bnkxy", fk_BKbNH, v_BKbNH)
    z_BNKX = fk_BKbNH.sum(2).permute(0, 2, 1, 3)
    if keys_BNQK is None:
        kv_BNQXY = kv_BNKXY.sum(2, keepdim=True).expand(B, N, Q, H, H)
        z_BNQX = z_BNKX.sum(2, keepdim=True).expand(B, N, Q, H)
    else:
        w_BNQK = keys_BNQK.expand(B, N, Q, K).float()
        kv_BNQXY = torch.einsum("bnqk,bnkxy->bnqxy", w_BNQK, kv_BNKXY)
        z_BNQX = torch.einsum("bnqk,bnkx->bnqx", w_BNQK, z_BNKX)
    fq_BNQbH = pad_tokens(feature_map(q_BLNH.float(), phi), block_q).view(B, Q, block_q, N, H).permute(0, 3, 1, 2, 4)
    num_BNQbY = torch.einsum("bnqix,bnqxy->bnqiy", fq_BNQbH, kv_BNQXY)
    den_BNQb = torch.einsum("bnqix,bnqx->bnqi", fq_BNQbH, z_BNQX)
    # an empty row has den 0 (and num 0): give 0, never nan (0 · Proj would keep a nan)
    o_BNQbY = num_BNQbY / torch.where(den_BNQb > 0, den_BNQb, torch.ones_like(den_BNQb))[..., None]
    return o_BNQbY.permute(0, 2, 3, 1, 4).reshape(B, Q * block_q, N, H)[:, :L].to(q_BLNH.dtype)


def critical_attention(q_BLNH, k_BSNH, v_BSNH, crit_BNQK, block_q: int, block_k: int, scale) -> torch.Tensor:
    """O_s: exact attention over the critical blocks. Inference takes the block-sparse core; a
    call that needs gradients (fine-tuning) takes SDPA with the same blocks as a token mask: the
    same values (<= 1e-6), differentiable (the core's CPU path fills preallocated buffers, which
    autograd refuses), and at training's short sequences no slower. Every row keeps at least one
    critical block with a real key, so no row of the mask is empty."""
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (q_BLNH, k_BSNH, v_BSNH))):
        return block_sparse_attention(q_BLNH, k_BSNH, v_BSNH, crit_BNQK, block_q, block_k, scale)
    L, S = q_BLNH.shape[1], k_BSNH.shape[1]
    mask_BNLS = token_mask(crit_BNQK, block_q, block_k, L, S)
    o_BNLH = F.scaled_dot_product_attention(q_BLNH.transpose(1, 2), k_BSNH.transpose(1, 2), v_BSNH.transpose(1, 2),
                                            attn_mask=mask_BNLS, scale=scale)
    return o_BNLH.transpose(1, 2)


def sla_attention(q_BLNH, k_BSNH, v_BSNH, *, mask=None, scale=None, meta=None,
                  options: Optional[SlaOptions] = None, proj: Optional[nn.ModuleList] = None) -> torch.Tensor:
    """SLA over q [B, L, N, H] and k/v [B, S, N, H] (S >= L: appended context keys are ranked like
    the window's own). Options and projections come from meta.runtime (or the keywords, for tests)."""
    if mask is not None:
        raise ValueError("sla backend: masks are not supported")
    rt = None if meta is None else meta.runtime
    o = options or (rt.options if rt is not None and rt.options is not None else SlaOptions())
    proj = proj if proj is not None else (None if rt is None else rt.assets)
    pc_BNQK = pooled_block_scores(q_BLNH, k_BSNH, o.block_q, o.block_k, scale)
    crit_BNQK, marg_BNQK = classify_blocks(pc_BNQK, o.critical, o.negligible)
    o_BLNH = critical_attention(q_BLNH, k_BSNH, v_BSNH, crit_BNQK, o.block_q, o.block_k, scale)
    if not o.linear or proj is None:
        return o_BLNH
    keys = marg_BNQK if o.linear_keys == "marginal" else None
    ol_BLNH = linear_attention(q_BLNH, k_BSNH, v_BSNH, keys, o.block_q, o.block_k, o.phi)
    p = proj[0 if meta is None else meta.layer]
    return o_BLNH + F.linear(ol_BLNH, p.weight.to(ol_BLNH), p.bias.to(ol_BLNH))
