"""TopK-Chamfer similarity (HAP-VR paper eqs. 3 and 5).

Spatial (eq. 3): for query frame x, target frame y and query region i, the mean of the top-K
region similarities ``<q[x, i], t[y, j]>`` over target regions j, then the mean over query
regions, gives the frame-similarity map ``m_s[x, y]``. Temporal (eq. 5): per query step, the mean
of the top-K entries of its row, then the mean over query steps, gives the video similarity.

Backends of ``spatial_topk_chamfer``: ``cpp`` (tiled BLAS + in-cache top-k, OpenMP), ``cuda``,
``triton`` and ``reference`` (pure PyTorch; materialises the ``[Bq, T, R, Bt, T', R]`` patch
similarities, so it is the oracle and the fallback, not a production path).

Tie rule shared by the compiled backends: among equal values the lower region index is selected.
Padding: entries whose query frame or target frame lies beyond its video's length are 0 in the
output and receive no gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from hapvr import _ext
from hapvr.ops import _dispatch
from hapvr.ops._dispatch import Backend
from hapvr.ops._validate import (
    check_finite,
    check_floating,
    check_int,
    check_tensor,
    lengths_tensor,
)

MAX_COMPILED_REGIONS = 64  # one bit per target region in the saved top-k mask


def topk_count(rate: float, n: int) -> int:
    """``K = max(round(rate * n), 1)``, at most ``n`` (paper: ``K = k_s R`` and ``K = k_t T'``).

    Python's ``round`` rounds half to even, as the reference implementations do.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return min(max(round(rate * n), 1), n)


def mask_dtype(num_regions: int, k: int) -> torch.dtype:
    """Dtype of the selection the compiled kernels save for backward: for ``k = 1`` the index of
    the selected target region (int8); otherwise a bit mask with one bit per target region."""
    if k == 1:
        return torch.int8
    if num_regions <= 16:
        return torch.int16
    if num_regions <= 32:
        return torch.int32
    return torch.int64


def _valid_pairs(ql: torch.Tensor, tl: torch.Tensor, T: int, T2: int) -> torch.Tensor:
    """Boolean [Bq, Bt, T, T'] map of entries whose frames are both within their video."""
    vx = torch.arange(T, device=ql.device)[None, :] < ql[:, None]  # [Bq, T]
    vy = torch.arange(T2, device=tl.device)[None, :] < tl[:, None]  # [Bt, T']
    return vx[:, None, :, None] & vy[None, :, None, :]


def spatial_topk_chamfer_reference(
    query: torch.Tensor,
    target: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None = None,
    target_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch eq. 3 for all pairs; materialises every patch similarity (the test oracle)."""
    Bq, T, R, D = query.shape
    Bt, T2 = target.shape[:2]
    ql = lengths_tensor("query_lengths", query_lengths, Bq, T, query.device)
    tl = lengths_tensor("target_lengths", target_lengths, Bt, T2, query.device)
    S = (query.reshape(-1, D) @ target.reshape(-1, D).T).view(Bq, T, R, Bt, T2, R)
    m = S.topk(k, dim=-1).values.mean(-1).mean(2).permute(0, 2, 1, 3)  # [Bq, Bt, T, T']
    return torch.where(_valid_pairs(ql, tl, T, T2), m, torch.zeros((), dtype=m.dtype, device=m.device))


# --- the compiled op (C++ CPU and CUDA kernels behind one schema) ---------------------------

def spatial_fake(query, target, k, query_lengths, target_lengths, save_selection=True):
    """Output shapes of the forward ops (compiled and Triton) for tracing."""
    Bq, T, R, _ = query.shape
    Bt, T2 = target.shape[:2]
    mask_shape = (Bq, Bt, T, T2, R) if save_selection else (0,)
    return query.new_empty((Bq, Bt, T, T2)), query.new_empty(mask_shape, dtype=mask_dtype(R, k))


def spatial_backward_fake(grad_out, query, target, mask, k, query_lengths, target_lengths):
    return torch.empty_like(query), torch.empty_like(target)


def register_spatial_autograd(forward_op, backward_op) -> None:
    """Wires ``backward_op(grad, query, target, selection, k, ql, tl)`` as the gradient of
    ``forward_op(query, target, k, ql, tl, save_selection) -> (maps, selection)``."""

    def setup_context(ctx, inputs, output):
        query, target, k, query_lengths, target_lengths = inputs[:5]
        ctx.save_for_backward(query, target, output[1], query_lengths, target_lengths)
        ctx.k = k
        ctx.mark_non_differentiable(output[1])
        # Without this, autograd hands backward a zero-filled tensor the size of the selection.
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_out, _grad_selection):
        query, target, selection, ql, tl = ctx.saved_tensors
        if grad_out is None:
            return None, None, None, None, None, None
        if selection.numel() == 0 and grad_out.numel() > 0:
            raise RuntimeError("spatial_topk_chamfer was called with save_selection=False; it has no gradient")
        gq, gt = backward_op(grad_out.contiguous(), query, target, selection, ctx.k, ql, tl)
        return gq, gt, None, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if _ext.has_cpu_kernels:
    torch.library.register_fake("hapvr::spatial_topk_chamfer", spatial_fake)
    torch.library.register_fake("hapvr::spatial_topk_chamfer_backward", spatial_backward_fake)
    register_spatial_autograd("hapvr::spatial_topk_chamfer", torch.ops.hapvr.spatial_topk_chamfer_backward)


def _compiled_reasons(device_type: str):
    def reasons(query, target, k, ql, tl) -> list[str]:
        why = []
        if query.device.type != device_type:
            why.append(f"inputs are on {query.device.type}, this kernel runs on {device_type}")
        allowed = (torch.float32, torch.float64) if device_type == "cpu" else (
            torch.float16, torch.bfloat16, torch.float32, torch.float64)
        if query.dtype not in allowed:
            why.append(f"dtype {query.dtype} is not supported (supports {', '.join(map(str, allowed))})")
        if query.shape[2] > MAX_COMPILED_REGIONS:
            why.append(f"R={query.shape[2]} exceeds {MAX_COMPILED_REGIONS} regions")
        return why

    return reasons


def _needs_grad(query, target) -> bool:
    return torch.is_grad_enabled() and (query.requires_grad or target.requires_grad)


def _compiled_run(query, target, k, ql, tl):
    # Inference keeps no top-k selection (it is only needed for the backward).
    return torch.ops.hapvr.spatial_topk_chamfer(query, target, k, ql, tl, _needs_grad(query, target))[0]


def _triton_reasons(query, target, k, ql, tl) -> list[str]:
    why = []
    if query.device.type == "cpu" and not _dispatch.triton_interpreted():
        why.append("CPU tensors need TRITON_INTERPRET=1")
    elif query.device.type not in ("cpu", "cuda"):
        why.append(f"device {query.device.type} is not supported")
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        why.append(f"dtype {query.dtype} is not supported (float16, bfloat16, float32)")
    if query.shape[2] > MAX_COMPILED_REGIONS:
        why.append(f"R={query.shape[2]} exceeds {MAX_COMPILED_REGIONS} regions")
    return why


def _triton_run(query, target, k, ql, tl):
    from hapvr.ops import _triton_topk_chamfer

    return _triton_topk_chamfer.spatial_topk_chamfer_triton(query, target, k, ql, tl, _needs_grad(query, target))


SPATIAL_BACKENDS = (
    Backend("cpp", _compiled_reasons("cpu"), _compiled_run),
    Backend("cuda", _compiled_reasons("cuda"), _compiled_run),
    Backend("triton", _triton_reasons, _triton_run),
    Backend("reference", lambda *a: [], spatial_topk_chamfer_reference),
)


def _check_spatial(query, target, k, query_lengths, target_lengths):
    check_tensor("query", query, 4, "[Bq, T, R, D]")
    check_tensor("target", target, 4, "[Bt, T', R, D]")
    check_floating("query", query)
    check_floating("target", target)
    if query.dtype != target.dtype:
        raise TypeError(f"query and target must share a dtype, got {query.dtype} and {target.dtype}")
    if query.device != target.device:
        raise ValueError(f"query and target must be on one device, got {query.device} and {target.device}")
    if query.shape[2] != target.shape[2]:
        raise ValueError(f"query and target must have the same number of regions R, got "
                         f"{query.shape[2]} and {target.shape[2]}")
    if query.shape[3] != target.shape[3]:
        raise ValueError(f"query and target must have the same feature size D, got "
                         f"{query.shape[3]} and {target.shape[3]}")
    R = query.shape[2]
    if R < 1:
        raise ValueError("query and target must have at least one region (R >= 1)")
    check_int("k", k, 1, R, f"R={R}")
    check_finite("query", query)
    check_finite("target", target)
    ql = lengths_tensor("query_lengths", query_lengths, query.shape[0], query.shape[1], query.device)
    tl = lengths_tensor("target_lengths", target_lengths, target.shape[0], target.shape[1], query.device)
    return ql, tl


def spatial_topk_chamfer(
    query: torch.Tensor,
    target: torch.Tensor,
    k: int,
    query_lengths=None,
    target_lengths=None,
    backend: str = "auto",
) -> torch.Tensor:
    """Frame-similarity maps of every query video against every target video (paper eq. 3).

    Args:
        query: ``[Bq, T, R, D]`` region features (L2-normalised by the caller).
        target: ``[Bt, T', R, D]`` region features.
        k: regions averaged per query region, ``1 <= k <= R``; ``topk_count(k_s, R)`` gives the
            paper's ``max(round(k_s R), 1)``. ``k = 1`` is Chamfer similarity, ``k = R`` the mean.
        query_lengths, target_lengths: valid frames per video (``[Bq]`` / ``[Bt]``); frames
            beyond are padding. None means all frames are valid.
        backend: ``"auto"`` or one of ``cpp``, ``cuda``, ``triton``, ``reference``.

    Returns:
        ``[Bq, Bt, T, T']`` with ``out[a, b, x, y] = 1/R sum_i 1/k sum_{top-k j} <q[a,x,i], t[b,y,j]>``;
        entries on padded frames are 0. Differentiable with respect to ``query`` and ``target``.
    """
    ql, tl = _check_spatial(query, target, k, query_lengths, target_lengths)
    chosen = _dispatch.select("spatial_topk_chamfer", SPATIAL_BACKENDS, backend, query, target, k, ql, tl)
    return chosen.run(query, target, k, ql, tl)


def explain_spatial_backends(query, target, k, query_lengths=None, target_lengths=None) -> dict[str, list[str]]:
    """Why each backend can or cannot run this input (empty list: it can)."""
    ql, tl = _check_spatial(query, target, k, query_lengths, target_lengths)
    return _dispatch.explain("spatial_topk_chamfer", SPATIAL_BACKENDS, query, target, k, ql, tl)


# --- temporal TopK-Chamfer (eq. 5) ------------------------------------------------------------


def temporal_topk_chamfer(
    sim: torch.Tensor,
    k: int | None = None,
    *,
    rate: float | None = None,
    query_lengths=None,
    target_lengths=None,
) -> torch.Tensor:
    """Video similarity from similarity maps ``[..., T, T']`` (paper eq. 5; asymmetric).

    For each valid query step x, the mean of the top-K values of row x over the valid target
    steps, then the mean over valid query steps. Give either ``k`` (an int, clamped to each
    target's valid length) or ``rate`` (``K = max(round(rate * L_t), 1)`` per target, the
    paper's ``k_t``).

    ``query_lengths`` / ``target_lengths``: valid steps, broadcastable to ``sim.shape[:-2]``
    (e.g. ``[Bq, 1]`` and ``[1, Bt]`` for a ``[Bq, Bt, T, T']`` batch); None = all valid.
    A query or target of length 0 gives similarity 0. Returns ``sim.shape[:-2]``.
    """
    check_tensor("sim", sim, None)
    if sim.dim() < 2:
        raise ValueError(f"sim must have at least 2 dimensions [..., T, T'], got shape {tuple(sim.shape)}")
    check_floating("sim", sim)
    if (k is None) == (rate is None):
        raise ValueError("give exactly one of k (an int) or rate (a float in [0, 1])")
    if k is not None:
        check_int("k", k, 1)
    elif not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    check_finite("sim", sim)
    T, T2 = sim.shape[-2:]
    batch = sim.shape[:-2]
    dev = sim.device

    def _lengths(name, value, full):
        if value is None:
            return torch.full(batch, full, dtype=torch.int64, device=dev)
        t = torch.as_tensor(value, device=dev)
        if t.is_floating_point():
            raise TypeError(f"{name} must hold integers, got {t.dtype}")
        try:
            t = torch.broadcast_to(t.to(torch.int64), batch)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {tuple(batch)}") from None
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > full):
            raise ValueError(f"{name} must lie in [0, {full}]")
        return t

    lq = _lengths("query_lengths", query_lengths, T)
    lt = _lengths("target_lengths", target_lengths, T2)
    if k is not None:
        kk = torch.clamp(lt, max=k)
    else:
        kk = torch.round(lt.to(torch.float64) * rate).to(torch.int64)  # half to even, like round()
        kk = torch.minimum(torch.clamp(kk, min=1), lt)
    kk = torch.clamp(kk, min=1)  # a zero-length target selects nothing below anyway
    if T == 0 or T2 == 0:
        return sim.new_zeros(batch)
    # Only the largest K over all pairs is gathered (top-k, not a full sort): the maps of a
    # whole evaluation batch can be large, K is small (k_t = 0.03).
    kmax = min(int(kk.max()) if kk.numel() else 1, T2)
    col_valid = torch.arange(T2, device=dev) < lt[..., None]  # [..., T']
    neg_inf = torch.tensor(float("-inf"), dtype=sim.dtype, device=dev)
    top = torch.where(col_valid[..., None, :], sim, neg_inf).topk(kmax, dim=-1).values  # [..., T, kmax]
    pos = torch.arange(kmax, device=dev)
    take = (pos < kk[..., None]) & (pos < lt[..., None])
    zero = torch.zeros((), dtype=sim.dtype, device=dev)
    rows = torch.where(take[..., None, :], top, zero).sum(-1) / kk[..., None].to(sim.dtype)  # [..., T]
    row_valid = torch.arange(T, device=dev) < lq[..., None]
    total = torch.where(row_valid, rows, zero).sum(-1)
    return total / torch.clamp(lq, min=1).to(sim.dtype)


class SpatialTopKChamfer(nn.Module):
    """Module form of eq. 3 with the paper's rate ``k_s`` (K = max(round(k_s R), 1))."""

    def __init__(self, k_s: float = 0.1, backend: str = "auto"):
        super().__init__()
        self.k_s = k_s
        self.backend = backend

    def forward(self, query, target, query_lengths=None, target_lengths=None):
        k = topk_count(self.k_s, query.shape[2])
        return spatial_topk_chamfer(query, target, k, query_lengths, target_lengths, backend=self.backend)

    def extra_repr(self) -> str:
        return f"k_s={self.k_s}, backend={self.backend!r}"


class TemporalTopKChamfer(nn.Module):
    """Module form of eq. 5 with the paper's rate ``k_t`` (K = max(round(k_t T'), 1))."""

    def __init__(self, k_t: float = 0.03):
        super().__init__()
        self.k_t = k_t

    def forward(self, sim, query_lengths=None, target_lengths=None):
        return temporal_topk_chamfer(sim, rate=self.k_t, query_lengths=query_lengths, target_lengths=target_lengths)

    def extra_repr(self) -> str:
        return f"k_t={self.k_t}"
