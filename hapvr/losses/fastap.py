"""FastAP (Cakir et al., CVPR 2019): a list-wise competitor of the paper's Table 2."""

from __future__ import annotations

import torch

from hapvr.losses.base import RankingLoss, mean_over
from hapvr.losses.histogram_ap import histogram_settings, soft_histogram_ap
from hapvr.losses.registry import register_loss


@register_loss("fastap")
class FastAPLoss(RankingLoss):
    """``1 - FastAP`` averaged over queries with a positive.

    FastAP quantises the distance axis into ``num_bins`` intervals (``num_bins + 1`` edges) with
    triangular soft binning; here the axis is the similarity range ``sim_range`` (distance and
    similarity are affinely related, e.g. ``d = 2 - 2 s`` for unit vectors, which leaves the
    estimate unchanged). Default range [0, 1], HAP-VR's training scores.
    """

    def __init__(self, num_bins: int = 10, sim_range: tuple[float, float] = (0.0, 1.0),
                 self_label: int | None = -1):
        super().__init__(self_label)
        self.num_bins, self.sim_range = histogram_settings(num_bins, sim_range, min_bins=1)

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lo, hi = self.sim_range
        centres = torch.linspace(hi, lo, self.num_bins + 1, dtype=sim.dtype, device=sim.device)
        ap, valid = soft_histogram_ap(sim, labels, centres, (hi - lo) / self.num_bins)
        return mean_over(1 - ap, valid)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, sim_range={self.sim_range}, self_label={self.self_label}"
