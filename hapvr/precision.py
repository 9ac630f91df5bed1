"""Precision of the similarity GEMMs: ``auto`` (default), ``fp32``, ``bf16`` or ``fp16``.

The region features are cast to this dtype only for the spatial TopK-Chamfer (the heavy
``T R x T' R`` products); sums inside it accumulate in fp32 and everything after it (the
comparator, the temporal TopK-Chamfer) runs in fp32.

``auto`` resolves per device (:func:`resolve_precision`):

- CUDA: ``bf16``. The eval pair's GEMM (T = T' = 1024, R = 9, D = 512: 87 GFLOP) runs on tensor
  cores instead of CUDA cores (docs/gpu.md); scores move by about 1e-3 (docs/scores.md).
- CPU: ``fp32``, bf16 instructions or not. With them (avx512_bf16, AMX-BF16:
  :func:`cpu_bf16_hardware`) ``--precision bf16`` is faster: the ``tiled`` backend's oneDNN bf16
  GEMM against the compiled fp32 kernel, 1.6-2.3x at every shape from a built-in-benchmark batch
  (4 x 32 against 52 x 40 frames) to an eval pair (1 x 512 against 4 x 512), avx512_bf16 CPU,
  2 threads, quiet machine, 2026-12-07 (``python -m benchmarks.bench_precision --pair``). It is
  not the default because it moves every score by up to ~1e-3: the scores users already hold
  would change, their score caches (keyed on the precision) would be refused and recomputed,
  and the copy thresholds were calibrated in fp32; on a GPU there is no such history. Without
  bf16 instructions bf16 is emulated and 4.1x slower (AVX2 CPU, 2026-11-29,
  benchmarks/results/precision.json).
- any other device: ``fp32``.

TF32: fp32 matmuls on CUDA may use TF32 tensor cores (:func:`configure_tf32`, called by every
command on a CUDA device); ``HAPVR_TF32=0`` keeps them IEEE fp32.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES: tuple[str, ...] = ("auto",) + tuple(sorted(PRECISIONS))
TF32_ENV = "HAPVR_TF32"


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a resolved precision (``fp32``, ``bf16``, ``fp16``; resolve ``auto`` first)."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}") from None


def check_precision(precision: str) -> str:
    """``precision`` if it is a known name (``auto`` included), else one clear error."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` with ``auto`` replaced by the choice for ``device``: ``bf16`` on CUDA, ``fp32``
    elsewhere (the module's docstring says why the CPU keeps fp32). Needs no device to be present:
    only its type is read."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def gemm_precision(precision: str, device: str | torch.device) -> str:
    """What a resolved ``precision`` computes on ``device``: ``tf32`` for fp32 on CUDA while PyTorch
    allows TF32 there, else ``precision`` itself (the label score caches are keyed on)."""
    if precision == "fp32" and torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return precision


def cpu_bf16_hardware(flags: str | None = None) -> str | None:
    """The bf16 hardware of this CPU: ``"amx"`` (AMX-BF16 tiles), ``"avx512_bf16"`` or None (none, or
    not a Linux ``/proc/cpuinfo``); ``flags`` parses that text instead (tests)."""
    words = set((_cpu_flags() if flags is None else flags).split())
    if "amx_bf16" in words:
        return "amx"
    if "avx512_bf16" in words:
        return "avx512_bf16"
    return None


def tf32_wanted() -> bool:
    """Whether fp32 matmuls on CUDA may use TF32 (``HAPVR_TF32``: 1 by default, 0 to keep IEEE fp32)."""
    value = os.environ.get(TF32_ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{TF32_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def configure_tf32(device: str | torch.device) -> bool:
    """On a CUDA ``device``, allows TF32 for fp32 matmuls and convolutions unless ``HAPVR_TF32=0``;
    returns what was set (False off CUDA, where nothing is changed)."""
    if torch.device(device).type != "cuda":
        return False
    wanted = tf32_wanted()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = wanted
    return wanted


# GEMM precisions by the names checks and benchmarks use: (input dtype, TF32 allowed for fp32 inputs)
GEMM_VARIANTS: dict[str, tuple[torch.dtype, bool]] = {
    "fp64": (torch.float64, False),
    "fp32-ieee": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}


@contextmanager
def allow_tf32(enabled: bool):
    """Within the block, CUDA fp32 matmuls and convolutions may (or may not) use TF32 tensor
    cores; the previous setting is restored after it."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
