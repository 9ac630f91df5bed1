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


# ---------------------------------------------------------------------------------------------
# Copy localisation (SPEC section 6): segment precision / recall / F1 per video pair (VCSL) and
# the segment micro-AP of the VSC 2022 matching track. Formulas and how they relate to VCSL's
# and vsc2022's code: docs/localization.md.
#
# A segment is (query_start, query_end, target_start, target_end) in seconds: an object with
# those attributes (hapvr.localization.Segment), a dict with those keys (Segment.to_dict()), or
# a sequence of 4 numbers; predictions for the micro-AP also need a score (attribute, key or
# 5th number).

import math  # noqa: E402  (this section's imports stay with it)
from dataclasses import dataclass  # noqa: E402
from typing import Mapping  # noqa: E402

_SEGMENT_KEYS = ("query_start", "query_end", "target_start", "target_end", "score")


@dataclass(frozen=True)
class SegmentPRF:
    precision: float
    recall: float
    f1: float


def _segment_boxes(segments, with_score: bool = False) -> np.ndarray:
    """Segments -> float64 ``[N, 4]`` boxes (``[N, 5]`` with the score last)."""
    n = 5 if with_score else 4
    rows = []
    for s in segments:
        try:
            if isinstance(s, dict):
                row = [s[k] for k in _SEGMENT_KEYS[:n]]
            elif hasattr(s, "query_start"):
                row = [getattr(s, k) for k in _SEGMENT_KEYS[:n]]
            else:
                row = list(s)[:n]
                if len(row) < n:
                    raise ValueError
        except (KeyError, AttributeError, TypeError, ValueError):
            raise ValueError(f"a segment needs {', '.join(_SEGMENT_KEYS[:n])}; got {s!r}") from None
        rows.append(row)
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, n)
    if not np.isfinite(boxes).all():
        raise ValueError("segments contain NaN or infinite values")
    if (boxes[:, 1] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 2]).any():
        raise ValueError("a segment ends before it starts (need start <= end on both axes)")
    return boxes


def _union_length(intervals: np.ndarray) -> float:
    """Length of the union of ``[N, 2]`` intervals (overlaps counted once)."""
    if len(intervals) == 0:
        return 0.0
    iv = intervals[np.argsort(intervals[:, 0], kind="stable")]
    reach = np.maximum.accumulate(iv[:, 1])
    # A new block starts where an interval begins after everything before it has ended.
    starts = np.r_[True, iv[1:, 0] > reach[:-1]]
    block_start = iv[starts, 0]
    block_end = reach[np.r_[np.nonzero(starts)[0][1:] - 1, len(iv) - 1]]
    return float(np.sum(block_end - block_start))


