"""QuadLinear-AP risk (HAP-VR paper eqs. 9-11) as a fused operator.

For a query with scores ``s`` over a list of M candidates, positives P and negatives N:

    R-(d; delta) = 0                    for d < -delta           (eq. 10)
                 = (d / delta + 1)^2    for -delta <= d < 0
                 = 2 d / delta + 1      for d >= 0
    num_i = sum_{j in N} R-(s_j - s_i; delta)
    den_i = 1 + rho * sum_{j in P, j != i} H(s_j - s_i)           (eq. 9: R+ = H, H(0) = 0)
    risk  = 1/|P| sum_{i in P} h(num_i / den_i),   h(x) = x / (1 + x)   (eq. 11)

Only the positive-negative terms carry gradient: ``den`` weighs each positive by its exact rank
among the positives and is held constant, as in the paper. With ``rho = 1`` the risk is an upper
bound of ``1 - AP`` because ``R- >= H``.

Backends of ``quadlinear_ap``: ``cpp`` (sorted scores + prefix sums, O(M log M) per query,
OpenMP over queries), ``cuda`` (the same per-element helpers on the GPU), ``triton`` (the O(M^2)
pairs, tiled so that no ``[Q, M, M]`` tensor exists; fp32 accumulation) and ``reference`` (pure
PyTorch, O(M^2) memory per query; the test oracle and the fallback).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hapvr import _ext
from hapvr.ops import _dispatch
from hapvr.ops._dispatch import Backend
from hapvr.ops._quadlinear_autograd import register_quadlinear_ap_op
from hapvr.ops._validate import check_finite, check_floating, check_label_values, check_tensor


class QuadLinearAPResult(NamedTuple):
    """Per-query output of :func:`quadlinear_ap`.

    ``risk [Q]``: eq. 11 per query (0 where ``valid`` is False). ``valid [Q]`` bool: the query has
    at least one positive and one negative; average ``risk`` over valid queries only.
    """

    risk: torch.Tensor
    valid: torch.Tensor


def quadlinear_r_minus(d: torch.Tensor, delta: float) -> torch.Tensor:
    """``R-(d; delta)`` of eq. 10, elementwise: convex, monotone, C1 and ``>= H(d)``."""
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    quad = (d / delta + 1) ** 2
    return torch.where(d >= 0, 2 * d / delta + 1, torch.where(d >= -delta, quad, zero))


def heaviside(d: torch.Tensor) -> torch.Tensor:
    """``H(d)`` of the paper: 1 where ``d > 0``, else 0 (so ``H(0) = 0``)."""
    return (d > 0).to(d.dtype)


# Pair elements one chunk of the reference may hold ([chunk, M, M]): bounds its memory while
# keeping it a plain O(M^2) computation.
REFERENCE_CHUNK_ELEMENTS = 1 << 24


def quadlinear_ap_reference(
    scores: torch.Tensor, labels: torch.Tensor, delta: float, rho: float
) -> QuadLinearAPResult:
    """Pure-PyTorch eq. 11 over all ``M x M`` pairs of each query (the oracle; O(M^2) memory).

    ``labels`` holds 1 (positive), 0 (negative), -1 (ignored). Differentiable through autograd.
    """
    Q, M = scores.shape
    pos = labels == 1
    neg = labels == 0
    n_pos = pos.sum(1)
    valid = (n_pos > 0) & (neg.sum(1) > 0)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    chunk = max(1, REFERENCE_CHUNK_ELEMENTS // max(M * M, 1))
    parts = []
    for q0 in range(0, Q, chunk):
        s, p, n = scores[q0:q0 + chunk], pos[q0:q0 + chunk], neg[q0:q0 + chunk]
        d = s[:, None, :] - s[:, :, None]  # d[q, i, j] = s_j - s_i
        num = torch.where(n[:, None, :], quadlinear_r_minus(d, delta), zero).sum(-1)
        above = torch.where(p[:, None, :], heaviside(d.detach()), zero).sum(-1)
        den = 1 + rho * above
        ratio = num / (den + num)  # h(num / den)
        parts.append(torch.where(p, ratio, zero).sum(-1))
    risk = torch.cat(parts) if parts else scores.sum(-1) * 0  # no queries: empty, still in the graph
    risk = risk / n_pos.clamp(min=1).to(scores.dtype)
    return QuadLinearAPResult(torch.where(valid, risk, zero), valid)


# --- the compiled op (C++ CPU and CUDA kernels behind one schema) ---------------------------

if _ext.has_cpu_kernels:
    register_quadlinear_ap_op("hapvr::quadlinear_ap", "hapvr::quadlinear_ap_backward")


def _compiled_reasons(device_type: str):
    def reasons(scores, labels, delta, rho) -> list[str]:
        why = []
        if scores.device.type != device_type:
            why.append(f"inputs are on {scores.device.type}, this kernel runs on {device_type}")
        allowed = (torch.float32, torch.float64) if device_type == "cpu" else (
            torch.float16, torch.bfloat16, torch.float32, torch.float64)
        if scores.dtype not in allowed:
            why.append(f"dtype {scores.dtype} is not supported (supports {', '.join(map(str, allowed))})")
        return why

    return reasons


def _compiled_run(scores, labels, delta, rho):
    return QuadLinearAPResult(*torch.ops.hapvr.quadlinear_ap(scores, labels, delta, rho))


def _triton_reasons(scores, labels, delta, rho) -> list[str]:
    why = []
    if scores.device.type == "cpu" and not _dispatch.triton_interpreted():
        why.append("CPU tensors need TRITON_INTERPRET=1")
    elif scores.device.type not in ("cpu", "cuda"):
        why.append(f"device {scores.device.type} is not supported")
    if scores.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        why.append(f"dtype {scores.dtype} is not supported (float16, bfloat16, float32)")
    return why


def _triton_run(scores, labels, delta, rho):
    from hapvr.ops import _triton_quadlinear_ap

    return QuadLinearAPResult(*_triton_quadlinear_ap.quadlinear_ap_triton(scores, labels, delta, rho))


QUADLINEAR_AP_BACKENDS = (
    Backend("cpp", _compiled_reasons("cpu"), _compiled_run),
    Backend("cuda", _compiled_reasons("cuda"), _compiled_run),
    Backend("triton", _triton_reasons, _triton_run),
    Backend("reference", lambda *a: [], quadlinear_ap_reference),
)


def _check_quadlinear_ap(scores, labels, delta, rho) -> torch.Tensor:
    """Validates the arguments; returns the labels as int8 on the device of ``scores``."""
    check_tensor("scores", scores, 2, "[Q, M]")
    check_floating("scores", scores)
    check_tensor("labels", labels, None, "[Q, M]")
    if tuple(labels.shape) != tuple(scores.shape):
        raise ValueError(f"labels must have the shape of scores {tuple(scores.shape)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer or bool tensor (1 positive, 0 negative, -1 ignored), "
                        f"got {labels.dtype}")
    if labels.device != scores.device:
        raise ValueError(f"labels must be on the device of scores ({scores.device}), got {labels.device}")
    for name, value in (("delta", delta), ("rho", rho)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not delta > 0 or delta != delta or delta == float("inf"):
        raise ValueError(f"delta must be a finite float > 0 (the margin of eq. 10), got {delta}")
    if not rho >= 0 or rho == float("inf"):
        raise ValueError(f"rho must be a finite float >= 0 (the weight of eq. 11), got {rho}")
    check_label_values("labels", labels)
    check_finite("scores", scores)
    return labels.to(torch.int8)


def quadlinear_ap(
    scores: torch.Tensor,
    labels: torch.Tensor,
    delta: float = 0.05,
    rho: float = 0.10,
    backend: str = "auto",
) -> QuadLinearAPResult:
    """QuadLinear-AP risk of every query (paper eq. 11), with its exact gradient.

    Args:
        scores: ``[Q, M]`` similarity of each query to each candidate of its list.
        labels: ``[Q, M]`` integer (or bool) tensor: 1 positive, 0 negative, -1 ignored.
        delta: margin of ``R-`` (eq. 10), > 0. Paper: 0.05 (video and frame level).
        rho: weight of the positive-positive ranks (eq. 11), >= 0. Paper: 0.10 video level,
            5.0 frame level. ``rho = 1`` makes the risk an upper bound of ``1 - AP``.
        backend: ``"auto"`` or one of ``cpp``, ``cuda``, ``triton``, ``reference``.

    Returns:
        ``QuadLinearAPResult(risk [Q], valid [Q] bool)``. A query without a positive or without a
        negative has ``risk = 0`` and ``valid = False``; average over ``valid`` queries.
        ``risk`` is differentiable with respect to ``scores`` (gradient only through ``R-``).
    """
    labels8 = _check_quadlinear_ap(scores, labels, delta, rho)
    delta, rho = float(delta), float(rho)
    chosen = _dispatch.select("quadlinear_ap", QUADLINEAR_AP_BACKENDS, backend, scores, labels8, delta, rho)
    return chosen.run(scores, labels8, delta, rho)


def explain_quadlinear_ap_backends(scores, labels, delta: float = 0.05, rho: float = 0.10) -> dict[str, list[str]]:
    """Why each backend can or cannot run this input (empty list: it can)."""
    labels8 = _check_quadlinear_ap(scores, labels, delta, rho)
    return _dispatch.explain("quadlinear_ap", QUADLINEAR_AP_BACKENDS, scores, labels8, float(delta), float(rho))
