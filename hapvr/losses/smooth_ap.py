"""Smooth-AP (Brown et al., ECCV 2020): a list-wise competitor of the paper's Table 2 (eq. 7)."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, mean_over
from hapvr.losses.registry import register_loss


@register_loss("smooth_ap")
class SmoothAPLoss(RankingLoss):
    """``1 - AP`` with the Heaviside of eq. 6 replaced by the sigmoid ``G(x; tau)`` of eq. 7:
    for each positive i, ``(1 + sum_{j in P, j != i} G(s_j - s_i)) / (1 + sum_{j in P u N, j != i}
    G(s_j - s_i))``, averaged over positives, then over queries with a positive. ``tau = 0.01``.
    """

    def __init__(self, tau: float = 0.01, self_label: int | None = -1):
        super().__init__(self_label)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = tau

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos, used = labels == 1, labels >= 0
        M = sim.shape[1]
        G = torch.sigmoid((sim[:, None, :] - sim[:, :, None]) / self.tau)  # G[q, i, j] = G(s_j - s_i)
        not_self = ~torch.eye(M, dtype=torch.bool, device=sim.device)
        rank_pos = 1 + torch.where(pos[:, None, :] & not_self, G, 0.0).sum(-1)
        rank_all = 1 + torch.where(used[:, None, :] & not_self, G, 0.0).sum(-1)
        n_pos = pos.sum(1)
        ap = torch.where(pos, rank_pos / rank_all, 0.0).sum(1) / n_pos.clamp(min=1).to(sim.dtype)
        return mean_over(1 - ap, n_pos > 0)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, self_label={self.self_label}"
