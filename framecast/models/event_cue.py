"""AV-DiT's event cue: which frames of the video make a sound event, read off the video tokens.

ENGINE-DEFINED (docs/avdit.md, "The event cue"). A bounce is a shape at a wall whose motion turns: where
on the frame a token sits matters (the frozen backbone's tokens carry only rotary, relative positions),
and so do the frames before and after. The cue gives the audio tokens that reading directly:

    per video token: LayerNorm(state) + edges(place) -> MLP                 (B, F, n, K)
    per frame:       max over the frame's tokens + time embedding -> (B, F, K)
    over frames:     a residual temporal convolution (kernel 3)             (B, F, K)
    out:             a logit per frame (trained against the frames that click, `event_loss`) and a
                     vector added to each of the frame's audio tokens (zero at init)

`edges`: each token's distance in tokens to the four borders (top, bottom, left, right), one-hot up
to EDGE_REACH, through a linear map, so the cue knows where the walls are at any frame size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framecast.models.layers import FP32LayerNorm

EDGE_REACH = 3  # distances 0, 1, 2 and ">= 3" tokens from each border


def edge_features(h: int, w: int, device=None) -> torch.Tensor:
    """[h·w, 4·(EDGE_REACH + 1)] fp32 for a row-major token grid: one-hot distance to each border."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    dists = torch.stack([rows, h - 1 - rows, cols, w - 1 - cols], dim=1).clamp(max=EDGE_REACH)   # (n, 4)
    return F.one_hot(dists, EDGE_REACH + 1).flatten(1).float()


def event_loss(logits_BF: torch.Tensor, events_BF: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Binary cross-entropy of the cue's per-frame logits against the frames that make an event, the
    event frames weighted `pos_weight` (they are a few in a hundred)."""
    return F.binary_cross_entropy_with_logits(logits_BF.float(), events_BF.float(),
                                              pos_weight=torch.as_tensor(pos_weight, device=logits_BF.device))


class EventCue(nn.Module):
    """Module docstring. forward(video tokens (B, F, n, D), their grid (h, w), the video's time embedding
    (B, F, D)) -> (logits (B, F), the cue for every audio token of the frame (B, F, D))."""

    def __init__(self, dim: int, hidden: int = 64, eps: float = 1e-6):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.edges = nn.Linear(4 * (EDGE_REACH + 1), dim)
        self.token = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden))
        self.time = nn.Linear(dim, hidden)
        self.temporal = nn.Conv1d(hidden, hidden, kernel_size=3, padding=1)
        self.logit = nn.Linear(hidden, 1)
        self.to_audio = nn.Linear(hidden, dim)  # zero at init: the cue starts as nothing
        nn.init.zeros_(self.to_audio.weight)
        nn.init.zeros_(self.to_audio.bias)

    def forward(self, xv_BFnD: torch.Tensor, grid_hw: tuple[int, int], temb_BFD: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        wdt = self.edges.weight.dtype
        place_nD = self.edges(edge_features(*grid_hw, device=xv_BFnD.device).to(wdt))
        h = self.token(self.norm(xv_BFnD).to(wdt) + place_nD)                                  # (B, F, n, K)
        h = h.amax(dim=2) + self.time(F.silu(temb_BFD.to(wdt)))                                 # (B, F, K)
        h = h + F.gelu(self.temporal(h.transpose(1, 2)).transpose(1, 2), approximate="tanh")
        return self.logit(h).squeeze(-1), self.to_audio(h)
