"""Triton backend of spatial_topk_chamfer (hapvr/ops/_triton_topk_chamfer.py).

Runs the kernels through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1) on
tiny shapes; inputs are fresh random draws each run (seed printed by the ``fresh_seed`` fixture,
pin it with HAPVR_TEST_SEED).
"""

import pytest
import torch
import triton
import triton.language as tl

import hapvr.ops._triton_topk_chamfer as tri
from hapvr.ops import spatial_topk_chamfer, spatial_topk_chamfer_reference
from hapvr.ops._topk import mask_dtype

OP = torch.ops.hapvr.spatial_topk_chamfer_triton
BACKWARD = torch.ops.hapvr.spatial_topk_chamfer_triton_backward


def unit(*shape, dtype=torch.float32):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).to(dtype)


def random_lengths(batch, full):
    lengths = torch.randint(1, full + 1, (batch,))
    lengths[0] = full  # one full-length video, so every frame of the tile is exercised
    return lengths


def similarities(q, t):
    """[Bq, Bt, T, T', R(i), R(j)] patch similarities in float64."""
    return torch.einsum("axid,byjd->abxyij", q.double(), t.double())


def tie_free(Bq, T, Bt, T2, R, D, k, gap=1e-4, dtype=torch.float32):
    """Random unit features whose k-th and (k+1)-th similarities differ by more than ``gap``."""
    for _ in range(100):
        q, t = unit(Bq, T, R, D, dtype=dtype), unit(Bt, T2, R, D, dtype=dtype)
        if k == R:
            return q, t
        S = similarities(q, t).sort(dim=-1, descending=True).values
        if (S[..., k - 1] - S[..., k]).min() > gap:
            return q, t
    raise AssertionError("could not draw tie-free inputs")


def valid(ql, tl, T, T2):
    vx = torch.arange(T)[None, :] < ql[:, None]
    vy = torch.arange(T2)[None, :] < tl[:, None]
    return vx[:, None, :, None] & vy[None, :, None, :]  # [Bq, Bt, T, T']


def lower_index_selection(q, t, k):
    """One-hot [Bq, Bt, T, T', R(i), R(j)] of the top-k j, equal values taken lower index first."""
    S = similarities(q, t)
    order = S.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(S).scatter_(-1, order, 1.0)


def encode(onehot, k):
    """The saved selection format: the index (int8) for k == 1, else the R-bit mask."""
    R = onehot.shape[-1]
    if k == 1:
        return onehot.argmax(-1).to(torch.int8)
    weights = torch.ones((), dtype=torch.int64) << torch.arange(R)  # bit 63 wraps to the sign bit
    return (onehot.long() * weights).sum(-1).to(mask_dtype(R, k))


def grads_from_selection(q, t, onehot, k, g, ok):
    """d query and d target of eq. 3 for the given selection (float64)."""
    R = q.shape[2]
    w = onehot * (g.double() * ok)[..., None, None] / (k * R)
    dq = torch.einsum("abxyij,byjd->axid", w, t.double())
    dt = torch.einsum("abxyij,axid->byjd", w, q.double())
    return dq, dt


# --- forward, selection and backward against the reference --------------------------------

CASES = [
    # Bq, T, Bt, T2, R, D, k
    (2, 5, 3, 9, 9, 8, 1),  # k = 1 (int8 index); 2 query-frame and 2 target-frame blocks
    (2, 3, 2, 4, 9, 8, 3),  # 1 < k < R, int16 mask
    (1, 3, 2, 4, 9, 8, 9),  # k = R
    (1, 2, 2, 3, 16, 40, 4),  # R = 16 (no region padding), D in two chunks, not a multiple of them
    (1, 3, 2, 5, 20, 8, 1),  # R = 20 pads to 32
    (1, 3, 2, 5, 20, 8, 5),  # int32 mask
    (1, 2, 1, 3, 20, 8, 20),  # k = R = 20
    (2, 1, 1, 1, 1, 8, 1),  # R = 1
    (1, 2, 2, 3, 40, 8, 3),  # R = 40 pads to 64, int64 mask
    (3, 4, 2, 9, 3, 8, 1),  # R = 3: 5 frames in 16 rows, query blocks across videos
    (2, 3, 2, 5, 3, 8, 2),  # R = 3, k = 2: KP = 2 slots
    (2, 3, 2, 5, 3, 8, 3),  # R = 3, k = R: KP = 4 with one padding slot
    (2, 3, 3, 7, 4, 24, 2),  # R = 4: per-frame sum by reshape, target blocks across videos
    (1, 3, 2, 3, 16, 8, 1),  # R = 16, k = 1
    (1, 2, 2, 3, 16, 8, 16),  # R = 16, k = R: 16 slots
    (1, 2, 1, 3, 64, 8, 3),  # R = 64: bit 63 of an int64 mask
]


