"""Similarity regulariser on the raw comparator output (from ViSiL/S2VS; weight 1 in HAP-VR)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from hapvr.losses.registry import register_loss
from hapvr.ops._validate import check_floating


@register_loss("similarity_regularizer")
class SimilarityRegularizer(nn.Module):
    """``sum |min(x + 1, 0)| + sum |max(x - 1, 0)|`` over the raw comparator output ``x``.

    Penalises values outside [-1, 1], where the hardtanh that follows would cut the gradient.
    Takes one tensor of any shape, or a sequence of them (maps of different sizes). A sum, not a
    mean, as in the predecessors.
    """

    def forward(self, raw: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        tensors = [raw] if isinstance(raw, torch.Tensor) else list(raw)
        if not tensors:
            raise ValueError("raw must be a tensor or a non-empty sequence of tensors")
        total = None
        for k, x in enumerate(tensors):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"raw[{k}] must be a torch.Tensor, got {type(x).__name__}")
            check_floating("raw", x)
            part = torch.relu(-1 - x).sum() + torch.relu(x - 1).sum()
            total = part if total is None else total + part
        return total
