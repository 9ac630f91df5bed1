"""Shapes for tracing and the autograd of a QuadLinear-AP op: the compiled op
(``hapvr::quadlinear_ap``, C++ and CUDA kernels) and the Triton op share them. The forward
returns ``(risk [Q], valid [Q])``; the backward op gives ``d sum_q grad_risk[q] risk[q] / d
scores`` (``[Q, M]``, den of eq. 11 held constant)."""

from __future__ import annotations

import torch


def register_quadlinear_ap_op(forward, backward) -> None:
    """Fake kernels of ``forward`` and ``backward`` (op names or custom ops), and ``forward``'s
    autograd through ``backward``."""

    def forward_fake(scores, labels, delta, rho):
        Q = scores.shape[0]
        return scores.new_empty((Q,)), scores.new_empty((Q,), dtype=torch.bool)

    def backward_fake(grad_risk, scores, labels, delta, rho):
        return torch.empty_like(scores)

    def setup_context(ctx, inputs, output):
        scores, labels, delta, rho = inputs
        ctx.save_for_backward(scores, labels)
        ctx.delta, ctx.rho = delta, rho
        ctx.mark_non_differentiable(output[1])

    def backward_rule(ctx, grad_risk, _grad_valid):
        scores, labels = ctx.saved_tensors
        run = backward if callable(backward) else getattr(torch.ops.hapvr, backward.split("::")[1])
        return run(grad_risk.contiguous(), scores, labels, ctx.delta, ctx.rho), None, None, None

    torch.library.register_fake(forward)(forward_fake)
    torch.library.register_fake(backward)(backward_fake)
    torch.library.register_autograd(forward, backward_rule, setup_context=setup_context)
