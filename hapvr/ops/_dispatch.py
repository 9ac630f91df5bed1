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

BACKEND_NAMES = ("cpp", "cuda", "triton", "reference")


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


def install_reasons() -> dict[str, str | None]:
    """Why each backend cannot run at all in this install (None = it can run)."""
    cuda = _ext.cuda_error
    if cuda is None and not torch.cuda.is_available():
        cuda = "hapvr._C_cuda is built but no CUDA device is visible"
    return {"cpp": _ext.cpu_error, "cuda": cuda, "triton": _triton_error(), "reference": None}


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


def select(op: str, backends: Sequence[Backend], requested: str, *args) -> Backend:
    """The backend that runs ``op`` on ``args``: ``requested`` by name, or the first able one."""
    names = [b.name for b in backends]
    if requested != "auto" and requested not in names:
        raise ValueError(f"{op}: backend must be 'auto' or one of {names}, got {requested!r}")
    install = install_reasons()
    report = []
    for b in backends:
        if requested != "auto" and b.name != requested:
            continue
        why = [install[b.name]] if install.get(b.name) else []
        why += b.reasons(*args)
        if not why:
            return b
        report.append(f"  {b.name}: " + "; ".join(why))
    raise NoBackendError(f"{op}: no backend can run this input:\n" + "\n".join(report))


def explain(op: str, backends: Sequence[Backend], *args) -> dict[str, list[str]]:
    """For each backend, why it cannot run ``args`` (an empty list means it can)."""
    install = install_reasons()
    return {
        b.name: ([install[b.name]] if install.get(b.name) else []) + b.reasons(*args) for b in backends
    }
