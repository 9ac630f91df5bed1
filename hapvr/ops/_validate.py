"""Input checks shared by the operators: one clear error naming the argument and what was expected.

Checks of tensor values (finite, lengths in range, labels in a set) read no value back to the
host: they go through :func:`check_async`, a queued assertion (``torch._assert_async``). On the
CPU it raises at once, as a ``ValueError`` with the message; on CUDA it is checked on the device
and a failure stops the process at the next synchronisation with the same message, so the ops
never wait for the device to validate their inputs (docs/gpu.md, "Host reads").
"""

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


def check_async(condition: torch.Tensor, message: str) -> None:
    """Asserts a boolean scalar tensor without reading it on the host (see the module's docstring);
    ``ValueError(message)`` where the failure is known at once (CPU tensors). Any other error
    (on a GPU: out of memory, an earlier failure) propagates as it is."""
    try:
        torch._assert_async(condition, message[:250])  # CUDA keeps at most 255 characters
    except RuntimeError:
        if condition.device.type != "cpu":
            raise
        raise ValueError(message) from None


def check_finite(name: str, x: torch.Tensor) -> None:
    if x.numel():
        check_async(torch.isfinite(x).all(), f"{name} contains NaN or infinite values")


def check_label_values(name: str, labels: torch.Tensor) -> None:
    """Integer ``labels`` hold only 1 (positive), 0 (negative) or -1 (ignored); no host read (on the
    CPU the message names the values found)."""
    if labels.dtype == torch.bool or not labels.numel():
        return
    bad = (labels != 1) & (labels != 0) & (labels != -1)
    what = f"{name} must hold only 1 (positive), 0 (negative) or -1 (ignored)"
    try:
        check_async(~bad.any(), what)
    except ValueError:  # CPU tensors: known at once, so the message can name the values
        raise ValueError(f"{what}, found {labels[bad].unique()[:5].tolist()}") from None


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
        values = list(lengths)
        if len(values) == batch and any(not 0 <= v <= max_len for v in values if isinstance(v, int)):
            raise ValueError(f"{name} must lie in [0, {max_len}] (the padded length), got {values}")
        t = torch.as_tensor(values, dtype=torch.int64, device=device)
    else:
        raise TypeError(f"{name} must be None, a sequence of ints or an integer tensor")
    if t.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(t.shape)}")
    check_range(name, t, 0, max_len, " (the padded length)")
    return t


def check_range(name: str, t: torch.Tensor, low: int, high: int, doc: str = "") -> None:
    """Every value of the integer tensor ``t`` lies in ``[low, high]`` (no host read; on the CPU the
    message lists the values)."""
    if not t.numel():
        return
    what = f"{name} must lie in [{low}, {high}]{doc}"
    try:
        check_async((t >= low).all() & (t <= high).all(), what)
    except ValueError:  # the CPU's: known at once, so the message can list the values
        raise ValueError(f"{what}, got {t.tolist()}") from None
