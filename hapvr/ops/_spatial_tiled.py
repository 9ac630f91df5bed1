"""The ``tiled`` backend of spatial_topk_chamfer: the device's own GEMM on bounded tiles.

All ``O(T R T' R D)`` work is ATen ``matmul`` (MKL/OpenBLAS on the CPU, cuBLAS on CUDA, with
tensor cores through TF32 / bf16 / fp16 as the input dtype and
``torch.backends.cuda.matmul.allow_tf32`` decide). The frames of all query videos and of all
target videos are laid end to end; the ``[Bq T, Bt T']`` frame grid is cut into tiles whose
region-similarity block ``[x R, y R]`` fits a workspace bound (default 64 MiB, per call or
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

from hapvr.ops._topk import mask_dtype

DEFAULT_WORKSPACE_BYTES = 64 << 20
WORKSPACE_ENV = "HAPVR_TILED_WORKSPACE_MB"


def default_workspace_bytes() -> int:
    """The workspace bound: ``HAPVR_TILED_WORKSPACE_MB`` if set, else 64 MiB."""
    value = os.environ.get(WORKSPACE_ENV)
    if value is None or value == "":
        return DEFAULT_WORKSPACE_BYTES
    try:
        mb = float(value)
    except ValueError:
        raise ValueError(f"{WORKSPACE_ENV} must be a number of MiB, got {value!r}") from None
    if not mb > 0:
        raise ValueError(f"{WORKSPACE_ENV} must be > 0, got {value!r}")
    return int(mb * (1 << 20))


def tile_frames(workspace_bytes: int, R: int, rows: int, cols: int, element_size: int) -> tuple[int, int]:
    """Query and target frames per tile so that one tile's transient tensors fit ``workspace_bytes``.

    Per (query frame, target frame) cell a tile holds its ``R x R`` similarity block in the
    compute dtype plus, at most, the same again for the epilogue's temporaries (top-k values
    and indices, or the backward's expanded weights) - budgeted as ``3 R^2`` elements of 8 bytes
    at worst. Tiles are square-ish (GEMM efficiency) and never empty."""
    per_cell = 3 * R * R * max(element_size, 8)
    cells = max(workspace_bytes // per_cell, 1)
    side = max(int(math.isqrt(cells)), 1)
    bx = min(rows, side)
    by = min(cols, max(cells // max(bx, 1), 1))
    if by == cols:  # target axis fits whole: give the rest of the budget to the query axis
        bx = min(rows, max(cells // max(by, 1), 1))
    return max(bx, 1), max(by, 1)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums and gradients accumulate in fp32 (fp64 for fp64 inputs), as the compiled kernels do."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _select(block: torch.Tensor, k: int, save: bool):
    """Top-k of ``block [x, R, y, R]`` over the last dim: (sum of the selected values in the
    accumulation dtype ``[x, R, y]``, selection or None). Ties go to the lower region index."""
    R = block.shape[-1]
    acc = accumulation_dtype(block.dtype)
    if k == R:
        total = block.sum(-1, dtype=acc)
        if not save:
            return total, None
        bits = (1 << R) - 1 if R < 64 else -1
        return total, torch.full(block.shape[:-1], bits, dtype=mask_dtype(R, k), device=block.device)
    if k == 1:
        if not save:
            return block.amax(-1).to(acc), None
        index = block.argmax(-1)  # argmax returns the first maximal index: the tie rule
        return block.gather(-1, index[..., None])[..., 0].to(acc), index.to(torch.int8)
    if not save:  # the sum of the k largest does not depend on which of equal values is taken
        return block.topk(k, dim=-1, sorted=False).values.sum(-1, dtype=acc), None
    values, index = block.sort(dim=-1, descending=True, stable=True)  # equal values keep index order
    total = values[..., :k].sum(-1, dtype=acc)
    bits = (torch.ones((), dtype=torch.int64, device=block.device) << index[..., :k]).sum(-1)  # distinct bits
    return total, bits.to(mask_dtype(R, k))


def _expand(selection: torch.Tensor, k: int, R: int, dtype: torch.dtype) -> torch.Tensor:
    """The selection ``[x, R, y]`` as 0/1 weights ``[x, R, y, R]`` in ``dtype``."""
    if k == 1:
        return torch.nn.functional.one_hot(selection.long(), R).to(dtype)
    j = torch.arange(R, device=selection.device)
    return ((selection.long()[..., None] >> j) & 1).to(dtype)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, R, D]`` -> ``[B T R, D]`` (a view when contiguous)."""
    return x.reshape(-1, x.shape[-1])


def valid_frames(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Boolean ``[B T]`` of frames within their video's length."""
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]).reshape(-1)


