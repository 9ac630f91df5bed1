"""The top-k rule shared by every TopK-Chamfer backend (mirrors ``csrc/common/topk.h``).

``K = max(round(rate * n), 1)``; among equal values the lower index is selected; the selection
saved for the backward is an int8 region index when ``k = 1`` and an R-bit mask otherwise.
"""

from __future__ import annotations

import torch

MAX_COMPILED_REGIONS = 64  # one bit per target region in the saved top-k mask


def topk_count(rate: float, n: int) -> int:
    """``K = max(round(rate * n), 1)``, at most ``n`` (paper: ``K = k_s R`` and ``K = k_t T'``).

    Python's ``round`` rounds half to even, as the reference implementations do.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return min(max(round(rate * n), 1), n)


def mask_dtype(num_regions: int, k: int) -> torch.dtype:
    """Dtype of the selection the kernels save for backward: for ``k = 1`` the index of the
    selected target region (int8); otherwise a bit mask with one bit per target region."""
    if k == 1:
        return torch.int8
    if num_regions <= 16:
        return torch.int16
    if num_regions <= 32:
        return torch.int32
    return torch.int64