def check_against_reference(q, t, k, ql, tl, atol=2e-5, grad_atol=1e-5):
    Bq, T, R, _ = q.shape
    Bt, T2 = t.shape[:2]
    q = q.clone().requires_grad_()
    t = t.clone().requires_grad_()
    out, sel = OP(q, t, k, ql, tl, True)
    ref = spatial_topk_chamfer_reference(q.double(), t.double(), k, ql, tl)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)

    ok = valid(ql, tl, T, T2)
    assert sel.shape == (Bq, Bt, T, T2, R) and sel.dtype == mask_dtype(R, k)
    want = encode(lower_index_selection(q.detach(), t.detach(), k), k)
    assert torch.equal(sel[ok], want[ok])
    _, sel_cpp = torch.ops.hapvr.spatial_topk_chamfer(q.detach(), t.detach(), k, ql, tl, True)
    assert torch.equal(sel[ok], sel_cpp[ok])  # the compiled kernels' saved selection

    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, t), g)
    expected = torch.autograd.grad(ref, (q, t), g.double())
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b.double(), atol=grad_atol, rtol=1e-4)
    return out, sel


@pytest.mark.parametrize("case", CASES, ids=lambda c: "Bq{}T{}Bt{}T'{}R{}D{}k{}".format(*c))
def test_matches_reference(case):
    Bq, T, Bt, T2, R, D, k = case
    q, t = tie_free(Bq, T, Bt, T2, R, D, k)
    check_against_reference(q, t, k, random_lengths(Bq, T), random_lengths(Bt, T2))


def test_small_tiles_cover_every_block_edge(monkeypatch):
    # Two query frames x 16 target frames per tile and 16-feature chunks: tiles that span two
    # videos on both sides, a partial last tile on both sides, a partial last feature chunk.
    small = tri.TileConfig(rows=16, frames=16, block_d=16)
    monkeypatch.setitem(tri.INTERPRETER_CONFIGS, "forward", (small,))
    tile = tri.fit_tile("forward", small, 7, 2, 2 * 3, 3 * 7, 40, torch.float32)
    assert (tile.BX, tile.M, tile.BY, tile.BD) == (2, 16, 16, 16)
    q, t = tie_free(2, 3, 3, 7, 7, 40, 2)
    check_against_reference(q, t, 2, torch.tensor([3, 2]), torch.tensor([7, 3, 5]))


def test_zero_length_videos():
    # A video of no valid frame: its maps are 0, it gets and gives no gradient.
    q, t = tie_free(3, 3, 3, 4, 9, 8, 2)
    ql, tl = torch.tensor([3, 0, 2]), torch.tensor([0, 4, 1])
    out, _ = check_against_reference(q, t, 2, ql, tl)
    assert out[1].abs().max() == 0 and out[:, 0].abs().max() == 0
    qg, tg = q.clone().requires_grad_(), t.clone().requires_grad_()
    dq, dt = torch.autograd.grad(OP(qg, tg, 2, ql, tl, True)[0].sum(), (qg, tg))
    assert dq[1].abs().max() == 0 and dt[0].abs().max() == 0
    all_padding = torch.zeros(3, dtype=torch.int64)
    out, sel = OP(q, t, 1, all_padding, tl, True)
    assert out.abs().max() == 0 and sel.abs().max() == 0


