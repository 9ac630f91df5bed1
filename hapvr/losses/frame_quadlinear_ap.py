"""Frame-level QuadLinear-AP with teacher pseudo-labels (HAP-VR paper section 3.4, eqs. 13-14).

For every positive video pair (a, b) and every frame x of a, the frames y of b form one ranked
list: the student's frame similarities ``m_s[a, b, x, :]`` are scored by QuadLinear-AP against
pseudo-labels from a frozen teacher's frame similarities ``S'[a, b, x, :]`` (eq. 13). Only the
positive pairs are gathered, and their ``(pair, query frame)`` rows become the query axis of
:func:`hapvr.ops.quadlinear_ap`: at N = 128 clips of T = 28 frames this is a few thousand lists
of 28 candidates, instead of the predecessor's ``N^2 T^3`` pair tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hapvr.losses.base import check_labels
from hapvr.losses.quadlinear_ap import check_delta_rho
from hapvr.losses.registry import register_loss
from hapvr.ops._validate import check_finite, check_floating, check_range, check_tensor
from hapvr.ops.quadlinear_ap import quadlinear_ap


def check_rates(r_t: float, r_b: float) -> None:
    for name, r in (("r_t", r_t), ("r_b", r_b)):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            raise ValueError(f"{name} must be a float in (0, 1), got {r!r}")
    if r_t + r_b > 1:
        raise ValueError(f"r_t + r_b must be <= 1 (positives and negatives may not overlap), got {r_t + r_b}")


def frame_pseudo_labels(teacher: torch.Tensor, r_t: float = 0.35, r_b: float = 0.35,
                        lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 14 along the last axis of ``teacher [..., T']``: int8 labels of the same shape.

    1 where the value is at least the ``K_t``-th largest of its row (``K_t = max(round(r_t L), 1)``,
    the rounding rule of ``topk_count``), 0 where it is at most the ``K_b``-th smallest
    (``K_b = max(round(r_b L), 1)``), -1 in between. ``L`` is the row's true length: ``lengths``
    (integers broadcastable to ``teacher.shape[:-1]``) counts the valid entries at the start of
    each row, the rest is padding and labelled -1; without it ``L = T'``. Ties at a threshold join
    its side; a value meeting both thresholds (a constant row) is positive, which leaves that row
    without negatives, so it is skipped by the loss.
    """
    check_rates(r_t, r_b)
    T2 = teacher.shape[-1]
    if T2 < 1:
        raise ValueError(f"teacher must have at least one entry along its last axis, got shape {tuple(teacher.shape)}")
    if lengths is None:
        L = torch.full(teacher.shape[:-1], T2, dtype=torch.int64, device=teacher.device)
    else:
        L = torch.as_tensor(lengths, device=teacher.device).to(torch.int64).expand(teacher.shape[:-1])
        check_range("lengths", L, 1, T2, " (valid entries per row)")
    # Per-row K of topk_count: float64 product and half-to-even rounding, like Python's round().
    k_pos = torch.round(L.to(torch.float64) * r_t).clamp(min=1).to(torch.int64)
    k_neg = torch.round(L.to(torch.float64) * r_b).clamp(min=1).to(torch.int64)
    inside = torch.arange(T2, device=teacher.device) < L[..., None]
    values = teacher.detach()
    ordered = values.masked_fill(~inside, float("-inf")).sort(dim=-1, descending=True).values
    pos_threshold = ordered.gather(-1, (k_pos - 1)[..., None])
    neg_threshold = ordered.gather(-1, (L - k_neg)[..., None])
    # torch.where, not boolean-mask assignment (which finds the mask's indices on the host)
    labels = torch.where((values <= neg_threshold) & inside, 0, -1).to(torch.int8)
    return torch.where((values >= pos_threshold) & inside, torch.ones_like(labels), labels)


def check_clip_lengths(lengths, N: int, max_len: int, device: torch.device) -> torch.Tensor:
    """``lengths [N]``: valid frames per clip, integers in ``[1, max_len]``; int64 on ``device``."""
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be an integer tensor [N={N}] of valid frames per clip, "
                        f"got {type(lengths).__name__}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers (valid frames per clip), got {lengths.dtype}")
    if tuple(lengths.shape) != (N,):
        raise ValueError(f"lengths must have shape ({N},), one entry per clip of frame_sims, "
                         f"got {tuple(lengths.shape)}")
    t = lengths.to(device=device, dtype=torch.int64)
    check_range("lengths", t, 1, max_len, " (1 to the padded frame count of frame_sims)")
    return t


