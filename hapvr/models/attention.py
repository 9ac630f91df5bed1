"""Region attention (ViSiL / HAP-VR section 3.2): ``w = sigmoid(u . tanh(W x + b))``, ``x <- x w``."""

from __future__ import annotations

import torch
from torch import nn


class RegionAttention(nn.Module):
    """Weights each region vector by a learned saliency in (0, 1).

    Input ``[..., R, D]``; output the same shape. ``W`` is ``D x D`` with bias, ``u`` is a
    ``D``-vector without bias. With ``identity_init`` (the residual head) ``w = 2 sigmoid(...)``
    and ``u`` starts at 0, so the untrained attention is the identity. The weights are not renormalised, so an attended region keeps
    its direction and loses length (its similarities shrink by ``w``).
    """

    def __init__(self, dim: int = 512, identity_init: bool = False):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.context = nn.Linear(dim, 1, bias=False)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        # identity_init (the residual head): u = 0 and w = 2 sigmoid(.), so every weight starts at
        # exactly 1 and the attended features equal their input
        self.scale = 2.0 if identity_init else 1.0
        if identity_init:
            nn.init.zeros_(self.context.weight)
        else:
            nn.init.xavier_uniform_(self.context.weight)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[..., R, 1]`` in (0, scale)."""
        w = torch.sigmoid(self.context(torch.tanh(self.proj(x))))
        return w * self.scale if self.scale != 1.0 else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)
