"""BlackBox AP (Rolinek et al., CVPR 2020): a list-wise competitor of the paper's Table 2.

The exact AP of each list is computed from ranks; the ranking, piecewise constant, is
differentiated by the blackbox-solver rule (Vlastelica et al., ICLR 2020): ranking is
``rk(s) = argmin_pi <s, pi>``, and its backward re-ranks the scores perturbed by the incoming
gradient, ``d L / d s = (rk(s + lambda dL/drk) - rk(s)) / lambda``.
"""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, mean_over
from hapvr.losses.registry import register_loss


def descending_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry of each row, 1 = highest score; ties go to the lower index."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    positions = torch.arange(1, scores.shape[-1] + 1, dtype=scores.dtype, device=scores.device)
    return torch.empty_like(scores).scatter_(-1, order, positions.expand_as(scores).contiguous())


class BlackBoxRank(torch.autograd.Function):
    """Ranks in the forward; the blackbox interpolation gradient in the backward."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, lambda_val: float) -> torch.Tensor:
        ranks = descending_ranks(scores)
        ctx.lambda_val = lambda_val
        ctx.save_for_backward(scores, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad_ranks: torch.Tensor):
        scores, ranks = ctx.saved_tensors
        perturbed = descending_ranks(scores + ctx.lambda_val * grad_ranks)
        return (perturbed - ranks) / ctx.lambda_val, None


@register_loss("blackbox_ap")
class BlackBoxAPLoss(RankingLoss):
    """``1 - AP`` with ``AP = 1/|P| sum_{i in P} rk_P(i) / rk(i)`` (ranks among the positives and
    among all labelled entries), averaged over queries with a positive.

    ``lambda_val``: interpolation strength of the blackbox gradient. ``margin``: positives are
    ranked as if their score were ``margin`` lower, so that a tie or a narrow win still costs.
    The paper does not state these; the defaults are the original's order of magnitude.
    """

    def __init__(self, lambda_val: float = 4.0, margin: float = 0.02, self_label: int | None = -1):
        super().__init__(self_label)
        if not lambda_val > 0:
            raise ValueError(f"lambda_val must be > 0, got {lambda_val}")
        self.lambda_val, self.margin = lambda_val, margin

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos, used = labels == 1, labels >= 0
        shifted = sim - self.margin * pos.to(sim.dtype)
        # Unlabelled entries rank last (-inf) and so do not move the ranks of the others.
        rank_all = BlackBoxRank.apply(torch.where(used, shifted, float("-inf")), self.lambda_val)
        rank_pos = BlackBoxRank.apply(torch.where(pos, shifted, float("-inf")), self.lambda_val)
        n_pos = pos.sum(1)
        ap = torch.where(pos, rank_pos / rank_all, 0.0).sum(1) / n_pos.clamp(min=1).to(sim.dtype)
        return mean_over(1 - ap, n_pos > 0)

    def extra_repr(self) -> str:
        return f"lambda_val={self.lambda_val}, margin={self.margin}, self_label={self.self_label}"
