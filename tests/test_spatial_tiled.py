"""The ``tiled`` backend of spatial_topk_chamfer (ATen GEMM on bounded tiles) against the
reference and the compiled kernel, and the per-device ``auto`` policy."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hapvr
from hapvr.ops import (
    AUTO_POLICY,
    auto_order,
    choose_spatial_backend,
    explain_spatial_backends,
    spatial_topk_chamfer,
    spatial_topk_chamfer_reference,
)
from hapvr.ops import _dispatch
from hapvr.ops._spatial_tiled import (
    DEFAULT_WORKSPACE_BYTES,
    WORKSPACE_ENV,
    _tiled_backward_op,
    _tiled_op,
    bytes_per_cell,
    default_workspace_bytes,
    selection_dtype,
    selection_shape,
    spatial_topk_chamfer_tiled,
    tile_frames,
)


def _unit(*shape, dtype=torch.float64):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def _inputs(Bq, T, Bt, T2, R, D, dtype=torch.float64, grad=True):
    q, t = _unit(Bq, T, R, D, dtype=dtype), _unit(Bt, T2, R, D, dtype=dtype)
    ql = torch.randint(0, T + 1, (Bq,)) if Bq else torch.zeros(0, dtype=torch.long)
    tl = torch.randint(0, T2 + 1, (Bt,)) if Bt else torch.zeros(0, dtype=torch.long)
    if Bq:
        ql[0] = T  # at least one full-length video each side
    if Bt:
        tl[0] = T2
    return q.requires_grad_(grad), t.requires_grad_(grad), ql, tl


def _both(q, t, k, ql, tl, workspace):
    ref = spatial_topk_chamfer_reference(q, t, k, ql, tl)
    out = spatial_topk_chamfer(q, t, k, ql, tl, backend="tiled", workspace_bytes=workspace)
    return ref, out


# R = 1, 9 (paper), 16/17 (int16 -> int32 mask), 32/33 (int32 -> int64), 64 (last bit), 65 (indices)
CASES = [(1, 1), (9, 1), (9, 2), (9, 9), (16, 3), (17, 4), (32, 31), (33, 2), (64, 5), (64, 64), (65, 1), (65, 7)]


@pytest.mark.parametrize("R,k", CASES)
@pytest.mark.parametrize("workspace", [1, 40_000, None], ids=["one-cell-tiles", "small-tiles", "default"])
def test_forward_and_backward_equal_the_reference(R, k, workspace):
    q, t, ql, tl = _inputs(3, 5, 2, 7, R, 8)
    ref, out = _both(q, t, k, ql, tl, workspace)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, (q, t), g)
    got = torch.autograd.grad(out, (q, t), g)
    for name, e, o in zip(("query", "target"), expected, got):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("R,k", [(9, 1), (9, 3), (9, 9), (20, 2), (65, 3)])
def test_float64_gradcheck(R, k):
    q, t, ql, tl = _inputs(2, 3, 2, 2, R, 4)
    assert torch.autograd.gradcheck(
        lambda q, t: spatial_topk_chamfer(q, t, k, ql, tl, backend="tiled", workspace_bytes=5_000), (q, t))


def test_float32_matches_the_float64_reference():
    q, t, ql, tl = _inputs(4, 6, 3, 5, 9, 64, dtype=torch.float32)
    out = spatial_topk_chamfer(q, t, 2, ql, tl, backend="tiled", workspace_bytes=20_000)
    ref = spatial_topk_chamfer_reference(q.double(), t.double(), 2, ql, tl)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def _tied(R, D=4):
    """Small-integer features: exact products, many equal values in every top-k."""
    q = torch.randint(-1, 2, (2, 3, R, D), dtype=torch.float64)
    t = torch.randint(-1, 2, (2, 4, R, D), dtype=torch.float64)
    t[:, :, R - 1] = t[:, :, 0]  # a duplicated region: a tie for every query region
    return q, t


@pytest.mark.parametrize("R,k", [(9, 1), (9, 4), (20, 3), (40, 7)])
def test_ties_select_the_lower_region_index_like_the_compiled_kernel(R, k):
    """The saved selection is the compiled kernel's, bit for bit, on inputs full of ties (the
    cpp kernel's top-k is an independent implementation of the same rule)."""
    q, t = _tied(R)
    ql, tl = torch.tensor([3, 2]), torch.tensor([4, 1])
    _, sel_cpp = torch.ops.hapvr.spatial_topk_chamfer(q.float(), t.float(), k, ql, tl, True)
    maps, sel = _tiled_op(q.float(), t.float(), k, ql, tl, True, 3_000)
    # cpp: [Bq, Bt, T, T', R]; tiled: [Bq T, R, Bt T']
    tiled_as_cpp = sel.view(2, 3, R, 2, 4).permute(0, 3, 1, 4, 2)
    valid = (torch.arange(3)[None, :] < ql[:, None])[:, None, :, None] & \
        (torch.arange(4)[None, :] < tl[:, None])[None, :, None, :]
    assert torch.equal(tiled_as_cpp[valid], sel_cpp[valid])
    g = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    qf, tf = q.float().requires_grad_(), t.float().requires_grad_()
    gcpp = torch.autograd.grad(spatial_topk_chamfer(qf, tf, k, ql, tl, backend="cpp"), (qf, tf), g.float())
    qf2, tf2 = q.float().requires_grad_(), t.float().requires_grad_()
    gtl = torch.autograd.grad(spatial_topk_chamfer(qf2, tf2, k, ql, tl, backend="tiled", workspace_bytes=3_000),
                              (qf2, tf2), g.float())
    for a, b in zip(gcpp, gtl):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_tie_gradient_goes_to_the_lower_index_by_hand():
    # one query region, three target regions with values 0.5, 0.5, 0.2: k = 1 takes region 0
    q = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[[0.5, 1.0], [0.5, -1.0], [0.2, 0.0]]]], dtype=torch.float64, requires_grad=True)
    q1 = q.expand(1, 1, 3, 2).contiguous().detach().requires_grad_()  # R must match: 3 query regions
    out = spatial_topk_chamfer(q1, t, 1, backend="tiled")
    torch.testing.assert_close(out, torch.tensor([[[[0.5]]]], dtype=torch.float64))
    (gt,) = torch.autograd.grad(out.sum(), (t,))
    # each of the 3 query regions picks target region 0 with weight 1/3: gradient = sum of q rows / 3
    expected = torch.zeros_like(t)
    expected[0, 0, 0] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(gt, expected)


