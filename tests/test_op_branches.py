"""Branches of the operators that the per-op test files leave out, each against an oracle:

- spatial TopK-Chamfer: the int16 / int32 / int64 selection masks of the compiled kernel (decoded
  bit by bit against the reference's top-k sets, the int64 sign bit included), R > 64 (beyond the
  compiled kernel: what ``auto`` falls back to), bf16 / fp16 inputs through ``backend="auto"`` on
  the CPU (flash-attention style: at most 2x the error PyTorch itself makes in that dtype against
  an fp64 reference), zero-length videos and empty batches;
- temporal TopK-Chamfer and QuadLinear-AP on zero lengths and empty batches;
- hypothesis property tests of the compiled kernels (``cpp``) against the references.

Every input is drawn from a seeded generator; hypothesis runs derandomised.
"""

import itertools

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hapvr.ops import (
    NoBackendError,
    choose_spatial_backend,
    explain_spatial_backends,
    quadlinear_ap,
    quadlinear_ap_reference,
    spatial_topk_chamfer,
    spatial_topk_chamfer_reference,
    temporal_topk_chamfer,
)


def unit(g, *shape, dtype=torch.float64):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def patch_sims(q, t):
    """Every patch similarity in float64, ``[Bq, Bt, T, T', R_i, R_j]``."""
    return torch.einsum("axid,byjd->abxyij", q.double(), t.double())


def min_topk_gap(q, t, k):
    """Smallest gap between the k-th and (k+1)-th largest similarity of any (x, i, y) row: the
    selection (hence the gradient) is only well defined above the arithmetic's rounding."""
    R = q.shape[2]
    if k == R or q.numel() == 0 or t.numel() == 0:
        return float("inf")
    s = patch_sims(q, t).sort(dim=-1, descending=True).values
    return float((s[..., k - 1] - s[..., k]).min())


def tie_free_inputs(g, shape_q, shape_t, k, gap, dtype=torch.float64):
    for _ in range(200):
        q, t = unit(g, *shape_q, dtype=dtype), unit(g, *shape_t, dtype=dtype)
        if min_topk_gap(q, t, k) > gap:
            return q, t
    raise AssertionError("could not draw inputs without near ties")


def absmax(x):
    return float(x.abs().max()) if x.numel() else 0.0


def valid_entries(ql, tl, T, T2):
    """Boolean ``[Bq, Bt, T, T']`` of entries whose frames both lie within their video."""
    vx = torch.arange(T)[None, :] < ql[:, None]
    vy = torch.arange(T2)[None, :] < tl[:, None]
    return vx[:, None, :, None] & vy[None, :, None, :]


def grads(fn, q, t, upstream):
    q = q.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    out = fn(q, t)
    gq, gt = torch.autograd.grad(out, (q, t), upstream.to(out.dtype), allow_unused=True)
    zero = torch.zeros_like
    return out.detach(), (zero(q) if gq is None else gq), (zero(t) if gt is None else gt)


# --- selection masks of the compiled kernel: int16 (R <= 16), int32 (<= 32), int64 (<= 64) ----

MASK_CASES = [(16, 2, torch.int16), (17, 2, torch.int32), (24, 5, torch.int32), (32, 31, torch.int32),
              (33, 2, torch.int64), (48, 17, torch.int64), (64, 2, torch.int64), (64, 63, torch.int64)]


@pytest.mark.parametrize("R,k,mask_dtype", MASK_CASES, ids=[f"R{r}-k{k}" for r, k, _ in MASK_CASES])
def test_compiled_selection_mask_holds_the_reference_top_k(R, k, mask_dtype):
    g = torch.Generator().manual_seed(100 * R + k)
    q, t = tie_free_inputs(g, (2, 3, R, 8), (2, 4, R, 8), k, 1e-9)
    ql, tl = torch.tensor([3, 2]), torch.tensor([4, 1])
    out, mask = torch.ops.hapvr.spatial_topk_chamfer(q, t, k, ql, tl)
    assert mask.dtype == mask_dtype and mask.shape == (2, 2, 3, 4, R)
    # bit j of mask[a, b, x, y, i]: target region j is among the k largest <q[a,x,i], t[b,y,j]>
    bits = (mask.long()[..., None] >> torch.arange(R)) & 1  # sign-extended: bits below R are exact
    top = patch_sims(q, t).topk(k, dim=-1).indices
    want = torch.zeros(bits.shape, dtype=torch.long).scatter_(-1, top, 1)
    valid = valid_entries(ql, tl, 3, 4)
    assert torch.equal(bits[valid], want[valid])
    if R in (32, 64) and k > R // 2:  # the last region is usually selected: the mask's sign bit is used
        assert bool((mask[valid] < 0).any())


