"""Inference precision of the similarity GEMMs: ``fp32`` (default), ``bf16`` or ``fp16``.

The region features are cast to this dtype only for the spatial TopK-Chamfer (the heavy
``T R x T' R`` products); sums inside it accumulate in fp32 and everything after it (the
comparator, the temporal TopK-Chamfer) runs in fp32. bf16/fp16 GEMMs are fast on GPUs and on
CPUs with avx512_bf16/AMX (oneDNN); elsewhere they are emulated and slower (benchmarks/).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}") from None


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
