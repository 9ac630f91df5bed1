"""Video-level QuadLinear-AP loss (HAP-VR paper eqs. 11-12)."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, mean_over
from hapvr.losses.registry import register_loss
from hapvr.ops.quadlinear_ap import quadlinear_ap


def check_delta_rho(delta: float, rho: float) -> None:
    """The margin of eq. 10 must be positive and the weight of eq. 11 non-negative."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < float("inf"):
        raise ValueError(f"delta must be a finite float > 0 (the margin of eq. 10), got {delta!r}")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 <= rho < float("inf"):
        raise ValueError(f"rho must be a finite float >= 0 (the weight of eq. 11), got {rho!r}")


@register_loss("quadlinear_ap")
class QuadLinearAPLoss(RankingLoss):
    """``L^V_QLAP`` (eq. 12): the QuadLinear-AP risk (eq. 11) of every query, averaged.

    Input: the batch similarity matrix ``sim [N, N]`` (or any ``[Q, M]`` lists) and its
    self-supervised labels (1 = two views of one video, 0 = different videos, -1 = ignored).
    Queries without a positive or a negative do not count in the mean.

    Args:
        delta: margin of ``R-`` (eq. 10). Paper: ``delta_v = 0.05``.
        rho: weight of the positive-positive ranks (eq. 11). Paper: ``rho_v = 0.10``.
        self_label: label of the diagonal of a square ``sim``. Default 1: the query counts as its
            own positive, as in the HAP-VR release (whose training produced the paper's numbers);
            -1 excludes it, as the paper's definition of ``S^{k+}`` does.
        backend: backend of :func:`hapvr.ops.quadlinear_ap`.
    """

    def __init__(self, delta: float = 0.05, rho: float = 0.10, self_label: int | None = 1,
                 backend: str = "auto"):
        super().__init__(self_label)
        check_delta_rho(delta, rho)
        self.delta, self.rho, self.backend = delta, rho, backend

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        risk, valid = quadlinear_ap(sim, labels, self.delta, self.rho, backend=self.backend)
        return mean_over(risk, valid)

    def extra_repr(self) -> str:
        return f"delta={self.delta}, rho={self.rho}, self_label={self.self_label}, backend={self.backend!r}"
