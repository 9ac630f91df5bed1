"""Triton kernels of spatial_topk_chamfer (paper eq. 3).

Design
------
*Frames laid end to end.* The kernels see the query as ``Bq T`` frames and the target as
``Bt T'`` frames, all videos laid end to end (a tile may span two videos: every row and column
carries its own video, frame and length), so the only partial tiles are the last ones of the
whole batch, not one per video.

*Forward.* A program owns a tile of BX query frames x BY target frames. Its M side is the BX
query frames' regions packed as rows ``x R + i`` (a contiguous slab of the ``[Bq T R, D]``
features), padded only up to the power of two ``M >= BX R`` that ``tl.arange`` needs: with R = 9
and M = 64, BX = 7 and 63 of the 64 rows are used. The target side is not padded at all: the
program loops over the R target regions j, and for each j one ``tl.dot`` (accumulated in fp32
over D in chunks of BD features) multiplies the packed query rows ``[M, BD]`` by the BY target
frames' region-j features ``[BD, BY]``. The query slab is re-read for each j (from L2), so a
program loads what one ``M x BY`` GEMM tile with K = R D loads. After each j, a running top-k per
(query row, target frame) cell takes the new value:

- k == 1: a running maximum and its region index, replaced only when the new value is strictly
  greater, so among equal values the lower region index stays (the tie rule of every backend);
- k > 1: KP = next_pow2(k) slots of (value, region index) per cell; the new value replaces the
  slot holding the smallest value (among equal smallest values, the one with the highest region
  index) when it is strictly greater. Slots k..KP-1 are padding that holds +inf, so it is never
  the smallest and never evicted. Since regions arrive in increasing j, this keeps exactly the
  top-k under "higher value first, lower index among equal values".

The top-k sums are then averaged over the R rows of each query frame: a reshape ``[BX, R, BY]``
and a sum when R is a power of two (then M = BX R exactly); otherwise one small ``tl.dot`` of a
0/1 frame-membership matrix ``[XP, M]`` (XP = max(16, next_pow2(BX))) with the sums ``[M, BY]``,
in ``tf32x3`` (three TF32 passes: about fp32 accuracy on tensor cores) or ``ieee`` when the main
products are exact fp32, which costs under 1.1% of the main products at R = 9.

*Selection.* With ``save_selection=True`` the kernel also writes what the backward needs: the
selected region's index (int8) when k == 1, otherwise an R-bit mask (int16/int32/int64 by R, see
``_topk.mask_dtype``), shape ``[Bq, Bt, T, T', R]``, as the compiled kernels save it. With
``save_selection=False`` (inference) that buffer is not allocated and the stores are compiled out
(``SAVE`` constexpr); the op returns an empty tensor in its place.

*Backward,* with no region padding either. The weights ``W_j[(x, i), y] = grad[a, b, x, y]`` where
region j was selected for (x, i, y), else 0, are rebuilt from the saved selection tile, which is
loaded once per (query block, target block) and decoded for each j in registers.

- ``d query``: a program owns a block of packed query rows and BD features and loops over every
  target block and region j: ``dq[(x, i), :] += W_j[(x, i), y] @ t[y, j, :]`` (K = BY frames).
- ``d target``: a program owns (BY target frames, region j, BD features), so one fp32 accumulator
  ``[BY, BD]``, and loops over every query block: ``dt[y, j, :] += W_j^T @ q[(x, i), :]``
  (K = M packed rows). The grad and selection tiles are re-read once per (j, feature block); grid
  order puts those programs side by side so the re-reads hit L2.

Each program writes its own output band (no atomics: deterministic); the 1/(kR) scale is applied
to the fp32 accumulator at the end.

*Tiles and autotuning.* On CUDA each kernel is autotuned over a short list of
:class:`TileConfig` (``CUDA_CONFIGS``), keyed on R, k, D, the dtype and the numbers of query and
target frames rounded up to powers of two; under ``TRITON_INTERPRET=1`` one small fixed config
(``INTERPRETER_CONFIGS``) runs, since the interpreter would run every config. A config is fitted
to the input by :func:`fit_tile`: the packed rows M are chosen among ``rows``, 2 ``rows`` and
4 ``rows`` (:func:`pack_query_rows`: the smallest within 10% of the fewest rows issued over all
query frames, e.g. 64 rows for R = 9, 128 for R = 13); BD is 64 (or 128) features for
bf16/fp16 and half that for fp32 (the same bytes); BY is cut to the power of two that covers all
target frames, and halved while the tile's live tensors (accumulator plus running top-k state,
or grad/selection/weight tiles) exceed a rough budget of 96 32-bit registers per thread (24,576
words at 8 warps). For large k that budget cannot be met at BY = 16 (e.g. k = R = 64: 129 words
per cell); the kernel is then correct but spills registers. Forward programs run in groups of
query blocks (the usual GEMM swizzle) so that the programs on the GPU at one time share their
target tiles in L2.

*MMA work.* :func:`mma_work` counts the multiply-adds each kernel issues to ``tl.dot`` (every
dimension a power of two >= 16, all partial tiles counted, the forward's membership product
counted three times) against the ideal ``Bq Bt T R T' R D``. At the default configs the ratio is
1.02-1.04 for R = 9 at the evaluation shape (T = T' = 1024, D = 512) and at the training shape
(64 x 64 clips of 28 frames), against 3.2 for the previous design that padded R to 16 on both
sides, and at most 1.23 for any R in 1..64 at those shapes (see :func:`mma_work`). Nothing here
was run or compiled for a GPU (only the interpreter ran it): the tile choices are on paper, not
timed, and the register budget is an estimate, not a compiler's count.

*Offsets.* Every pointer offset is computed in int64 by two helpers (:func:`_feature_offset`,
:func:`_map_offset`): frame index x R x D passes 2^31 at ~466k frames (R = 9, D = 512), and
``[Bq, Bt, T, T', R]`` selections pass it sooner.

*Precision.* fp32 inputs go to ``tl.dot`` as fp32 with ``input_precision="tf32"`` (tensor cores)
when ``torch.backends.cuda.matmul.allow_tf32`` is True (or the newer
``torch.backends.cuda.matmul.fp32_precision == "tf32"``), otherwise ``"ieee"`` (exact fp32 FMA);
the choice is made on the host at each call (:func:`dot_input_precision`) and passed as a
constexpr. bf16/fp16 inputs are fed to ``tl.dot`` natively (tensor cores), accumulating in fp32;
in the backward the grad weights are cast to the feature dtype before the product. Under
``TRITON_INTERPRET=1`` (CPU tensors, tests) the precision is always ``"ieee"``, and bf16 tiles
are upcast to fp32 because the interpreter's bf16 ``tl.dot`` returns wrong values (fp16 runs
natively there).

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests, tiny shapes).
Exposed as ``torch.library.custom_op`` ops (``hapvr::spatial_topk_chamfer_triton`` and its
backward) so that autograd, ``torch.compile`` and ``opcheck`` see them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from hapvr.ops._dispatch import triton_interpreted
from hapvr.ops._spatial_autograd import (
    register_spatial_autograd,
    spatial_backward_fake,
    spatial_fake,
)
from hapvr.ops._topk import MAX_COMPILED_REGIONS, mask_dtype

KERNELS = ("forward", "grad_query", "grad_target")


@dataclass(frozen=True)
class TileConfig:
    """One tile shape to try, before :func:`fit_tile` fits it to R, k and the input's sizes."""

    rows: int  # packed query rows (frames x regions) per tile to start from (see pack_query_rows)
    frames: int  # target frames per tile (BY), at most
    block_d: int  # features per tl.dot step for 16-bit inputs; fp32 takes half (the same bytes)
    num_warps: int = 8
    num_stages: int = 3


