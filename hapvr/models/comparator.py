"""The video comparator psi of ViSiL (HAP-VR section 3.2), a small CNN on frame-similarity maps.

Layout (SPEC section 1): pad 1 -> Conv 1->32 3x3 -> ReLU -> MaxPool 2 -> pad 1 ->
Conv 32->64 3x3 -> ReLU -> MaxPool 2 -> pad 1 -> Conv 64->128 3x3 -> ReLU -> Conv 128->1 1x1.
A ``[T, T']`` map becomes ``[floor(T/4), floor(T'/4)]``.

Padding of a batch is handled with masks so that a padded map gives exactly the output of the
same map alone: padded cells are zeroed before every convolution (they then act like the
convolution's own zero padding), and a pooled cell is valid only when its whole 2x2 window is
valid (the floor rule of an unpadded max-pool).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_FRAMES = 4  # two 2x2 max-pools: shorter maps would vanish


def _pool_mask(mask: torch.Tensor) -> torch.Tensor:
    # min-pool: valid only if all four cells are valid
    return -F.max_pool2d(-mask, 2)


class FrameComparator(nn.Module):
    """psi: ``[B, T, T']`` frame-similarity maps -> ``[B, floor(T/4), floor(T'/4)]`` raw scores."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.fconv = nn.Conv2d(128, 1, 1)
        for conv in (self.conv1, self.conv2, self.conv3, self.fconv):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    @staticmethod
    def output_length(n: torch.Tensor | int):
        """Output steps for ``n`` input frames (``floor(n / 4)``)."""
        return n // 4

    def forward(self, sim: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: ``sim [B, T, T']``; ``mask [B, T, T']`` (1 = valid) or None.

        Returns ``(out [B, T/4, T'/4], out_mask)`` with padded output cells set to 0.
        """
        x = sim.unsqueeze(1)
        m = torch.ones_like(x) if mask is None else mask.unsqueeze(1).to(x.dtype)
        x = x * m
        x = F.relu(self.conv1(F.pad(x, (1, 1, 1, 1)))) * m
        x, m = F.max_pool2d(x, 2), _pool_mask(m)
        x = F.relu(self.conv2(F.pad(x * m, (1, 1, 1, 1)))) * m
        x, m = F.max_pool2d(x, 2), _pool_mask(m)
        x = F.relu(self.conv3(F.pad(x * m, (1, 1, 1, 1)))) * m
        x = self.fconv(x) * m
        return x.squeeze(1), m.squeeze(1)
