"""Spatial TopK-Chamfer similarity (HAP-VR paper eq. 3).

For query frame x, target frame y and query region i, the mean of the top-K region
similarities ``<q[x, i], t[y, j]>`` over target regions j, then the mean over query regions,
gives the frame-similarity map ``m_s[x, y]``.

Backends (see :data:`AUTO_POLICY` for which one ``backend="auto"`` takes on each device):
``cpp`` (CPU: tiled BLAS + in-cache top-k, OpenMP), ``tiled`` (any device: the device's GEMM on
bounded tiles + an ATen epilogue), ``triton`` (CUDA), ``cuda`` (naive one-thread-per-output
kernels, kept as a test oracle: never chosen automatically) and ``reference`` (pure PyTorch;
materialises the ``[Bq, T, R, Bt, T', R]`` patch similarities: the oracle, never chosen
automatically).

Tie rule shared by every backend that saves a selection: among equal values the lower region
index is selected. Padding: entries whose query frame or target frame lies beyond its video's
length are 0 in the output and receive no gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from hapvr.ops import (
    _dispatch,
    _spatial_autograd,  # noqa: F401  (fake kernels + autograd of the compiled op)
)
from hapvr.ops._dispatch import Backend
from hapvr.ops._spatial_tiled import spatial_topk_chamfer_tiled
from hapvr.ops._topk import MAX_COMPILED_REGIONS, topk_count
from hapvr.ops._validate import (
    check_finite,
    check_floating,
    check_int,
    check_tensor,
    lengths_tensor,
)


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


# ``backend="auto"`` on each device, in order; backends not listed run only when named.
#  - CPU: the compiled kernel (GEMM-speed, smallest memory, measured in bench_similarity.py),
#    then ``tiled`` (same bound on memory, any dtype ATen's GEMM takes, e.g. bf16).
#  - CUDA: ``tiled`` first: every FLOP is cuBLAS (tensor cores under TF32/bf16/fp16) on tiles
#    of a bounded workspace, the epilogue is a few memory-bound passes (docs/gpu.md has the
#    roofline). Triton second: faster on paper (one fused launch, 1.03x the ideal MMA work at
#    R = 9) but never compiled or timed on a GPU; the gpu_check rows decide. The ``cuda`` kernels compute one output per thread with no reuse (slower than
#    the reference): a test oracle only. ``reference`` materialises everything: oracle only.
#  - any other device: ``tiled`` (plain ATen).
AUTO_POLICY: dict[str, tuple[str, ...]] = {"cpu": ("cpp", "tiled"), "cuda": ("tiled", "triton")}
AUTO_OTHER_DEVICES: tuple[str, ...] = ("tiled",)


def auto_order(device_type: str) -> tuple[str, ...]:
    """The backends ``backend="auto"`` tries on ``device_type``, in order (see AUTO_POLICY)."""
    return AUTO_POLICY.get(device_type, AUTO_OTHER_DEVICES)


def _compiled_reasons(device_type: str):
    def reasons(query, target, k, ql, tl, on: str) -> list[str]:
        why = []
        if on != device_type:
            why.append(f"inputs are on {on}, this kernel runs on {device_type}")
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


def _compiled_run(query, target, k, ql, tl, workspace_bytes=None):
    # Inference keeps no top-k selection (it is only needed for the backward).
    return torch.ops.hapvr.spatial_topk_chamfer(query, target, k, ql, tl, _needs_grad(query, target))[0]


def _tiled_reasons(query, target, k, ql, tl, on: str) -> list[str]:
    return []  # plain ATen: any device and floating dtype that matmul supports, any R


def _tiled_run(query, target, k, ql, tl, workspace_bytes=None):
    return spatial_topk_chamfer_tiled(query, target, k, ql, tl, _needs_grad(query, target), workspace_bytes)


def _triton_reasons(query, target, k, ql, tl, on: str) -> list[str]:
    why = []
    if on == "cpu" and not _dispatch.triton_interpreted():
        why.append("CPU tensors need TRITON_INTERPRET=1")
    elif on not in ("cpu", "cuda"):
        why.append(f"device {on} is not supported")
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        why.append(f"dtype {query.dtype} is not supported (float16, bfloat16, float32)")
    if query.shape[2] > MAX_COMPILED_REGIONS:
        why.append(f"R={query.shape[2]} exceeds {MAX_COMPILED_REGIONS} regions")
    return why


def _triton_run(query, target, k, ql, tl, workspace_bytes=None):
    from hapvr.ops import _triton_topk_chamfer

    return _triton_topk_chamfer.spatial_topk_chamfer_triton(query, target, k, ql, tl, _needs_grad(query, target))


def _reference_run(query, target, k, ql, tl, workspace_bytes=None):
    return spatial_topk_chamfer_reference(query, target, k, ql, tl)


SPATIAL_BACKENDS = (
    Backend("cpp", _compiled_reasons("cpu"), _compiled_run),
    Backend("tiled", _tiled_reasons, _tiled_run),
    Backend("triton", _triton_reasons, _triton_run),
    Backend("cuda", _compiled_reasons("cuda"), _compiled_run),
    Backend("reference", lambda *a: [], _reference_run),
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
    workspace_bytes: int | None = None,
) -> torch.Tensor:
    """Frame-similarity maps of every query video against every target video (paper eq. 3).

    Args:
        query: ``[Bq, T, R, D]`` region features (L2-normalised by the caller).
        target: ``[Bt, T', R, D]`` region features.
        k: regions averaged per query region, ``1 <= k <= R``; ``topk_count(k_s, R)`` gives the
            paper's ``max(round(k_s R), 1)``. ``k = 1`` is Chamfer similarity, ``k = R`` the mean.
        query_lengths, target_lengths: valid frames per video (``[Bq]`` / ``[Bt]``); frames
            beyond are padding. None means all frames are valid.
        backend: ``"auto"`` (per device, :func:`auto_order`) or one of ``cpp``, ``tiled``,
            ``triton``, ``cuda``, ``reference``.
        workspace_bytes: bound on the ``tiled`` backend's transient tiles, both phases (default
            64 MiB, of which the backward uses 16 MiB, on the CPU; 512 MiB on CUDA; or
            ``HAPVR_TILED_WORKSPACE_MB``); other backends ignore it.

    Returns:
        ``[Bq, Bt, T, T']`` with ``out[a, b, x, y] = 1/R sum_i 1/k sum_{top-k j} <q[a,x,i], t[b,y,j]>``;
        entries on padded frames are 0. Differentiable with respect to ``query`` and ``target``.
        The dtype is the inputs'; sums accumulate in fp32 (fp64 for fp64 inputs).

    Under ``torch.autocast`` fp32 inputs are cast to autocast's dtype (bf16 / fp16), so the
    forward's and the backward's GEMMs both run in it with fp32 accumulation (the backend is
    chosen for that dtype: ``tiled`` on the CPU); the maps are returned in fp32 and the gradients
    reach the fp32 inputs in fp32.
    """
    ql, tl = _check_spatial(query, target, k, query_lengths, target_lengths)
    if workspace_bytes is not None:
        check_int("workspace_bytes", workspace_bytes, 1)
    on = query.device.type
    low = autocast_dtype(query)
    if low is not None:  # autocast: the GEMMs of both passes run in its dtype, the maps come back in fp32
        query, target = query.to(low), target.to(low)
    chosen = _dispatch.select("spatial_topk_chamfer", SPATIAL_BACKENDS, backend, query, target, k, ql, tl, on,
                              auto=auto_order(on), device_type=on)
    maps = chosen.run(query, target, k, ql, tl, workspace_bytes)
    return maps if low is None else maps.float()


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast gives this op's fp32 inputs (its lower-precision dtype, as for ``matmul``),
    or None outside autocast and for other dtypes (fp64 stays fp64, as autocast leaves it)."""
    device_type = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def explain_spatial_backends(query, target, k, query_lengths=None, target_lengths=None, *,
                             device: str | torch.device | None = None) -> dict[str, list[str]]:
    """Why each backend can or cannot run this input (empty list: it can).

    ``device`` (e.g. ``"cuda"``) asks what would happen if these tensors lived on that device,
    as on a machine that has one: reasons about a missing device are left out, reasons about
    the build (an extension not compiled) are kept. :func:`choose_spatial_backend` gives the
    backend ``auto`` would take."""
    ql, tl = _check_spatial(query, target, k, query_lengths, target_lengths)
    on = torch.device(device).type if device is not None else query.device.type
    return _dispatch.explain("spatial_topk_chamfer", SPATIAL_BACKENDS, query, target, k, ql, tl, on,
                             device_type=on, assume_device=device is not None)


def choose_spatial_backend(query, target, k, query_lengths=None, target_lengths=None, *,
                           device: str | torch.device | None = None) -> str:
    """The backend ``backend="auto"`` runs for this input (on ``device`` if given; see
    :func:`explain_spatial_backends`)."""
    reasons = explain_spatial_backends(query, target, k, query_lengths, target_lengths, device=device)
    on = torch.device(device).type if device is not None else query.device.type
    for name in auto_order(on):
        if not reasons[name]:
            return name
    raise _dispatch.NoBackendError(f"spatial_topk_chamfer: no automatic backend for {on}: " + "; ".join(
        f"{n}: {', '.join(reasons[n])}" for n in auto_order(on)))


class SpatialTopKChamfer(nn.Module):
    """Module form of eq. 3 with the paper's rate ``k_s`` (K = max(round(k_s R), 1))."""

    def __init__(self, k_s: float = 0.1, backend: str = "auto", workspace_bytes: int | None = None):
        super().__init__()
        self.k_s = k_s
        self.backend = backend
        self.workspace_bytes = workspace_bytes

    def forward(self, query, target, query_lengths=None, target_lengths=None):
        k = topk_count(self.k_s, query.shape[2])
        return spatial_topk_chamfer(query, target, k, query_lengths, target_lengths, backend=self.backend,
                                    workspace_bytes=self.workspace_bytes)

    def extra_repr(self) -> str:
        return f"k_s={self.k_s}, backend={self.backend!r}"
