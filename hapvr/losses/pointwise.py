"""Shared form of the point-wise competitors (MAE, MSE) of the paper's Table 2."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss


class PointwiseLoss(RankingLoss):
    """``mean penalty(s - y)`` over the labelled entries; ``y = 1`` for positives,
    ``negative_target`` (0 for scores in [0, 1]) for negatives. Subclasses define ``penalty``."""

    def __init__(self, negative_target: float = 0.0, self_label: int | None = -1):
        super().__init__(self_label)
        self.negative_target = negative_target

    @staticmethod
    def penalty(diff: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        used = labels >= 0
        target = torch.where(labels == 1, 1.0, self.negative_target).to(sim.dtype)
        return self.penalty(sim - target)[used].sum() / used.sum().clamp(min=1).to(sim.dtype)

    def extra_repr(self) -> str:
        return f"negative_target={self.negative_target}, self_label={self.self_label}"