def test_padded_frames_do_not_influence_valid_entries():
    q, t = tie_free(2, 4, 2, 5, 9, 8, 2)
    ql, tl = torch.tensor([2, 4]), torch.tensor([5, 3])
    q2, t2 = q.clone(), t.clone()
    q2[0, 2:] = 5.0  # garbage in padded frames
    t2[1, 3:] = -7.0
    out, sel = check_against_reference(q, t, 2, ql, tl)
    out2, sel2 = OP(q2, t2, 2, ql, tl, True)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    assert out[0, :, 2:].abs().max() == 0 and out[:, 1, :, 3:].abs().max() == 0
    g = torch.randn_like(out)
    dq, dt = BACKWARD(g, q, t, sel, 2, ql, tl)
    dq2, dt2 = BACKWARD(g, q2, t2, sel2, 2, ql, tl)
    torch.testing.assert_close(dq, dq2, rtol=0, atol=0)
    torch.testing.assert_close(dt, dt2, rtol=0, atol=0)
    assert dq[0, 2:].abs().max() == 0 and dt[1, 3:].abs().max() == 0


# --- ties: the lower region index wins ------------------------------------------------------


@pytest.mark.parametrize("R, k", [(6, 1), (6, 2), (6, 4), (6, 6), (8, 3), (9, 1), (9, 2)])
def test_ties_select_the_lower_region_index(R, k):
    # Small integer features: every product is exact in fp32 and ties are everywhere.
    Bq, T, Bt, T2, D = 2, 2, 2, 3, 4
    q = torch.randint(-2, 3, (Bq, T, R, D)).float()
    t = torch.randint(-2, 3, (Bt, T2, R, D)).float()
    t[:, :, 4] = t[:, :, 1]  # duplicated target regions on top of the random ties
    t[:, :, R - 1] = t[:, :, 0]
    ql, tl = random_lengths(Bq, T), random_lengths(Bt, T2)
    out, sel = OP(q, t, k, ql, tl, True)
    ref = spatial_topk_chamfer_reference(q.double(), t.double(), k, ql, tl)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)

    ok = valid(ql, tl, T, T2)
    onehot = lower_index_selection(q, t, k)
    assert torch.equal(sel[ok], encode(onehot, k)[ok])
    _, sel_cpp = torch.ops.hapvr.spatial_topk_chamfer(q, t, k, ql, tl, True)
    assert torch.equal(sel[ok], sel_cpp[ok])

    g = torch.randn_like(out)
    dq, dt = BACKWARD(g, q, t, sel, k, ql, tl)
    want_dq, want_dt = grads_from_selection(q, t, onehot, k, g, ok)
    torch.testing.assert_close(dq.double(), want_dq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dt.double(), want_dt, atol=1e-5, rtol=1e-5)


def test_identical_target_regions_give_gradient_to_the_first_k_only():
    R, D = 5, 8
    q = unit(1, 1, R, D)
    t = unit(1, 1, 1, D).expand(1, 1, R, D).contiguous()  # R identical regions
    ql, tl = torch.tensor([1]), torch.tensor([1])
    for k in (1, 2, 3):
        out, sel = OP(q, t, k, ql, tl, True)
        assert int(sel.flatten()[0]) == (0 if k == 1 else (1 << k) - 1)
        assert (sel == sel.flatten()[0]).all()
        dq, dt = BACKWARD(torch.ones_like(out), q, t, sel, k, ql, tl)
        per_region = q[0, 0].sum(0) / (k * R)  # every query region sends its feature
        torch.testing.assert_close(dt[0, 0, :k], per_region.expand(k, D), atol=1e-6, rtol=1e-5)
        assert dt[0, 0, k:].abs().max() == 0
        torch.testing.assert_close(dq[0, 0], t[0, 0, :1].expand(R, D) / R, atol=1e-6, rtol=1e-5)  # k copies / (kR)


# --- inference keeps (and allocates) no selection -----------------------------------------


