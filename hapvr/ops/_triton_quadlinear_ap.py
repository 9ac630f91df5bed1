"""Triton backend of ``quadlinear_ap`` (paper eq. 11).

The O(M^2) pair terms, tiled: each program owns ``BLOCK_I`` candidates of one query and sweeps
the query's list in ``BLOCK_J`` tiles, so memory stays O(Q M) (no ``[Q, M, M]`` tensor). Sorting
inside a Triton program is impractical for arbitrary M, and for the list lengths of training
(M <= a few thousand) the tiled pairs are compute-bound and fast on a GPU. Accumulation is fp32.

Two kernels:
  * ``_pair_terms``: for every candidate k, ``num_k = sum_{j neg} R-(s_j - s_k)``,
    ``above_k = #{j pos: s_j > s_k}`` and ``slope_k = sum_{j neg} R-'(s_j - s_k)``;
  * ``_negative_grad``: for every candidate k, ``sum_{i pos} w_i R-'(s_k - s_i)``.
The per-query reductions between them are O(Q M) PyTorch ops.

Exposed through ``torch.library.custom_op`` with explicit fake and autograd registrations
(``triton_op`` fails ``opcheck`` under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hapvr.ops._quadlinear_autograd import register_quadlinear_ap_op

BLOCK_I = 32
BLOCK_J = 32


@triton.jit
def _r_minus_and_grad(d, delta):
    """``R-(d; delta)`` of eq. 10 and its derivative."""
    u = d / delta + 1.0
    r = tl.where(d >= 0, 2.0 * d / delta + 1.0, tl.where(d >= -delta, u * u, 0.0))
    g = tl.where(d >= 0, 2.0 / delta, tl.where(d >= -delta, 2.0 * u / delta, 0.0))
    return r, g


@triton.jit
def _pair_terms(s_ptr, lab_ptr, num_ptr, above_ptr, slope_ptr, M, delta,
                BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    q = tl.program_id(0)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    in_i = offs_i < M
    s_i = tl.load(s_ptr + q * M + offs_i, mask=in_i, other=0.0).to(tl.float32)
    num = tl.zeros((BLOCK_I,), dtype=tl.float32)
    above = tl.zeros((BLOCK_I,), dtype=tl.float32)
    slope = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for j0 in range(0, M, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        in_j = offs_j < M
        s_j = tl.load(s_ptr + q * M + offs_j, mask=in_j, other=0.0).to(tl.float32)
        lab_j = tl.load(lab_ptr + q * M + offs_j, mask=in_j, other=-1).to(tl.int32)
        d = s_j[None, :] - s_i[:, None]  # [BLOCK_I, BLOCK_J], d = s_j - s_i
        r, g = _r_minus_and_grad(d, delta)
        is_neg = (lab_j == 0)[None, :]
        is_pos = (lab_j == 1)[None, :]
        num += tl.sum(tl.where(is_neg, r, 0.0), axis=1)
        slope += tl.sum(tl.where(is_neg, g, 0.0), axis=1)
        above += tl.sum(tl.where(is_pos & (d > 0), 1.0, 0.0), axis=1)
    tl.store(num_ptr + q * M + offs_i, num, mask=in_i)
    tl.store(above_ptr + q * M + offs_i, above, mask=in_i)
    tl.store(slope_ptr + q * M + offs_i, slope, mask=in_i)


@triton.jit
def _negative_grad(s_ptr, w_ptr, out_ptr, M, delta, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    # out_k = sum_i w_i R-'(s_k - s_i); w is 0 outside the positives.
    q = tl.program_id(0)
    offs_k = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    in_k = offs_k < M
    s_k = tl.load(s_ptr + q * M + offs_k, mask=in_k, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for i0 in range(0, M, BLOCK_J):
        offs_i = i0 + tl.arange(0, BLOCK_J)
        in_i = offs_i < M
        s_i = tl.load(s_ptr + q * M + offs_i, mask=in_i, other=0.0).to(tl.float32)
        w_i = tl.load(w_ptr + q * M + offs_i, mask=in_i, other=0.0)
        d = s_k[:, None] - s_i[None, :]
        _, g = _r_minus_and_grad(d, delta)
        acc += tl.sum(g * w_i[None, :], axis=1)
    tl.store(out_ptr + q * M + offs_k, acc, mask=in_k)


def _terms(scores: torch.Tensor, labels: torch.Tensor, delta: float):
    Q, M = scores.shape
    s = scores.contiguous()
    lab = labels.contiguous()
    num = torch.zeros((Q, M), dtype=torch.float32, device=s.device)
    above = torch.zeros_like(num)
    slope = torch.zeros_like(num)
    if Q and M:
        _pair_terms[(Q, triton.cdiv(M, BLOCK_I))](s, lab, num, above, slope, M, delta,
                                                  BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J)
    return s, lab, num, above, slope


@torch.library.custom_op("hapvr::quadlinear_ap_triton", mutates_args=())
def quadlinear_ap_triton(scores: torch.Tensor, labels: torch.Tensor, delta: float,
                         rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query risk [Q] and validity [Q] of eq. 11 (labels int8: 1 / 0 / -1)."""
    _, lab, num, above, _ = _terms(scores, labels, delta)
    pos = lab == 1
    n_pos = pos.sum(1)
    valid = (n_pos > 0) & ((lab == 0).sum(1) > 0)
    den = 1 + rho * above
    ratio = torch.where(pos, num / (den + num), 0.0).sum(1) / n_pos.clamp(min=1)
    risk = torch.where(valid, ratio, 0.0).to(scores.dtype)
    return risk, valid


@torch.library.custom_op("hapvr::quadlinear_ap_triton_backward", mutates_args=())
def quadlinear_ap_triton_backward(grad_risk: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                                  delta: float, rho: float) -> torch.Tensor:
    """d sum_q grad_risk[q] risk[q] / d scores, [Q, M] (den of eq. 11 held constant)."""
    s, lab, num, above, slope = _terms(scores, labels, delta)
    pos = lab == 1
    n_pos = pos.sum(1).clamp(min=1)
    den = 1 + rho * above
    scale = (grad_risk.to(torch.float32) / n_pos)[:, None]
    w = torch.where(pos, scale * den / (den + num) ** 2, 0.0).contiguous()  # d h / d num
    neg_grad = torch.zeros_like(w)
    Q, M = s.shape
    if Q and M:
        _negative_grad[(Q, triton.cdiv(M, BLOCK_I))](s, w, neg_grad, M, delta,
                                                     BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J)
    grad = torch.where(pos, -w * slope, torch.where(lab == 0, neg_grad, 0.0))
    return grad.to(scores.dtype)


register_quadlinear_ap_op(quadlinear_ap_triton, quadlinear_ap_triton_backward)