def positive_pairs(labels, self_pairs: bool = True, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs :class:`FrameQuadLinearAPLoss` uses, ``(a, b)`` int64 on ``device``, from ``[N, N]``
    labels on the host (a CPU tensor or an array): those labelled 1, the diagonal only with
    ``self_pairs``. Read in place with numpy, so no device waits for them."""
    if isinstance(labels, torch.Tensor) and labels.device.type != "cpu":
        raise ValueError(f"positive_pairs reads labels on the host: give it the CPU copy, got labels on {labels.device}")
    host = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    chosen = host == 1
    if not self_pairs:
        chosen = chosen & ~np.eye(host.shape[0], dtype=bool)
    a, b = np.nonzero(chosen)
    return (torch.from_numpy(a.astype(np.int64)).to(device, non_blocking=True),
            torch.from_numpy(b.astype(np.int64)).to(device, non_blocking=True))


def check_pairs(pairs, N: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs = (a, b)``: two int64 tensors of one shape ``[P]`` on ``device`` with indices in ``[0, N)``."""
    if not isinstance(pairs, (tuple, list)) or len(pairs) != 2 or not all(isinstance(p, torch.Tensor) for p in pairs):
        raise TypeError("pairs must be a tuple (a, b) of index tensors (positive_pairs gives them)")
    a, b = pairs
    if a.dim() != 1 or a.shape != b.shape or a.dtype != torch.int64 or b.dtype != torch.int64:
        raise ValueError(f"pairs must be two int64 tensors of one shape [P], got {a.dtype} {tuple(a.shape)} and "
                         f"{b.dtype} {tuple(b.shape)}")
    if a.device != device or b.device != device:
        raise ValueError(f"pairs must be on {device}, got {a.device}")
    check_range("pairs", torch.cat([a, b]), 0, N - 1, " (clip indices)")
    return a, b


def teacher_frame_similarities(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Eq. 13: cosine similarities ``[..., T, T']`` of frame embeddings ``[..., T, D']`` and ``[..., T', D']``."""
    a = nn.functional.normalize(emb_a.detach(), dim=-1)
    b = nn.functional.normalize(emb_b.detach(), dim=-1)
    return a @ b.transpose(-1, -2)


@register_loss("frame_quadlinear_ap")
class FrameQuadLinearAPLoss(nn.Module):
    """``L^F_QLAP`` (section 3.4): frame-level QuadLinear-AP over the positive video pairs.

    ``forward(frame_sims, teacher, pair_labels, lengths=None)``:
        frame_sims: ``[N, N, T, T']`` student frame similarities ``m_s`` of every clip pair.
        teacher: either the teacher's frame similarities ``[N, N, T, T']`` (eq. 13), or its frame
            embeddings ``[N, T, D']`` (then eq. 13 is computed for the positive pairs only).
        pair_labels: ``[N, N]`` video labels; pairs labelled 1 are used, the diagonal (a clip
            paired with itself, labelled 1 by identity labels) included when ``self_pairs`` (the
            default); a diagonal entry labelled -1 stays ignored.
        lengths: optional ``[N]`` valid frames per clip of a padded batch (1 to ``min(T, T')``).
            Frames beyond a clip's length are neither query frames nor targets, and the
            pseudo-label counts ``K = max(round(r L), 1)`` use each target's true length ``L``.
            The padded batch then gives the value (and gradients) of every pair computed on its
            unpadded frames.
        pairs: optional ``(a, b)`` int64 index tensors of the pairs to use, as
            :func:`positive_pairs` gives them from the labels on the host (e.g. from the clips'
            video ids). Without them the pairs are found with ``nonzero`` on ``pair_labels``,
            which on a GPU waits for the device (one host read); with them the loss reads nothing
            back. They must be the pairs labelled 1 (the diagonal as ``self_pairs`` says).
    Returns the mean over positive pairs of the mean over their query frames of eq. 11; frames
    whose list lacks a positive or a negative are skipped, and so are pairs left without frames.

    Defaults are the paper's: ``delta_f = 0.05``, ``rho_f = 5.0``, ``r_t = r_b = 0.35``.
    ``self_pairs=True`` (default) counts each clip paired with itself, as the HAP-VR release
    does (its pair mask comes from identity labels, diagonal included; the paper is silent);
    ``False`` uses the pairs of distinct clips only.
    """

    def __init__(self, delta: float = 0.05, rho: float = 5.0, r_t: float = 0.35, r_b: float = 0.35,
                 backend: str = "auto", self_pairs: bool = True):
        super().__init__()
        check_rates(r_t, r_b)
        check_delta_rho(delta, rho)
        self.delta, self.rho, self.r_t, self.r_b, self.backend = delta, rho, r_t, r_b, backend
        self.self_pairs = bool(self_pairs)

    def forward(self, frame_sims: torch.Tensor, teacher: torch.Tensor, pair_labels: torch.Tensor,
                lengths: torch.Tensor | None = None, pairs: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        # Only the positive pairs are read: their rows are checked for NaN/inf (by quadlinear_ap
        # and below), not the whole [N, N, T, T'] batch, which would cost more than the loss.
        check_tensor("frame_sims", frame_sims, 4, "[N, N, T, T']")
        check_floating("frame_sims", frame_sims)
        N, N2, T, T2 = frame_sims.shape
        if N != N2:
            raise ValueError(f"frame_sims must be [N, N, T, T'] over clip pairs, got {tuple(frame_sims.shape)}")
        labels = check_labels("pair_labels", pair_labels, (N, N), frame_sims.device)
        if lengths is not None:
            lengths = check_clip_lengths(lengths, N, min(T, T2), frame_sims.device)
        check_tensor("teacher", teacher, None)
        check_floating("teacher", teacher)
        if teacher.dim() == 4:
            if teacher.shape != frame_sims.shape:
                raise ValueError(f"teacher similarities must have the shape of frame_sims "
                                 f"{tuple(frame_sims.shape)}, got {tuple(teacher.shape)}")
        elif teacher.dim() == 3:
            if teacher.shape[0] != N or teacher.shape[1] not in (T, T2) or T != T2:
                raise ValueError(f"teacher embeddings must be [N={N}, T={T}, D'] (needs T == T'), "
                                 f"got {tuple(teacher.shape)}")
        else:
            raise ValueError(f"teacher must be [N, N, T, T'] similarities or [N, T, D'] embeddings, "
                             f"got shape {tuple(teacher.shape)}")
        if pairs is None:
            chosen = labels == 1  # the diagonal too: a clip with itself, labelled 1 by identity labels
            if not self.self_pairs:
                chosen = chosen & ~torch.eye(N, dtype=torch.bool, device=frame_sims.device)
            a, b = torch.nonzero(chosen, as_tuple=True)
        else:
            a, b = check_pairs(pairs, N, frame_sims.device)
        if a.numel() == 0 or T == 0 or T2 == 0:
            return frame_sims.sum() * 0  # no positive pair: zero, but still part of the graph
        student = frame_sims[a, b]  # [P, T, T'] (pair, query frame) rows
        if teacher.dim() == 4:
            t_sims = teacher[a, b]
        else:
            t_sims = teacher_frame_similarities(teacher[a], teacher[b])
        if lengths is None:
            target_len = None
        else:
            target_len = lengths[b][:, None]  # [P, 1]: every query frame of pair p ranks b's frames
            inside = ((torch.arange(T, device=student.device) < lengths[a][:, None])[:, :, None]
                      & (torch.arange(T2, device=student.device) < target_len)[:, None, :])
            # Padding may hold anything (it carries no label and gets no gradient).
            student = student.masked_fill(~inside, 0.0)
            t_sims = t_sims.masked_fill(~inside, 0.0)
        check_finite("frame_sims", student)
        check_finite("teacher", t_sims)
        frame_labels = frame_pseudo_labels(t_sims.to(student.dtype), self.r_t, self.r_b, target_len)
        if lengths is not None:
            frame_labels.masked_fill_(~inside, -1)  # query frames past the clip's end are no lists
        risk, valid = quadlinear_ap(student.reshape(-1, T2), frame_labels.reshape(-1, T2), self.delta, self.rho,
                                    backend=self.backend)
        risk, valid = risk.view(-1, T), valid.view(-1, T)
        n_frames = valid.sum(1)
        per_pair = torch.where(valid, risk, 0.0).sum(1) / n_frames.clamp(min=1).to(risk.dtype)
        pair_ok = n_frames > 0
        return torch.where(pair_ok, per_pair, 0.0).sum() / pair_ok.sum().clamp(min=1).to(risk.dtype)

    def extra_repr(self) -> str:
        return (f"delta={self.delta}, rho={self.rho}, r_t={self.r_t}, r_b={self.r_b}, backend={self.backend!r}, "
                f"self_pairs={self.self_pairs}")