def test_inference_allocates_no_selection(monkeypatch):
    allocated = []
    real = tri._new_selection

    def counting(query, shape, dtype):
        allocated.append(tuple(shape))
        return real(query, shape, dtype)

    monkeypatch.setattr(tri, "_new_selection", counting)
    q, t = tie_free(2, 3, 2, 4, 9, 8, 2)
    ql, tl = torch.tensor([3, 2]), torch.tensor([4, 1])

    out_infer, empty = OP(q, t, 2, ql, tl, False)
    assert empty.numel() == 0 and empty.dtype == mask_dtype(9, 2) and allocated == []
    with torch.no_grad():
        public = spatial_topk_chamfer(q, t, 2, ql, tl, backend="triton")
    assert allocated == []
    torch.testing.assert_close(public, out_infer, rtol=0, atol=0)

    out_train, sel = OP(q, t, 2, ql, tl, True)
    assert allocated == [(2, 2, 3, 4, 9)] and sel.shape == (2, 2, 3, 4, 9)
    torch.testing.assert_close(out_train, out_infer, rtol=0, atol=0)

    qg = q.clone().requires_grad_()
    out, _ = OP(qg, t, 2, ql, tl, False)
    with pytest.raises(RuntimeError, match="save_selection=False"):
        out.sum().backward()


# --- tl.dot input precision ---------------------------------------------------------------


@pytest.fixture
def restore_matmul_precision():
    saved = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision = saved


def test_dot_input_precision_follows_allow_tf32(restore_matmul_precision):
    matmul = torch.backends.cuda.matmul
    matmul.allow_tf32 = True
    assert tri.dot_input_precision(torch.float32, interpreted=False) == "tf32"
    assert tri.dot_input_precision(torch.float32, interpreted=True) == "ieee"  # interpreter: exact
    assert tri.dot_input_precision(torch.float32) == "ieee"  # tests run under TRITON_INTERPRET=1
    for half in (torch.float16, torch.bfloat16):  # fed natively, the setting is for fp32 only
        assert tri.dot_input_precision(half, interpreted=False) == "ieee"
    matmul.allow_tf32 = False
    assert tri.dot_input_precision(torch.float32, interpreted=False) == "ieee"
    # The newer API: reading allow_tf32 after setting it raises, the helper still answers.
    matmul.fp32_precision = "tf32"
    assert tri.tf32_allowed() and tri.dot_input_precision(torch.float32, interpreted=False) == "tf32"
    matmul.fp32_precision = "ieee"
    assert tri.dot_input_precision(torch.float32, interpreted=False) == "ieee"


def test_interpreter_stays_exact_when_tf32_is_allowed(restore_matmul_precision):
    torch.backends.cuda.matmul.allow_tf32 = True
    q, t = tie_free(1, 2, 1, 3, 9, 40, 2)
    out, _ = OP(q, t, 2, torch.tensor([2]), torch.tensor([3]), False)
    ref = spatial_topk_chamfer_reference(q.double(), t.double(), 2)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)  # tf32 would be ~1e-3 off


@pytest.mark.parametrize("dtype, k", [(torch.float16, 2), (torch.bfloat16, 2), (torch.float16, 1),
                                      (torch.bfloat16, 1)])
def test_half_precision_inputs(dtype, k):
    # fp16 runs the native 16-bit tl.dot in the interpreter; bf16 is upcast there (see module doc).
    q, t = tie_free(1, 2, 2, 3, 9, 16, k, gap=1e-3, dtype=dtype)
    ql, tl = torch.tensor([2]), torch.tensor([3, 2])
    q.requires_grad_()
    t.requires_grad_()
    out, sel = OP(q, t, k, ql, tl, True)
    assert out.dtype == dtype
    ref = spatial_topk_chamfer_reference(q.double(), t.double(), k, ql, tl)
    torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=0)
    ok = valid(ql, tl, 2, 3)
    assert torch.equal(sel[ok], encode(lower_index_selection(q.detach(), t.detach(), k), k)[ok])
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, t), g)
    want = torch.autograd.grad(ref, (q, t), g.double())
    # The error PyTorch itself makes in this dtype (reference on 16-bit inputs), at most 2x + slack.
    own = torch.autograd.grad(spatial_topk_chamfer_reference(q, t, k, ql, tl), (q, t), g)
    for a, b, c in zip(got, want, own):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b.double(), atol=1e-2, rtol=0)
        assert (a.double() - b).abs().max() <= 2 * (c.double() - b).abs().max() + 2e-3


# --- op registration ----------------------------------------------------------------------


