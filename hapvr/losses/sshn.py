"""Self-similarity and hard-negative loss SSHN (HAP-VR paper appendix A.3, from S2VS)."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss
from hapvr.losses.registry import register_loss


@register_loss("sshn")
class SSHNLoss(RankingLoss):
    """``L^k_SSHN = -log(clamp(s_kk, eps)) - log(clamp(1 - max_{j in N} s_kj, eps))``, mean over k.

    Pushes each clip's self-similarity towards 1 (the comparator tends to shrink it) and its
    hardest negative towards 0. Needs the square batch matrix (the diagonal is ``s_kk``) with
    scores in [0, 1]; ``eps = 1e-3`` keeps the logarithms finite. A query without negatives
    contributes only its self term. A rectangular ``[N, M]`` matrix needs ``self_offset`` (query
    k's own column is ``self_offset + k``).
    """

    def __init__(self, eps: float = 1e-3):
        super().__init__(self_label=-1)  # the diagonal is the self term, never a negative
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.eps = eps

    def forward(self, sim: torch.Tensor, labels: torch.Tensor, self_offset: int | None = None) -> torch.Tensor:
        sim, labels = self.prepare(sim, labels, self_offset)
        if self_offset is None and sim.shape[0] != sim.shape[1]:
            raise ValueError(f"sim must be the square batch matrix [N, N] (SSHN needs s_kk), or pass self_offset "
                             f"(query k's own column), got {tuple(sim.shape)}")
        return self.compute(sim, labels, self_offset or 0)

    def compute(self, sim: torch.Tensor, labels: torch.Tensor, self_offset: int = 0) -> torch.Tensor:
        neg = labels == 0
        self_term = -torch.log(torch.diagonal(sim, self_offset).clamp(min=self.eps))
        hardest = torch.where(neg, sim, float("-inf")).amax(1)
        neg_term = -torch.log((1 - hardest).clamp(min=self.eps))
        neg_term = torch.where(neg.any(1), neg_term, 0.0)
        return (self_term + neg_term).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
