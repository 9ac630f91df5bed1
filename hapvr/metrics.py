"""Retrieval and detection metrics of the video-retrieval benchmarks (SPEC section 4).

All functions take plain sequences/arrays and are deterministic. Tie handling: candidates are
ranked by score, descending, and candidates with equal scores keep the order in which they were
given (a stable sort); the evaluators pass candidates sorted by video id, so ties are broken by
id. ``tie_groups=True`` (the scikit-learn / VSC convention) instead scores a group of equal
scores as one step, which makes the result independent of their order.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _ranked(scores: Sequence[float], relevant: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(relevant, dtype=bool)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(f"scores and relevant must be 1-D and of one length, got {s.shape} and {r.shape}")
    if s.size and not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    order = np.argsort(-s, kind="stable")
    return s[order], r[order]


def average_precision(scores: Sequence[float], relevant: Sequence[bool], n_relevant: int | None = None,
                      tie_groups: bool = False) -> float:
    """``AP = sum_k P@k * rel_k / |GT|`` over the ranked candidates.

    ``n_relevant`` is ``|GT|`` when some relevant items are missing from the candidates (they
    count as never retrieved); by default it is the number of relevant candidates. Returns 0
    when ``|GT|`` is 0.
    """
    s, r = _ranked(scores, relevant)
    gt = int(r.sum()) if n_relevant is None else int(n_relevant)
    if gt < int(r.sum()):
        raise ValueError(f"n_relevant={gt} is smaller than the {int(r.sum())} relevant candidates")
    if gt == 0:
        return 0.0
    hits = np.cumsum(r)
    if not tie_groups:
        ranks = np.arange(1, r.size + 1)
        return float(np.sum((hits / ranks)[r]) / gt)
    # One step per group of equal scores: precision and recall are taken at the group's end.
    ends = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.array([], dtype=int)
    tp = hits[ends]
    precision = tp / (ends + 1)
    recall_gain = np.diff(np.r_[0, tp]) / gt
    return float(np.sum(precision * recall_gain))


def trapezoidal_average_precision(scores: Sequence[float], relevant: Sequence[bool],
                                  n_relevant: int | None = None) -> float:
    """EVVE's AP: the area under the precision-recall curve by the trapezoid rule, each relevant
    item at 0-based rank ``p`` (the ``n``-th found, from 0) adding
    ``(n / p + (n + 1) / (p + 1)) / 2 / |GT|`` (``n / p`` taken as 1 at ``p = 0``)."""
    _, r = _ranked(scores, relevant)
    gt = int(r.sum()) if n_relevant is None else int(n_relevant)
    if gt == 0:
        return 0.0
    ap = 0.0
    for n, p in enumerate(np.nonzero(r)[0]):
        before = 1.0 if p == 0 else n / p
        after = (n + 1) / (p + 1)
        ap += (before + after) / 2.0 / gt
    return float(ap)


def mean_average_precision(per_query: Iterable[float]) -> float:
    values = list(per_query)
    if not values:
        raise ValueError("no query to average (every query lacked ground truth)")
    return float(np.mean(values))


def micro_average_precision(scores: Sequence[float], relevant: Sequence[bool], n_relevant: int | None = None,
                            tie_groups: bool = False) -> float:
    """uAP (micro AP) of detection tasks: AP over all (query, candidate) pairs pooled in one
    ranking, ``|GT|`` = every relevant pair. ``tie_groups=True`` gives the VSC-style micro-AP,
    where pairs of equal score enter the precision-recall curve together."""
    return average_precision(scores, relevant, n_relevant, tie_groups=tie_groups)


def precision_recall_curve(scores: Sequence[float], relevant: Sequence[bool],
                           n_relevant: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked candidate (for plotting)."""
    _, r = _ranked(scores, relevant)
    gt = int(r.sum()) if n_relevant is None else int(n_relevant)
    hits = np.cumsum(r)
    ranks = np.arange(1, r.size + 1)
    return hits / ranks, hits / max(gt, 1)
