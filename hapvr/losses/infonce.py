"""InfoNCE (HAP-VR paper appendix A.3, part of ``L_base``, eq. 16)."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, mean_over
from hapvr.losses.registry import register_loss


@register_loss("infonce")
class InfoNCELoss(RankingLoss):
    """``L^k_NCE = -1/|P| sum_{i in P} log(e^{s_ki/tau} / (e^{s_ki/tau} + sum_{j in N} e^{s_kj/tau}))``.

    Averaged over the queries that have a positive. Each positive competes with the negatives
    only, not with the other positives. Paper: ``tau = 0.03``; the query itself is excluded
    (``self_label = -1``).
    """

    def __init__(self, tau: float = 0.03, self_label: int | None = -1):
        super().__init__(self_label)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = tau

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = sim / self.tau
        pos, neg = labels == 1, labels == 0
        neg_lse = torch.where(neg, logits, float("-inf")).logsumexp(1, keepdim=True)  # [Q, 1]
        per_pair = torch.logaddexp(logits, neg_lse) - logits  # -log softmax against the negatives
        n_pos = pos.sum(1)
        per_query = torch.where(pos, per_pair, 0.0).sum(1) / n_pos.clamp(min=1).to(sim.dtype)
        return mean_over(per_query, n_pos > 0)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, self_label={self.self_label}"
