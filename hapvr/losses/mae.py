"""Mean absolute error: a point-wise competitor of the paper's Table 2."""

from __future__ import annotations

import torch

from hapvr.losses.pointwise import PointwiseLoss
from hapvr.losses.registry import register_loss


@register_loss("mae")
class MAELoss(PointwiseLoss):
    """``mean |s - y|`` over the labelled entries; ``y = 1`` for positives, ``negative_target``
    (0 for scores in [0, 1]) for negatives."""

    @staticmethod
    def penalty(diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()
