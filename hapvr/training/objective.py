"""The HAP-VR training objective on one batch (paper eq. 15): ``lambda_f L_F + lambda_v L_V + L_base``.

The terms are :class:`hapvr.losses.HAPVRObjective`'s: video-level QuadLinear-AP over the batch
matrix, frame-level QuadLinear-AP with teacher pseudo-labels inside positive pairs, InfoNCE,
SSHN and the similarity regulariser. One adaptation: edited clips have different lengths and
``FrameQuadLinearAPLoss`` has no padding mask, so when a batch is padded the frame-level term is
computed here on the valid frames only (same eq. 11 through :func:`hapvr.ops.quadlinear_ap`,
same ``K = max(round(r T'), 1)`` pseudo-label rule on each target's true length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    n_pos = torch.clamp(torch.round(Lb * r_t), min=1).long()[:, None, None]  # half to even, like round()
    n_neg = torch.clamp(torch.round(Lb * r_b), min=1).long()[:, None, None]
    labels = torch.full_like(rank, -1)
    labels = torch.where(rank < n_pos, torch.ones_like(rank), labels)
    labels = torch.where((rank >= lengths[b][:, None, None] - n_neg) & (rank >= n_pos), torch.zeros_like(rank), labels)
    valid = row_ok[:, :, None] & col_ok[:, None, :]
    return torch.where(valid, labels, torch.full_like(labels, -1)).to(torch.int8)


class HAPVRLoss:
    """Callable ``ObjectiveInputs -> (total, {name: value})`` with the weights of the config."""

    def __init__(self, cfg):
        from hapvr.losses import HAPVRObjective

        self.cfg = cfg
        common = dict(lambda_v=cfg.lambda_v, lambda_s=cfg.lambda_s, lambda_reg=cfg.lambda_r, delta_v=cfg.delta_v,
                      rho_v=cfg.rho_v, delta_f=cfg.delta_f, rho_f=cfg.rho_f, r_t=cfg.r_t, r_b=cfg.r_b, tau=cfg.tau)
        self.full = HAPVRObjective(lambda_f=cfg.lambda_f, **common)
        self.no_frames = HAPVRObjective(lambda_f=0.0, **common)

    def frame_term(self, x: ObjectiveInputs) -> torch.Tensor:
        """Frame-level QuadLinear-AP over positive pairs, padding excluded."""
        from hapvr.ops import quadlinear_ap

        c = self.cfg
        N = x.positives.shape[0]
        eye = torch.eye(N, dtype=torch.bool, device=x.positives.device)
        pairs = (x.positives & ~eye).nonzero()
        if not len(pairs):
            return x.frame_maps.sum() * 0
        labels = frame_pseudo_labels(x.teacher, x.lengths, pairs, c.r_t, c.r_b)
        T = x.frame_maps.shape[-1]
        scores = x.frame_maps[pairs[:, 0], pairs[:, 1]].reshape(-1, T)
        res = quadlinear_ap(scores, labels.reshape(-1, T), c.delta_f, c.rho_f)
        risk = res.risk.view(len(pairs), -1)
        ok = res.valid.view(len(pairs), -1).to(risk.dtype)
        n = ok.sum(1)
        per_pair = (risk * ok).sum(1) / n.clamp(min=1)
        return torch.where(n > 0, per_pair, 0.0).sum() / (n > 0).sum().clamp(min=1).to(risk.dtype)

    def __call__(self, x: ObjectiveInputs) -> tuple[torch.Tensor, dict[str, float]]:
        sim01 = x.video / 2 + 0.5  # training maps scores to [0, 1]
        labels = x.positives.to(torch.int64)
        raw = x.raw * x.raw_mask  # padded cells are 0, inside [-1, 1]: no regulariser penalty
        if bool((x.lengths == x.frame_maps.shape[-1]).all()):
            total, parts = self.full(sim01, labels, raw=raw, frame_sims=x.frame_maps, teacher=x.teacher)
        else:
            total, parts = self.no_frames(sim01, labels, raw=raw)
            frame = self.frame_term(x)
            total = total + self.cfg.lambda_f * frame
            parts = dict(parts, frame_ap=frame.detach())
        out = {k: float(v) for k, v in parts.items()}
        out["loss"] = float(total.detach())
        return total, out


def build_objective(cfg):
    """The HAP-VR objective of eq. 15 for the trainer (see the module docstring)."""
    return HAPVRLoss(cfg)