def test_padding_gets_zero_output_and_no_gradient_even_with_garbage():
    q, t, _, _ = _inputs(2, 5, 2, 6, 9, 8)
    ql, tl = torch.tensor([5, 2]), torch.tensor([3, 6])
    with torch.no_grad():
        q2, t2 = q.clone(), t.clone()
        q2[1, 2:] = 1e3  # huge but finite padding
        t2[0, 3:] = -7.0
    q2.requires_grad_(), t2.requires_grad_()
    a = spatial_topk_chamfer(q, t, 2, ql, tl, backend="tiled", workspace_bytes=10_000)
    b = spatial_topk_chamfer(q2, t2, 2, ql, tl, backend="tiled", workspace_bytes=10_000)
    torch.testing.assert_close(a, b)
    assert (b[1, :, 2:] == 0).all() and (b[:, 0, :, 3:] == 0).all()
    gq, gt = torch.autograd.grad(b.sum(), (q2, t2))
    assert (gq[1, 2:] == 0).all() and (gt[0, 3:] == 0).all()


@pytest.mark.parametrize("shape", [(0, 4, 2, 3), (2, 4, 0, 3), (2, 0, 2, 3), (2, 4, 2, 0)],
                         ids=["no-queries", "no-targets", "zero-length-query", "zero-length-target"])
def test_empty_batches_and_zero_length_videos(shape):
    Bq, T, Bt, T2 = shape
    q = _unit(Bq, T, 9, 8).requires_grad_()
    t = _unit(Bt, T2, 9, 8).requires_grad_()
    out = spatial_topk_chamfer(q, t, 1, backend="tiled")
    assert out.shape == (Bq, Bt, T, T2)
    gq, gt = torch.autograd.grad(out.sum(), (q, t), allow_unused=True)
    assert gq is None or (gq.shape == q.shape and not gq.any())
    ql = torch.zeros(max(Bq, 1), dtype=torch.long)[:Bq]
    out = spatial_topk_chamfer(q, t, 1, ql, None, backend="tiled")
    assert not out.any()


