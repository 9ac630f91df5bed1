"""Every similarity and loss backend against a float64 reference, forward and backward, in every
precision it runs (flash-attention style): its error must be at most ``2 x`` the error PyTorch's
own matmul path makes in that precision (the ``reference`` backend in that dtype) plus 2 units of
the dtype's epsilon times the output's scale (16 for float64, where PyTorch's error is 0 by
construction). Top-k selections are discontinuous, so the upstream gradient is zeroed on the map
entries whose k-th / (k+1)-th region similarities lie closer than 8x the matmul error (a flip
there would be legitimate in any precision).

The CPU cases always run; the CUDA cases run on a machine with a GPU (``python -m
benchmarks.gpu_check`` runs them there) and are skipped elsewhere."""

from __future__ import annotations

import math

import pytest
import torch

from hapvr.ops import (
    explain_quadlinear_ap_backends,
    explain_spatial_backends,
    quadlinear_ap,
    quadlinear_ap_reference,
    spatial_topk_chamfer,
    spatial_topk_chamfer_reference,
)
from hapvr.precision import GEMM_VARIANTS, allow_tf32

FLOOR_ULPS = {torch.float64: 16}  # units of eps x output scale; 2 for other dtypes
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device (torch.cuda.is_available() is False)")


GPU_SPATIAL = {"tiled": ("fp32-ieee", "tf32", "bf16", "fp16"), "triton": ("fp32-ieee", "tf32", "bf16", "fp16"),
               "cuda": ("fp32-ieee", "bf16", "fp16"), "reference": ("fp32-ieee", "tf32", "bf16", "fp16")}
CPU_SPATIAL = {"cpp": ("fp64", "fp32-ieee"), "tiled": ("fp64", "fp32-ieee", "bf16")}


def _eps(variant: str) -> float:
    dtype, tf32 = GEMM_VARIANTS[variant]
    return 2.0 ** -10 if tf32 else torch.finfo(dtype).eps