@pytest.mark.parametrize("R,k", [(R, k) for R, k, _ in MASK_CASES], ids=[f"R{r}-k{k}" for r, k, _ in MASK_CASES])
@pytest.mark.parametrize("backend", ["cpp", "tiled"])
def test_mask_branches_forward_and_backward_equal_the_reference(R, k, backend):
    g = torch.Generator().manual_seed(7 * R + k)
    q, t = tie_free_inputs(g, (2, 3, R, 8), (2, 4, R, 8), k, 1e-9)
    ql, tl = torch.tensor([3, 2]), torch.tensor([4, 1])
    upstream = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64)
    got = grads(lambda a, b: spatial_topk_chamfer(a, b, k, ql, tl, backend=backend), q, t, upstream)
    want = grads(lambda a, b: spatial_topk_chamfer_reference(a, b, k, ql, tl), q, t, upstream)
    assert want[1].abs().max() > 0 and want[2].abs().max() > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# --- more than 64 regions: beyond the compiled kernel's bit mask ---------------------------


@pytest.mark.parametrize("R,k", [(65, 1), (65, 3), (80, 40), (80, 80)])
def test_more_than_64_regions_fall_back_to_tiled_and_equal_the_reference(R, k):
    g = torch.Generator().manual_seed(R + k)
    q, t = tie_free_inputs(g, (2, 2, R, 6), (1, 3, R, 6), k, 1e-9)
    ql, tl = torch.tensor([2, 1]), torch.tensor([3])
    assert any(f"R={R} exceeds 64 regions" in why for why in explain_spatial_backends(q, t, k, ql, tl)["cpp"])
    with pytest.raises(NoBackendError, match=f"cpp: R={R} exceeds 64 regions"):
        spatial_topk_chamfer(q, t, k, ql, tl, backend="cpp")
    assert choose_spatial_backend(q, t, k, ql, tl) == "tiled"
    upstream = torch.randn(2, 1, 2, 3, generator=g, dtype=torch.float64)
    got = grads(lambda a, b: spatial_topk_chamfer(a, b, k, ql, tl), q, t, upstream)  # auto
    want = grads(lambda a, b: spatial_topk_chamfer_reference(a, b, k, ql, tl), q, t, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # float32 through auto as well (the reference in float64 on the same values)
    got32 = grads(lambda a, b: spatial_topk_chamfer(a, b, k, ql, tl), q.float(), t.float(), upstream)
    for a, b in zip(got32, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


# --- bf16 / fp16 through backend="auto" on the CPU -----------------------------------------

EPS = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("k", [1, 3, 9])
def test_half_precisions_through_auto_are_as_accurate_as_torch(dtype, k):
    g = torch.Generator().manual_seed(11 + k)
    q, t = unit(g, 3, 6, 9, 64), unit(g, 2, 5, 9, 64)
    ql, tl = torch.tensor([6, 4, 1]), torch.tensor([5, 3])
    lq, lt = q.to(dtype), t.to(dtype)
    assert choose_spatial_backend(lq, lt, k, ql, tl) == "tiled"  # cpp takes fp32/fp64 only
    # Both sides start from the same rounded inputs: what is measured is the arithmetic.
    exact = spatial_topk_chamfer_reference(lq.double(), lt.double(), k, ql, tl)
    low = spatial_topk_chamfer(lq, lt, k, ql, tl)
    assert low.dtype == dtype
    torch_err = (spatial_topk_chamfer_reference(lq, lt, k, ql, tl).double() - exact).abs().max()
    err = (low.double() - exact).abs().max()
    assert err <= 2 * torch_err + EPS[dtype] / 16, (float(err), float(torch_err))  # slack: 1/16 ulp at 1
    assert (low[~valid_entries(ql, tl, 6, 5)] == 0).all()
    if k == 9:  # no selection: the backward is pure accumulation (with k < R a selection flip
        # between values equal in this dtype moves whole gradient terms, for torch as for hapvr)
        upstream = torch.randn(exact.shape, generator=g, dtype=torch.float64)
        ref = lambda a, b: spatial_topk_chamfer_reference(a, b, k, ql, tl)  # noqa: E731
        _, *want = grads(ref, lq.double(), lt.double(), upstream)
        _, *mine = grads(lambda a, b: spatial_topk_chamfer(a, b, k, ql, tl), lq, lt, upstream)
        _, *torchs = grads(ref, lq, lt, upstream)
        for m, r, w in zip(mine, torchs, want):
            assert m.dtype == dtype
            m_err, t_err = (m.double() - w).norm() / w.norm(), (r.double() - w).norm() / w.norm()
            assert m_err <= 2 * t_err + EPS[dtype] / 16, (float(m_err), float(t_err))


# --- zero-length videos and empty batches ---------------------------------------------------

EMPTY_SHAPES = [(0, 3, 2, 4), (2, 3, 0, 4), (2, 0, 2, 4), (2, 3, 2, 0), (0, 0, 0, 0)]


@pytest.mark.parametrize("backend", ["cpp", "tiled"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k", [1, 2])
def test_spatial_empty_batches(backend, shape, k):
    Bq, T, Bt, T2 = shape
    g = torch.Generator().manual_seed(3)
    q, t = unit(g, Bq, T, 9, 8), unit(g, Bt, T2, 9, 8)
    out, gq, gt = grads(lambda a, b: spatial_topk_chamfer(a, b, k, backend=backend), q, t,
                        torch.ones(Bq, Bt, T, T2, dtype=torch.float64))
    assert out.shape == (Bq, Bt, T, T2) and out.dtype == torch.float64
    assert gq.shape == q.shape and gt.shape == t.shape and not gq.any() and not gt.any()


@pytest.mark.parametrize("backend", ["cpp", "tiled"])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_spatial_zero_length_videos(backend, k):
    g = torch.Generator().manual_seed(4 + k)
    q, t = tie_free_inputs(g, (3, 4, 9, 8), (3, 5, 9, 8), k, 1e-9)
    ql, tl = torch.tensor([0, 4, 2]), torch.tensor([5, 0, 3])
    upstream = torch.randn(3, 3, 4, 5, generator=g, dtype=torch.float64)
    out, gq, gt = grads(lambda a, b: spatial_topk_chamfer(a, b, k, ql, tl, backend=backend), q, t, upstream)
    ref = grads(lambda a, b: spatial_topk_chamfer_reference(a, b, k, ql, tl), q, t, upstream)
    for a, b in zip((out, gq, gt), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not out[0].any() and not out[:, 1].any()  # a zero-length video's row / column is 0
    assert not gq[0].any() and not gt[1].any()  # ... and its features get no gradient
    assert out[1, 0].abs().min() > 0


def brute_temporal(sim, k, lq, lt):
    """Eq. 5 with an int k clamped to the target's length; 0 for an empty query or target."""
    if lq == 0 or lt == 0:
        return 0.0
    kk = min(k, lt)
    return sum(sum(sorted(sim[x, :lt].tolist(), reverse=True)[:kk]) / kk for x in range(lq)) / lq


def test_temporal_zero_lengths_give_zero_and_no_gradient():
    g = torch.Generator().manual_seed(5)
    sim = (torch.rand(3, 4, 6, 7, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    lq = torch.tensor([[0], [6], [3]])
    lt = torch.tensor([[7, 0, 1, 4]])
    out = temporal_topk_chamfer(sim, 2, query_lengths=lq, target_lengths=lt)
    for a, b in itertools.product(range(3), range(4)):
        want = brute_temporal(sim[a, b].detach(), 2, int(lq[a, 0]), int(lt[0, b]))
        assert float(out[a, b].detach()) == pytest.approx(want, abs=1e-12), (a, b)
    (grad,) = torch.autograd.grad(out.sum(), sim)
    assert not grad[0].any() and not grad[:, 1].any()
    # every valid row gives 1/(k lq) to each of its k largest valid entries
    assert grad[1, 0].sum() == pytest.approx(1.0) and grad[2, 2].sum() == pytest.approx(1.0)


def test_temporal_empty_batch():
    sim = torch.zeros(0, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    out = temporal_topk_chamfer(sim, 2)
    assert out.shape == (0, 3)
    (grad,) = torch.autograd.grad(out.sum(), sim)
    assert grad.shape == sim.shape


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 4, 0)], ids=["no-query-steps", "no-target-steps"])
def test_temporal_without_steps_is_zero(shape):
    out = temporal_topk_chamfer(torch.zeros(shape, dtype=torch.float64), 2)
    assert out.shape == shape[:2] and not out.any()


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 4, 0)], ids=["no-query-steps", "no-target-steps"])
def test_temporal_without_steps_stays_differentiable(shape):
    sim = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    out = temporal_topk_chamfer(sim, 2)
    (grad,) = torch.autograd.grad(out.sum(), sim)
    assert grad.shape == sim.shape and not grad.any()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("Q,M", [(3, 0), (3, 5)], ids=["no-candidates", "nothing-rankable"])
def test_quadlinear_ap_lists_without_positive_and_negative(backend, Q, M):
    scores = torch.rand(Q, M, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    labels = torch.tensor([[-1] * M, [1] * M, [0] * M], dtype=torch.int8)  # ignored / only positives / only negatives
    risk, valid = quadlinear_ap(scores, labels, backend=backend)
    assert risk.shape == (Q,) and not risk.any() and not valid.any()
    (grad,) = torch.autograd.grad(risk.sum(), scores)
    assert grad.shape == (Q, M) and not grad.any()


def test_quadlinear_ap_no_queries_cpp():
    scores = torch.zeros(0, 5, dtype=torch.float64, requires_grad=True)
    risk, valid = quadlinear_ap(scores, torch.zeros(0, 5, dtype=torch.int8), backend="cpp")
    assert risk.shape == valid.shape == (0,)
    (grad,) = torch.autograd.grad(risk.sum(), scores)
    assert grad.shape == (0, 5)


def test_quadlinear_ap_no_queries_reference():
    scores = torch.zeros(0, 5, dtype=torch.float64, requires_grad=True)
    risk, _ = quadlinear_ap(scores, torch.zeros(0, 5, dtype=torch.int8), backend="reference")
    (grad,) = torch.autograd.grad(risk.sum(), scores)
    assert grad.shape == (0, 5)


# --- property tests: the compiled kernels against the references ------------------------------


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(Bq=st.integers(0, 3), T=st.integers(0, 4), Bt=st.integers(0, 3), T2=st.integers(0, 4),
       R=st.integers(1, 64), D=st.integers(1, 6), kfrac=st.floats(0, 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2 ** 31 - 1))
def test_property_cpp_spatial_equals_reference(Bq, T, Bt, T2, R, D, kfrac, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = max(1, round(kfrac * R))
    q, t = unit(g, Bq, T, R, D, dtype=dtype), unit(g, Bt, T2, R, D, dtype=dtype)
    ql = torch.randint(0, T + 1, (Bq,), generator=g)
    tl = torch.randint(0, T2 + 1, (Bt,), generator=g)
    upstream = torch.randn(Bq, Bt, T, T2, generator=g, dtype=torch.float64)
    out, gq, gt = grads(lambda a, b: spatial_topk_chamfer(a, b, k, ql, tl, backend="cpp"), q, t, upstream)
    ref, rq, rt = grads(lambda a, b: spatial_topk_chamfer_reference(a, b, k, ql, tl), q.double(), t.double(), upstream)
    assert out.dtype == gq.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol)
    # The gradient follows the selection: compared where no two values are closer than the
    # arithmetic can tell apart (small D makes exact ties common: unit vectors in 1-D are +-1).
    if min_topk_gap(q, t, k) > (1e-5 if dtype == torch.float32 else 1e-12):
        event("gradient compared entry by entry")
        torch.testing.assert_close(gq.double(), rq, rtol=0, atol=10 * tol)
        torch.testing.assert_close(gt.double(), rt, rtol=0, atol=10 * tol)
    else:  # with ties the selection may differ, but every (x, i, y) still selects k target regions,
        # so a target frame's gradient summed over its regions does not depend on which
        event("ties: gradient compared summed over target regions")
        scale = 1 + float(upstream.abs().sum())
        assert absmax(gt.double().sum(dim=2) - rt.sum(dim=2)) <= 10 * tol * scale


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(Q=st.integers(0, 5), M=st.integers(0, 40), grid=st.sampled_from([0, 20, 4]),
       delta=st.sampled_from([0.05, 0.3, 1.0]), rho=st.sampled_from([0.0, 0.1, 1.0, 5.0]),
       p_ignored=st.floats(0, 0.5), seed=st.integers(0, 2 ** 31 - 1))
def test_property_cpp_quadlinear_ap_equals_reference(Q, M, grid, delta, rho, p_ignored, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(Q, M, generator=g, dtype=torch.float64)
    if grid:  # many exact ties, differences of exactly delta among them
        scores = (scores * grid).round() / grid
    u = torch.rand(Q, M, generator=g)
    labels = torch.where(u < p_ignored, -1, torch.where(u < p_ignored + (1 - p_ignored) / 2, 1, 0)).to(torch.int8)
    upstream = torch.randn(Q, generator=g, dtype=torch.float64)
    for dtype, rtol, atol in ((torch.float64, 1e-10, 1e-12), (torch.float32, 1e-5, 1e-6)):
        s = scores.to(dtype).requires_grad_(True)
        r = quadlinear_ap(s, labels, delta, rho, backend="cpp")
        (grad,) = torch.autograd.grad((r.risk * upstream.to(dtype)).sum(), s)
        ref_s = scores.to(dtype).double().requires_grad_(True)  # the oracle in float64 on the same values
        ref = quadlinear_ap_reference(ref_s, labels, delta, rho)
        (ref_grad,) = torch.autograd.grad((ref.risk * upstream).sum(), ref_s) if Q else (torch.zeros(0, M),)
        assert torch.equal(r.valid, ref.valid)
        torch.testing.assert_close(r.risk.detach().double(), ref.risk.detach(), rtol=rtol, atol=atol)
        scale = absmax(ref_grad)
        torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=rtol, atol=atol * (1 + scale))
