"""Loads hapvr's compiled extensions and records why one is missing.

``hapvr._C`` holds the op schemas and the C++ CPU kernels; ``hapvr._C_cuda`` the CUDA kernels.
If ``_C`` cannot be loaded, hapvr still works: the spatial similarity runs on the ``tiled``
ATen backend (same bounded memory, somewhat slower), the losses on their pure-PyTorch
references; it warns once.
"""

from __future__ import annotations

import importlib
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which the extensions link against)

cpu_error: str | None = None
cuda_error: str | None = None

try:
    importlib.import_module("hapvr._C")
except ImportError as exc:  # not built, or built against another torch
    cpu_error = f"hapvr._C could not be loaded ({exc})"
    warnings.warn(
        f"{cpu_error}; hapvr falls back to its ATen 'tiled' similarity backend and pure-PyTorch loss "
        "references, which are slower. Reinstall with `pip install --no-build-isolation .` to build them.",
        RuntimeWarning,
        stacklevel=2,
    )

if cpu_error is not None:
    cuda_error = "hapvr._C (which defines the op schemas) is not loaded"
else:
    try:
        importlib.import_module("hapvr._C_cuda")
    except ImportError as exc:
        cuda_error = (
            "hapvr._C_cuda was not built (no CUDA toolkit or GPU at install time; "
            f"FORCE_CUDA=1 builds it): {exc}"
        )

has_cpu_kernels = cpu_error is None
has_cuda_kernels = cuda_error is None
