"""Tracing shapes and autograd wiring of the spatial TopK-Chamfer ops (compiled and Triton).

Every forward op has the signature ``(query, target, k, query_lengths, target_lengths,
save_selection) -> (maps, selection)`` and its backward op ``(grad, query, target, selection, k,
query_lengths, target_lengths) -> (d query, d target)``.
"""

from __future__ import annotations

import torch

from hapvr import _ext
from hapvr.ops._topk import mask_dtype


def spatial_fake(query, target, k, query_lengths, target_lengths, save_selection=True):
    """Output shapes of the forward ops (compiled and Triton) for tracing."""
    Bq, T, R, _ = query.shape
    Bt, T2 = target.shape[:2]
    mask_shape = (Bq, Bt, T, T2, R) if save_selection else (0,)
    return query.new_empty((Bq, Bt, T, T2)), query.new_empty(mask_shape, dtype=mask_dtype(R, k))


def spatial_backward_fake(grad_out, query, target, mask, k, query_lengths, target_lengths):
    return torch.empty_like(query), torch.empty_like(target)


def register_spatial_autograd(forward_op, backward_op, contiguous_grad: bool = True) -> None:
    """Wires ``backward_op(grad, query, target, selection, k, ql, tl, *extra)`` as the gradient of
    ``forward_op(query, target, k, ql, tl, save_selection, *extra) -> (maps, selection)``; the
    ``extra`` arguments (e.g. a workspace bound) are passed through unchanged. The compiled
    kernels take a contiguous gradient; ``contiguous_grad=False`` hands it over as it comes (an
    expanded scalar stays one)."""

    def setup_context(ctx, inputs, output):
        query, target, k, query_lengths, target_lengths = inputs[:5]
        ctx.save_for_backward(query, target, output[1], query_lengths, target_lengths)
        ctx.k = k
        ctx.saved_selection = bool(inputs[5]) if len(inputs) > 5 else True
        ctx.extra = tuple(inputs[6:])
        ctx.n_inputs = len(inputs)
        ctx.mark_non_differentiable(output[1])
        # Without this, autograd hands backward a zero-filled tensor the size of the selection.
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_out, _grad_selection):
        query, target, selection, ql, tl = ctx.saved_tensors
        rest = (None,) * (ctx.n_inputs - 2)
        if grad_out is None:
            return (None, None) + rest
        if not ctx.saved_selection and grad_out.numel() > 0:
            raise RuntimeError("spatial_topk_chamfer was called with save_selection=False; it has no gradient")
        grad = grad_out.contiguous() if contiguous_grad else grad_out
        gq, gt = backward_op(grad, query, target, selection, ctx.k, ql, tl, *ctx.extra)
        return (gq, gt) + rest

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if _ext.has_cpu_kernels:
    torch.library.register_fake("hapvr::spatial_topk_chamfer", spatial_fake)
    torch.library.register_fake("hapvr::spatial_topk_chamfer_backward", spatial_backward_fake)
    register_spatial_autograd("hapvr::spatial_topk_chamfer", torch.ops.hapvr.spatial_topk_chamfer_backward)
