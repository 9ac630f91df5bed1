"""The HAP-VR training objective on one batch (paper eq. 15): ``lambda_f L_F + lambda_v L_V + L_base``.

``L_V`` (video-level QuadLinear-AP, eq. 11) ranks the batch per query row; ``L_F`` (frame-level
QuadLinear-AP, section 3.4) ranks the target frames of every positive pair per query frame, with
positives / negatives from the teacher; ``L_base`` = InfoNCE + ``lambda_s`` SSHN +
``lambda_r`` similarity regulariser (SPEC section 2).

The losses themselves come from :mod:`hapvr.losses` when that package is installed; until then
this module composes them from the fused operator :func:`hapvr.ops.quadlinear_ap` (the same
risk) and three short formulas, so the trainer runs either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ObjectiveInputs:
    """Everything the losses need from one training batch of ``N`` clips.

    video: ``[N, N]`` similarities in [-1, 1]; frame_maps: ``[N, N, T, T]`` student ``m_s``;
    raw / raw_mask: comparator output before Hardtanh and its validity; lengths: ``[N]`` frames;
    positives: ``[N, N]`` bool (diagonal True); teacher: ``[N, T, Dt]`` L2-normalised vectors.
    """

    video: torch.Tensor
    frame_maps: torch.Tensor
    raw: torch.Tensor
    raw_mask: torch.Tensor
    lengths: torch.Tensor
    positives: torch.Tensor
    teacher: torch.Tensor


def frame_pseudo_labels(teacher: torch.Tensor, lengths: torch.Tensor, pairs: torch.Tensor, r_t: float, r_b: float):
    """Teacher pseudo-labels ``[P, T, T]`` for the frames of pairs ``(a, b)``: per frame x of a, the
    top ``r_t L_b`` frames of b by teacher cosine are positives (1), the bottom ``r_b L_b``
    negatives (0), the rest and padding ignored (-1)."""
    a, b = pairs[:, 0], pairs[:, 1]
    T = teacher.shape[1]
    sim = torch.bmm(teacher[a].float(), teacher[b].float().transpose(1, 2))  # [P, T, T]
    col_ok = torch.arange(T, device=sim.device)[None, :] < lengths[b][:, None]  # [P, T]
    row_ok = torch.arange(T, device=sim.device)[None, :] < lengths[a][:, None]
    sim = sim.masked_fill(~col_ok[:, None, :], float("-inf"))
    rank = sim.argsort(-1, descending=True).argsort(-1)  # 0 = most similar
    Lb = lengths[b].to(torch.float64)
    n_pos = torch.clamp((Lb * r_t).floor(), min=1).long()[:, None, None]
    n_neg = torch.clamp((Lb * r_b).floor(), min=1).long()[:, None, None]
    labels = torch.full_like(rank, -1)
    labels = torch.where(rank < n_pos, torch.ones_like(rank), labels)
    labels = torch.where((rank >= lengths[b][:, None, None] - n_neg) & (rank >= n_pos), torch.zeros_like(rank), labels)
    valid = row_ok[:, :, None] & col_ok[:, None, :]
    return torch.where(valid, labels, torch.full_like(labels, -1)).to(torch.int8)


class HAPVRLoss:
    """Callable ``ObjectiveInputs -> (total, {name: value})`` with the weights of the config."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, x: ObjectiveInputs) -> tuple[torch.Tensor, dict[str, float]]:
        from hapvr.ops import quadlinear_ap

        c = self.cfg
        N = x.video.shape[0]
        sim01 = x.video / 2 + 0.5  # training maps scores to [0, 1]
        eye = torch.eye(N, dtype=torch.bool, device=sim01.device)
        pos = x.positives
        # L_V: one query per row, the batch as its list (the query counts as a positive)
        l_v_rows = quadlinear_ap(sim01, pos.to(torch.int8), c.delta_v, c.rho_v)
        l_v = l_v_rows.risk[l_v_rows.valid].mean() if bool(l_v_rows.valid.any()) else sim01.sum() * 0
        # L_F: frame-level ranking inside every positive pair of distinct clips
        pairs = (pos & ~eye).nonzero()
        if len(pairs):
            labels = frame_pseudo_labels(x.teacher, x.lengths, pairs, c.r_t, c.r_b)
            T = x.frame_maps.shape[-1]
            scores = x.frame_maps[pairs[:, 0], pairs[:, 1]].reshape(-1, T)
            res = quadlinear_ap(scores, labels.reshape(-1, T), c.delta_f, c.rho_f)
            risk = res.risk.view(len(pairs), -1)
            ok = res.valid.view(len(pairs), -1).to(risk.dtype)
            per_pair = (risk * ok).sum(1) / ok.sum(1).clamp(min=1)
            l_f = per_pair[ok.sum(1) > 0].mean() if bool((ok.sum(1) > 0).any()) else scores.sum() * 0
        else:
            l_f = x.frame_maps.sum() * 0
        # InfoNCE over the batch (tau), the clip itself left out
        logits = (x.video / c.tau).masked_fill(eye, float("-inf"))
        others = pos & ~eye
        has = others.any(1)
        log_den = torch.logsumexp(logits, 1)
        log_num = torch.logsumexp(logits.masked_fill(~others, float("-inf")), 1)
        l_nce = (log_den - log_num)[has].mean() if bool(has.any()) else logits.new_zeros(())
        # SSHN: push the hardest negative down, the self-similarity up
        hardest = sim01.masked_fill(pos, float("-inf")).max(1).values
        hardest = torch.where(torch.isfinite(hardest), hardest, torch.zeros_like(hardest))
        l_sshn = (-torch.log(torch.clamp(1 - hardest, min=1e-3)) - torch.log(torch.clamp(sim01.diagonal(), min=1e-3))).mean()
        # regulariser: comparator outputs outside [-1, 1]
        r = x.raw.float()
        l_reg = ((torch.clamp(r + 1, max=0).abs() + torch.clamp(r - 1, min=0).abs()) * x.raw_mask).sum()
        total = c.lambda_f * l_f + c.lambda_v * l_v + l_nce + c.lambda_s * l_sshn + c.lambda_r * l_reg
        parts = dict(loss=total, frame_ap=l_f, video_ap=l_v, infonce=l_nce, sshn=l_sshn, reg=l_reg)
        return total, {k: float(v.detach()) for k, v in parts.items()}


def build_objective(cfg):
    """The HAP-VR objective of eq. 15 for the trainer (see the module docstring)."""
    return HAPVRLoss(cfg)
