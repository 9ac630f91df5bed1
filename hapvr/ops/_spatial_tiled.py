"""The ``tiled`` backend of spatial_topk_chamfer: the device's own GEMM on bounded tiles.

All ``O(T R T' R D)`` work is ATen ``matmul`` (MKL/OpenBLAS on the CPU, cuBLAS on CUDA, with
tensor cores through TF32 / bf16 / fp16 as the input dtype and
``torch.backends.cuda.matmul.allow_tf32`` decide). The frames of all query videos and of all
target videos are laid end to end; the ``[Bq T, Bt T']`` frame grid is cut into tiles whose
region-similarity block ``[x R, y R]`` and epilogue temporaries fit a workspace bound (default
64 MiB, of which the CPU backward uses a quarter; 512 MiB on CUDA; per call or
``HAPVR_TILED_WORKSPACE_MB``). Only the ``O(T R T' R)`` epilogue is custom, and it is ATen too:
the top-k over the target regions with the package's tie rule (lower index wins), the mean,
and, when a gradient is needed, the compact selection that the compiled kernels also save
(int8 region index for k = 1, an R-bit mask otherwise). The backward expands each tile's
weights from that selection and runs two GEMMs per tile, so the patch similarities are never
held whole in either direction.

The same driver runs on CPU tensors in the tests; on a GPU only the kernel launches and the
BLAS calls differ.
"""

from __future__ import annotations

import math
import os

import torch

from hapvr.ops._spatial_autograd import register_spatial_autograd
from hapvr.ops._topk import MAX_COMPILED_REGIONS, mask_dtype

MAX_MASK_REGIONS = MAX_COMPILED_REGIONS  # a bit per region in an int64

DEFAULT_WORKSPACE_BYTES = 64 << 20
# On a GPU one tile's GEMM at 64 MiB takes tens of microseconds, about what the Python driver
# spends issuing its ~10 ATen calls: the tile loop would be host-bound. 512 MiB tiles (a small
# share of any training GPU's memory) make each tile's device time exceed its issue time, so the
# queue stays full (docs/gpu.md, "workspace").
DEFAULT_WORKSPACE_BYTES_CUDA = 512 << 20
# The CPU backward tiles within a quarter of the bound by default. It already holds the saved
# selection and both input gradients (at the training shape, 64 x 64 clips of 28 frames, those are
# 95 MiB, more than the forward's whole workspace), and its time barely depends on the tile size
# between 8 and 64 MiB on the CPU (training shape, 2026-11-29: 3.6-3.9 s at every size,
# benchmarks/bench_tiled_backward.py), while 16 MiB keeps the training shape's forward + backward within 1/10 of the
# materialising reference's memory (README, bench_similarity.py). On CUDA both phases use 512 MiB
# (fewer, larger tiles keep the device busy, docs/gpu.md); an explicit bound applies to both.
DEFAULT_BACKWARD_WORKSPACE_BYTES = 16 << 20
WORKSPACE_ENV = "HAPVR_TILED_WORKSPACE_MB"
PHASES = ("forward", "backward")


