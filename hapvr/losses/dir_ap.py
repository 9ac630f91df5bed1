"""DIR's listwise AP loss (Revaud et al., ICCV 2019): a list-wise competitor of Table 2."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, mean_over
from hapvr.losses.histogram_ap import histogram_settings, soft_histogram_ap
from hapvr.losses.registry import register_loss


@register_loss("dir")
class DIRAPLoss(RankingLoss):
    """``1 - mAP_Q`` with histogram binning: ``num_bins`` bin centres evenly spaced over
    ``sim_range`` from the top (``b_1`` = the highest similarity), bin width
    ``Delta = range / (num_bins - 1)``, triangular assignment; precision and incremental recall
    per bin give AP. Averaged over queries with a positive. The original uses cosine similarity
    in [-1, 1] with 20 bins; the default range here is HAP-VR's training scores, [0, 1].
    """

    def __init__(self, num_bins: int = 20, sim_range: tuple[float, float] = (0.0, 1.0),
                 self_label: int | None = -1):
        super().__init__(self_label)
        self.num_bins, self.sim_range = histogram_settings(num_bins, sim_range, min_bins=2)

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lo, hi = self.sim_range
        centres = torch.linspace(hi, lo, self.num_bins, dtype=sim.dtype, device=sim.device)
        ap, valid = soft_histogram_ap(sim, labels, centres, (hi - lo) / (self.num_bins - 1))
        return mean_over(1 - ap, valid)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, sim_range={self.sim_range}, self_label={self.self_label}"
