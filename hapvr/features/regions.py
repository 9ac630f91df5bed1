"""Region descriptors (SPEC section 1): each stage max-pooled to a 3x3 grid, L2 per stage,
concatenated, L2 again. PCA whitening to 512 dims follows in :mod:`hapvr.features.pca`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRID = 3

# max-pool (kernel, stride) per map size at 224 px input; these give 3x3 grids with the
# overlapping windows of the predecessors (ResNet-50: 56/28/14/7).
POOL_WINDOWS = {56: (28, 14), 28: (14, 7), 14: (6, 3), 7: (3, 2)}


def pool_to_grid(fmap: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, 9, C]`` max-pooled over a 3x3 grid of (overlapping) windows."""
    H, W = fmap.shape[-2:]
    if H == W and H in POOL_WINDOWS:
        k, s = POOL_WINDOWS[H]
        pooled = F.max_pool2d(fmap, k, s)
    else:  # other input sizes: a plain 3x3 partition
        pooled = F.adaptive_max_pool2d(fmap, GRID)
    if pooled.shape[-2:] != (GRID, GRID):
        pooled = F.adaptive_max_pool2d(pooled, GRID)
    return pooled.flatten(2).transpose(1, 2)


def region_descriptors(stage_maps: list[torch.Tensor]) -> torch.Tensor:
    """Multi-stage maps -> ``[B, 9, sum(C)]`` L2-normalised region descriptors (before PCA)."""
    parts = [F.normalize(pool_to_grid(m), dim=-1) for m in stage_maps]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)
