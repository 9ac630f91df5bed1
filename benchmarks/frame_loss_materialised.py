"""The straightforward frame-level QuadLinear-AP: every clip pair, every pair of target frames.

The baseline of ``bench_loss.py`` (and a cross-check in the tests): it evaluates eq. 11 for all
``N^2`` clip pairs through ``[N, N, T, T', T']`` difference tensors, as the predecessor does, and
keeps the positive pairs only at the end. Same value as ``hapvr.losses.FrameQuadLinearAPLoss``.
"""

from __future__ import annotations

import torch

from hapvr.losses.frame_quadlinear_ap import frame_pseudo_labels
from hapvr.ops.quadlinear_ap import heaviside, quadlinear_r_minus


def frame_quadlinear_ap_materialised(frame_sims, teacher_sims, pair_labels, delta=0.05, rho=5.0,
                                     r_t=0.35, r_b=0.35):
    N = frame_sims.shape[0]
    labels = frame_pseudo_labels(teacher_sims, r_t, r_b)  # [N, N, T, T']
    pos, neg = labels == 1, labels == 0
    d = frame_sims[..., None, :] - frame_sims[..., :, None]  # [N, N, T, T', T']: s_j - s_i
    num = (quadlinear_r_minus(d, delta) * neg[..., None, :]).sum(-1)
    den = 1 + rho * (heaviside(d.detach()) * pos[..., None, :]).sum(-1)
    n_pos = pos.sum(-1)
    frame_risk = ((num / (den + num)) * pos).sum(-1) / n_pos.clamp(min=1)  # [N, N, T]
    frame_ok = (n_pos > 0) & (neg.sum(-1) > 0)
    n_frames = frame_ok.sum(-1)
    pair_risk = (frame_risk * frame_ok).sum(-1) / n_frames.clamp(min=1)  # [N, N]
    eye = torch.eye(N, dtype=torch.bool, device=frame_sims.device)
    pair_ok = (pair_labels == 1) & ~eye & (n_frames > 0)
    return (pair_risk * pair_ok).sum() / pair_ok.sum().clamp(min=1)