def test_half_precisions_are_as_accurate_as_torch_itself():
    """bf16 / fp16 inputs: error against the fp64 reference at most 2x that of PyTorch's own
    matmul in the same dtype (flash-attention style), plus a few ulps."""
    q, t, ql, tl = _inputs(3, 6, 2, 5, 9, 64, grad=False)
    exact = spatial_topk_chamfer_reference(q, t, 1, ql, tl)
    for dtype, eps in ((torch.bfloat16, 2 ** -8), (torch.float16, 2 ** -11)):
        low = spatial_topk_chamfer(q.to(dtype), t.to(dtype), 1, ql, tl, backend="tiled")
        assert low.dtype == dtype
        torch_err = (spatial_topk_chamfer_reference(q.to(dtype), t.to(dtype), 1, ql, tl).double() - exact).abs().max()
        err = (low.double() - exact).abs().max()
        assert err <= 2 * torch_err + 4 * eps, (dtype, float(err), float(torch_err))


def test_bf16_backward_accumulates_in_float32():
    """For a given selection, the bf16 backward (bf16 GEMMs, tiles summed in fp32) matches the same
    backward in float64 to bf16 precision. (Against the fp64 *reference* the gradient also moves
    wherever bf16 rounding ties two regions and the lower-index rule picks another one than fp64
    would: that is a selection change, not an accumulation error, so it is taken out here.)"""
    q, t, ql, tl = _inputs(3, 5, 2, 6, 9, 32, grad=False)
    qb, tb = q.bfloat16(), t.bfloat16()
    _, sel = _tiled_op(qb, tb, 1, ql, tl, True, 2_000)
    g = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    exact = _tiled_backward_op(g, qb.double(), tb.double(), sel, 1, ql, tl, 2_000)
    low = _tiled_backward_op(g.bfloat16(), qb, tb, sel, 1, ql, tl, 2_000)
    for e, o in zip(exact, low):
        assert o.dtype == torch.bfloat16
        # inputs are exact in both; only the bf16 rounding of g and of the result remain
        assert (o.double() - e).norm() <= 2 ** -7 * e.norm(), float((o.double() - e).norm() / e.norm())
    # and the selection itself is the one bf16 similarities give under the tie rule
    S = (qb.reshape(-1, 32) @ tb.reshape(-1, 32).T).view(3, 5, 9, 2, 6, 9)
    assert torch.equal(sel.view(3, 5, 9, 2, 6).long(), S.argmax(-1))


def test_workspace_bound_holds_for_every_phase():
    for phase in ("forward", "forward_save", "backward"):
        for R, k, es in ((9, 1, 4), (9, 3, 4), (9, 9, 2), (64, 5, 4), (65, 7, 8)):
            for ws in (1 << 16, 1 << 20, 64 << 20):
                bx, by = tile_frames(ws, R, 5000, 7000, es, k, phase, 512)
                assert bx >= 1 and by >= 1
                used = bx * by * bytes_per_cell(R, k, es, phase) + by * R * 512 * es
                assert used <= ws or (bx == 1 and by == 1), (phase, R, k, es, ws, bx, by)
    # a big bound gives big tiles (few Python iterations): at the eval shape, >= 300 x 300 frames
    assert min(tile_frames(64 << 20, 9, 1024, 1024, 4, 1, "forward", 512)) >= 300


def test_forward_never_holds_more_than_one_tile(monkeypatch):
    """Instrument matmul: every similarity block the driver asks for fits the bound."""
    seen = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        out = real(a, b)
        seen.append(out.numel() * out.element_size())
        return out

    q, t, ql, tl = _inputs(4, 16, 4, 16, 9, 16, dtype=torch.float32, grad=False)
    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    bound = 50_000
    spatial_topk_chamfer(q, t, 1, ql, tl, backend="tiled", workspace_bytes=bound)
    monkeypatch.undo()
    assert len(seen) > 4 and max(seen) <= bound