# The autotune lists. The forward holds [M, BY] fp32 products plus the running top-k; d query an
# [M, BD] accumulator; d target a [BY, BD] one; both backward kernels also hold the [M, BY] grad,
# selection and weight tiles. None was timed: they are shapes that fit the register budget below.
CUDA_CONFIGS: dict[str, tuple[TileConfig, ...]] = {
    "forward": (
        TileConfig(rows=64, frames=128, block_d=64, num_warps=8, num_stages=3),
        TileConfig(rows=64, frames=64, block_d=64, num_warps=4, num_stages=3),
        TileConfig(rows=128, frames=64, block_d=64, num_warps=8, num_stages=3),
        TileConfig(rows=64, frames=128, block_d=128, num_warps=8, num_stages=2),
        # 1.5x the multiply-adds per byte loaded from L2, at 16 warps (one program per SM).
        TileConfig(rows=128, frames=128, block_d=64, num_warps=16, num_stages=2),
    ),
    "grad_query": (
        TileConfig(rows=64, frames=64, block_d=128, num_warps=8, num_stages=3),
        TileConfig(rows=64, frames=32, block_d=64, num_warps=4, num_stages=3),
        TileConfig(rows=128, frames=32, block_d=64, num_warps=8, num_stages=3),
        TileConfig(rows=128, frames=64, block_d=128, num_warps=16, num_stages=2),
    ),
    "grad_target": (
        TileConfig(rows=64, frames=64, block_d=128, num_warps=8, num_stages=3),
        TileConfig(rows=64, frames=32, block_d=128, num_warps=4, num_stages=3),
        # d target loads only query slabs: its reuse grows with BY, not with the rows.
        TileConfig(rows=64, frames=128, block_d=128, num_warps=16, num_stages=2),
    ),
}
# Small tiles for the interpreter (tests): a 16-frame BY and 16-feature chunks make the tests'
# tiny shapes span several blocks.
INTERPRETER_CONFIGS: dict[str, tuple[TileConfig, ...]] = {
    name: (TileConfig(rows=16, frames=16, block_d=16, num_warps=4, num_stages=1),) for name in KERNELS
}

