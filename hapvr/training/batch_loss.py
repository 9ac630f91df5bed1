"""The HAP-VR objective applied to one training batch (paper eq. 15): ``lambda_f L_F + lambda_v L_V + L_base``.

The terms are :class:`hapvr.losses.HAPVRObjective`'s (the objective itself); this module turns a
batch and the model's output into its inputs. Video-level QuadLinear-AP over the batch
matrix, frame-level QuadLinear-AP with teacher pseudo-labels inside positive pairs, InfoNCE,
SSHN and the similarity regulariser. Edited clips have different lengths, so the batch is padded
and the clip lengths go to the frame-level term, which ranks only valid frames and sizes its
pseudo-labels by each target's true length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hapvr.losses import HAPVRObjective
from hapvr.losses.frame_quadlinear_ap import positive_pairs
from hapvr.models import repeat_to_min_length
from hapvr.training.config import TrainConfig, objective_config


@dataclass
class ObjectiveInputs:
    """Everything the losses need from one training batch of ``N`` clips.

    video: ``[N, N]`` similarities in [-1, 1]; frame_maps: ``[N, N, T, T]`` student ``m_s``;
    raw / raw_mask: comparator output before Hardtanh and its validity; lengths: ``[N]`` frames;
    positives: ``[N, N]`` bool (diagonal True); teacher: ``[N, T, Dt]`` L2-normalised vectors.
    With cross-rank negatives (``--gather-negatives``) video, frame_maps, raw and raw_mask have
    ``M = world * N`` columns, positives is an int8 ``[N, M]`` label matrix (1 / 0 / -1 ignored)
    and ``offset`` is the column of the first local clip. host_positives: the ``[N, N]`` local
    positives on the CPU (as the batch holds them), from which the frame level's pairs are found
    without reading the device.
    """

    video: torch.Tensor
    frame_maps: torch.Tensor
    raw: torch.Tensor
    raw_mask: torch.Tensor
    lengths: torch.Tensor
    positives: torch.Tensor
    teacher: torch.Tensor
    offset: int = 0
    related: torch.Tensor | None = None  # [N, N] bool: sibling pairs (relevant at the coarser level only)
    host_positives: torch.Tensor | None = None


def objective_inputs(out, batch, min_frames: int, device: torch.device, labels: torch.Tensor | None = None,
                     offset: int = 0) -> ObjectiveInputs:
    """The losses' view of a training step: the model's output ``out`` on ``batch``.

    The model self-concatenates clips shorter than ``min_frames`` (``repeat_to_min_length``), so
    the teacher vectors are repeated the same way: frame y of the student's maps and of the
    teacher must be the same frame for the pseudo-labels to mean anything. With cross-rank
    negatives, ``labels [N, M]`` and ``offset`` come from :mod:`hapvr.training.gather`, and the
    teacher is padded to the maps' frame count (the longest clip over all ranks).
    """
    teacher, _ = repeat_to_min_length(batch.teacher.to(device, non_blocking=True),
                                      batch.lengths.to(device, non_blocking=True), min_frames)
    T = out.frame_maps.shape[-1]
    if teacher.shape[1] < T:
        teacher = torch.nn.functional.pad(teacher, (0, 0, 0, T - teacher.shape[1]))
    positives = batch.positives.to(device, non_blocking=True) if labels is None else labels.to(device)
    related = getattr(batch, "related", None)
    raw, raw_mask = out.raw, out.raw_mask
    if raw is None:  # a head without psi (attention): nothing for the regulariser to bound
        raw = raw_mask = torch.zeros(1, device=out.video.device)
    # the frame level uses the local [N, N] block, which is the batch's own positives with or without
    # cross-rank labels: its pairs are found on the host either way
    host = batch.positives if batch.positives.device.type == "cpu" else None
    return ObjectiveInputs(out.video.float(), out.frame_maps.float(), raw.float(), raw_mask,
                           out.query_lengths, positives, teacher, offset,
                           None if related is None or labels is not None else related.to(device, non_blocking=True),
                           host)


class BatchLoss:
    """Callable ``ObjectiveInputs -> (total, {name: value})`` with the weights of the config. The
    values are detached 0-d tensors on the device: reading them waits for the device, so the
    training loop reads them only on the steps it logs (:func:`as_floats`)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.objective = HAPVRObjective(objective_config(cfg))

    def __call__(self, x: ObjectiveInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sim01 = x.video / 2 + 0.5  # training maps scores to [0, 1]
        labels = x.positives.to(torch.int64)
        raw = x.raw * x.raw_mask  # padded cells are 0, inside [-1, 1]: no regulariser penalty
        pairs = None
        if x.host_positives is not None and self.objective.config.lambda_f:
            pairs = positive_pairs(x.host_positives, self.objective.config.frame_self_pairs, x.frame_maps.device)
        total, parts = self.objective(sim01, labels, raw=raw, frame_sims=x.frame_maps, teacher=x.teacher,
                                      lengths=x.lengths, self_offset=x.offset, related=x.related,
                                      frame_pairs=pairs)
        parts["loss"] = total.detach()
        return total, parts


def as_floats(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """The loss parts as Python floats: one read of the device for all of them."""
    names = list(parts)
    values = torch.stack([parts[k].float() for k in names]).tolist() if names else []
    return dict(zip(names, values))