def test_default_backward_tiles_within_a_quarter_of_the_bound(monkeypatch):
    """With no explicit bound the CPU backward's GEMMs use 16 MiB tiles; an explicit bound applies
    to both phases. Instrumented: the weight blocks the backward multiplies."""
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    import hapvr.ops._spatial_tiled as tiled

    seen = []
    real = tiled._weights

    def spy(*args):
        w = real(*args)
        seen.append(w.numel() * w.element_size())
        return w

    monkeypatch.setattr(tiled, "_weights", spy)
    q, t, ql, tl = _inputs(64, 28, 64, 28, 9, 8, dtype=torch.float32, grad=True)
    ql.fill_(28), tl.fill_(28)
    spatial_topk_chamfer(q, t, 1, ql, tl, backend="tiled").sum().backward()
    bx, by = tile_frames(16 << 20, 9, 64 * 28, 64 * 28, 4, 1, "backward", 8)
    assert len(seen) > 1 and max(seen) == bx * by * 81 * 4 <= 16 << 20
    seen.clear()
    q.grad = t.grad = None
    spatial_topk_chamfer(q, t, 1, ql, tl, backend="tiled", workspace_bytes=64 << 20).sum().backward()
    assert max(seen) > 16 << 20  # the explicit bound: 64 MiB tiles in the backward too


def test_workspace_environment_variable(monkeypatch):
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    assert default_workspace_bytes() == DEFAULT_WORKSPACE_BYTES == 64 << 20
    assert default_workspace_bytes("cpu", "backward") == 16 << 20  # a quarter of the bound on the CPU
    assert default_workspace_bytes("cuda") == default_workspace_bytes("cuda", "backward") > default_workspace_bytes("cpu")
    with pytest.raises(ValueError, match="phase"):
        default_workspace_bytes("cpu", "sideways")
    monkeypatch.setenv(WORKSPACE_ENV, "8")
    for phase in ("forward", "backward"):
        assert default_workspace_bytes("cpu", phase) == default_workspace_bytes("cuda", phase) == 8 << 20
    for bad in ("zero", "0", "-3"):
        monkeypatch.setenv(WORKSPACE_ENV, bad)
        with pytest.raises(ValueError, match=WORKSPACE_ENV):
            default_workspace_bytes()
    monkeypatch.delenv(WORKSPACE_ENV)
    q, t, _, _ = _inputs(1, 2, 1, 2, 9, 4, grad=False)
    with pytest.raises(ValueError, match="workspace_bytes must be in"):
        spatial_topk_chamfer(q, t, 1, backend="tiled", workspace_bytes=0)


def test_inference_saves_no_selection():
    q, t, ql, tl = _inputs(2, 3, 2, 3, 9, 8, grad=False)
    maps, sel = _tiled_op(q, t, 1, ql, tl, False, 1 << 20)
    assert sel.numel() == 0
    _, sel = _tiled_op(q, t, 1, ql, tl, True, 1 << 20)
    assert sel.shape == selection_shape(6, 9, 6, 1, True) == (6, 9, 6) and sel.dtype == torch.int8
    assert selection_shape(6, 9, 6, 9, True) == (0,)  # k = R selects everything
    assert selection_shape(6, 70, 6, 3, True) == (6, 70, 3, 6) and selection_dtype(70, 3) == torch.int16
    assert selection_dtype(17, 2) == torch.int32 and selection_dtype(64, 2) == torch.int64


@pytest.mark.parametrize("k,save", [(1, True), (3, True), (9, True), (2, False)])
def test_opcheck(k, save):
    q, t, ql, tl = _inputs(2, 3, 2, 4, 9, 8, dtype=torch.float32, grad=save)
    torch.library.opcheck(_tiled_op, (q, t, k, ql, tl, save, 4_000))
    if save:
        maps, sel = _tiled_op(q.detach(), t.detach(), k, ql, tl, True, 4_000)
        g = torch.randn_like(maps)
        torch.library.opcheck(_tiled_backward_op, (g, q.detach(), t.detach(), sel, k, ql, tl, 4_000))


