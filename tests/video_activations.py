"""Video-like attention inputs for the sparse-backend tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def video_qkv(grid, S_frames=None, N=2, H=32, seed=0, sharp=2.0):
    """Video-like activations: q and k share a smooth random field over the grid (so attention is
    mostly local, as in a video DiT), v is another smooth field, plus noise."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = grid
    fk = f if S_frames is None else S_frames

    def field(frames):
        low = torch.randn(1, N * H, frames, max(1, h // 4), max(1, w // 4), generator=g)
        up = F.interpolate(low, size=(frames, h, w), mode="trilinear", align_corners=False)
        return up.permute(0, 2, 3, 4, 1).reshape(1, frames * h * w, N, H)

    base = field(fk)
    q = sharp * base[:, :f * h * w] + 0.5 * torch.randn(1, f * h * w, N, H, generator=g)
    k = sharp * base + 0.5 * torch.randn(base.shape, generator=g)
    v = field(fk) + 0.5 * torch.randn(base.shape, generator=g)
    return q, k, v