def tiled_forward(query, target, k: int, query_lengths, target_lengths, save_selection: bool,
                  workspace_bytes: int):
    """``(maps [Bq, Bt, T, T'], selection [Bq T, R, Bt T'] or empty)``."""
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    X, Y = Bq * T, Bt * T2
    q = _flat(query.contiguous())
    t = _flat(target.contiguous())
    flat = torch.zeros((X, Y), dtype=accumulation_dtype(query.dtype), device=query.device)
    selection = (torch.empty((X, R, Y), dtype=mask_dtype(R, k), device=query.device) if save_selection
                 else torch.empty((0,), dtype=mask_dtype(R, k), device=query.device))
    if X and Y and R:
        bx, by = tile_frames(workspace_bytes, R, X, Y, query.element_size())
        scale = 1.0 / (k * R)
        for x0 in range(0, X, bx):
            x1 = min(x0 + bx, X)
            qa = q[x0 * R:x1 * R]
            for y0 in range(0, Y, by):
                y1 = min(y0 + by, Y)
                block = (qa @ t[y0 * R:y1 * R].T).view(x1 - x0, R, y1 - y0, R)
                total, sel = _select(block, k, save_selection)
                del block
                flat[x0:x1, y0:y1] = total.sum(1) * scale
                if sel is not None:
                    selection[x0:x1, :, y0:y1] = sel
    valid = valid_frames(query_lengths, T)[:, None] & valid_frames(target_lengths, T2)[None, :]
    flat.masked_fill_(~valid, 0.0)
    maps = flat.view(Bq, T, Bt, T2).permute(0, 2, 1, 3).to(query.dtype).contiguous()
    return maps, selection


def tiled_backward(grad_out, query, target, selection, k: int, query_lengths, target_lengths,
                   workspace_bytes: int):
    """Gradients ``(d query, d target)`` from the saved selection, tile by tile."""
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    X, Y = Bq * T, Bt * T2
    q = _flat(query.contiguous())
    t = _flat(target.contiguous())
    acc = accumulation_dtype(query.dtype)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dt = torch.zeros(t.shape, dtype=acc, device=t.device)
    if X == 0 or Y == 0 or R == 0:
        return dq.to(query.dtype).view_as(query), dt.to(target.dtype).view_as(target)
    valid = valid_frames(query_lengths, T)[:, None] & valid_frames(target_lengths, T2)[None, :]
    # [Bq, Bt, T, T'] -> [Bq T, Bt T'], scaled, zero on padding (padded frames get no gradient)
    g = grad_out.permute(0, 2, 1, 3).reshape(X, Y).to(query.dtype) * (1.0 / (k * R))
    g = g.masked_fill(~valid, 0)
    bx, by = tile_frames(workspace_bytes, R, X, Y, query.element_size())
    for x0 in range(0, X, bx):
        x1 = min(x0 + bx, X)
        for y0 in range(0, Y, by):
            y1 = min(y0 + by, Y)
            gt = g[x0:x1, y0:y1]
            if not bool(gt.any()):
                continue
            w = _expand(selection[x0:x1, :, y0:y1], k, R, query.dtype)  # [x, R, y, R]
            w.mul_(gt[:, None, :, None])
            w = w.view((x1 - x0) * R, (y1 - y0) * R)
            if acc == query.dtype:
                dq[x0 * R:x1 * R].addmm_(w, t[y0 * R:y1 * R])
                dt[y0 * R:y1 * R].addmm_(w.T, q[x0 * R:x1 * R])
            else:  # bf16 / fp16 GEMMs (fp32 accumulation inside), summed over tiles in fp32
                dq[x0 * R:x1 * R] += w @ t[y0 * R:y1 * R]
                dt[y0 * R:y1 * R] += w.T @ q[x0 * R:x1 * R]
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
    shape = (Bq * T, R, Bt * T2) if save_selection else (0,)
    return query.new_empty((Bq, Bt, T, T2)), query.new_empty(shape, dtype=mask_dtype(R, k))


@torch.library.custom_op("hapvr::spatial_topk_chamfer_tiled_backward", mutates_args=())
def _tiled_backward_op(grad_out: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
                       selection: torch.Tensor, k: int, query_lengths: torch.Tensor,
                       target_lengths: torch.Tensor, workspace_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tiled_backward(grad_out, query, target, selection, k, query_lengths, target_lengths, workspace_bytes)


@_tiled_backward_op.register_fake
def _tiled_backward_fake(grad_out, query, target, selection, k, query_lengths, target_lengths, workspace_bytes):
    return torch.empty_like(query), torch.empty_like(target)


def _setup_context(ctx, inputs, output):
    query, target, k, query_lengths, target_lengths, _save, workspace = inputs
    ctx.save_for_backward(query, target, output[1], query_lengths, target_lengths)
    ctx.k = k
    ctx.workspace = workspace
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, _grad_selection):
    query, target, selection, ql, tl = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None, None, None
    if selection.numel() == 0 and grad_out.numel() > 0:
        raise RuntimeError("spatial_topk_chamfer was called with save_selection=False; it has no gradient")
    gq, gt = _tiled_backward_op(grad_out.contiguous(), query, target, selection, ctx.k, ql, tl, ctx.workspace)
    return gq, gt, None, None, None, None, None


torch.library.register_autograd(_tiled_op, _backward, setup_context=_setup_context)


def spatial_topk_chamfer_tiled(query, target, k, query_lengths, target_lengths, save_selection=True,
                               workspace_bytes: int | None = None) -> torch.Tensor:
    workspace = default_workspace_bytes() if workspace_bytes is None else int(workspace_bytes)
    return _tiled_op(query, target, k, query_lengths, target_lengths, save_selection, workspace)[0]
