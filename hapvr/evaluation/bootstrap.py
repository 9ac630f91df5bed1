"""Bootstrap confidence intervals over queries for mAP and uAP, and for the difference of two models.

A benchmark's mAP and uAP are averages over a handful of queries: one ranking flip moves them
by points. Resampling the queries with replacement (``n`` times, seeded) and recomputing the
metric on each resample gives its spread; the interval is the percentile interval of those
values (95 % by default: the 2.5th and 97.5th percentiles). For two models on the same queries
the resample is shared (paired bootstrap), so the interval of their difference reflects only how
the models differ per query, not how hard the queries are.

- mAP of a resample: the mean AP of its queries that have ground truth at the level (queries
  without any are skipped, as the protocol does); a resample with none is dropped.
- uAP of a resample: the micro AP of the pooled candidate lists of its queries, a query drawn
  twice adding its list twice; queries without positives add their candidates as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hapvr import metrics


@dataclass(frozen=True)
class Ranking:
    """One query's candidates at one level: scores, relevance, and |GT| (relevant videos missing
    from the candidates count as never found)."""

    scores: np.ndarray
    relevant: np.ndarray
    n_relevant: int


@dataclass(frozen=True)
class Interval:
    value: float | None  # on all the queries (None: no query has ground truth at this level)
    low: float | None  # None when no resample gives a value
    high: float | None

    def __str__(self) -> str:
        def pct(x):
            return "n/a" if x is None else f"{100 * x:.2f}"

        return f"{pct(self.value)} [{pct(self.low)}, {pct(self.high)}]"


def _map(rankings: list[Ranking]) -> float | None:
    aps = [metrics.average_precision(r.scores, r.relevant, r.n_relevant) for r in rankings if r.n_relevant]
    return float(np.mean(aps)) if aps else None


def _uap(rankings: list[Ranking]) -> float:
    gt = sum(r.n_relevant for r in rankings)
    if not gt:
        return 0.0
    return metrics.micro_average_precision(np.concatenate([r.scores for r in rankings]),
                                           np.concatenate([r.relevant for r in rankings]), gt)


METRICS = {"mAP": _map, "uAP": _uap}


def resamples(n_queries: int, n: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n, n_queries]`` query indices drawn with replacement (seeded)."""
    if n_queries < 1 or n < 1:
        raise ValueError(f"need at least one query and one resample, got {n_queries} queries, n={n}")
    return np.random.default_rng(seed).integers(0, n_queries, size=(n, n_queries))


def _interval(value: float | None, samples: list[float], confidence: float) -> Interval:
    if not samples:
        return Interval(value, None, None)
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(samples), [tail, 1 - tail])
    return Interval(value, float(low), float(high))


def bootstrap(models: dict[str, list[Ranking]], n: int = 1000, seed: int = 0, confidence: float = 0.95,
              difference: tuple[str, str] | None = None) -> dict[str, dict[str, Interval]]:
    """Intervals of mAP and uAP per model (``models[name]``: one :class:`Ranking` per query, the
    same queries in the same order for every model) and, with ``difference=(a, b)``, of
    ``a - b`` under ``"a - b"``. Returns ``{name: {"mAP": Interval, "uAP": Interval}}``."""
    sizes = {len(r) for r in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"every model needs the same queries, got {sorted(sizes)} rankings")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    draws = resamples(sizes.pop(), n, seed)
    out: dict[str, dict[str, Interval]] = {}
    for metric, fn in METRICS.items():
        per_model = {}
        for name, rankings in models.items():
            values = [fn([rankings[i] for i in idx]) for idx in draws]
            per_model[name] = values
            out.setdefault(name, {})[metric] = _interval(fn(rankings), [v for v in values if v is not None],
                                                         confidence)
        if difference is not None:
            a, b = difference
            diffs = [x - y for x, y in zip(per_model[a], per_model[b]) if x is not None and y is not None]
            va, vb = out[a][metric].value, out[b][metric].value
            out.setdefault(f"{a} - {b}", {})[metric] = _interval(
                None if va is None or vb is None else va - vb, diffs, confidence)
    return out
