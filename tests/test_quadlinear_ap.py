"""quadlinear_ap (paper eqs. 9-11): every backend against the O(M^2) reference, gradients,
opcheck, the properties of R- proved in appendix A.2, and argument errors."""

import pytest
import torch

from hapvr.ops import (
    explain_quadlinear_ap_backends,
    heaviside,
    quadlinear_ap,
    quadlinear_ap_reference,
    quadlinear_r_minus,
)

# --- the obviously-correct oracle: one positive at a time, plain Python loops -------------


def loop_risk(scores, labels, delta, rho):
    """Eq. 11 written term by term (tiny inputs only)."""
    out = []
    for s, lab in zip(scores.tolist(), labels.tolist()):
        P = [x for x, l in zip(s, lab) if l == 1]
        N = [x for x, l in zip(s, lab) if l == 0]
        if not P or not N:
            out.append(0.0)
            continue
        total = 0.0
        for si in P:
            num = 0.0
            for sj in N:
                d = sj - si
                num += 2 * d / delta + 1 if d >= 0 else ((d / delta + 1) ** 2 if d >= -delta else 0.0)
            den = 1 + rho * sum(1 for sj in P if sj > si)
            x = num / den
            total += x / (1 + x)
        out.append(total / len(P))
    return torch.tensor(out, dtype=torch.float64)


def exact_ap(s, lab):
    """AP of one list with distinct scores: mean over positives of precision at their rank."""
    order = sorted(range(len(s)), key=lambda k: -s[k])
    hits, total = 0, 0.0
    for rank, k in enumerate(order, start=1):
        if lab[k] == 1:
            hits += 1
            total += hits / rank
    return total / hits


def compiled_backends():
    return ["cpp", "triton"]  # both must run here: a missing one fails, never shrinks the test