@pytest.mark.parametrize("R, k", [(5, 2), (3, 1)])
def test_opcheck(R, k):
    q, t = tie_free(1, 2, 2, 3, R, 8, k)
    ql, tl = torch.tensor([2]), torch.tensor([3, 2])
    qg, tg = q.clone().requires_grad_(), t.clone().requires_grad_()
    torch.library.opcheck(OP.default, (qg, tg, k, ql, tl, True))
    torch.library.opcheck(OP.default, (q, t, k, ql, tl, False))
    out, sel = OP(q, t, k, ql, tl, True)
    torch.library.opcheck(BACKWARD.default, (torch.randn_like(out), q, t, sel, k, ql, tl))


def test_rejects_bad_k():
    q, t = unit(1, 2, 5, 8), unit(1, 3, 5, 8)
    with pytest.raises(RuntimeError, match="k must be in"):
        OP(q, t, 6, torch.tensor([2]), torch.tensor([3]), True)


# --- tiles, autotuning and MMA work -------------------------------------------------------


def test_query_rows_are_packed_without_region_padding():
    assert tri.pack_query_rows(9, 64, 1024) == (7, 64)  # 63 of 64 rows
    assert tri.pack_query_rows(16, 64, 1024) == (4, 64)
    assert tri.pack_query_rows(20, 64, 1024) == (3, 64)
    assert tri.pack_query_rows(64, 64, 1024) == (1, 64)
    assert tri.pack_query_rows(1, 64, 1024) == (64, 64)
    # No more rows than all query frames need, but at least 16 (tl.dot) and at least R.
    assert tri.pack_query_rows(9, 64, 2) == (3, 32)
    assert tri.pack_query_rows(9, 64, 1) == (1, 16)
    assert tri.pack_query_rows(20, 64, 1) == (1, 32)
    assert tri.pack_query_rows(1, 128, 28) == (32, 32)
    tile = tri.fit_tile("forward", tri.CUDA_CONFIGS["forward"][0], 9, 1, 1024, 1024, 512, torch.bfloat16)
    assert (tile.BX, tile.M, tile.XP, tile.BY, tile.BD, tile.SUM_BY_DOT) == (7, 64, 16, 128, 64, True)
    assert tri.fit_tile("forward", tri.CUDA_CONFIGS["forward"][0], 9, 1, 1024, 1024, 512, torch.float32).BD == 32
    assert not tri.fit_tile("forward", tri.CUDA_CONFIGS["forward"][0], 16, 1, 64, 64, 512, torch.bfloat16).SUM_BY_DOT
    # BY covers no more than all target frames, and shrinks for the k slots' registers.
    assert tri.fit_tile("forward", tri.CUDA_CONFIGS["forward"][0], 9, 1, 64, 28, 512, torch.bfloat16).BY == 32
    assert tri.fit_tile("forward", tri.CUDA_CONFIGS["forward"][0], 9, 4, 64, 1024, 512, torch.bfloat16).BY == 32
    assert tri.fit_tile("forward", tri.CUDA_CONFIGS["forward"][0], 64, 64, 64, 1024, 512, torch.bfloat16).BY == 16


def test_mma_work_hand_count():
    # R = 9, T = T' = 1024, D = 512, bf16, the first forward config: 147 x 8 tiles of 7 query
    # frames (64 rows) x 128 target frames, 9 x 512 / 64 products of 64 x 128 x 64 each, plus the
    # per-frame sum [16, 64] @ [64, 128] counted 3 times (tf32x3).
    issued, ideal = tri.mma_work("forward", 9, 1024, 1024, 512)
    assert ideal == 1024 * 9 * 1024 * 9 * 512
    assert issued == 147 * 8 * (9 * 64 * 128 * 512 + 3 * 16 * 64 * 128)
    # d query / d target: 147 x 16 tiles of 64 rows x 64 target frames, BD = 128.
    for kernel in ("grad_query", "grad_target"):
        assert tri.mma_work(kernel, 9, 1024, 1024, 512) == (147 * 16 * 9 * 64 * 64 * 512, ideal)
    # Partial tiles count in full: 1 query frame of R = 16 issues 16 rows; 17 target frames 32.
    assert tri.mma_work("grad_query", 16, 1, 17, 64, tri.CUDA_CONFIGS["grad_query"][1]) == (
        16 * 32 * 16 * 64, 16 * 16 * 17 * 64)


