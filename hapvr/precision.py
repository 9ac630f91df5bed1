"""Inference precision of the similarity GEMMs: ``fp32`` (default), ``bf16`` or ``fp16``.

The region features are cast to this dtype only for the spatial TopK-Chamfer (the heavy
``T R x T' R`` products); sums inside it accumulate in fp32 and everything after it (the
comparator, the temporal TopK-Chamfer) runs in fp32. bf16/fp16 GEMMs are fast on GPUs and on
CPUs with avx512_bf16/AMX (oneDNN); elsewhere they are emulated and slower (benchmarks/).
"""

from __future__ import annotations

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}") from None
