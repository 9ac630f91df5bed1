"""AP from soft histograms of the scores: the estimator shared by FastAP and DIR.

Scores are spread over ``B`` bin centres ``c_1 > ... > c_B`` (highest similarity first) with a
triangular kernel ``k(s, c) = [1 - |s - c| / width]_+``. With ``h+_b``, ``h_b`` the positive and
total mass in bin b and ``H+_b``, ``H_b`` their cumulative sums from the top bin,
``AP = 1/|P| sum_b h+_b H+_b / H_b``: precision at bin b times the recall gained there.
"""

from __future__ import annotations

import torch


def soft_histogram_ap(sim: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor,
                      width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query histogram AP ``[Q]`` and validity ``[Q]`` (a positive exists). ``centres`` descending."""
    pos = (labels == 1).to(sim.dtype)
    used = (labels >= 0).to(sim.dtype)
    kernel = torch.relu(1 - (sim[:, None, :] - centres[None, :, None]).abs() / width)  # [Q, B, M]
    h_pos = (kernel * pos[:, None, :]).sum(-1)
    h_all = (kernel * used[:, None, :]).sum(-1)
    H_pos, H_all = h_pos.cumsum(1), h_all.cumsum(1)
    safe = H_all > 0
    gain = torch.where(safe, h_pos * H_pos / torch.where(safe, H_all, 1.0), 0.0)
    n_pos = pos.sum(1)
    return gain.sum(1) / n_pos.clamp(min=1), n_pos > 0


def histogram_settings(num_bins: int, sim_range: tuple[float, float], min_bins: int) -> tuple[int, tuple[float, float]]:
    """``(num_bins, (low, high))`` checked: at least ``min_bins`` bins over a non-empty range."""
    if num_bins < min_bins:
        raise ValueError(f"num_bins must be >= {min_bins}, got {num_bins}")
    lo, hi = sim_range
    if not hi > lo:
        raise ValueError(f"sim_range must be (low, high) with high > low, got {sim_range}")
    return num_bins, (float(lo), float(hi))
