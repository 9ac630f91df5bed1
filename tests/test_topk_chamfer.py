"""spatial_topk_chamfer / temporal_topk_chamfer: every backend against the reference."""

import itertools

import pytest
import torch

import hapvr
import hapvr.ops._triton_topk_chamfer  # noqa: F401  (registers the Triton custom ops)
from hapvr.ops import (
    NoBackendError,
    spatial_topk_chamfer,
    spatial_topk_chamfer_reference,
    temporal_topk_chamfer,
    topk_count,
)
from hapvr.ops._topk import mask_dtype


# --- slow, obviously correct oracles -------------------------------------------------------


def naive_spatial(q, t, k, ql, tl):
    """Loops over every entry of eq. 3 (float64)."""
    Bq, T, R, _ = q.shape
    Bt, T2 = t.shape[:2]
    out = torch.zeros(Bq, Bt, T, T2, dtype=torch.float64)
    for a, b in itertools.product(range(Bq), range(Bt)):
        for x, y in itertools.product(range(ql[a]), range(tl[b])):
            total = 0.0
            for i in range(R):
                sims = sorted((float(q[a, x, i].double() @ t[b, y, j].double()) for j in range(R)), reverse=True)
                total += sum(sims[:k]) / k
            out[a, b, x, y] = total / R
    return out


def naive_temporal(sim, k_of, lq, lt):
    rows = []
    for x in range(lq):
        vals = sorted(sim[x, :lt].tolist(), reverse=True)
        kk = k_of(lt)
        rows.append(sum(vals[:kk]) / kk)
    return sum(rows) / lq if rows else 0.0


def unit(*shape, dtype=torch.float32):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).to(dtype)


def random_lengths(batch, full):
    lengths = torch.randint(1, full + 1, (batch,))
    lengths[0] = full  # keep one full-length video so every output column is exercised
    return lengths


def inputs_without_near_ties(Bq, T, Bt, T2, R, D, k, gap=1e-4, dtype=torch.float64):
    """Random features whose k-th and (k+1)-th region similarities are never within ``gap``
    (top-k is not differentiable at ties, so gradcheck needs a margin)."""
    for _ in range(100):
        q, t = unit(Bq, T, R, D, dtype=dtype), unit(Bt, T2, R, D, dtype=dtype)
        if k == R:
            return q, t
        S = torch.einsum("axid,byjd->axiybj", q.double(), t.double()).sort(dim=-1, descending=True).values
        if (S[..., k - 1] - S[..., k]).min() > gap:
            return q, t
    raise AssertionError("could not draw tie-free inputs")


COMPILED = ["cpp", "triton"]


def tolerance(dtype):
    return {torch.float32: 2e-5, torch.float64: 1e-10}[dtype]


# --- availability and dispatch -------------------------------------------------------------


def test_compiled_cpu_backend_is_available():
    assert "cpp" in hapvr.ops.available_backends()
    assert "reference" in hapvr.ops.available_backends()


def test_auto_picks_cpp_on_cpu_and_explains_others():
    q, t = unit(1, 2, 9, 8), unit(1, 3, 9, 8)
    why = hapvr.ops.explain_spatial_backends(q, t, 1)
    assert why["cpp"] == []
    assert why["cuda"], "the CUDA kernel cannot run CPU tensors"
    assert why["reference"] == []


def test_forcing_an_unusable_backend_lists_its_reasons():
    q, t = unit(1, 2, 9, 8, dtype=torch.float64), unit(1, 3, 9, 8, dtype=torch.float64)
    with pytest.raises(NoBackendError, match="triton: .*dtype torch.float64"):
        spatial_topk_chamfer(q, t, 1, backend="triton")
    with pytest.raises(ValueError, match="backend must be"):
        spatial_topk_chamfer(q, t, 1, backend="fastest")


# --- forward and backward against the reference -------------------------------------------