def random_case(Q, M, seed, dtype=torch.float32, ties=False, ignored=0.2):
    g = torch.Generator().manual_seed(seed + torch.initial_seed())
    scores = torch.rand(Q, M, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 20).round() / 20  # many exact ties, and differences of exactly delta
    u = torch.rand(Q, M, generator=g)
    labels = torch.where(u < ignored, -1, torch.where(u < ignored + 0.3, 1, 0)).to(torch.int8)
    if Q >= 4:
        labels[0] = 1  # all positive
        labels[1] = 0  # all negative
        labels[2, : M // 2] = -1  # half ignored
    return scores.to(dtype), labels


# --- hand-computed values -------------------------------------------------------------------


def test_hand_computed_value():
    s = torch.tensor([[0.9, 0.8, 0.7, 0.3]], dtype=torch.float64)
    lab = torch.tensor([[1, 0, 1, 0]], dtype=torch.int8)
    # delta 0.05: positive 0.9 beats both negatives by > delta (num 0); positive 0.7 is passed by
    # 0.8 by 0.1 (linear: 2 * 0.1 / 0.05 + 1 = 5) and ranked below 0.9 (den 1 + 0.1).
    expected = 0.5 * (0 + 5 / (1.1 + 5))
    # delta 0.2: 0.8 falls in 0.9's quadratic window ((-0.1 / 0.2 + 1)^2 = 0.25, h = 0.2) and the
    # linear term of 0.7 is 2 * 0.1 / 0.2 + 1 = 2 (h = 2 / 3.1).
    expected_wide = 0.5 * (0.25 / 1.25 + 2 / 3.1)
    for backend in ["reference"] + compiled_backends():
        dt = torch.float32 if backend == "triton" else torch.float64
        r = quadlinear_ap(s.to(dt), lab, 0.05, 0.1, backend=backend)
        assert r.valid.tolist() == [True]
        assert r.risk.item() == pytest.approx(expected, rel=1e-6)
        r = quadlinear_ap(s.to(dt), lab, 0.2, 0.1, backend=backend)
        assert r.risk.item() == pytest.approx(expected_wide, rel=1e-6)


def test_reference_matches_loop():
    scores, labels = random_case(6, 23, seed=0, dtype=torch.float64, ties=True)
    for delta, rho in [(0.05, 0.1), (0.2, 5.0), (0.05, 0.0)]:
        r = quadlinear_ap_reference(scores, labels, delta, rho)
        torch.testing.assert_close(r.risk, loop_risk(scores, labels, delta, rho), rtol=1e-12, atol=1e-12)
        # a row is valid exactly when it holds a positive and a negative (rows 0 / 1: all positive /
        # all negative; the random rows usually have both, but not always)
        expected = ((labels == 1).any(1) & (labels == 0).any(1)).tolist()
        assert expected[:2] == [False, False]
        assert r.valid.tolist() == expected


# --- compiled backends vs the reference -----------------------------------------------------


def _grad(fn, scores, labels, delta, rho, upstream):
    x = scores.detach().clone().requires_grad_(True)
    r = fn(x, labels, delta, rho)
    (r.risk * upstream).sum().backward()
    return r.risk.detach(), r.valid, x.grad


# Sizes 1..2000: the edges, a few random draws (fixed seed) and the top of the range.
CPP_SIZES = [1, 2, 3, 17, 128] + sorted(torch.randint(200, 1500, (2,), generator=torch.Generator().manual_seed(0)).tolist()) + [2000]


@pytest.mark.parametrize("M", CPP_SIZES)
@pytest.mark.parametrize("ties", [False, True])
def test_cpp_matches_reference(M, ties):
    Q = 5
    scores, labels = random_case(Q, M, seed=M + 7 * ties, ties=ties)
    upstream = torch.randn(Q, generator=torch.Generator().manual_seed(M + torch.initial_seed()), dtype=torch.float64)
    settings = [(0.05, 0.1), (0.05, 5.0), (0.3, 1.0)] if M <= 500 else [(0.05, 0.1)]
    for delta, rho in settings:
        cpp = lambda s, l, d, r: quadlinear_ap(s, l, d, r, backend="cpp")  # noqa: E731
        # float64: the kernel accumulates in double, so it equals the reference to rounding.
        r64, v64, g64 = _grad(quadlinear_ap_reference, scores.double(), labels, delta, rho, upstream)
        r, v, g = _grad(cpp, scores.double(), labels, delta, rho, upstream)
        assert torch.equal(v, v64)
        torch.testing.assert_close(r, r64, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g, g64, rtol=1e-9, atol=1e-10 * g64.abs().max().item() + 1e-12)
        # float32 inputs: within 1e-5 relative of the reference (the done-when criterion). The
        # oracle is the reference run in float64 on the same (exactly representable) inputs: the
        # float32 reference itself rounds a score difference that lands on -delta (ties on a 0.05
        # grid) to either side and can be 1e-6 off there (HAPVR_TEST_SEED=2003807981, M=3).
        r, _, g = _grad(cpp, scores, labels, delta, rho, upstream.float())
        assert r.dtype == g.dtype == torch.float32
        torch.testing.assert_close(r.double(), r64, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=1e-5 * g64.abs().max().item() + 1e-7)


@pytest.mark.parametrize("M,ties", [(1, False), (5, True), (37, False), (70, True)])
def test_triton_matches_reference(M, ties):
    Q = 4
    scores, labels = random_case(Q, M, seed=100 + M, ties=ties)
    upstream = torch.randn(Q, generator=torch.Generator().manual_seed(M + torch.initial_seed()), dtype=torch.float64)
    triton = lambda s, l, d, r: quadlinear_ap(s, l, d, r, backend="triton")  # noqa: E731
    for delta, rho in [(0.05, 0.1), (0.3, 5.0)]:
        ref, vref, gref = _grad(quadlinear_ap_reference, scores.double(), labels, delta, rho, upstream)
        r, v, g = _grad(triton, scores, labels, delta, rho, upstream.float())
        assert torch.equal(v, vref)
        torch.testing.assert_close(r.double(), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g.double(), gref, rtol=1e-5, atol=1e-5 * gref.abs().max().item() + 1e-7)


def test_no_positive_or_no_negative_is_reported():
    scores = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1] * 6, [0] * 6, [-1] * 6, [1, 0, -1, -1, -1, -1]], dtype=torch.int8)
    for backend in ["reference"] + compiled_backends():
        s = scores if backend != "triton" else scores.float()
        r = quadlinear_ap(s, labels, backend=backend)
        assert r.valid.tolist() == [False, False, False, True]
        assert r.risk[:3].tolist() == [0.0, 0.0, 0.0]
        (g,) = torch.autograd.grad(r.risk.sum(), scores)
        assert torch.all(g[:3] == 0)