def spatial_case(dtype, k: int, seed: int, device: str):
    """Small padded batch in ``dtype`` (values exactly representable, so the float64 copy is the
    same input) and a random upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    Bq, Bt, T, T2, R, D = 2, 3, 12, 10, 9, 64
    q = torch.nn.functional.normalize(torch.randn(Bq, T, R, D, generator=g), dim=-1).to(dtype)
    t = torch.nn.functional.normalize(torch.randn(Bt, T2, R, D, generator=g), dim=-1).to(dtype)
    ql, tl = torch.tensor([T, 7]), torch.tensor([T2, 4, 9])
    grad = torch.randn(Bq, Bt, T, T2, generator=g).to(dtype)
    return [x.to(device) for x in (q, t, ql, tl, grad)]


def _run_spatial(backend, q, t, k, ql, tl, grad):
    qq, tt = q.detach().clone().requires_grad_(True), t.detach().clone().requires_grad_(True)
    if backend == "reference":
        out = spatial_topk_chamfer_reference(qq, tt, k, ql, tl)
    else:
        out = spatial_topk_chamfer(qq, tt, k, ql, tl, backend=backend)
    out.backward(grad.to(out.dtype))
    return out.detach(), qq.grad, tt.grad


def _ambiguous(q64, t64, qlow, tlow, k: int) -> torch.Tensor:
    """[Bq, Bt, T, T'] entries whose top-k could legitimately flip in the low precision."""
    Bq, T, R, D = q64.shape
    Bt, T2 = t64.shape[:2]
    S64 = (q64.reshape(-1, D) @ t64.reshape(-1, D).T).view(Bq, T, R, Bt, T2, R)
    Slow = (qlow.reshape(-1, D) @ tlow.reshape(-1, D).T).double().view_as(S64)
    thr = 8 * float((Slow - S64).abs().max()) + 1e-12
    if k >= R:
        return torch.zeros(Bq, Bt, T, T2, dtype=torch.bool, device=q64.device)
    top = S64.topk(k + 1, dim=-1).values
    close = (top[..., k - 1] - top[..., k]) < thr           # [Bq, T, R, Bt, T']
    return close.any(2).permute(0, 2, 1, 3)


def check_spatial(backend: str, variant: str, k: int, device: str, perturb: float = 0.0):
    dtype, tf32 = GEMM_VARIANTS[variant]
    q, t, ql, tl, grad = spatial_case(dtype, k, seed=10 * k + len(variant), device=device)
    why = explain_spatial_backends(q, t, k, ql, tl)[backend] if backend != "reference" else []
    if why:
        pytest.skip("; ".join(why))
    with allow_tf32(tf32):
        q64, t64 = q.double(), t.double()
        grad = grad.masked_fill(_ambiguous(q64, t64, q, t, k), 0)
        want = _run_spatial("reference", q64, t64, k, ql, tl, grad.double())
        base = _run_spatial("reference", q, t, k, ql, tl, grad)
        got = _run_spatial(backend, q, t, k, ql, tl, grad)
    if perturb and backend != "reference":
        got = tuple(None if x is None else x + perturb for x in got)
    eps = _eps(variant)
    return _compare(("out", "dq", "dt"), got, base, want, dtype, eps)


def _compare(names, got, base, want, dtype, eps) -> tuple[bool, str]:
    """Each output's error against the float64 answer ``want`` must be at most twice the error of
    PyTorch's own path ``base`` in the same dtype, plus a floor of a few ulps (flash-attention style).
    A missing gradient (None) fails: autograd did not reach the input."""
    parts, ok = [], True
    for name, g_, b_, w_ in zip(names, got, base, want):
        if g_ is None:
            ok = False
            parts.append(f"{name} is None: no gradient reached the input")
            continue
        err = float((g_.double() - w_).abs().max())
        base_err = float((b_.double() - w_).abs().max())
        bound = 2 * base_err + FLOOR_ULPS.get(dtype, 2) * eps * max(float(w_.abs().max()), 1e-30)
        ok &= err <= bound and math.isfinite(err)
        parts.append(f"{name} err {err:.2e} (torch {base_err:.2e}, bound {bound:.2e})")
    return ok, ", ".join(parts)


def quadlinear_case(dtype, device: str, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    Q, M = 6, 300
    scores = torch.rand(Q, M, generator=g).to(dtype)
    u = torch.rand(Q, M, generator=g)
    labels = torch.where(u < 0.2, -1, torch.where(u < 0.5, 1, 0)).to(torch.int8)
    labels[0] = 1  # no negative: invalid row
    labels[1, : M // 2] = -1
    grad = torch.randn(Q, generator=g).to(dtype)
    return scores.to(device), labels.to(device), grad.to(device)


def _run_quadlinear(backend, scores, labels, grad, delta, rho):
    s = scores.detach().clone().requires_grad_(True)
    if backend == "reference":
        risk = quadlinear_ap_reference(s, labels, delta, rho).risk
    else:
        risk = quadlinear_ap(s, labels, delta, rho, backend=backend).risk
    risk.backward(grad.to(risk.dtype))
    return risk.detach(), s.grad


def check_quadlinear(backend: str, variant: str, device: str, perturb: float = 0.0):
    dtype, _ = GEMM_VARIANTS[variant]
    scores, labels, grad = quadlinear_case(dtype, device)
    delta, rho = 0.05, 0.10
    why = explain_quadlinear_ap_backends(scores, labels, delta, rho)[backend]
    if why:
        pytest.skip("; ".join(why))
    want = _run_quadlinear("reference", scores.double(), labels, grad.double(), delta, rho)
    base = _run_quadlinear("reference", scores, labels, grad, delta, rho)
    got = _run_quadlinear(backend, scores, labels, grad, delta, rho)
    if perturb:
        got = tuple(None if x is None else x + perturb for x in got)
    # The compiled kernels sum in another order (sorted prefixes): fp64 gets a 16e-10 floor.
    eps = 1e-10 if dtype == torch.float64 else _eps(variant)
    return _compare(("risk", "grad"), got, base, want, dtype, eps)




def _cases(table: dict) -> list[tuple[str, str, int]]:
    return [(b, v, k) for b, variants in table.items() for v in variants for k in (1, 3)]


@pytest.mark.parametrize("backend, variant, k", _cases(CPU_SPATIAL))
def test_spatial_on_the_cpu(backend, variant, k):
    ok, detail = check_spatial(backend, variant, k, "cpu")
    assert ok, detail


@pytest.mark.parametrize("variant", ["fp64", "fp32-ieee"])
def test_quadlinear_ap_on_the_cpu(variant):
    ok, detail = check_quadlinear("cpp", variant, "cpu")
    assert ok, detail


@needs_cuda
@pytest.mark.parametrize("backend, variant, k", _cases(GPU_SPATIAL))
def test_spatial_on_cuda(backend, variant, k):
    ok, detail = check_spatial(backend, variant, k, "cuda")
    assert ok, detail


@needs_cuda
@pytest.mark.parametrize("backend, variant", [("cuda", "fp64"), ("cuda", "fp32-ieee"), ("triton", "fp32-ieee")])
def test_quadlinear_ap_on_cuda(backend, variant):
    ok, detail = check_quadlinear(backend, variant, "cuda")
    assert ok, detail


@pytest.mark.parametrize("backend, variant", [("cpp", "fp32-ieee"), ("tiled", "bf16")])
def test_a_perturbed_output_fails_the_check(backend, variant):
    """The bound is tight enough to catch a wrong result: the check can fail."""
    ok, detail = check_spatial(backend, variant, 3, "cpu", perturb=0.05)
    assert not ok, detail
    ok, _ = check_quadlinear("cpp", "fp32-ieee", "cpu", perturb=0.05)
    assert not ok
