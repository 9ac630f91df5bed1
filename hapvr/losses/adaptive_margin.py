"""Adaptive-margin triplet loss, after "Improving Video Retrieval by Adaptive Margin" (CMGSD).

A fixed margin treats every negative as equally wrong, yet randomly drawn negatives can be
semantically close to the positive. Here each (query, positive, negative) triplet gets its own
margin, growing with how far apart a frozen teacher (self-distillation) places the positive and
the negative: ``m = clamp(base_margin + scale * (t_qi - t_qj), 0, max_margin)``.
"""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, check_sim
from hapvr.losses.registry import register_loss


@register_loss("adaptive_margin")
class AdaptiveMarginLoss(RankingLoss):
    """``mean over triplets (k, i in P, j in N) of [s_kj - s_ki + m_kij]_+`` with the adaptive
    margin ``m_kij = clamp(base_margin + scale * (t_ki - t_kj), 0, max_margin)``.

    ``forward(sim, labels, teacher_sim)``; ``teacher_sim`` has the shape of ``sim`` and is held
    constant (it measures the positive-negative distance, it is not trained).
    """

    def __init__(self, base_margin: float = 0.0, scale: float = 1.0, max_margin: float = 0.2,
                 self_label: int | None = -1):
        super().__init__(self_label)
        if max_margin < 0:
            raise ValueError(f"max_margin must be >= 0, got {max_margin}")
        self.base_margin, self.scale, self.max_margin = base_margin, scale, max_margin

    def forward(self, sim: torch.Tensor, labels: torch.Tensor, teacher_sim: torch.Tensor) -> torch.Tensor:
        sim, labels = self.prepare(sim, labels)
        check_sim("teacher_sim", teacher_sim)
        if teacher_sim.shape != sim.shape:
            raise ValueError(f"teacher_sim must have the shape of sim {tuple(sim.shape)}, got {tuple(teacher_sim.shape)}")
        return self.compute(sim, labels, teacher_sim.detach().to(sim.dtype))

    def margins(self, teacher_sim: torch.Tensor) -> torch.Tensor:
        """``[Q, i, j]`` margin of every (positive i, negative j) pair of each query."""
        gap = teacher_sim[:, :, None] - teacher_sim[:, None, :]
        return (self.base_margin + self.scale * gap).clamp(min=0.0, max=self.max_margin)

    def compute(self, sim, labels, teacher_sim) -> torch.Tensor:
        pos, neg = labels == 1, labels == 0
        hinge = torch.relu(sim[:, None, :] - sim[:, :, None] + self.margins(teacher_sim))
        used = pos[:, :, None] & neg[:, None, :]
        return torch.where(used, hinge, 0.0).sum() / used.sum().clamp(min=1).to(sim.dtype)

    def extra_repr(self) -> str:
        return (f"base_margin={self.base_margin}, scale={self.scale}, max_margin={self.max_margin}, "
                f"self_label={self.self_label}")
