"""Inference precision of the similarity GEMMs: ``fp32`` (default), ``bf16`` or ``fp16``.

The region features are cast to this dtype only for the spatial TopK-Chamfer (the heavy
``T R x T' R`` products); sums inside it accumulate in fp32 and everything after it (the
comparator, the temporal TopK-Chamfer) runs in fp32. bf16/fp16 GEMMs are fast on GPUs and on
CPUs with avx512_bf16/AMX (oneDNN); elsewhere they are emulated and slower (benchmarks/).
"""

from __future__ import annotations

import os

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}") from None


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU. Refuses a device that is not there."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA device is visible (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices are visible")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


def process_device(device: str | None) -> torch.device:
    """:func:`resolve_device` for one process of a torchrun job: an unnumbered ``cuda`` (or
    ``auto`` on a CUDA machine) becomes ``cuda:LOCAL_RANK``, so the ranks share the GPUs (more
    ranks than GPUs: rank ``r`` on GPU ``r mod count``)."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return dev
