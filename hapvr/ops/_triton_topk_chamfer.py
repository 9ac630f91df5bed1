"""Triton kernels of spatial_topk_chamfer (paper eq. 3).

Design
------
*Forward.* One program owns one (query video a, target video b) pair and a tile of BX query
frames x BY target frames. The tile is a single matrix product
``S[(x, i), (y, j)] = <q[a, x, i], t[b, y, j]>`` of shape ``[BX*RP, BY*RP]``, accumulated in fp32
over D in chunks of ``BD`` features. Each target chunk ``[BY*RP, BD]`` is loaded once per
program into on-chip memory and multiplied against all BX query frames at once (they form the M
side of the ``tl.dot``), so target bytes are read once per BX query frames instead of once per
query frame (and query bytes once per BY target frames). When D <= BD the whole target tile is
one chunk; for larger D the full tile is not resident at once, but no chunk is loaded twice by a
program. Frames beyond a video's length are never loaded (masked loads) and a tile that lies
entirely in padding skips its D loop. The epilogue selects, for each (x, i, y) row, the top-k of
the R target regions by k rounds of "maximum, lowest index among equal values, then knock it
out" (O(k RP) per row), which is the tie rule of the compiled kernels (the lower region index
wins), sums the selected values, averages over the query regions and writes ``out[a, b, x, y]``.

*Selection.* With ``save_selection=True`` the kernel also writes the selection the backward
needs: the selected region's index (int8) when k == 1, otherwise an R-bit mask (int16/int32/int64
by R, see ``_topk.mask_dtype``), shape ``[Bq, Bt, T, T', R]``. With ``save_selection=False``
(inference) that buffer is not allocated at all and the stores are compiled out (``SAVE``
constexpr); the op returns an empty tensor in its place.

*Backward.* ``d query`` programs own (a, a block of BX query frames, a block of BD features) and
loop over target videos and blocks of BY target frames; ``d target`` programs own (b, BY target
frames, BD features) and loop over query videos and BX query frames. Each step rebuilds the sparse
weight tile ``W[(x, i), (y, j)] = grad[a, b, x, y]`` (where j was selected for (x, i, y)) from the
saved selection and does one ``tl.dot`` of W (or W^T) with a feature tile, so each feature tile
loaded serves BX (resp. BY) frames at once; the 1/(kR) scale is applied to the fp32 accumulator
at the end. The grad and selection tiles are re-read once per BD feature block.

*Precision.* fp32 inputs go to ``tl.dot`` as fp32 with ``input_precision="tf32"`` (tensor cores)
when ``torch.backends.cuda.matmul.allow_tf32`` is True (or the newer
``torch.backends.cuda.matmul.fp32_precision == "tf32"``), otherwise ``"ieee"`` (exact fp32 FMA);
the choice is made on the host at each call (:func:`dot_input_precision`) and passed as a
constexpr. bf16/fp16 inputs are fed to ``tl.dot`` natively (tensor cores), accumulating in fp32;
in the backward the grad weights are cast to the feature dtype before the product. Under
``TRITON_INTERPRET=1`` (CPU tensors, tests) the precision is always ``"ieee"``, and bf16 tiles
are upcast to fp32 because the interpreter's bf16 ``tl.dot`` returns wrong values (fp16 runs
natively there).

*Padding cost.* ``tl.dot`` needs every dimension >= 16 and ``tl.arange`` powers of two, so the
R regions are padded to RP = max(16, next_pow2(R)) on both sides of the product: for the
paper's R = 9 that is (16/9)^2 = 3.2x the useful multiply-adds (R = 16: 1x; R = 20 -> 32:
2.6x), and the top-k epilogue also runs on RP columns. The padded rows/columns are masked
loads (no extra memory traffic) but cost MMA issue slots and registers.

Tile sizes (BX*RP ~ 64 rows, BY*RP ~ 128 columns, BD = 32 forward / 64 backward, 8 warps) are
fixed, not autotuned, and were not timed on a GPU. They were only compiled ahead of time for
sm_80 and sm_90 (no device): fp32+tf32 and bf16/fp16 lower to tensor-core MMAs (``mma.sync`` /
``wgmma``), fp32+ieee to FMAs; at RP = 16 on sm_90 the forward does not spill and the d-query
kernel spills a few dozen bytes at 255 registers.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests, tiny shapes).
Exposed as ``torch.library.custom_op`` ops (``hapvr::spatial_topk_chamfer_triton`` and its
backward) so that autograd, ``torch.compile`` and ``opcheck`` see them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hapvr.ops._dispatch import triton_interpreted
from hapvr.ops._spatial_autograd import (
    register_spatial_autograd,
    spatial_backward_fake,
    spatial_fake,
)
from hapvr.ops._topk import MAX_COMPILED_REGIONS, mask_dtype

_BLOCK_D = 32  # features per forward chunk
_BLOCK_D_BACKWARD = 64  # features per backward program (the grad/selection tiles are re-read D / this times)
_TILE_ROWS = 64  # about BX * RP query-side rows per tile
_TILE_COLS = 128  # about BY * RP target-side columns per tile


def tf32_allowed() -> bool:
    """Whether PyTorch's CUDA matmul setting lets fp32 products use TF32 tensor cores."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:
        # Set through the newer API (fp32_precision); reading the legacy flag then raises.
        return torch.backends.cuda.matmul.fp32_precision == "tf32"


