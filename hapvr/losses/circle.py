"""Circle loss (Sun et al., CVPR 2020): a pair-wise competitor of the paper's Table 2."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, mean_over
from hapvr.losses.registry import register_loss


@register_loss("circle")
class CircleLoss(RankingLoss):
    """Per query: ``softplus(logsumexp_j gamma a_j (s_j - m) + logsumexp_i -gamma a_i (s_i - 1 + m))``
    with self-paced weights ``a_i = [1 + m - s_i]_+`` (positives) and ``a_j = [s_j + m]_+``
    (negatives), held constant as in the original. Averaged over queries with a positive and a
    negative. Defaults ``m = 0.4``, ``gamma = 80`` (the original's retrieval setting).
    """

    def __init__(self, m: float = 0.4, gamma: float = 80.0, self_label: int | None = -1):
        super().__init__(self_label)
        self.m, self.gamma = m, gamma

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos, neg = labels == 1, labels == 0
        a_p = torch.relu(1 + self.m - sim.detach())
        a_n = torch.relu(sim.detach() + self.m)
        logit_p = -self.gamma * a_p * (sim - (1 - self.m))
        logit_n = self.gamma * a_n * (sim - self.m)
        lse_p = torch.where(pos, logit_p, float("-inf")).logsumexp(1)
        lse_n = torch.where(neg, logit_n, float("-inf")).logsumexp(1)
        valid = pos.any(1) & neg.any(1)
        per_query = torch.nn.functional.softplus(torch.where(valid, lse_p + lse_n, 0.0))
        return mean_over(per_query, valid)

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}, self_label={self.self_label}"
