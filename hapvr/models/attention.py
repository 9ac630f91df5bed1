"""Region attention (ViSiL / HAP-VR section 3.2): ``w = sigmoid(u . tanh(W x + b))``, ``x <- x w``."""

from __future__ import annotations

import torch
from torch import nn


class RegionAttention(nn.Module):
    """Weights each region vector by a learned saliency in (0, 1).

    Input ``[..., R, D]``; output the same shape. ``W`` is ``D x D`` with bias, ``u`` is a
    ``D``-vector without bias. The weights are not renormalised, so an attended region keeps
    its direction and loses length (its similarities shrink by ``w``).
    """

    def __init__(self, dim: int = 512):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.context = nn.Linear(dim, 1, bias=False)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        nn.init.xavier_uniform_(self.context.weight)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[..., R, 1]``."""
        return torch.sigmoid(self.context(torch.tanh(self.proj(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)