def _axis_overlaps(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis (query, target): the true-positive length ``|U(P) n U(G*)|``, ``|U(P)|`` and
    ``|U(G)|`` of one pair, where G* are the ground-truth boxes that overlap some prediction
    with positive area."""
    tp, pred_len, gt_len = np.zeros(2), np.zeros(2), np.zeros(2)
    if len(pred) and len(gt):
        dq = np.minimum(pred[:, None, 1], gt[None, :, 1]) - np.maximum(pred[:, None, 0], gt[None, :, 0])
        dt = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 2], gt[None, :, 2])
        hit = gt[((dq > 0) & (dt > 0)).any(axis=0)]
    else:
        hit = gt[:0]
    for a, cols in enumerate(([0, 1], [2, 3])):
        p, g = pred[:, cols], hit[:, cols]
        pred_len[a] = _union_length(p)
        gt_len[a] = _union_length(gt[:, cols])
        # |A n B| = |A| + |B| - |A u B| for unions of intervals
        tp[a] = pred_len[a] + _union_length(g) - _union_length(np.concatenate([p, g]))
    return tp, pred_len, gt_len


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


SEGMENT_METRICS = ("vsc", "vcsl")
VCSL_EPS = 1e-6  # VCSL adds this to the summed lengths it divides by


def _check_metric(metric: str) -> None:
    if metric not in SEGMENT_METRICS:
        raise ValueError(f"metric must be 'vsc' (unions, geometric mean of the axes, as vsc2022) or 'vcsl' "
                         f"(per-box sums, product of the axes, as VCSL), got {metric!r}")


def _vcsl_axes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """VCSL's per-axis ratio of boxes ``a`` covered by boxes ``b``: for each box of ``a``, the union
    of its intersections with the boxes of ``b`` it overlaps with positive area, summed over the
    boxes of ``a``, over the summed lengths of ``a`` (plus ``VCSL_EPS``)."""
    dq = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    dt = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 2], b[None, :, 2])
    meets = (dq > 0) & (dt > 0)
    out = np.zeros(2)
    for axis, (lo, hi) in enumerate(((0, 1), (2, 3))):
        covered = 0.0
        for i in range(len(a)):
            hit = b[meets[i]]
            if len(hit):
                cut = np.stack([np.maximum(hit[:, lo], a[i, lo]), np.minimum(hit[:, hi], a[i, hi])], axis=1)
                covered += _union_length(cut)
        out[axis] = covered / (float(np.sum(a[:, hi] - a[:, lo])) + VCSL_EPS)
    return out


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def segment_precision_recall(predicted, ground_truth, metric: str = "vsc") -> SegmentPRF:
    """Segment precision, recall and F1 of one video pair, in one of two forms.

    ``metric="vsc"`` (the form of the VSC 2022 matching track's micro-AP): per axis a (query,
    target), ``TP_a = |U(P)_a n U(G*)_a|``, ``P_a = TP_a / |U(P)_a|``, ``R_a = TP_a / |U(G)_a|``
    (unions of intervals, so overlapping segments count once; G* = the ground-truth boxes
    overlapping some prediction with positive area); ``P = sqrt(P_q P_t)``, ``R`` likewise.

    ``metric="vcsl"`` (VCSL's ``precision_recall``): per axis, each predicted box contributes the
    union of its intersections with the ground-truth boxes it overlaps with positive area; these
    are summed over the predicted boxes and divided by the sum of their lengths (plus 1e-6), so
    overlapping predictions count twice; recall the same with the roles swapped; ``P = P_q P_t``,
    ``R = R_q R_t``.

    F1 = 2PR / (P + R). Both use VCSL's conventions for empty sides: no prediction and no ground
    truth -> P = R = 1; predictions without ground truth -> P = 0, R = 1; ground truth without
    predictions -> P = 1, R = 0. A 0/0 ratio otherwise counts 0.
    """
    _check_metric(metric)  # before the empty-side shortcuts
    pred, gt = _segment_boxes(predicted), _segment_boxes(ground_truth)
    if len(pred) == 0 or len(gt) == 0:
        p, r = (1.0, 1.0) if len(pred) == len(gt) else ((0.0, 1.0) if len(pred) else (1.0, 0.0))
        return SegmentPRF(p, r, _f1(p, r))
    if metric == "vcsl":
        pq, pt = _vcsl_axes(pred, gt)
        rq, rt = _vcsl_axes(gt, pred)
        p, r = float(pq * pt), float(rq * rt)
        return SegmentPRF(p, r, _f1(p, r))
    tp, pred_len, gt_len = _axis_overlaps(pred, gt)
    p = math.sqrt(_ratio(tp[0], pred_len[0]) * _ratio(tp[1], pred_len[1]))
    r = math.sqrt(_ratio(tp[0], gt_len[0]) * _ratio(tp[1], gt_len[1]))
    return SegmentPRF(p, r, _f1(p, r))


def segment_prf_over_pairs(predicted: Mapping, ground_truth: Mapping, groups: Mapping | None = None,
                           metric: str = "vsc") -> SegmentPRF:
    """VCSL's aggregate over video pairs: macro means of the per-pair precision and recall of
    :func:`segment_precision_recall` (in its ``metric`` form), and F1 = 2PR / (P + R) of those means.

    ``predicted`` and ``ground_truth`` map a pair key (e.g. ``(query_id, target_id)``) to its
    segments; a pair missing from one side has no segments there. The pairs evaluated are the
    keys of either mapping. ``groups`` (optional) maps each pair to a group id: precision and
    recall are then averaged within each group first, then over groups (VCSL averages over the
    pairs of one copied source, then over sources).
    """
    keys = list(dict.fromkeys([*ground_truth.keys(), *predicted.keys()]))
    if not keys:
        raise ValueError("no video pair to evaluate")
    per_pair = {k: segment_precision_recall(predicted.get(k, ()), ground_truth.get(k, ()), metric) for k in keys}
    if groups is None:
        buckets = [[k] for k in keys]
    else:
        missing = [k for k in keys if k not in groups]
        if missing:
            raise ValueError(f"{len(missing)} pairs have no group, e.g. {missing[0]!r}")
        by_group: dict = {}
        for k in keys:
            by_group.setdefault(groups[k], []).append(k)
        buckets = list(by_group.values())
    p = float(np.mean([np.mean([per_pair[k].precision for k in b]) for b in buckets]))
    r = float(np.mean([np.mean([per_pair[k].recall for k in b]) for b in buckets]))
    return SegmentPRF(p, r, _f1(p, r))


def segment_micro_ap(predicted: Mapping, ground_truth: Mapping) -> float:
    """Segment micro-AP of the VSC 2022 matching track over all pairs.

    Predictions of every pair are ranked by score, descending; predictions of equal score enter
    together as one step. After each step, per axis a: ``TP_a = sum over pairs of
    |U(P)_a n U(G*)_a|`` (P = the pair's predictions so far, G* its ground-truth boxes that
    overlap one of them with positive area), ``PL_a = sum |U(P)_a|``, ``GL_a = sum |U(G)_a|``
    over all ground-truth pairs; ``precision = sqrt((TP_q / PL_q) (TP_t / PL_t))``,
    ``recall = sqrt((TP_q / GL_q) (TP_t / GL_t))``, and ``AP = sum precision * (recall -
    previous recall)``. Returns 0 when there is no ground truth.
    """
    gl = np.zeros(2)
    gts = {k: _segment_boxes(v) for k, v in ground_truth.items()}
    for g in gts.values():
        gl += _axis_overlaps(g[:0], g)[2]
    if not (gl > 0).all():
        return 0.0
    ranked = []
    for k, v in predicted.items():
        for row in _segment_boxes(v, with_score=True):
            ranked.append((row[4], k, row[:4]))
    ranked.sort(key=lambda x: -x[0])  # stable; order inside a tie group does not matter
    added: dict = {}
    per_pair: dict = {}
    tp, pl = np.zeros(2), np.zeros(2)
    ap = recall_before = 0.0
    i = 0
    while i < len(ranked):
        j = i
        touched = set()
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            added.setdefault(ranked[j][1], []).append(ranked[j][2])
            touched.add(ranked[j][1])
            j += 1
        for k in touched:
            old_tp, old_pl = per_pair.get(k, (np.zeros(2), np.zeros(2)))
            new_tp, new_pl, _ = _axis_overlaps(np.stack(added[k]), gts.get(k, np.zeros((0, 4))))
            tp += new_tp - old_tp
            pl += new_pl - old_pl
            per_pair[k] = (new_tp, new_pl)
        precision = math.sqrt(_ratio(tp[0], pl[0]) * _ratio(tp[1], pl[1]))
        recall = math.sqrt(_ratio(tp[0], gl[0]) * _ratio(tp[1], gl[1]))
        ap += precision * (recall - recall_before)
        recall_before = recall
        i = j
    return float(ap)
