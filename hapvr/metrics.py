"""Retrieval metrics as used for FIVR / VCDB (SPEC section 4).

``AP = sum_k P@k * rel_k / |GT|`` over the candidates sorted by descending score; mAP is the
mean over queries; uAP (detection) is the same formula over all (query, target) pairs pooled,
with ``|GT|`` the total number of positives. Ties are broken by the given candidate order
(a stable sort), so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# FIVR-style tasks: which labels count as relevant at each level
LEVEL_LABELS = {"DSVR": ("DS",), "CSVR": ("DS", "CS"), "ISVR": ("DS", "CS", "IS")}


def average_precision(scores, relevant, num_gt: int | None = None) -> float:
    """AP of one ranked list. ``scores [M]``, ``relevant [M]`` bool; ``num_gt`` defaults to
    ``relevant.sum()`` (pass more when some positives were not scored: they count as missed)."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    n = int(relevant.sum()) if num_gt is None else int(num_gt)
    if n == 0:
        raise ValueError("AP is undefined without relevant items")
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order]
    hits = np.cumsum(rel)
    precision_at_k = hits / np.arange(1, len(rel) + 1)
    return float((precision_at_k * rel).sum() / n)


def mean_average_precision(ranked: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean AP over queries given as ``(scores, relevant)``; queries without positives are skipped."""
    aps = [average_precision(s, r) for s, r in ranked if np.asarray(r).any()]
    return float(np.mean(aps)) if aps else float("nan")


def micro_average_precision(ranked: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """uAP: all (query, target) pairs pooled into one ranking."""
    if not ranked:
        return float("nan")
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in ranked])
    relevant = np.concatenate([np.asarray(r, dtype=bool) for _, r in ranked])
    return average_precision(scores, relevant) if relevant.any() else float("nan")


@dataclass
class LevelResult:
    task: str
    map: float
    uap: float
    queries: int


def evaluate_levels(similarities: dict[str, dict[str, float]], labels: dict[str, dict[str, list[str]]],
                    database: list[str]) -> dict[str, LevelResult]:
    """mAP / uAP per FIVR-style level.

    ``similarities[q][t]``: score of query q against database video t. The query itself is
    excluded from its ranking and ground truth; only database videos count; queries without
    ground truth at a level are skipped for that level.
    """
    out = {}
    for task, kinds in LEVEL_LABELS.items():
        ranked = []
        for q, sims in similarities.items():
            gt = {v for k in kinds for v in labels.get(q, {}).get(k, [])} & set(database)
            gt.discard(q)
            if not gt:
                continue
            cands = [t for t in database if t != q]
            ranked.append((np.array([sims[t] for t in cands]), np.array([t in gt for t in cands])))
        out[task] = LevelResult(task, mean_average_precision(ranked), micro_average_precision(ranked), len(ranked))
    return out
