"""Triton kernels of spatial_topk_chamfer (paper eq. 3).

One program computes, for one (query video, target video, query frame) and a block of BY target
frames, the [RP, BY*RP] region similarities with ``tl.dot`` (D in chunks), ranks the R target
regions of each (region, frame) cell to select the top-k (lower index wins ties, as in the
compiled kernels), and writes the map entries and the selection bits. The backward kernels
rebuild each tile's sparse weights from those bits and multiply them with the features, so the
patch similarities are never stored.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests, tiny shapes).
Exposed as ``torch.library.custom_op`` ops (``hapvr::spatial_topk_chamfer_triton`` and its
backward) so that autograd, ``torch.compile`` and ``opcheck`` see them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hapvr.ops._spatial_autograd import register_spatial_autograd, spatial_backward_fake, spatial_fake
from hapvr.ops._topk import mask_dtype

_BLOCK_D = 32


def _region_pad(R: int) -> int:
    return max(16, triton.next_power_of_2(R))  # tl.dot needs every dimension >= 16


def _frame_block(RP: int) -> int:
    return max(1, 256 // RP)  # about 256 target-region columns per tile


@triton.jit
def _forward_kernel(q_ptr, t_ptr, ql_ptr, tl_ptr, out_ptr, mask_ptr, Bt, T, T2, R, D, k, scale,
                    RP: tl.constexpr, BY: tl.constexpr, BD: tl.constexpr, AS_INDEX: tl.constexpr):
    pid_ab = tl.program_id(0)
    x = tl.program_id(1)
    y0 = tl.program_id(2) * BY
    a = pid_ab // Bt
    b = pid_ab % Bt
    lq = tl.load(ql_ptr + a)
    lt = tl.load(tl_ptr + b)

    i = tl.arange(0, RP)
    c = tl.arange(0, BY * RP)
    yc = y0 + c // RP
    jc = c % RP
    row_ok = i < R
    col_ok = (jc < R) & (yc < T2)
    acc = tl.zeros([RP, BY * RP], dtype=tl.float32)
    for d0 in range(0, D, BD):
        d = d0 + tl.arange(0, BD)
        d_ok = d < D
        qa = tl.load(q_ptr + ((a * T + x) * R + i)[:, None] * D + d[None, :],
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        tb = tl.load(t_ptr + ((b * T2 + yc) * R + jc)[:, None] * D + d[None, :],
                     mask=col_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(qa, tl.trans(tb), input_precision="ieee")

    s = tl.reshape(acc, [RP, BY, RP])
    j3 = tl.arange(0, RP)[None, None, :]
    s = tl.where(j3 < R, s, float("-inf"))
    # rank[j] = number of regions that beat j: strictly larger, or equal with a lower index.
    rank = tl.zeros([RP, BY, RP], dtype=tl.int32)
    for jp in tl.static_range(RP):
        col = tl.max(tl.where(j3 == jp, s, float("-inf")), axis=2)
        beats = (col[:, :, None] > s) | ((col[:, :, None] == s) & (jp < j3))
        rank += beats.to(tl.int32)
    sel = (rank < k) & (j3 < R)
    part = tl.sum(tl.where(sel, s, 0.0), axis=2)  # [RP, BY]
    if AS_INDEX:  # k == 1: save the selected region's index (int8), as the compiled kernels do
        bits = tl.sum(tl.where(sel, j3, 0), axis=2)
    else:
        one = tl.full([1, 1, 1], 1, dtype=tl.int64)
        bits = tl.sum(tl.where(sel, one << j3.to(tl.int64), 0), axis=2)  # [RP, BY]
    total = tl.sum(tl.where(row_ok[:, None], part, 0.0), axis=0) * scale  # [BY]

    y = y0 + tl.arange(0, BY)
    ok = (y < lt) & (x < lq)
    base = ((a * Bt + b) * T + x) * T2 + y
    tl.store(out_ptr + base, total.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(mask_ptr + base[None, :] * R + i[:, None], bits.to(mask_ptr.dtype.element_ty),
             mask=ok[None, :] & row_ok[:, None])


@triton.jit
def _load_bits(mask_ptr, offsets, ok, AS_INDEX: tl.constexpr):
    m = tl.load(mask_ptr + offsets, mask=ok, other=0).to(tl.int64)
    if AS_INDEX:
        m = tl.where(ok, tl.full(m.shape, 1, dtype=tl.int64) << m, 0)
    return m


@triton.jit
def _grad_query_kernel(g_ptr, mask_ptr, t_ptr, ql_ptr, tl_ptr, dq_ptr, Bt, T, T2, R, D, scale,
                       RP: tl.constexpr, BY: tl.constexpr, BD: tl.constexpr, AS_INDEX: tl.constexpr):
    # dq[a, x, i, :] = sum_{b, y, j selected} grad[a, b, x, y] * scale * t[b, y, j, :]
    pid = tl.program_id(0)
    a = pid // T
    x = pid % T
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    d_ok = d < D
    lq = tl.load(ql_ptr + a)
    i = tl.arange(0, RP)
    row_ok = i < R
    c = tl.arange(0, BY * RP)
    jc = c % RP
    acc = tl.zeros([RP, BD], dtype=tl.float32)
    for b in range(0, Bt):
        lt = tl.load(tl_ptr + b)
        for y0 in range(0, T2, BY):
            yc = y0 + c // RP
            ok = (yc < lt) & (x < lq)
            base = ((a * Bt + b) * T + x) * T2 + yc
            g = tl.load(g_ptr + base, mask=ok, other=0.0).to(tl.float32) * scale
            m = _load_bits(mask_ptr, base[None, :] * R + i[:, None], ok[None, :] & row_ok[:, None], AS_INDEX)
            hit = ((m >> jc[None, :].to(tl.int64)) & 1) != 0
            w = tl.where(hit & (jc < R)[None, :], g[None, :], 0.0)
            tb = tl.load(t_ptr + ((b * T2 + yc) * R + jc)[:, None] * D + d[None, :],
                         mask=(ok & (jc < R))[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(w, tb, input_precision="ieee")
    tl.store(dq_ptr + ((a * T + x) * R + i)[:, None] * D + d[None, :],
             acc.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _grad_target_kernel(g_ptr, mask_ptr, q_ptr, ql_ptr, tl_ptr, dt_ptr, Bq, Bt, T, T2, R, D, scale,
                        RP: tl.constexpr, BX: tl.constexpr, BD: tl.constexpr, AS_INDEX: tl.constexpr):
    # dt[b, y, j, :] = sum_{a, x, i: j selected} grad[a, b, x, y] * scale * q[a, x, i, :]
    pid = tl.program_id(0)
    b = pid // T2
    y = pid % T2
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    d_ok = d < D
    lt = tl.load(tl_ptr + b)
    j = tl.arange(0, RP)
    c = tl.arange(0, BX * RP)
    ic = c % RP
    acc = tl.zeros([RP, BD], dtype=tl.float32)
    for a in range(0, Bq):
        lq = tl.load(ql_ptr + a)
        for x0 in range(0, T, BX):
            xc = x0 + c // RP
            ok = (xc < lq) & (y < lt) & (ic < R)
            base = ((a * Bt + b) * T + xc) * T2 + y
            g = tl.load(g_ptr + base, mask=ok, other=0.0).to(tl.float32) * scale
            m = _load_bits(mask_ptr, base * R + ic, ok, AS_INDEX)
            hit = ((m[None, :] >> j[:, None].to(tl.int64)) & 1) != 0
            w = tl.where(hit & (j < R)[:, None], g[None, :], 0.0)  # [RP(j), BX*RP(x, i)]
            qa = tl.load(q_ptr + ((a * T + xc) * R + ic)[:, None] * D + d[None, :],
                         mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(w, qa, input_precision="ieee")
    tl.store(dt_ptr + ((b * T2 + y) * R + j)[:, None] * D + d[None, :],
             acc.to(dt_ptr.dtype.element_ty), mask=(j < R)[:, None] & d_ok[None, :])


@torch.library.custom_op("hapvr::spatial_topk_chamfer_triton", mutates_args=())
def _spatial_triton(query: torch.Tensor, target: torch.Tensor, k: int, query_lengths: torch.Tensor,
                    target_lengths: torch.Tensor, save_selection: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    out = query.new_zeros((Bq, Bt, T, T2))
    mask = query.new_zeros((Bq, Bt, T, T2, R), dtype=mask_dtype(R, k))
    if out.numel() == 0:
        return out, mask if save_selection else mask.new_empty((0,))
    RP = _region_pad(R)
    BY = _frame_block(RP)
    grid = (Bq * Bt, T, triton.cdiv(T2, BY))
    _forward_kernel[grid](query.contiguous(), target.contiguous(), query_lengths, target_lengths,
                          out, mask, Bt, T, T2, R, D, k, 1.0 / (k * R), RP=RP, BY=BY, BD=_BLOCK_D,
                          AS_INDEX=k == 1)
    # The kernel always writes the selection; inference simply drops it.
    return out, mask if save_selection else mask.new_empty((0,))


_spatial_triton.register_fake(spatial_fake)


@torch.library.custom_op("hapvr::spatial_topk_chamfer_triton_backward", mutates_args=())
def _spatial_triton_backward(grad_out: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
                             mask: torch.Tensor, k: int, query_lengths: torch.Tensor,
                             target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    dq = torch.zeros_like(query, memory_format=torch.contiguous_format)
    dt = torch.zeros_like(target, memory_format=torch.contiguous_format)
    if grad_out.numel() == 0 or D == 0:
        return dq, dt
    RP = _region_pad(R)
    block = _frame_block(RP)
    g = grad_out.contiguous()
    m = mask.contiguous()
    scale = 1.0 / (k * R)
    nd = triton.cdiv(D, _BLOCK_D)
    _grad_query_kernel[(Bq * T, nd)](g, m, target.contiguous(), query_lengths, target_lengths, dq,
                                     Bt, T, T2, R, D, scale, RP=RP, BY=block, BD=_BLOCK_D,
                                     AS_INDEX=k == 1)
    _grad_target_kernel[(Bt * T2, nd)](g, m, query.contiguous(), query_lengths, target_lengths, dt,
                                       Bq, Bt, T, T2, R, D, scale, RP=RP, BX=block, BD=_BLOCK_D,
                                       AS_INDEX=k == 1)
    return dq, dt


_spatial_triton_backward.register_fake(spatial_backward_fake)
register_spatial_autograd(_spatial_triton, _spatial_triton_backward)


def spatial_topk_chamfer_triton(query, target, k, query_lengths, target_lengths, save_selection=True) -> torch.Tensor:
    return _spatial_triton(query, target, k, query_lengths, target_lengths, save_selection)[0]