def test_bool_labels_accepted():
    scores = torch.rand(2, 5, dtype=torch.float64)
    labels = torch.tensor([[True, False, True, False, False]] * 2)
    a = quadlinear_ap(scores, labels, backend="reference").risk
    b = quadlinear_ap(scores, labels.to(torch.int64), backend="reference").risk
    torch.testing.assert_close(a, b)


# --- gradcheck and opcheck ------------------------------------------------------------------


def separated_scores(Q, M, seed, spacing=0.0123):
    """Scores with pairwise gaps >= spacing / 2 and never a multiple of delta: away from every kink
    of H (the only non-smooth part) so finite differences are exact to rounding."""
    g = torch.Generator().manual_seed(seed + torch.initial_seed())
    base = torch.stack([torch.randperm(M, generator=g) for _ in range(Q)]).double() * spacing
    return base + 0.1 * spacing * torch.rand(Q, M, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gradcheck_float64(backend):
    scores = separated_scores(3, 11, seed=1).requires_grad_(True)
    labels = torch.tensor([[1, 0, 1, 0, 0, -1, 1, 0, 0, 1, 0]] * 3, dtype=torch.int8)
    labels[2, 0] = -1
    fn = lambda s: quadlinear_ap(s, labels, 0.05, 0.1, backend=backend).risk  # noqa: E731
    assert torch.autograd.gradcheck(fn, (scores,), eps=1e-7, atol=1e-6)
    fn_wide = lambda s: quadlinear_ap(s, labels, 0.031, 5.0, backend=backend).risk  # noqa: E731
    assert torch.autograd.gradcheck(fn_wide, (scores,), eps=1e-7, atol=1e-6)


def test_opcheck_compiled():
    scores = separated_scores(3, 9, seed=2).requires_grad_(True)
    labels = torch.tensor([[1, 0, 1, 0, -1, 0, 1, 0, 0]] * 3, dtype=torch.int8)
    torch.library.opcheck(torch.ops.hapvr.quadlinear_ap.default, (scores, labels, 0.05, 0.1))
    grad = torch.rand(3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.hapvr.quadlinear_ap_backward.default,
                          (grad, scores.detach(), labels, 0.05, 0.1))


def test_opcheck_triton():
    from hapvr.ops import _triton_quadlinear_ap as tq

    scores = separated_scores(2, 6, seed=3).float().requires_grad_(True)
    labels = torch.tensor([[1, 0, 1, 0, -1, 0]] * 2, dtype=torch.int8)
    torch.library.opcheck(tq.quadlinear_ap_triton, (scores, labels, 0.05, 0.1),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(tq.quadlinear_ap_triton_backward,
                          (torch.rand(2), scores.detach(), labels, 0.05, 0.1),
                          test_utils=("test_schema", "test_faketensor"))


# --- properties of R- (appendix A.2) and the AP bound ------------------------------------


def test_r_minus_properties():
    delta = 0.05
    d = torch.linspace(-0.2, 0.2, 40001, dtype=torch.float64)
    r = quadlinear_r_minus(d, delta)
    step = d[1] - d[0]
    assert torch.all(r[1:] >= r[:-1])  # monotone (A.2.4)
    second = r[2:] - 2 * r[1:-1] + r[:-2]
    assert torch.all(second >= -1e-12)  # convex (A.2.3)
    assert torch.all(r >= heaviside(d))  # upper bound of H (A.2.5)
    # C1 (A.2.2): one-sided derivatives agree at both kinks, and the slope has no jumps.
    for kink in (-delta, 0.0):
        x = torch.tensor([kink - 1e-7, kink + 1e-7], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(quadlinear_r_minus(x, delta).sum(), x)
        assert abs(g[0] - g[1]) < 1e-4
    slope = (r[1:] - r[:-1]) / step
    assert (slope[1:] - slope[:-1]).abs().max() < 1e-2
    assert quadlinear_r_minus(torch.tensor([-delta, 0.0, delta]), delta).tolist() == [0.0, 1.0, 3.0]


def test_rho_one_bounds_one_minus_ap():
    g = torch.Generator().manual_seed(5 + torch.initial_seed())
    for trial in range(30):
        M = int(torch.randint(2, 60, (1,), generator=g))
        s = torch.randperm(M, generator=g).double() / M + 1e-3 * torch.rand(M, generator=g, dtype=torch.float64)
        lab = (torch.rand(M, generator=g) < 0.4).to(torch.int8)
        lab[0], lab[-1] = 1, 0
        ap = exact_ap(s.tolist(), lab.tolist())
        for backend in ["reference"] + [b for b in compiled_backends() if b == "cpp"]:
            for delta in (0.05, 0.5):
                risk = quadlinear_ap(s[None], lab[None], delta, 1.0, backend=backend).risk.item()
                assert risk >= 1 - ap - 1e-12


# --- bad inputs: one clear error naming the argument ----------------------------------------


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(scores=torch.rand(3)), ValueError, "scores must have 2 dimensions"),
        (dict(scores=torch.ones(2, 3, dtype=torch.int64)), TypeError, "scores must be a floating-point"),
        (dict(labels=torch.zeros(2, 4, dtype=torch.int8)), ValueError, "labels must have the shape of scores"),
        (dict(labels=torch.full((2, 3), 2, dtype=torch.int8)), ValueError, "labels must hold only"),
        (dict(labels=torch.zeros(2, 3)), TypeError, "labels must be an integer or bool"),
        (dict(delta=0.0), ValueError, "delta must be"),
        (dict(delta=-1.0), ValueError, "delta must be"),
        (dict(rho=-0.1), ValueError, "rho must be"),
        (dict(scores=torch.tensor([[0.0, float("nan"), 1.0]] * 2)), ValueError, "scores contains NaN"),
        (dict(backend="gpu"), ValueError, "backend must be"),
    ],
)
def test_bad_inputs(kwargs, err, match):
    args = dict(scores=torch.rand(2, 3), labels=torch.tensor([[1, 0, -1]] * 2), delta=0.05, rho=0.1)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        quadlinear_ap(**args)


