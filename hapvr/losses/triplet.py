"""Triplet margin loss on similarities: a pair-wise competitor of the paper's Table 2."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss
from hapvr.losses.registry import register_loss


@register_loss("triplet")
class TripletLoss(RankingLoss):
    """``mean over all (query k, positive i, negative j) of [s_kj - s_ki + margin]_+``.

    Every triplet of the batch counts (no mining). The paper does not state its margin.
    """

    def __init__(self, margin: float = 0.1, self_label: int | None = -1):
        super().__init__(self_label)
        self.margin = margin

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos, neg = labels == 1, labels == 0
        # [Q, i, j]: the batch matrix is small (N ~ 128), so all triplets fit.
        hinge = torch.relu(sim[:, None, :] - sim[:, :, None] + self.margin)
        used = pos[:, :, None] & neg[:, None, :]
        return torch.where(used, hinge, 0.0).sum() / used.sum().clamp(min=1).to(sim.dtype)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, self_label={self.self_label}"