def default_workspace_bytes(device_type: str = "cpu", phase: str = "forward") -> int:
    """The workspace bound: ``HAPVR_TILED_WORKSPACE_MB`` if set (both phases), else 64 MiB for
    the forward and 16 MiB for the backward on the CPU, 512 MiB for both on CUDA."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    value = os.environ.get(WORKSPACE_ENV)
    if value is None or value == "":
        if device_type == "cuda":
            return DEFAULT_WORKSPACE_BYTES_CUDA
        return DEFAULT_WORKSPACE_BYTES if phase == "forward" else DEFAULT_BACKWARD_WORKSPACE_BYTES
    try:
        mb = float(value)
    except ValueError:
        raise ValueError(f"{WORKSPACE_ENV} must be a number of MiB, got {value!r}") from None
    if not mb > 0:
        raise ValueError(f"{WORKSPACE_ENV} must be > 0, got {value!r}")
    return int(mb * (1 << 20))


def bytes_per_cell(R: int, k: int, element_size: int, phase: str) -> int:
    """Transient bytes one (query frame, target frame) cell of a tile needs at its peak.

    Every phase holds the ``R x R`` similarity (or weight) block in the compute dtype; on top:
    - ``forward`` (no gradient): the top-k sums, ``R`` values (k = 1: amax; else topk values
      and int64 indices, ``k R`` each);
    - ``forward_save``: k = 1: max values + int64 indices + the int8 copy; k > 1: a full stable
      sort of the block (values + int64 indices, ``R^2`` each) and the int64 bits;
    - ``backward``: the scatter/bit-expansion temporaries (int64, ``R^2`` for masks, ``k R``
      for indices).
    Plus the fp32 sums of the tile, ``R + 1`` values. A workspace bound is met when
    ``cells * bytes_per_cell`` fits it; the frames' region-major copy of the target tile
    (``y R D``) is small beside it and budgeted by the caller's slack."""
    es = element_size
    block = R * R * es
    sums = (R + 1) * 8
    if phase == "forward":
        extra = R * es if k in (1, R) else k * R * (es + 8)
    elif phase == "forward_save":
        extra = R * (es + 8 + 1) if k in (1, R) else R * R * (es + 8) + R * 8
    elif phase == "backward":
        extra = k * R * 8 if (k == 1 or R > MAX_MASK_REGIONS) else (0 if k == R else R * R * 8)
    else:
        raise ValueError(f"phase must be forward, forward_save or backward, got {phase!r}")
    return block + extra + sums