def test_explain_lists_every_backend():
    why = explain_quadlinear_ap_backends(torch.rand(2, 3, dtype=torch.float64), torch.tensor([[1, 0, 0]] * 2))
    assert set(why) == {"cpp", "cuda", "triton", "reference"}
    assert why["reference"] == []
    assert any("dtype" in w for w in why["triton"])  # float64 is not a Triton dtype
    if not torch.cuda.is_available():
        assert why["cuda"]  # no device: the reason is reported, not silently skipped


def test_cpp_non_contiguous_inputs():
    scores_t, labels_t = random_case(40, 5, seed=9, dtype=torch.float64)
    scores, labels = scores_t.t(), labels_t.t()  # [5, 40] views with strides (1, 40)
    assert not scores.is_contiguous()
    ref = quadlinear_ap_reference(scores.contiguous(), labels.contiguous(), 0.05, 0.1)
    out = quadlinear_ap(scores, labels, 0.05, 0.1, backend="cpp")
    torch.testing.assert_close(out.risk, ref.risk, rtol=1e-12, atol=1e-12)


def test_auto_picks_a_backend_that_supports_the_dtype():
    scores = torch.rand(3, 9).half()
    labels = torch.tensor([[1, 0, 0, 1, 0, 0, -1, 0, 1]] * 3)
    why = explain_quadlinear_ap_backends(scores, labels)
    assert any("dtype" in w for w in why["cpp"])  # the C++ kernel takes float32/float64 only
    out = quadlinear_ap(scores, labels)  # falls through to a backend that takes float16
    ref = quadlinear_ap_reference(scores.double(), labels.to(torch.int8), 0.05, 0.1)
    torch.testing.assert_close(out.risk.double(), ref.risk, rtol=2e-3, atol=2e-3)
