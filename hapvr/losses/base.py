"""What every ranking loss shares: the ``(sim, labels)`` convention, its checks and the reduction.

A loss sees one ranked list per query: ``sim [Q, M]`` and ``labels [Q, M]`` with 1 = positive,
0 = negative, -1 = ignored. For the video level this is the ``N x N`` batch similarity matrix,
row k holding query k against every clip of the batch. The paper's lists exclude the query
itself (``S^{k+}`` requires ``k != i``), so by default a square input's diagonal is ignored;
``self_label`` overrides it (1 counts the query as its own positive, as the HAP-VR release does
for QuadLinear-AP; None keeps the given labels). A rectangular ``[N, M]`` input whose columns
include the queries themselves (a DDP rank's clips against the clips of all ranks) passes
``self_offset``: query k's own column is ``self_offset + k``.
"""

from __future__ import annotations

import torch
from torch import nn

from hapvr.ops._validate import check_finite, check_floating, check_label_values, check_tensor


def check_labels(name: str, labels, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``labels`` as int8 after checking shape, dtype, device and values (1 / 0 / -1)."""
    check_tensor(name, labels, None)
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must be an integer or bool tensor (1 positive, 0 negative, -1 ignored), "
                        f"got {labels.dtype}")
    if labels.device != device:
        raise ValueError(f"{name} must be on {device}, got {labels.device}")
    check_label_values(name, labels)
    return labels.to(torch.int8)


def labels_from_ids(ids: torch.Tensor) -> torch.Tensor:
    """Self-supervised batch labels ``[N, N]`` (int64): 1 where clips k and i come from the same
    video (``ids[k] == ids[i]``, the diagonal included), else 0. ``ids``: ``[N]`` video index per clip."""
    check_tensor("ids", ids, 1, "[N]")
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"ids must hold integer video indices, got {ids.dtype}")
    return (ids[:, None] == ids[None, :]).to(torch.int64)


def check_sim(name: str, sim, ndim: int = 2, shape_doc: str = "[Q, M]") -> torch.Tensor:
    check_tensor(name, sim, ndim, shape_doc)
    check_floating(name, sim)
    check_finite(name, sim)
    return sim


def self_column_offset(sim: torch.Tensor, self_offset) -> int | None:
    """Checked ``self_offset`` of a ``[Q, M]`` list (see :class:`RankingLoss`): 0 for a square
    ``sim`` when not given; None (no own column) for a rectangular one."""
    Q, M = sim.shape
    if self_offset is None:
        return 0 if Q == M else None
    if isinstance(self_offset, bool) or not isinstance(self_offset, int) or not 0 <= self_offset <= M - Q:
        raise ValueError(f"self_offset must be an int in [0, M - Q] = [0, {M - Q}] (query k's own column is "
                         f"self_offset + k), got {self_offset!r} for sim of shape {tuple(sim.shape)}")
    return self_offset


def mean_over(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``valid``; 0 (still attached to the graph) when none is."""
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    total = torch.where(valid, values, zero).sum()
    return total / valid.sum().clamp(min=1).to(values.dtype)


class RankingLoss(nn.Module):
    """Base of the losses on ranked lists: ``forward(sim [Q, M], labels [Q, M]) -> scalar``.

    Subclasses implement ``compute(sim, labels)`` on checked inputs (labels int8).
    """

    def __init__(self, self_label: int | None = -1):
        super().__init__()
        if self_label not in (None, -1, 0, 1):
            raise ValueError(f"self_label must be None, -1, 0 or 1, got {self_label!r}")
        self.self_label = self_label

    def prepare(self, sim, labels, self_offset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_sim("sim", sim)
        labels = check_labels("labels", labels, tuple(sim.shape), sim.device)
        self_offset = self_column_offset(sim, self_offset)
        if self.self_label is not None and self_offset is not None:
            labels = labels.clone()
            labels.diagonal(self_offset).fill_(self.self_label)
        return sim, labels

    def forward(self, sim: torch.Tensor, labels: torch.Tensor, self_offset: int | None = None) -> torch.Tensor:
        """``self_offset``: column of query 0's own entry (query k's is ``self_offset + k``); by
        default the diagonal of a square ``sim``, and no own column in a rectangular one."""
        sim, labels = self.prepare(sim, labels, self_offset)
        return self.compute(sim, labels)

    def compute(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"self_label={self.self_label}"