def dot_input_precision(dtype: torch.dtype, interpreted: bool | None = None) -> str:
    """The ``tl.dot`` input precision the kernels use for ``dtype`` inputs.

    fp32: ``"tf32"`` when :func:`tf32_allowed`, else ``"ieee"``. 16-bit inputs are multiplied
    natively (the setting only concerns fp32 operands): ``"ieee"``. Under the interpreter
    (``interpreted``, default: ``TRITON_INTERPRET=1``) always ``"ieee"``.
    """
    if interpreted is None:
        interpreted = triton_interpreted()
    if interpreted or dtype != torch.float32:
        return "ieee"
    return "tf32" if tf32_allowed() else "ieee"


def _region_pad(R: int) -> int:
    return max(16, triton.next_power_of_2(R))  # tl.dot needs every dimension >= 16


def _frame_blocks(RP: int, T: int, T2: int) -> tuple[int, int]:
    """(BX, BY): query and target frames per tile (powers of two, no larger than needed)."""
    BX = max(1, min(_TILE_ROWS // RP, triton.next_power_of_2(max(T, 1))))
    BY = max(1, min(_TILE_COLS // RP, triton.next_power_of_2(max(T2, 1))))
    return BX, BY


def _block_d(D: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(D, 1))))  # tl.dot needs K >= 16


def _upcast(dtype: torch.dtype, interpreted: bool) -> bool:
    return interpreted and dtype == torch.bfloat16  # the interpreter's bf16 tl.dot is wrong


def _new_selection(query: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    # Zero-filled so that entries on padded frames are deterministic (they are never read).
    return query.new_zeros(shape, dtype=dtype)


@triton.jit
def _feed(x, UPCAST: tl.constexpr):
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _forward_kernel(q_ptr, t_ptr, ql_ptr, tl_ptr, out_ptr, sel_ptr, Bt, T, T2, R, D, k, scale,
                    RP: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr, BD: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr, AS_INDEX: tl.constexpr,
                    SAVE: tl.constexpr):
    ab = tl.program_id(0).to(tl.int64)  # a * Bt + b
    x0 = tl.program_id(1) * BX
    y0 = tl.program_id(2) * BY
    a = ab // Bt
    b = ab % Bt
    lq = tl.load(ql_ptr + a)
    lt = tl.load(tl_ptr + b)

    r = tl.arange(0, BX * RP)  # tile row r: query frame x0 + r // RP, region r % RP
    xr = x0 + r // RP
    ir = r % RP
    row_ok = (ir < R) & (xr < lq)
    c = tl.arange(0, BY * RP)  # tile column c: target frame y0 + c // RP, region c % RP
    yc = y0 + c // RP
    jc = c % RP
    col_ok = (jc < R) & (yc < lt)
    q_rows = (a * T + xr) * R + ir
    t_rows = (b * T2 + yc) * R + jc

    # A tile entirely in padding skips the product (its entries are never stored).
    d_end = tl.where((x0 < lq) & (y0 < lt), D, 0)
    acc = tl.zeros([BX * RP, BY * RP], dtype=tl.float32)
    for d0 in range(0, d_end, BD):
        d = d0 + tl.arange(0, BD)
        d_ok = d < D
        qa = tl.load(q_ptr + q_rows[:, None] * D + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        tb = tl.load(t_ptr + t_rows[:, None] * D + d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(_feed(qa, UPCAST), tl.trans(_feed(tb, UPCAST)), acc, input_precision=PRECISION)

    # Top-k over the R regions of each (x, i, y) row: k rounds of "take the maximum, the lowest
    # region index among equal values, and knock it out for the next round". The index is found
    # explicitly (min index among the maxima) rather than through tl.max(return_indices=True),
    # whose tie-break the interpreter does not model, so the tests exercise this rule.
    j3 = tl.arange(0, RP)[None, None, :]
    work = tl.where(j3 < R, tl.reshape(acc, [BX * RP, BY, RP]), float("-inf"))
    part = tl.zeros([BX * RP, BY], dtype=tl.float32)
    bits = tl.zeros([BX * RP, BY], dtype=tl.int64)
    one = tl.full([BX * RP, BY], 1, dtype=tl.int64)
    for _ in range(k):
        best = tl.max(work, axis=2)
        idx = tl.min(tl.where(work == best[:, :, None], j3, RP), axis=2)
        part += best
        if AS_INDEX:  # k == 1: the selected region's index (int8), as the compiled kernels save
            bits = idx.to(tl.int64)
        else:
            bits = bits | (one << idx.to(tl.int64))
        work = tl.where(j3 == idx[:, :, None], float("-inf"), work)

    part = tl.where((ir < R)[:, None], part, 0.0)
    total = tl.sum(tl.reshape(part, [BX, RP, BY]), axis=1) * scale  # [BX, BY]
    xo = x0 + tl.arange(0, BX)
    yo = y0 + tl.arange(0, BY)
    ok = (xo < lq)[:, None] & (yo < lt)[None, :]
    tl.store(out_ptr + ((ab * T + xo[:, None]) * T2 + yo[None, :]), total.to(out_ptr.dtype.element_ty), mask=ok)
    if SAVE:
        entry = (ab * T + xr[:, None]) * T2 + yo[None, :]
        tl.store(sel_ptr + entry * R + ir[:, None], bits.to(sel_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (yo < lt)[None, :])


@triton.jit
def _weight_tile(g_ptr, sel_ptr, ab, x0, y0, lq, lt, T, T2, R, RP: tl.constexpr, BX: tl.constexpr,
                 BY: tl.constexpr, AS_INDEX: tl.constexpr):
    """W[(x, i), (y, j)] = grad[a, b, x, y] where region j was selected for (x, i, y), else 0:
    a [BX*RP, BY*RP] tile in the grad's dtype (rows/columns ordered as in the forward)."""
    r = tl.arange(0, BX * RP)
    xr = x0 + r // RP
    ir = r % RP
    yo = y0 + tl.arange(0, BY)
    ok = ((xr < lq) & (ir < R))[:, None] & (yo < lt)[None, :]
    entry = (ab * T + xr[:, None]) * T2 + yo[None, :]
    g = tl.load(g_ptr + entry, mask=ok, other=0.0)
    # Decoded in the saved dtype promoted to int32 (int64 only for R > 32): a sign-extended
    # int16/int32 mask still has bit j (j < 16 / 32) intact, and 32-bit ops keep registers low.
    m = tl.load(sel_ptr + entry * R + ir[:, None], mask=ok, other=0)
    j3 = tl.arange(0, RP)[None, None, :]
    if AS_INDEX:
        hit = m[:, :, None].to(tl.int32) == j3
    else:
        hit = ((m[:, :, None] >> j3) & 1) != 0
    hit = hit & (j3 < R) & ok[:, :, None]
    w = tl.where(hit, g[:, :, None], 0.0)
    return tl.reshape(w, [BX * RP, BY * RP])


@triton.jit
def _grad_query_kernel(g_ptr, sel_ptr, t_ptr, ql_ptr, tl_ptr, dq_ptr, Bt, T, T2, R, D, scale,
                       RP: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr, BD: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr, AS_INDEX: tl.constexpr):
    # dq[a, x, i, :] = scale * sum_{b, y, j selected} grad[a, b, x, y] * t[b, y, j, :]
    pid = tl.program_id(0).to(tl.int64)
    n_xb = tl.cdiv(T, BX)
    a = pid // n_xb
    x0 = (pid % n_xb) * BX
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    d_ok = d < D
    lq = tl.load(ql_ptr + a)
    c = tl.arange(0, BY * RP)
    jc = c % RP
    acc = tl.zeros([BX * RP, BD], dtype=tl.float32)
    for b in range(0, Bt):
        lt = tl.load(tl_ptr + b)
        y_end = tl.where(x0 < lq, lt, 0)  # no work for a block of padded query frames
        for y0 in range(0, y_end, BY):
            w = _weight_tile(g_ptr, sel_ptr, a * Bt + b, x0, y0, lq, lt, T, T2, R, RP, BX, BY, AS_INDEX)
            yc = y0 + c // RP
            tb = tl.load(t_ptr + ((b * T2 + yc) * R + jc)[:, None] * D + d[None, :],
                         mask=((yc < lt) & (jc < R))[:, None] & d_ok[None, :], other=0.0)
            tb = _feed(tb, UPCAST)
            acc = tl.dot(w.to(tb.dtype), tb, acc, input_precision=PRECISION)
    r = tl.arange(0, BX * RP)
    xr = x0 + r // RP
    ir = r % RP
    tl.store(dq_ptr + ((a * T + xr) * R + ir)[:, None] * D + d[None, :], (acc * scale).to(dq_ptr.dtype.element_ty),
             mask=((xr < T) & (ir < R))[:, None] & d_ok[None, :])


@triton.jit
def _grad_target_kernel(g_ptr, sel_ptr, q_ptr, ql_ptr, tl_ptr, dt_ptr, Bq, Bt, T, T2, R, D, scale,
                        RP: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr, BD: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr, AS_INDEX: tl.constexpr):
    # dt[b, y, j, :] = scale * sum_{a, x, i: j selected} grad[a, b, x, y] * q[a, x, i, :]
    pid = tl.program_id(0).to(tl.int64)
    n_yb = tl.cdiv(T2, BY)
    b = pid // n_yb
    y0 = (pid % n_yb) * BY
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    d_ok = d < D
    lt = tl.load(tl_ptr + b)
    r = tl.arange(0, BX * RP)
    ir = r % RP
    acc = tl.zeros([BY * RP, BD], dtype=tl.float32)
    for a in range(0, Bq):
        lq = tl.load(ql_ptr + a)
        x_end = tl.where(y0 < lt, lq, 0)  # no work for a block of padded target frames
        for x0 in range(0, x_end, BX):
            w = _weight_tile(g_ptr, sel_ptr, a * Bt + b, x0, y0, lq, lt, T, T2, R, RP, BX, BY, AS_INDEX)
            xr = x0 + r // RP
            qa = tl.load(q_ptr + ((a * T + xr) * R + ir)[:, None] * D + d[None, :],
                         mask=((xr < lq) & (ir < R))[:, None] & d_ok[None, :], other=0.0)
            qa = _feed(qa, UPCAST)
            acc = tl.dot(tl.trans(w.to(qa.dtype)), qa, acc, input_precision=PRECISION)
    c = tl.arange(0, BY * RP)
    yc = y0 + c // RP
    jc = c % RP
    tl.store(dt_ptr + ((b * T2 + yc) * R + jc)[:, None] * D + d[None, :], (acc * scale).to(dt_ptr.dtype.element_ty),
             mask=((yc < T2) & (jc < R))[:, None] & d_ok[None, :])


def _check_args(query: torch.Tensor, k: int) -> None:
    R = query.shape[2]
    if not 1 <= R <= MAX_COMPILED_REGIONS:
        raise RuntimeError(f"spatial_topk_chamfer_triton: R must be in [1, {MAX_COMPILED_REGIONS}], got {R}")
    if not 1 <= k <= R:
        raise RuntimeError(f"spatial_topk_chamfer_triton: k must be in [1, R={R}], got {k}")


@torch.library.custom_op("hapvr::spatial_topk_chamfer_triton", mutates_args=())
def _spatial_triton(query: torch.Tensor, target: torch.Tensor, k: int, query_lengths: torch.Tensor,
                    target_lengths: torch.Tensor, save_selection: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(query, k)
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    sel_dtype = mask_dtype(R, k)
    out = query.new_zeros((Bq, Bt, T, T2))
    # Inference (no gradient needed) allocates no selection: the kernel's stores are compiled out.
    sel = _new_selection(query, (Bq, Bt, T, T2, R), sel_dtype) if save_selection else query.new_empty((0,), dtype=sel_dtype)
    if out.numel() == 0:
        return out, sel
    interpreted = triton_interpreted()
    RP = _region_pad(R)
    BX, BY = _frame_blocks(RP, T, T2)
    grid = (Bq * Bt, triton.cdiv(T, BX), triton.cdiv(T2, BY))
    _forward_kernel[grid](query.contiguous(), target.contiguous(), query_lengths.contiguous(),
                          target_lengths.contiguous(), out, sel if save_selection else out,
                          Bt, T, T2, R, D, k, 1.0 / (k * R), RP=RP, BX=BX, BY=BY, BD=_block_d(D, _BLOCK_D),
                          PRECISION=dot_input_precision(query.dtype, interpreted),
                          UPCAST=_upcast(query.dtype, interpreted), AS_INDEX=k == 1, SAVE=save_selection,
                          num_warps=8)
    return out, sel


_spatial_triton.register_fake(spatial_fake)


@torch.library.custom_op("hapvr::spatial_topk_chamfer_triton_backward", mutates_args=())
def _spatial_triton_backward(grad_out: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
                             mask: torch.Tensor, k: int, query_lengths: torch.Tensor,
                             target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(query, k)
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    dq = torch.zeros_like(query, memory_format=torch.contiguous_format)
    dt = torch.zeros_like(target, memory_format=torch.contiguous_format)
    if grad_out.numel() == 0 or D == 0:
        return dq, dt
    interpreted = triton_interpreted()
    RP = _region_pad(R)
    BX, BY = _frame_blocks(RP, T, T2)
    BD = _block_d(D, _BLOCK_D_BACKWARD)
    g = grad_out.contiguous()
    m = mask.contiguous()
    ql, tl_ = query_lengths.contiguous(), target_lengths.contiguous()
    meta = dict(RP=RP, BX=BX, BY=BY, BD=BD, PRECISION=dot_input_precision(query.dtype, interpreted),
                UPCAST=_upcast(query.dtype, interpreted), AS_INDEX=k == 1, num_warps=8)
    scale = 1.0 / (k * R)
    nd = triton.cdiv(D, BD)
    _grad_query_kernel[(Bq * triton.cdiv(T, BX), nd)](g, m, target.contiguous(), ql, tl_, dq,
                                                       Bt, T, T2, R, D, scale, **meta)
    _grad_target_kernel[(Bt * triton.cdiv(T2, BY), nd)](g, m, query.contiguous(), ql, tl_, dt,
                                                        Bq, Bt, T, T2, R, D, scale, **meta)
    return dq, dt


_spatial_triton_backward.register_fake(spatial_backward_fake)
register_spatial_autograd(_spatial_triton, _spatial_triton_backward)


def spatial_topk_chamfer_triton(query, target, k, query_lengths, target_lengths, save_selection=True) -> torch.Tensor:
    return _spatial_triton(query, target, k, query_lengths, target_lengths, save_selection)[0]
