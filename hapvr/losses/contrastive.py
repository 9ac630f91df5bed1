"""Contrastive loss (Hadsell et al. 2006) on similarities: a pair-wise competitor of Table 2."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss
from hapvr.losses.registry import register_loss


@register_loss("contrastive")
class ContrastiveLoss(RankingLoss):
    """``mean_{pos pairs} [pos_margin - s]_+^p + mean_{neg pairs} [s - neg_margin]_+^p``.

    Positives are pulled above ``pos_margin``, negatives pushed below ``neg_margin``; ``p = 1``
    (``squared=False``) is the hinge form of pytorch-metric-learning, ``p = 2`` Hadsell's.
    The paper does not state its margins; the defaults suit scores in [0, 1].
    """

    def __init__(self, pos_margin: float = 1.0, neg_margin: float = 0.5, squared: bool = False,
                 self_label: int | None = -1):
        super().__init__(self_label)
        self.pos_margin, self.neg_margin, self.squared = pos_margin, neg_margin, squared

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos, neg = labels == 1, labels == 0
        pos_loss = torch.relu(self.pos_margin - sim)
        neg_loss = torch.relu(sim - self.neg_margin)
        if self.squared:
            pos_loss, neg_loss = pos_loss ** 2, neg_loss ** 2
        one = lambda m: m.sum().clamp(min=1).to(sim.dtype)  # noqa: E731
        return pos_loss[pos].sum() / one(pos) + neg_loss[neg].sum() / one(neg)

    def extra_repr(self) -> str:
        return (f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, squared={self.squared}, "
                f"self_label={self.self_label}")