_ROW_SLACK = 1.1  # a larger tile of query rows must save more than this share of issued rows
_STATE_WORDS_PER_THREAD = 96  # rough register budget of a tile's live tensors (of 255 per thread)
_QUERY_BLOCKS_PER_GROUP = 8  # forward programs sharing target tiles in L2


@dataclass(frozen=True)
class Tile:
    """A :class:`TileConfig` fitted to one input: the kernels' tile constexprs."""

    BX: int  # query frames per tile
    M: int  # packed query rows, a power of two >= max(16, BX R)
    XP: int  # rows of the forward's per-frame sum: BX (R a power of two) or max(16, next_pow2(BX))
    BY: int  # target frames per tile
    BD: int  # features per tl.dot step
    SUM_BY_DOT: bool  # forward: per-frame sum by a membership tl.dot (R not a power of two)
    num_warps: int
    num_stages: int

    def meta(self, kernel: str) -> dict:
        meta = {"BX": self.BX, "M": self.M, "BY": self.BY, "BD": self.BD}
        if kernel == "forward":
            meta.update({"XP": self.XP, "SUM_BY_DOT": self.SUM_BY_DOT})
        return meta


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


def pack_query_rows(R: int, rows: int, query_frames: int) -> tuple[int, int]:
    """(BX, M): whole query frames packed into M rows (a power of two >= 16 and >= R).

    M is taken among ``rows``, 2 ``rows`` and 4 ``rows`` (``rows`` no more than all
    ``query_frames`` need): the smallest whose rows issued over all query frames
    (``ceil(query_frames / BX) M``) are within 10% of the fewest of the three."""
    first = max(16, _pow2(R), min(_pow2(rows), _pow2(query_frames * R)))
    issued = {M: triton.cdiv(query_frames, M // R) * M for M in (first, 2 * first, 4 * first)}
    fewest = min(issued.values())
    M = next(M for M, n in issued.items() if n <= _ROW_SLACK * fewest)
    return M // R, M


def _block_d(D: int, cap: int) -> int:
    return max(16, min(cap, _pow2(D)))  # tl.dot needs K >= 16


def _state_words(kernel: str, M: int, BY: int, BD: int, k: int) -> int:
    if kernel == "forward":  # fp32 products + running top-k: (max, index) or KP (value, index) slots
        return M * BY * (3 if k == 1 else 1 + 2 * _pow2(k))
    acc = M * BD if kernel == "grad_query" else BY * BD
    return acc + 3 * M * BY  # grad, selection and weight tiles


def fit_tile(kernel: str, config: TileConfig, R: int, k: int, query_frames: int, target_frames: int, D: int,
             dtype: torch.dtype) -> Tile:
    """The tile ``kernel`` runs for ``config`` on R regions, top-k ``k``, ``query_frames`` (Bq T) and
    ``target_frames`` (Bt T') frames, D features of ``dtype``."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    BX, M = pack_query_rows(R, config.rows, query_frames)
    BD = _block_d(D, config.block_d if dtype.itemsize <= 2 else max(16, config.block_d // 2))
    BY = max(16, min(config.frames, _pow2(target_frames)))  # tl.dot needs N >= 16
    while BY > 16 and _state_words(kernel, M, BY, BD, k) > _STATE_WORDS_PER_THREAD * 32 * config.num_warps:
        BY //= 2
    pow2_r = R & (R - 1) == 0
    XP = BX if pow2_r else max(16, _pow2(BX))
    return Tile(BX=BX, M=M, XP=XP, BY=BY, BD=BD, SUM_BY_DOT=not pow2_r, num_warps=config.num_warps,
                num_stages=config.num_stages)


def mma_work(kernel: str, R: int, T: int, T2: int, D: int, config: TileConfig | None = None, *, Bq: int = 1,
             Bt: int = 1, k: int = 1, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(issued, ideal) multiply-adds of one ``kernel`` launch on full-length videos.

    ``issued`` counts what the kernel hands to ``tl.dot``: every product is a power-of-two tile
    with each dimension >= 16 (M packed query rows, BY target frames, BD features), partial tiles
    at the end of the frames or of D count in full, and the forward's per-frame membership product
    ``[XP, M] @ [M, BY]`` (R not a power of two) counts 3 times (tf32x3). ``ideal`` is
    ``Bq Bt T R T' R D``: every region pair once. ``config`` defaults to the first of
    ``CUDA_CONFIGS[kernel]``; tiles entirely in padding (skipped at run time) do not arise here.

    With every config of ``CUDA_CONFIGS``, bf16 or fp32, k in {1, 2, R}, the ratio is <= 1.3 for
    every R in 1..64 at the evaluation shape (1 x 1 videos of T = T' = 1024 frames, D = 512) and
    at the training shape (64 x 64 clips of 28 frames): R = 9 gives 1.016-1.039, the worst is
    R = 52 (one frame in 64 rows: 1.23). A single pair of short clips is another matter: 1 x 1
    clips of 28 frames give 1.16-1.17 at R = 9 (28 target frames fill a 32-frame tile) and up to
    2.2 for other R, on a launch of ~30 M multiply-adds.
    """
    config = config or CUDA_CONFIGS[kernel][0]
    tile = fit_tile(kernel, config, R, k, Bq * T, Bt * T2, D, dtype)
    n_x = triton.cdiv(Bq * T, tile.BX)
    n_y = triton.cdiv(Bt * T2, tile.BY)
    d_padded = triton.cdiv(D, tile.BD) * tile.BD
    issued = n_x * n_y * R * tile.M * tile.BY * d_padded
    if kernel == "forward" and tile.SUM_BY_DOT:
        issued += n_x * n_y * 3 * tile.XP * tile.M * tile.BY
    return issued, Bq * Bt * T * R * T2 * R * D


def tf32_allowed() -> bool:
    """Whether PyTorch's CUDA matmul setting lets fp32 products use TF32 tensor cores."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:
        # Set through the newer API (fp32_precision); reading the legacy flag then raises.
        return torch.backends.cuda.matmul.fp32_precision == "tf32"


def dot_input_precision(dtype: torch.dtype, interpreted: bool | None = None) -> str:
    """The ``tl.dot`` input precision the kernels use for ``dtype`` inputs.

    fp32: ``"tf32"`` when :func:`tf32_allowed`, else ``"ieee"``. 16-bit inputs are multiplied
    natively (the setting only concerns fp32 operands): ``"ieee"``. Under the interpreter
    (``interpreted``, default: ``TRITON_INTERPRET=1``) always ``"ieee"``.
    """
    if interpreted is None:
        interpreted = triton_interpreted()
    if interpreted or dtype != torch.float32:
        return "ieee"
    return "tf32" if tf32_allowed() else "ieee"


def _sum_precision(dtype: torch.dtype, precision: str, interpreted: bool) -> str:
    # The per-frame sum multiplies fp32 top-k sums by 0/1: tf32x3 keeps about fp32 accuracy on
    # tensor cores; exact fp32 inputs keep exact fp32 sums.
    if interpreted or (dtype == torch.float32 and precision == "ieee"):
        return "ieee"
    return "tf32x3"


def _upcast(dtype: torch.dtype, interpreted: bool) -> bool:
    return interpreted and dtype == torch.bfloat16  # the interpreter's bf16 tl.dot is wrong


def _new_selection(query: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    # Zero-filled so that entries on padded frames are deterministic (they are never read).
    return query.new_zeros(shape, dtype=dtype)


# --- device helpers -------------------------------------------------------------------------


@triton.jit
def _feature_offset(frame, region, R, D):
    """Offset of ``features[frame, region, 0]`` in contiguous ``[frames, R, D]`` features, int64
    (frame R D passes 2^31 at ~466k frames for R = 9, D = 512)."""
    return (frame.to(tl.int64) * R + region) * D


@triton.jit
def _map_offset(a, x, b, y, Bt, T, T2):
    """Offset of ``maps[a, b, x, y]`` in a contiguous ``[Bq, Bt, T, T']`` tensor, int64 (times R:
    the selection's ``[..., 0]``)."""
    return ((a.to(tl.int64) * Bt + b) * T + x) * T2 + y


@triton.jit
def _feed(x, UPCAST: tl.constexpr):
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _query_rows(xb, NQ, T, ql_ptr, R: tl.constexpr, BX: tl.constexpr, M: tl.constexpr):
    """Packed rows ``x R + i`` of query block ``xb``: (global frame, video, frame, region, valid)."""
    r = tl.arange(0, M)
    f = xb * BX + r // R
    a = f // T
    x = f % T
    inside = (r < BX * R) & (f < NQ)
    length = tl.load(ql_ptr + a, mask=inside, other=0)
    return f, a, x, r % R, inside & (x < length)


@triton.jit
def _target_frames(yb, NT, T2, tl_ptr, BY: tl.constexpr):
    """Frames of target block ``yb``: (global frame, video, frame, valid)."""
    f = yb * BY + tl.arange(0, BY)
    b = f // T2
    y = f % T2
    inside = f < NT
    length = tl.load(tl_ptr + b, mask=inside, other=0)
    return f, b, y, inside & (y < length)


@triton.jit
def _any(ok):
    return tl.max(ok.to(tl.int32), axis=0) > 0


@triton.jit
def _grouped(pid, n_x, n_y, GROUP: tl.constexpr):
    """(query block, target block) of program ``pid``: GROUP query blocks at a time run over every
    target block, so programs on the GPU together read the same target tiles (L2 hits)."""
    width = GROUP * n_y
    first = (pid // width) * GROUP
    size = tl.minimum(n_x - first, GROUP)
    return first + (pid % width) % size, (pid % width) // size


@triton.jit
def _push(vals, idx, v, j):
    """Offer region j's values ``v [M, BY]`` to the k slots ``vals``/``idx [M, BY, KP]``: replace
    the smallest value (the highest region index among equal ones) when ``v`` is strictly greater.
    Padding slots hold +inf and are never the smallest."""
    low = tl.min(vals, axis=2)
    evict = tl.max(tl.where(vals == low[:, :, None], idx, -1), axis=2)
    slot = (idx == evict[:, :, None]) & (v > low)[:, :, None]
    return tl.where(slot, v[:, :, None], vals), tl.where(slot, j, idx)


@triton.jit
def _selected(sel, j, AS_INDEX: tl.constexpr):
    """Whether region j is selected: the saved index (k == 1) or bit j of the saved mask."""
    if AS_INDEX:
        hit = sel == j
    else:
        hit = ((sel >> j) & 1) != 0
    return hit


# --- forward --------------------------------------------------------------------------------


@triton.jit
def _forward_kernel(q_ptr, t_ptr, ql_ptr, tl_ptr, out_ptr, sel_ptr, Bt, T, T2, NQ, NT, D, scale,
                    NQ_KEY, NT_KEY,  # autotune key only: frame counts rounded up to powers of two
                    R: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, BX: tl.constexpr, M: tl.constexpr,
                    XP: tl.constexpr, BY: tl.constexpr, BD: tl.constexpr, SUM_BY_DOT: tl.constexpr,
                    GROUP: tl.constexpr, PRECISION: tl.constexpr, SUM_PRECISION: tl.constexpr,
                    UPCAST: tl.constexpr, SAVE: tl.constexpr):
    xb, yb = _grouped(tl.program_id(0), tl.cdiv(NQ, BX), tl.cdiv(NT, BY), GROUP)
    fx, a, x, i, row_ok = _query_rows(xb, NQ, T, ql_ptr, R, BX, M)
    fy, b, y, col_ok = _target_frames(yb, NT, T2, tl_ptr, BY)
    q_rows = _feature_offset(fx, i, R, D)

    if K == 1:
        best = tl.full([M, BY], float("-inf"), tl.float32)
        arg = tl.zeros([M, BY], tl.int32)
    else:
        s = tl.arange(0, KP)[None, None, :]
        real = s < K
        vals = tl.where(real, float("-inf"), float("inf")) + tl.zeros([M, BY, KP], tl.float32)
        idx = tl.where(real, R + s, -1) + tl.zeros([M, BY, KP], tl.int32)

    # A tile entirely in padding skips the products (its entries are never stored).
    j_end = tl.where(_any(row_ok) & _any(col_ok), R, 0)
    for j in range(j_end):
        t_rows = _feature_offset(fy, j, R, D)
        acc = tl.zeros([M, BY], dtype=tl.float32)
        for d0 in range(0, D, BD):
            d = d0 + tl.arange(0, BD)
            d_ok = d < D
            qa = tl.load(q_ptr + q_rows[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            tb = tl.load(t_ptr + t_rows[:, None] + d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            acc = tl.dot(_feed(qa, UPCAST), tl.trans(_feed(tb, UPCAST)), acc, input_precision=PRECISION)
        if K == 1:
            take = acc > best  # strict: an equal value keeps the lower region index
            best = tl.where(take, acc, best)
            arg = tl.where(take, j, arg)
        else:
            vals, idx = _push(vals, idx, acc, j)

    if K == 1:
        part = best
        chosen = arg
    else:
        part = tl.sum(tl.where(real, vals, 0.0), axis=2)
        one = tl.full([M, BY, KP], 1, tl.int64)
        # Distinct bits, so the sum is the or. A skipped tile still holds the initial R + s.
        chosen = tl.sum(tl.where(real & (idx < R), one << idx.to(tl.int64), 0), axis=2)
    cell_ok = row_ok[:, None] & col_ok[None, :]
    part = tl.where(cell_ok, part, 0.0)  # also clears the -inf of skipped tiles

    # Mean over each query frame's R rows.
    if SUM_BY_DOT:
        member = ((tl.arange(0, M) // R)[None, :] == tl.arange(0, XP)[:, None]).to(tl.float32)
        total = tl.dot(member, part, input_precision=SUM_PRECISION)  # [XP, BY]
    else:
        total = tl.sum(tl.reshape(part, [BX, R, BY]), axis=1)  # M == BX R
    fo = xb * BX + tl.arange(0, XP)
    ao = fo // T
    xo = fo % T
    o_in = (tl.arange(0, XP) < BX) & (fo < NQ)
    lo = tl.load(ql_ptr + ao, mask=o_in, other=0)
    o_ok = (o_in & (xo < lo))[:, None] & col_ok[None, :]
    tl.store(out_ptr + _map_offset(ao[:, None], xo[:, None], b[None, :], y[None, :], Bt, T, T2),
             (total * scale).to(out_ptr.dtype.element_ty), mask=o_ok)
    if SAVE:
        entry = _map_offset(a[:, None], x[:, None], b[None, :], y[None, :], Bt, T, T2)
        tl.store(sel_ptr + entry * R + i[:, None], chosen.to(sel_ptr.dtype.element_ty), mask=cell_ok)


# --- backward -------------------------------------------------------------------------------


@triton.jit
def _grad_and_selection(g_ptr, sel_ptr, a, x, i, row_ok, b, y, col_ok, Bt, T, T2, R: tl.constexpr,
                        WIDE: tl.constexpr):
    """The [M, BY] grad (per query row's frame) and saved selection (per row's region) of a tile."""
    ok = row_ok[:, None] & col_ok[None, :]
    entry = _map_offset(a[:, None], x[:, None], b[None, :], y[None, :], Bt, T, T2)
    g = tl.load(g_ptr + entry, mask=ok, other=0.0)
    # Decoded as int32 (int64 only for R > 32): a sign-extended int16/int32 mask keeps bit j intact.
    sel = tl.load(sel_ptr + entry * R + i[:, None], mask=ok, other=0)
    return g, sel.to(tl.int64 if WIDE else tl.int32)


@triton.jit
def _grad_query_kernel(g_ptr, sel_ptr, t_ptr, ql_ptr, tl_ptr, dq_ptr, Bt, T, T2, NQ, NT, D, scale,
                       NQ_KEY, NT_KEY, R: tl.constexpr, BX: tl.constexpr, M: tl.constexpr, BY: tl.constexpr,
                       BD: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, AS_INDEX: tl.constexpr,
                       WIDE: tl.constexpr):
    # dq[a, x, i, :] = scale * sum_{b, y, j selected} grad[a, b, x, y] * t[b, y, j, :]
    pid = tl.program_id(0)
    n_d = tl.cdiv(D, BD)
    xb = pid // n_d
    d = (pid % n_d) * BD + tl.arange(0, BD)
    d_ok = d < D
    fx, a, x, i, row_ok = _query_rows(xb, NQ, T, ql_ptr, R, BX, M)
    acc = tl.zeros([M, BD], dtype=tl.float32)
    y_blocks = tl.where(_any(row_ok), tl.cdiv(NT, BY), 0)  # no work for a block of padded query frames
    for yb in range(y_blocks):
        fy, b, y, col_ok = _target_frames(yb, NT, T2, tl_ptr, BY)
        g, sel = _grad_and_selection(g_ptr, sel_ptr, a, x, i, row_ok, b, y, col_ok, Bt, T, T2, R, WIDE)
        j_end = tl.where(_any(col_ok), R, 0)
        for j in range(j_end):
            tb = tl.load(t_ptr + _feature_offset(fy, j, R, D)[:, None] + d[None, :],
                         mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            tb = _feed(tb, UPCAST)
            w = tl.where(_selected(sel, j, AS_INDEX), g, 0.0)
            acc = tl.dot(w.to(tb.dtype), tb, acc, input_precision=PRECISION)
    tl.store(dq_ptr + _feature_offset(fx, i, R, D)[:, None] + d[None, :], (acc * scale).to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _grad_target_kernel(g_ptr, sel_ptr, q_ptr, ql_ptr, tl_ptr, dt_ptr, Bt, T, T2, NQ, NT, D, scale,
                        NQ_KEY, NT_KEY, R: tl.constexpr, BX: tl.constexpr, M: tl.constexpr, BY: tl.constexpr,
                        BD: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, AS_INDEX: tl.constexpr,
                        WIDE: tl.constexpr):
    # dt[b, y, j, :] = scale * sum_{a, x, i: j selected} grad[a, b, x, y] * q[a, x, i, :]
    pid = tl.program_id(0)
    n_d = tl.cdiv(D, BD)
    d = (pid % n_d) * BD + tl.arange(0, BD)
    d_ok = d < D
    j = (pid // n_d) % R  # programs of one target block side by side: its grad/selection stay in L2
    yb = (pid // n_d) // R
    fy, b, y, col_ok = _target_frames(yb, NT, T2, tl_ptr, BY)
    acc = tl.zeros([BY, BD], dtype=tl.float32)
    x_blocks = tl.where(_any(col_ok), tl.cdiv(NQ, BX), 0)  # no work for a block of padded target frames
    for xb in range(x_blocks):
        fx, a, x, i, row_ok = _query_rows(xb, NQ, T, ql_ptr, R, BX, M)
        if _any(row_ok):
            g, sel = _grad_and_selection(g_ptr, sel_ptr, a, x, i, row_ok, b, y, col_ok, Bt, T, T2, R, WIDE)
            qa = tl.load(q_ptr + _feature_offset(fx, i, R, D)[:, None] + d[None, :],
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            qa = _feed(qa, UPCAST)
            w = tl.where(_selected(sel, j, AS_INDEX), g, 0.0)
            acc = tl.dot(tl.trans(w.to(qa.dtype)), qa, acc, input_precision=PRECISION)
    tl.store(dt_ptr + _feature_offset(fy, j, R, D)[:, None] + d[None, :], (acc * scale).to(dt_ptr.dtype.element_ty),
             mask=col_ok[:, None] & d_ok[None, :])


_KERNEL_FUNCTIONS = {"forward": _forward_kernel, "grad_query": _grad_query_kernel,
                     "grad_target": _grad_target_kernel}


# --- launches -------------------------------------------------------------------------------


def _tiles(kernel: str, interpreted: bool, R: int, k: int, query_frames: int, target_frames: int, D: int,
           dtype: torch.dtype) -> tuple[Tile, ...]:
    configs = (INTERPRETER_CONFIGS if interpreted else CUDA_CONFIGS)[kernel]
    fitted = [fit_tile(kernel, c, R, k, query_frames, target_frames, D, dtype) for c in configs]
    return tuple(dict.fromkeys(fitted))  # configs that fit to the same tile are tried once


@functools.cache
def _autotuned(kernel: str, tiles: tuple[Tile, ...]):
    configs = [triton.Config(t.meta(kernel), num_warps=t.num_warps, num_stages=t.num_stages) for t in tiles]
    # Each program stores its own outputs and reads no output, so re-running configs is harmless.
    key = ["NQ_KEY", "NT_KEY", "D", "R", "K", "AS_INDEX"]  # names a kernel lacks are left out of its key
    return triton.autotune(configs=configs, key=key)(_KERNEL_FUNCTIONS[kernel])


def _launch(kernel: str, tiles: tuple[Tile, ...], interpreted: bool, grid, args: tuple, **meta) -> None:
    """Runs ``kernel`` with the one fixed tile (interpreter) or autotuned over ``tiles`` (CUDA);
    ``grid(meta)`` gives the launch grid for a tile's constexprs."""
    if interpreted:
        tile = tiles[0]
        _KERNEL_FUNCTIONS[kernel][grid(tile.meta(kernel))](*args, **tile.meta(kernel), **meta,
                                                           num_warps=tile.num_warps, num_stages=tile.num_stages)
    else:
        _autotuned(kernel, tiles)[grid](*args, **meta)


def _check_args(query: torch.Tensor, k: int) -> None:
    R = query.shape[2]
    if not 1 <= R <= MAX_COMPILED_REGIONS:
        raise RuntimeError(f"spatial_topk_chamfer_triton: R must be in [1, {MAX_COMPILED_REGIONS}], got {R}")
    if not 1 <= k <= R:
        raise RuntimeError(f"spatial_topk_chamfer_triton: k must be in [1, R={R}], got {k}")


@torch.library.custom_op("hapvr::spatial_topk_chamfer_triton", mutates_args=())
def _spatial_triton(query: torch.Tensor, target: torch.Tensor, k: int, query_lengths: torch.Tensor,
                    target_lengths: torch.Tensor, save_selection: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(query, k)
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    sel_dtype = mask_dtype(R, k)
    out = query.new_zeros((Bq, Bt, T, T2))
    # Inference (no gradient needed) allocates no selection: the kernel's stores are compiled out.
    sel = _new_selection(query, (Bq, Bt, T, T2, R), sel_dtype) if save_selection else query.new_empty((0,), dtype=sel_dtype)
    if out.numel() == 0:
        return out, sel
    interpreted = triton_interpreted()
    NQ, NT = Bq * T, Bt * T2
    precision = dot_input_precision(query.dtype, interpreted)
    tiles = _tiles("forward", interpreted, R, k, NQ, NT, D, query.dtype)
    args = (query.contiguous(), target.contiguous(), query_lengths.contiguous(), target_lengths.contiguous(),
            out, sel if save_selection else out, Bt, T, T2, NQ, NT, D, 1.0 / (k * R), _pow2(NQ), _pow2(NT))
    _launch("forward", tiles, interpreted,
            lambda m: (triton.cdiv(NQ, m["BX"]) * triton.cdiv(NT, m["BY"]),), args,
            R=R, K=k, KP=_pow2(k), GROUP=_QUERY_BLOCKS_PER_GROUP, PRECISION=precision,
            SUM_PRECISION=_sum_precision(query.dtype, precision, interpreted),
            UPCAST=_upcast(query.dtype, interpreted), SAVE=save_selection)
    return out, sel


_spatial_triton.register_fake(spatial_fake)


@torch.library.custom_op("hapvr::spatial_topk_chamfer_triton_backward", mutates_args=())
def _spatial_triton_backward(grad_out: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
                             mask: torch.Tensor, k: int, query_lengths: torch.Tensor,
                             target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(query, k)
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    dq = torch.zeros_like(query, memory_format=torch.contiguous_format)
    dt = torch.zeros_like(target, memory_format=torch.contiguous_format)
    if grad_out.numel() == 0 or D == 0:
        return dq, dt
    interpreted = triton_interpreted()
    NQ, NT = Bq * T, Bt * T2
    g = grad_out.contiguous()
    m = mask.contiguous()
    ql, tl_ = query_lengths.contiguous(), target_lengths.contiguous()
    meta = {"R": R, "PRECISION": dot_input_precision(query.dtype, interpreted),
            "UPCAST": _upcast(query.dtype, interpreted), "AS_INDEX": k == 1, "WIDE": R > 32}
    scale = 1.0 / (k * R)
    keys = (_pow2(NQ), _pow2(NT))
    _launch("grad_query", _tiles("grad_query", interpreted, R, k, NQ, NT, D, query.dtype), interpreted,
            lambda mt: (triton.cdiv(NQ, mt["BX"]) * triton.cdiv(D, mt["BD"]),),
            (g, m, target.contiguous(), ql, tl_, dq, Bt, T, T2, NQ, NT, D, scale, *keys), **meta)
    _launch("grad_target", _tiles("grad_target", interpreted, R, k, NQ, NT, D, query.dtype), interpreted,
            lambda mt: (triton.cdiv(NT, mt["BY"]) * R * triton.cdiv(D, mt["BD"]),),
            (g, m, query.contiguous(), ql, tl_, dt, Bt, T, T2, NQ, NT, D, scale, *keys), **meta)
    return dq, dt


_spatial_triton_backward.register_fake(spatial_backward_fake)
register_spatial_autograd(_spatial_triton, _spatial_triton_backward)


def spatial_topk_chamfer_triton(query, target, k, query_lengths, target_lengths, save_selection=True) -> torch.Tensor:
    return _spatial_triton(query, target, k, query_lengths, target_lengths, save_selection)[0]