def test_torch_compile_traces_the_tiled_op():
    q, t, ql, tl = _inputs(2, 3, 2, 4, 9, 8, dtype=torch.float32, grad=False)
    f = torch.compile(lambda q, t: spatial_topk_chamfer_tiled(q, t, 1, ql, tl, False, 4_000), backend="aot_eager",
                      fullgraph=True)
    torch.testing.assert_close(f(q, t), spatial_topk_chamfer_reference(q, t, 1, ql, tl))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(Bq=st.integers(0, 3), T=st.integers(0, 5), Bt=st.integers(0, 3), T2=st.integers(0, 5),
       R=st.sampled_from([1, 2, 9, 17, 33, 64, 65]), D=st.integers(1, 6), kfrac=st.floats(0, 1),
       dtype=st.sampled_from([torch.float32, torch.float64]), workspace=st.integers(1, 200_000),
       seed=st.integers(0, 2 ** 31 - 1))
def test_property_tiled_equals_reference(Bq, T, Bt, T2, R, D, kfrac, dtype, workspace, seed):
    gen = torch.Generator().manual_seed(seed)
    k = max(1, round(kfrac * R))
    q = torch.randn(Bq, T, R, D, generator=gen, dtype=dtype)
    t = torch.randn(Bt, T2, R, D, generator=gen, dtype=dtype)
    ql = torch.randint(0, T + 1, (Bq,), generator=gen)
    tl = torch.randint(0, T2 + 1, (Bt,), generator=gen)
    ref = spatial_topk_chamfer_reference(q, t, k, ql, tl)
    out = spatial_topk_chamfer(q, t, k, ql, tl, backend="tiled", workspace_bytes=workspace)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


# --- the auto policy ------------------------------------------------------------------------


def test_auto_policy_never_picks_the_naive_cuda_kernel_or_the_reference():
    for device, order in AUTO_POLICY.items():
        assert "cuda" not in order and "reference" not in order, device
    assert auto_order("cuda")[0] == "tiled"
    assert auto_order("cpu") == ("cpp", "tiled")
    assert auto_order("mps") == ("tiled",)


def test_choice_for_a_cuda_input_without_a_gpu():
    q, t, _, _ = _inputs(1, 3, 1, 3, 9, 8, dtype=torch.float32, grad=False)
    assert choose_spatial_backend(q, t, 1, device="cuda") == "tiled"
    reasons = explain_spatial_backends(q, t, 1, device="cuda")
    assert reasons["tiled"] == [] and any("runs on cpu" in r for r in reasons["cpp"])
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # every dtype: still tiled, never naive
        assert choose_spatial_backend(q.to(dtype), t.to(dtype), 1, device="cuda") == "tiled"


def test_auto_on_cpu_takes_cpp_then_tiled_and_never_the_reference(monkeypatch):
    q, t, _, _ = _inputs(1, 3, 1, 3, 9, 8, dtype=torch.float32, grad=False)
    assert choose_spatial_backend(q, t, 1) == "cpp"
    assert choose_spatial_backend(q.bfloat16(), t.bfloat16(), 1) == "tiled"  # cpp is fp32/fp64 only
    big_q, big_t = _unit(1, 2, 70, 4, dtype=torch.float32), _unit(1, 2, 70, 4, dtype=torch.float32)
    assert choose_spatial_backend(big_q, big_t, 3) == "tiled"  # R > 64: beyond the compiled kernels
    # without the compiled extension the fallback is tiled (bounded memory), not the reference
    real = _dispatch.install_reasons
    monkeypatch.setattr(_dispatch, "install_reasons",
                        lambda assume_device=False: dict(real(assume_device), cpp="hapvr._C could not be loaded"))
    assert choose_spatial_backend(q, t, 1) == "tiled"
    calls = []
    monkeypatch.setattr(hapvr.ops.spatial, "spatial_topk_chamfer_reference", lambda *a: calls.append(a))
    torch.testing.assert_close(spatial_topk_chamfer(q, t, 1), spatial_topk_chamfer(q, t, 1, backend="tiled"))
    assert not calls
