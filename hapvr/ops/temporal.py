"""Temporal TopK-Chamfer (HAP-VR paper eq. 5): per query step, the mean of the top-K entries of
its row of the similarity map, then the mean over query steps gives the video similarity.
It works on the already small ``[..., T, T']`` map with a top-k, so it is plain differentiable
PyTorch (no custom kernel)."""

from __future__ import annotations

import torch
from torch import nn

from hapvr.ops._validate import check_finite, check_floating, check_int, check_range, check_tensor


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
        check_range(name, t, 0, full)
        return t

    lq = _lengths("query_lengths", query_lengths, T)
    lt = _lengths("target_lengths", target_lengths, T2)
    if k is not None:
        kk = torch.clamp(lt, max=k)
    else:
        kk = torch.round(lt.to(torch.float64) * rate).to(torch.int64)  # half to even, like round()
        kk = torch.minimum(torch.clamp(kk, min=1), lt)
    kk = torch.clamp(kk, min=1)  # a zero-length target selects nothing below anyway
    if T == 0 or T2 == 0:  # no steps: 0, still in the graph (a zero gradient, as for lengths of 0)
        return sim.sum((-2, -1)) * 0
    # Only the largest K over all pairs is gathered (top-k, not a full sort): the maps of a
    # whole evaluation batch can be large, K is small (k_t = 0.03).
    # kmax bounds every pair's K from the shapes alone (no host read of the lengths); the
    # positions beyond a pair's own K are masked out below.
    kmax = min(k if k is not None else max(round(T2 * rate), 1), T2)
    col_valid = torch.arange(T2, device=dev) < lt[..., None]  # [..., T']
    neg_inf = torch.full((), float("-inf"), dtype=sim.dtype, device=dev)  # made on the device: no copy from the host
    top = torch.where(col_valid[..., None, :], sim, neg_inf).topk(kmax, dim=-1).values  # [..., T, kmax]
    pos = torch.arange(kmax, device=dev)
    take = (pos < kk[..., None]) & (pos < lt[..., None])
    zero = torch.zeros((), dtype=sim.dtype, device=dev)
    rows = torch.where(take[..., None, :], top, zero).sum(-1) / kk[..., None].to(sim.dtype)  # [..., T]
    row_valid = torch.arange(T, device=dev) < lq[..., None]
    total = torch.where(row_valid, rows, zero).sum(-1)
    return total / torch.clamp(lq, min=1).to(sim.dtype)



class TemporalTopKChamfer(nn.Module):
    """Module form of eq. 5 with the paper's rate ``k_t`` (K = max(round(k_t T'), 1))."""

    def __init__(self, k_t: float = 0.03):
        super().__init__()
        self.k_t = k_t

    def forward(self, sim, query_lengths=None, target_lengths=None):
        return temporal_topk_chamfer(sim, rate=self.k_t, query_lengths=query_lengths, target_lengths=target_lengths)

    def extra_repr(self) -> str:
        return f"k_t={self.k_t}"
