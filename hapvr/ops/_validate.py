"""Input checks shared by the operators: one clear error naming the argument and what was expected."""

from __future__ import annotations

from typing import Sequence

import torch


def check_tensor(name: str, x, ndim: int | None = None, shape_doc: str = "") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{' ' + shape_doc if shape_doc else ''}, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {shape_doc}, got shape {tuple(x.shape)}")
    return x


def check_floating(name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def check_finite(name: str, x: torch.Tensor) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_int(name: str, value, low: int, high: int | None = None, high_doc: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high_doc or high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def lengths_tensor(name: str, lengths, batch: int, max_len: int, device: torch.device) -> torch.Tensor:
    """Per-video lengths as int64 on ``device``; None means every video has ``max_len`` frames."""
    if lengths is None:
        return torch.full((batch,), max_len, dtype=torch.int64, device=device)
    if isinstance(lengths, torch.Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got {lengths.dtype}")
        t = lengths.to(device=device, dtype=torch.int64)
    elif isinstance(lengths, Sequence):
        t = torch.as_tensor(list(lengths), dtype=torch.int64, device=device)
    else:
        raise TypeError(f"{name} must be None, a sequence of ints or an integer tensor")
    if t.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > max_len):
        raise ValueError(f"{name} must lie in [0, {max_len}] (the padded length), got {t.tolist()}")
    return t