SHAPES = {  # (Bq, T, Bt, T'), D = 512
    "eval": (1, 1024, 1, 1024),
    "train": (64, 28, 64, 28),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_mma_work_ratio_at_most_1_3(shape):
    # Every R the kernels take, every config of the autotune lists, both kernels' dtypes' BD.
    Bq, T, Bt, T2 = SHAPES[shape]
    worst = {}
    for R in range(1, 65):
        for kernel in tri.KERNELS:
            for config in tri.CUDA_CONFIGS[kernel]:
                for dtype in (torch.bfloat16, torch.float32):
                    for k in sorted({1, 2, R}):
                        issued, ideal = tri.mma_work(kernel, R, T, T2, 512, config, Bq=Bq, Bt=Bt, k=k, dtype=dtype)
                        assert issued >= ideal
                        worst[R, kernel] = max(worst.get((R, kernel), 0.0), issued / ideal)
    print({key: round(ratio, 3) for key, ratio in worst.items() if key[0] in (1, 4, 9, 16, 20, 64)})
    assert max(worst.values()) <= 1.3
    assert all(worst[9, kernel] <= 1.04 for kernel in tri.KERNELS)


def test_autotune_lists_match_the_kernels():
    for kernel in tri.KERNELS:
        tiles = tri._tiles(kernel, False, 9, 2, 1024, 1024, 512, torch.bfloat16)
        tuned = tri._autotuned(kernel, tiles)
        assert len(tuned.configs) == len(tiles) == len(tri.CUDA_CONFIGS[kernel])
        for config in tuned.configs:
            assert set(config.kwargs) <= set(tuned.arg_names)
    assert tri.INTERPRETER_CONFIGS["forward"] != tri.CUDA_CONFIGS["forward"]


def test_runs_through_the_autotuner(monkeypatch):
    # The CUDA launch path (triton.autotune over fitted tiles, grid from the chosen tile) on the
    # interpreter: one config per kernel, so the autotuner runs it without benchmarking.
    monkeypatch.setattr(tri, "triton_interpreted", lambda: False)
    small = (tri.TileConfig(rows=16, frames=16, block_d=32, num_warps=4, num_stages=2),)
    for kernel in tri.KERNELS:
        monkeypatch.setitem(tri.CUDA_CONFIGS, kernel, small)
    q, t = tie_free(2, 3, 2, 4, 5, 8, 2)
    check_against_reference(q, t, 2, torch.tensor([3, 2]), torch.tensor([4, 1]))


# --- int64 offsets ------------------------------------------------------------------------


@triton.jit
def _offsets_probe(v_ptr, out_ptr, R: tl.constexpr, D: tl.constexpr, N: tl.constexpr, MAP: tl.constexpr,
                   INT32: tl.constexpr):
    n = tl.arange(0, N)
    v = tl.load(v_ptr + n)  # int32, as frame indices are in the kernels
    if MAP:
        off = tri._map_offset(v, v, v, v, 64, 1024, 1024) * R
    elif INT32:
        off = (v * R + 3) * D  # the arithmetic of the previous kernels, without the int64 cast
    else:
        off = tri._feature_offset(v, 3, R, D)
    tl.store(out_ptr + n, off.to(tl.int64))


def run_probe(values, R, D, map_offset=False, int32=False):
    out = torch.zeros(len(values), dtype=torch.int64)
    _offsets_probe[(1,)](torch.tensor(values, dtype=torch.int32), out, R=R, D=D, N=len(values), MAP=map_offset,
                         INT32=int32)
    return out


def test_offsets_are_int64_past_the_int32_limit():
    frames = [0, 1, 466_033, 500_000, 2_000_000, 2**31 // 9 - 1, 123, 7]
    want = [(f * 9 + 3) * 512 for f in frames]  # R D = 4608
    assert max(want) > 2**31
    assert run_probe(frames, 9, 512).tolist() == want
    # The same arithmetic in int32 wraps in the interpreter: this test would catch it.
    assert run_probe(frames, 9, 512, int32=True).tolist() != want
    # maps[a, b, x, y] of [64, 64, 1024, 1024] maps, and the selection's offset (x R = 9).
    v = [63, 0, 5, 1023]
    want = [((a * 64 + a) * 1024 + a) * 1024 * 9 + a * 9 for a in v]
    assert run_probe(v, 9, 512, map_offset=True).tolist() == want and max(want) > 2**32