SHAPES = [
    # Bq, T, Bt, T2, R, D
    (1, 1, 1, 1, 1, 8),
    (2, 3, 3, 1, 5, 8),
    (2, 5, 3, 4, 9, 8),
    (1, 2, 2, 3, 9, 512),
    (2, 4, 1, 7, 16, 8),
    (3, 1, 2, 30, 9, 8),  # more target frames than a tile holds
]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["one", "two", "all"])
def test_matches_reference_forward_and_backward(backend, shape, kind):
    Bq, T, Bt, T2, R, D = shape
    if backend == "triton" and D > 8 and T * T2 > 6:
        T2 = 3  # keep the interpreter fast
    k = {"one": 1, "two": min(2, R), "all": R}[kind]
    q = unit(Bq, T, R, D).requires_grad_()
    t = unit(Bt, T2, R, D).requires_grad_()
    ql, tl = random_lengths(Bq, T), random_lengths(Bt, T2)
    out = spatial_topk_chamfer(q, t, k, ql, tl, backend=backend)
    ref = spatial_topk_chamfer_reference(q.double(), t.double(), k, ql, tl)
    torch.testing.assert_close(out.double(), ref, atol=tolerance(torch.float32), rtol=0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, t), grad)
    want = torch.autograd.grad(ref, (q, t), grad.double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), atol=1e-5, rtol=1e-4)


def test_reference_matches_naive_loops():
    q, t = unit(2, 3, 5, 8, dtype=torch.float64), unit(2, 4, 5, 8, dtype=torch.float64)
    ql, tl = torch.tensor([3, 2]), torch.tensor([1, 4])
    for k in (1, 2, 5):
        got = spatial_topk_chamfer_reference(q, t, k, ql, tl)
        torch.testing.assert_close(got, naive_spatial(q, t, k, ql.tolist(), tl.tolist()))


@pytest.mark.parametrize("backend", COMPILED)
def test_padding_never_influences_valid_entries(backend):
    q, t = unit(2, 4, 9, 8).requires_grad_(), unit(2, 5, 9, 8).requires_grad_()
    ql, tl = torch.tensor([2, 4]), torch.tensor([5, 3])
    out = spatial_topk_chamfer(q, t, 2, ql, tl, backend=backend)
    # Rewrite every padded frame with large values: valid entries and their gradients must not move.
    q2, t2 = q.detach().clone(), t.detach().clone()
    q2[0, 2:] = 5.0
    t2[1, 3:] = -7.0
    q2.requires_grad_()
    t2.requires_grad_()
    out2 = spatial_topk_chamfer(q2, t2, 2, ql, tl, backend=backend)
    torch.testing.assert_close(out, out2)
    assert out[0, :, 2:].abs().max() == 0 and out[:, 1, :, 3:].abs().max() == 0
    g = torch.randn_like(out)
    gq, gt = torch.autograd.grad(out, (q, t), g)
    gq2, gt2 = torch.autograd.grad(out2, (q2, t2), g)
    torch.testing.assert_close(gq, gq2)
    torch.testing.assert_close(gt, gt2)
    assert gq[0, 2:].abs().max() == 0 and gt[1, 3:].abs().max() == 0


@pytest.mark.parametrize("backend", COMPILED)
def test_non_contiguous_inputs(backend):
    q = unit(3, 5, 4, 8).transpose(1, 2)  # [3, 4, 5, 8], regions-major in memory
    t = unit(2, 5, 6, 8).transpose(1, 2)[:, ::2]  # [2, 3, 5, 8], strided frames
    assert not q.is_contiguous() and not t.is_contiguous()
    q.requires_grad_()
    out = spatial_topk_chamfer(q, t, 2, backend=backend)
    ref = spatial_topk_chamfer_reference(q.double(), t.double(), 2)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    (gr,) = torch.autograd.grad(ref.sum(), (q,))
    torch.testing.assert_close(gq.double(), gr.double(), atol=1e-5, rtol=1e-4)


