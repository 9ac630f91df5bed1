"""Backend selection shared by every hapvr operator (after xformers' dispatcher).

Each backend of an op states, for a given input, the reasons it cannot run it. ``backend="auto"``
takes the first backend (in the op's preference order) with no reasons; naming a backend forces
it, and the error when nothing can run lists every backend's reasons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hapvr import _ext

BACKEND_NAMES = ("cpp", "tiled", "cuda", "triton", "reference")


def triton_interpreted() -> bool:
    """True when Triton kernels run on CPU tensors through ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:  # pragma: no cover - triton ships with CUDA torch builds
        return f"triton is not installed ({exc})"
    if not torch.cuda.is_available() and not triton_interpreted():
        return "triton needs a CUDA device (or TRITON_INTERPRET=1 to interpret it on the CPU)"
    return None


def install_reasons(assume_device: bool = False) -> dict[str, str | None]:
    """Why each backend cannot run at all in this install (None = it can run).

    ``assume_device``: answer as if a CUDA device were present (what a GPU machine with this
    install would say): only reasons about the build remain."""
    cuda = _ext.cuda_error
    if cuda is None and not torch.cuda.is_available() and not assume_device:
        cuda = "hapvr._C_cuda is built but no CUDA device is visible"
    triton_why = _triton_error()
    if assume_device and triton_why is not None and "needs a CUDA device" in triton_why:
        triton_why = None
    return {"cpp": _ext.cpu_error, "tiled": None, "cuda": cuda, "triton": triton_why, "reference": None}


def available_backends() -> list[str]:
    """Names of the backends this install can run, in auto-selection preference order."""
    return [name for name, why in install_reasons().items() if why is None]


@dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    ``reasons(*args)`` lists why it cannot run these arguments (empty = it can);
    ``run(*args)`` computes the op.
    """

    name: str
    reasons: Callable[..., list[str]]
    run: Callable[..., object]


class NoBackendError(RuntimeError):
    pass


def _reasons(b: Backend, install: dict, args, device_type):
    why = [install[b.name]] if install.get(b.name) else []
    return why + b.reasons(*args)


def select(op: str, backends: Sequence[Backend], requested: str, *args, auto: Sequence[str] | None = None,
           device_type: str | None = None) -> Backend:
    """The backend that runs ``op`` on ``args``: ``requested`` by name, or with ``"auto"`` the
    first able one of ``auto`` (names in preference order; default: every backend in order)."""
    names = [b.name for b in backends]
    if requested != "auto" and requested not in names:
        raise ValueError(f"{op}: backend must be 'auto' or one of {names}, got {requested!r}")
    install = install_reasons()
    by_name = {b.name: b for b in backends}
    order = [requested] if requested != "auto" else list(auto if auto is not None else names)
    report = []
    for name in order:
        b = by_name[name]
        why = _reasons(b, install, args, device_type)
        if not why:
            return b
        report.append(f"  {b.name}: " + "; ".join(why))
    where = f" on {device_type}" if device_type and requested == "auto" else ""
    raise NoBackendError(f"{op}: no backend can run this input{where}:\n" + "\n".join(report))


def explain(op: str, backends: Sequence[Backend], *args, device_type: str | None = None,
            assume_device: bool = False) -> dict[str, list[str]]:
    """For each backend, why it cannot run ``args`` (an empty list means it can)."""
    install = install_reasons(assume_device)
    return {b.name: _reasons(b, install, args, device_type) for b in backends}