def tile_frames(workspace_bytes: int, R: int, rows: int, cols: int, element_size: int, k: int = 1,
                phase: str = "forward_save", D: int = 0) -> tuple[int, int]:
    """Query and target frames per tile so that one tile's transient tensors fit ``workspace_bytes``
    (see :func:`bytes_per_cell`; ``D`` adds the region-major target copy, ``R D`` per target
    frame). Tiles are square-ish (GEMM efficiency) and never empty: one cell is the minimum,
    whatever the bound."""
    per_cell = bytes_per_cell(R, k, element_size, phase)
    copy = R * D * element_size
    # bx * by * per_cell + by * copy <= workspace, with bx >= 1
    side = max(int(math.isqrt(max(workspace_bytes // per_cell, 1))), 1)
    by = max(min(cols, side, workspace_bytes // (per_cell + copy)), 1)
    bx = min(rows, max((workspace_bytes - by * copy) // max(by * per_cell, 1), 1))
    if bx == rows:  # the query axis fits whole: give the rest of the budget to the target axis
        by = min(cols, max(workspace_bytes // max(rows * per_cell + copy, 1), 1))
    return max(bx, 1), max(by, 1)


def selection_dtype(R: int, k: int) -> torch.dtype:
    """The compiled kernels' encoding (:func:`hapvr.ops._topk.mask_dtype`) where it fits: an int8
    index for k = 1, an R-bit mask for k > 1; beyond 64 regions int16 indices."""
    if R > MAX_MASK_REGIONS and (k > 1 or R > 127):
        return torch.int16
    return mask_dtype(R, k)


def selection_shape(X: int, R: int, Y: int, k: int, save: bool) -> tuple[int, ...]:
    """What the forward saves for the backward, over the flat frame grid ``X = Bq T``, ``Y = Bt T'``:
    ``[X, R, Y]`` (an index for k = 1, a bit mask for 1 < k and R <= 64), ``[X, R, k, Y]`` (the
    k indices, R > 64), or nothing (k = R selects every region, or no gradient is needed)."""
    if not save or k == R:
        return (0,)
    if 1 < k and R > MAX_MASK_REGIONS:
        return (X, R, k, Y)
    return (X, R, Y)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums and gradients accumulate in fp32 (fp64 for fp64 inputs), as the compiled kernels do."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _select(block: torch.Tensor, k: int, save: bool):
    """Top-k of ``block [x, R_i, R_j, y]`` over the target regions ``R_j`` (dim 2): (sum of the
    selected values in the accumulation dtype ``[x, R_i, y]``, selection or None). Ties go to the
    lower region index. ``R_j`` is a middle dimension on purpose: each reduction step is then an
    elementwise pass over contiguous rows of ``y``, which vectorises; a reduction over an
    innermost dimension of 9 does not."""
    R = block.shape[2]
    acc = accumulation_dtype(block.dtype)
    if k == R:  # every region is selected: nothing to save
        return block.sum(2, dtype=acc), None
    if k == 1:
        if not save:
            return block.amax(2).to(acc), None
        values, index = block.max(2)  # max returns the first maximal index: the tie rule
        return values.to(acc), index.to(selection_dtype(R, k))
    if not save:  # the sum of the k largest does not depend on which of equal values is taken
        return block.topk(k, dim=2, sorted=False).values.sum(2, dtype=acc), None
    values, index = block.sort(dim=2, descending=True, stable=True)  # equal values keep index order
    total = values[:, :, :k].sum(2, dtype=acc)
    if R > MAX_MASK_REGIONS:  # too many regions for a bit mask: the k indices themselves
        return total, index[:, :, :k].to(selection_dtype(R, k))
    bits = (torch.ones((), dtype=torch.int64, device=block.device) << index[:, :, :k]).sum(2)  # distinct bits
    return total, bits.to(selection_dtype(R, k))


def _weights(selection: torch.Tensor, g: torch.Tensor, k: int, R: int, dtype: torch.dtype) -> torch.Tensor:
    """The backward's sparse weights ``[x, R_i, R_j, y]``: ``g[x, y]`` where target region j is
    selected for (x, i, y), else 0; ``selection`` as :func:`selection_shape` describes."""
    x, y = g.shape
    if k == R:
        return g[:, None, None, :].expand(x, R, R, y).to(dtype)
    if k == 1 or R > MAX_MASK_REGIONS:
        index = selection.long() if k > 1 else selection.long()[:, :, None, :]  # [x, R_i, k, y]
        w = torch.zeros((x, R, R, y), dtype=dtype, device=g.device)
        return w.scatter_(2, index, g[:, None, None, :].expand(x, R, k, y).to(dtype))
    j = torch.arange(R, device=selection.device)[None, None, :, None]
    hit = (selection.long()[:, :, None, :] >> j) & 1  # [x, R_i, R_j, y]
    return hit.to(dtype) * g[:, None, None, :]


def _regions_major(t: torch.Tensor, y0: int, y1: int, R: int) -> torch.Tensor:
    """Target rows of frames ``y0:y1`` reordered region-major, ``[R y, D]`` (a bounded copy)."""
    return t[y0 * R:y1 * R].view(y1 - y0, R, -1).transpose(0, 1).reshape((y1 - y0) * R, -1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, R, D]`` -> ``[B T R, D]`` (a view when contiguous)."""
    return x.reshape(-1, x.shape[-1])


def _grid(query, target):
    """Sizes ``(Bq, T, Bt, T', R, D)`` and both inputs as ``[frames R, D]`` row blocks."""
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    return (Bq, T, Bt, T2, R, D), _flat(query.contiguous()), _flat(target.contiguous())


def valid_frames(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Boolean ``[B T]`` of frames within their video's length."""
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]).reshape(-1)


def resolve_workspace(workspace_bytes: int, device_type: str, phase: str) -> int:
    """The registered ops take ``workspace_bytes = 0`` for "the default of this device and phase"."""
    return int(workspace_bytes) if workspace_bytes else default_workspace_bytes(device_type, phase)


def tiled_forward(query, target, k: int, query_lengths, target_lengths, save_selection: bool,
                  workspace_bytes: int):
    """``(maps [Bq, Bt, T, T'], selection [Bq T, R, Bt T'] or empty)``; ``workspace_bytes = 0``
    takes the device's default."""
    workspace_bytes = resolve_workspace(workspace_bytes, query.device.type, "forward")
    (Bq, T, Bt, T2, R, D), q, t = _grid(query, target)
    X, Y = Bq * T, Bt * T2
    flat = torch.zeros((X, Y), dtype=accumulation_dtype(query.dtype), device=query.device)
    selection = torch.empty(selection_shape(X, R, Y, k, save_selection), dtype=selection_dtype(R, k),
                            device=query.device)
    if X and Y and R:
        bx, by = tile_frames(workspace_bytes, R, X, Y, query.element_size(), k,
                             "forward_save" if save_selection else "forward", D)
        scale = 1.0 / (k * R)
        for y0 in range(0, Y, by):
            y1 = min(y0 + by, Y)
            tb = _regions_major(t, y0, y1, R)  # [R_j y, D]
            for x0 in range(0, X, bx):
                x1 = min(x0 + bx, X)
                block = (q[x0 * R:x1 * R] @ tb.T).view(x1 - x0, R, R, y1 - y0)  # [x, R_i, R_j, y]
                total, sel = _select(block, k, save_selection)
                del block
                flat[x0:x1, y0:y1] = total.sum(1) * scale
                if sel is not None:
                    selection[x0:x1, ..., y0:y1] = sel
    valid = valid_frames(query_lengths, T)[:, None] & valid_frames(target_lengths, T2)[None, :]
    flat.masked_fill_(~valid, 0.0)
    maps = flat.view(Bq, T, Bt, T2).permute(0, 2, 1, 3).to(query.dtype).contiguous()
    return maps, selection


class _GradientTiles:
    """``grad_out [Bq, Bt, T, T']`` read as ``[x, y]`` tiles of the flat frame grid, scaled by
    ``1/(k R)`` and zero on padding. Gathered per tile, so the incoming gradient is never copied
    whole (it is often an expanded scalar); the frame indices and validity of the grid's rows and
    columns are computed once, so a tile costs one gather and three small passes."""

    def __init__(self, grad_out, query_lengths, target_lengths, T: int, T2: int, scale: float, dtype):
        dev = grad_out.device
        rows = torch.arange(query_lengths.shape[0] * T, device=dev)
        cols = torch.arange(target_lengths.shape[0] * T2, device=dev)
        self.a, self.x = rows // T, rows % T
        self.b, self.y = cols // T2, cols % T2
        self.row_ok = valid_frames(query_lengths, T)
        self.col_ok = valid_frames(target_lengths, T2)
        self.grad_out, self.scale, self.dtype = grad_out, scale, dtype

    def __call__(self, x0: int, x1: int, y0: int, y1: int) -> torch.Tensor:
        tile = self.grad_out[self.a[x0:x1, None], self.b[None, y0:y1], self.x[x0:x1, None], self.y[None, y0:y1]]
        padding = ~(self.row_ok[x0:x1, None] & self.col_ok[None, y0:y1])
        return tile.mul_(self.scale).masked_fill_(padding, 0).to(self.dtype)


def _none_valid(cumulative, start: int, end: int) -> bool:
    """Whether no frame of ``start:end`` is valid, from the running count of valid frames."""
    return int(cumulative[end - 1]) == (int(cumulative[start - 1]) if start else 0)


def tiled_backward(grad_out, query, target, selection, k: int, query_lengths, target_lengths,
                   workspace_bytes: int):
    """Gradients ``(d query, d target)`` from the saved selection, tile by tile;
    ``workspace_bytes = 0`` takes the device's default for the backward."""
    workspace_bytes = resolve_workspace(workspace_bytes, query.device.type, "backward")
    (Bq, T, Bt, T2, R, D), q, t = _grid(query, target)
    X, Y = Bq * T, Bt * T2
    acc = accumulation_dtype(query.dtype)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dt = torch.zeros(t.shape, dtype=acc, device=t.device)
    if X == 0 or Y == 0 or R == 0:
        return dq.to(query.dtype).view_as(query), dt.to(target.dtype).view_as(target)
    gradient_tile = _GradientTiles(grad_out, query_lengths, target_lengths, T, T2, 1.0 / (k * R), query.dtype)
    bx, by = tile_frames(workspace_bytes, R, X, Y, query.element_size(), k, "backward", D)
    # On the CPU a tile made only of padded frames is skipped; its validity is read from a numpy
    # view of the lengths' frame masks (no device, no dispatcher call). Elsewhere the test would
    # cost a host read per tile, so every tile runs (a padded tile's gradient is zero anyway).
    rows_ok = cols_ok = None
    if query.device.type == "cpu":
        rows_ok = gradient_tile.row_ok.numpy().cumsum()
        cols_ok = gradient_tile.col_ok.numpy().cumsum()
    for y0 in range(0, Y, by):
        y1 = min(y0 + by, Y)
        if cols_ok is not None and _none_valid(cols_ok, y0, y1):
            continue
        tb = _regions_major(t, y0, y1, R)  # [R_j y, D]
        dtb = torch.zeros(tb.shape, dtype=acc, device=t.device)
        for x0 in range(0, X, bx):
            x1 = min(x0 + bx, X)
            if rows_ok is not None and _none_valid(rows_ok, x0, x1):
                continue
            gt = gradient_tile(x0, x1, y0, y1)
            w = _weights(selection[x0:x1, ..., y0:y1] if selection.numel() else selection, gt, k, R, query.dtype)
            w = w.reshape((x1 - x0) * R, R * (y1 - y0))  # rows (x, i), columns (j, y)
            if acc == query.dtype:
                dq[x0 * R:x1 * R].addmm_(w, tb)
                dtb.addmm_(w.T, q[x0 * R:x1 * R])
            else:  # bf16 / fp16 GEMMs (fp32 accumulation inside), summed over tiles in fp32
                dq[x0 * R:x1 * R] += w @ tb
                dtb += w.T @ q[x0 * R:x1 * R]
        dt[y0 * R:y1 * R] += dtb.view(R, y1 - y0, D).transpose(0, 1).reshape(-1, D)
    return dq.to(query.dtype).view_as(query), dt.to(target.dtype).view_as(target)


# --- registered ops (autograd, torch.compile and opcheck see them) ---------------------------

@torch.library.custom_op("hapvr::spatial_topk_chamfer_tiled", mutates_args=())
def _tiled_op(query: torch.Tensor, target: torch.Tensor, k: int, query_lengths: torch.Tensor,
              target_lengths: torch.Tensor, save_selection: bool, workspace_bytes: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    return tiled_forward(query, target, k, query_lengths, target_lengths, save_selection, workspace_bytes)


@_tiled_op.register_fake
def _tiled_fake(query, target, k, query_lengths, target_lengths, save_selection, workspace_bytes):
    Bq, T, R, _ = query.shape
    Bt, T2 = target.shape[:2]
    shape = selection_shape(Bq * T, R, Bt * T2, k, save_selection)
    return query.new_empty((Bq, Bt, T, T2)), query.new_empty(shape, dtype=selection_dtype(R, k))


@torch.library.custom_op("hapvr::spatial_topk_chamfer_tiled_backward", mutates_args=())
def _tiled_backward_op(grad_out: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
                       selection: torch.Tensor, k: int, query_lengths: torch.Tensor,
                       target_lengths: torch.Tensor, workspace_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tiled_backward(grad_out, query, target, selection, k, query_lengths, target_lengths, workspace_bytes)


@_tiled_backward_op.register_fake
def _tiled_backward_fake(grad_out, query, target, selection, k, query_lengths, target_lengths, workspace_bytes):
    return torch.empty_like(query), torch.empty_like(target)


register_spatial_autograd(_tiled_op, _tiled_backward_op, contiguous_grad=False)


def spatial_topk_chamfer_tiled(query, target, k, query_lengths, target_lengths, save_selection=True,
                               workspace_bytes: int | None = None) -> torch.Tensor:
    workspace = 0 if workspace_bytes is None else int(workspace_bytes)  # 0: per-device, per-phase default
    default_workspace_bytes(query.device.type)  # a bad HAPVR_TILED_WORKSPACE_MB is refused here, not mid-graph
    return _tiled_op(query, target, k, query_lengths, target_lengths, save_selection, workspace)[0]