def test_ties_select_the_lower_region_in_every_compiled_backend():
    q = unit(1, 1, 4, 8)
    t = unit(1, 1, 1, 8).expand(1, 1, 4, 8).contiguous()  # four identical target regions
    ql, tl = torch.tensor([1]), torch.tensor([1])
    for k in (1, 2, 3):
        _, m_cpp = torch.ops.hapvr.spatial_topk_chamfer(q, t, k, ql, tl)
        _, m_tri = torch.ops.hapvr.spatial_topk_chamfer_triton(q, t, k, ql, tl)
        assert m_cpp.dtype == mask_dtype(4, k)
        expected = 0 if k == 1 else (1 << k) - 1  # k = 1 saves the index, k > 1 the bit mask
        assert (m_cpp == expected).all(), m_cpp
        assert torch.equal(m_cpp, m_tri)


@pytest.mark.parametrize("R,k", [(1, 1), (5, 2), (9, 1), (9, 3), (16, 16), (33, 4)])
def test_cpp_gradcheck_float64(R, k):
    Bq, T = (2, 3) if R < 32 else (1, 2)
    q, t = inputs_without_near_ties(Bq, T, 2, 2, R, 6, k)
    q.requires_grad_()
    t.requires_grad_()
    ql, tl = [T, T - 1][:Bq], [2, 1]
    assert torch.autograd.gradcheck(lambda a, b: spatial_topk_chamfer(a, b, k, ql, tl, backend="cpp"), (q, t))


def test_triton_gradient_matches_finite_differences():
    # Triton computes in float32, so compare against central differences in float64 by hand.
    q, t = inputs_without_near_ties(1, 2, 2, 2, 5, 8, 2, gap=1e-2, dtype=torch.float32)
    q.requires_grad_()
    out = spatial_topk_chamfer(q, t, 2, backend="triton")
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    eps = 1e-3
    idx = (0, 1, 3, 5)
    qp, qm = q.detach().double().clone(), q.detach().double().clone()
    qp[idx] += eps
    qm[idx] -= eps
    fd = (spatial_topk_chamfer_reference(qp, t.double(), 2).sum() - spatial_topk_chamfer_reference(qm, t.double(), 2).sum()) / (2 * eps)
    assert abs(float(gq[idx]) - float(fd)) < 1e-4


def test_opcheck_compiled_ops():
    q, t = inputs_without_near_ties(2, 3, 2, 4, 9, 8, 2)
    q.requires_grad_()
    t.requires_grad_()
    ql, tl = torch.tensor([3, 1]), torch.tensor([4, 2])
    torch.library.opcheck(torch.ops.hapvr.spatial_topk_chamfer.default, (q, t, 2, ql, tl))
    _, mask = torch.ops.hapvr.spatial_topk_chamfer(q.detach(), t.detach(), 2, ql, tl)
    g = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.hapvr.spatial_topk_chamfer_backward.default,
                          (g, q.detach(), t.detach(), mask, 2, ql, tl))


def test_opcheck_triton_ops():
    q, t = inputs_without_near_ties(1, 2, 2, 3, 5, 8, 2, dtype=torch.float32)
    q.requires_grad_()
    t.requires_grad_()
    ql, tl = torch.tensor([2]), torch.tensor([3, 2])
    torch.library.opcheck(torch.ops.hapvr.spatial_topk_chamfer_triton.default, (q, t, 2, ql, tl))


def test_module_uses_paper_rate():
    m = hapvr.ops.SpatialTopKChamfer(k_s=0.1)
    q, t = unit(1, 2, 9, 8), unit(1, 3, 9, 8)
    torch.testing.assert_close(m(q, t), spatial_topk_chamfer_reference(q, t, 1))


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (unit(2, 9, 8), unit(1, 3, 9, 8), 1, None, None), r"query must have 4 dimensions"),
        (lambda: (unit(1, 2, 9, 8), unit(3, 9, 8), 1, None, None), r"target must have 4 dimensions"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 5, 8), 1, None, None), r"same number of regions R"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 16), 1, None, None), r"same feature size D"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 8), 0, None, None), r"k must be in \[1, R=9\]"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 8), 10, None, None), r"k must be in \[1, R=9\]"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 8), 1, [3], None), r"query_lengths must lie in \[0, 2\]"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 8), 1, None, [-1]), r"target_lengths must lie in"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 8), 1, [1, 2], None), r"query_lengths must have shape \(1,\)"),
        (lambda: (unit(1, 2, 9, 8).index_fill(3, torch.tensor([0]), float("nan")), unit(1, 3, 9, 8), 1, None, None),
         r"query contains NaN"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 8).double(), 1, None, None), r"share a dtype"),
        (lambda: (unit(1, 2, 9, 8), unit(1, 3, 9, 8), 1.0, None, None), r"k must be an int"),
    ],
)
def test_bad_input_raises_a_clear_error(make, match):
    q, t, k, ql, tl = make()
    with pytest.raises((ValueError, TypeError), match=match):
        spatial_topk_chamfer(q, t, k, ql, tl)


def test_compiled_op_rejects_bad_arguments_itself():
    q, t = unit(1, 2, 9, 8), unit(1, 3, 9, 8)
    with pytest.raises(RuntimeError, match="k must be in"):
        torch.ops.hapvr.spatial_topk_chamfer(q, t, 12, torch.tensor([2]), torch.tensor([3]))


# --- temporal TopK-Chamfer --------------------------------------------------------------


def test_topk_count_uses_bankers_rounding():
    assert topk_count(0.1, 9) == 1  # round(0.9)
    assert topk_count(0.1, 5) == 1  # round(0.5) = 0 -> at least 1
    assert topk_count(0.5, 5) == 2  # round(2.5) = 2 (half to even)
    assert topk_count(0.03, 50) == 2  # round(1.5) = 2
    assert topk_count(1.0, 7) == 7


@pytest.mark.parametrize("rate", [0.03, 0.25, 1.0])
def test_temporal_matches_naive_with_lengths(rate):
    sim = torch.rand(3, 2, 6, 40, dtype=torch.float64) * 2 - 1
    lq = torch.randint(1, 7, (3, 1))
    lt = torch.randint(1, 41, (1, 2))
    got = temporal_topk_chamfer(sim, rate=rate, query_lengths=lq, target_lengths=lt)
    for a, b in itertools.product(range(3), range(2)):
        want = naive_temporal(sim[a, b], lambda n: topk_count(rate, n), int(lq[a, 0]), int(lt[0, b]))
        assert abs(float(got[a, b]) - want) < 1e-12


def test_temporal_int_k_and_gradcheck():
    sim = torch.rand(2, 5, 7, dtype=torch.float64, requires_grad=True)
    got = temporal_topk_chamfer(sim, 3)
    want = sim.detach().topk(3, dim=-1).values.mean(-1).mean(-1)
    torch.testing.assert_close(got.detach(), want)
    assert torch.autograd.gradcheck(lambda s: temporal_topk_chamfer(s, 3), (sim,))


def test_temporal_bad_input():
    with pytest.raises(ValueError, match="exactly one of k"):
        temporal_topk_chamfer(torch.rand(3, 3))
    with pytest.raises(ValueError, match="target_lengths must lie in"):
        temporal_topk_chamfer(torch.rand(3, 3), 1, target_lengths=4)
    with pytest.raises(ValueError, match="sim must have at least 2"):
        temporal_topk_chamfer(torch.rand(3), 1)


@pytest.mark.parametrize("backend", COMPILED)
def test_inference_keeps_no_selection(backend):
    q, t = unit(2, 3, 9, 8), unit(2, 4, 9, 8)
    ql, tl = torch.tensor([3, 2]), torch.tensor([4, 1])
    op = torch.ops.hapvr.spatial_topk_chamfer if backend == "cpp" else torch.ops.hapvr.spatial_topk_chamfer_triton
    out_train, mask = op(q, t, 2, ql, tl, True)
    out_infer, empty = op(q, t, 2, ql, tl, False)
    torch.testing.assert_close(out_train, out_infer)
    assert mask.shape == (2, 2, 3, 4, 9) and empty.numel() == 0
    with torch.no_grad():  # the public function asks for no selection when no gradient is needed
        torch.testing.assert_close(spatial_topk_chamfer(q, t, 2, ql, tl, backend=backend), out_train)
    qg = q.clone().requires_grad_()
    out, _ = op(qg, t, 2, ql, tl, False)
    with pytest.raises(RuntimeError, match="save_selection=False"):
        out.sum().backward()
