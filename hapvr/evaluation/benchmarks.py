"""Benchmarks as data (which videos are queries, which are candidates, which are relevant) and
the protocols that score a ranking of them.

Every dataset is read into one :class:`Benchmark` (:mod:`hapvr.evaluation.annotations` reads
the files as the public releases ship them, and hapvr's own layouts); :func:`evaluate_scores`
then applies its :class:`Protocol`: which candidates a query ranks, whether it ranks itself,
which positives count in ``|GT|``, what a query without positives gives, the AP rule, and which
pairs each uAP pools. Only videos present (with features, or with scores) count. The protocol
of each benchmark, with the release behaviour it reproduces, is in docs/formats.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from hapvr import metrics

APStyle = Literal["standard", "trapezoid", "sklearn"]


@dataclass(frozen=True)
class Protocol:
    """How one benchmark's rankings are scored.

    exclude_query: a query is not among its own candidates (FIVR, VCDB); the releases of EVVE,
        SVD and CC_WEB_VIDEO rank every listed candidate.
    gt_scope: which annotated positives count in ``|GT|``: ``"database"`` those among the
        query's candidate list that are present (FIVR, VCDB, SVD); ``"present"`` every present
        one, ranked or not (EVVE: the release counts the positives among all loaded videos;
        hapvr's own layouts); ``"all"`` every annotated one, present or not (CC_WEB_VIDEO).
    gt_drops_query: the query itself never counts as its own positive (FIVR); the VCDB release
        keeps a query listed among its own positives (a positive it never ranks).
    empty_gt: a query without positives is ``"skip"``-ped from the mean (and listed), or counts
        with AP ``"zero"`` (EVVE's release).
    ap_style: ``standard`` (sum of P@k at the relevant ranks / |GT|), ``trapezoid`` (EVVE),
        ``sklearn`` (equal scores form one step, as scikit-learn's average_precision_score).
    """

    exclude_query: bool = True
    gt_scope: Literal["database", "present", "all"] = "present"
    gt_drops_query: bool = True
    empty_gt: Literal["skip", "zero"] = "skip"
    ap_style: APStyle = "standard"


@dataclass
class Benchmark:
    """Queries, candidates and relevance of one benchmark.

    ``positives[task][qid]``: the relevant videos of query ``qid`` for retrieval task ``task``.
    ``candidates[qid]`` (or ``database`` when None): what the query ranks; ``task_candidates
    [task][qid]`` overrides it for one task (CC_WEB_VIDEO ranks only the labelled videos of the
    query's topic in some variants). ``task_queries[task]``: the queries of a task, when not all
    (FIVR's audio task has its own). ``detection[name] = task``: uAP of ``task``'s labels,
    pooled over that task's queries. ``groups[qid]``: the query's group (EVVE's event), which
    adds the mean over groups of the groups' mAP as ``"<task> (mean over events)"``.
    ``segments[(a, b)]``: copied segment pairs ``(a_start, a_end, b_start, b_end)`` in seconds,
    where the annotation has them (VCDB's own folder).
    """

    name: str
    queries: list[str]
    database: list[str]
    positives: dict[str, dict[str, set[str]]]
    detection: dict[str, str] = field(default_factory=dict)
    candidates: dict[str, list[str]] | None = None
    protocol: Protocol = field(default_factory=Protocol)
    task_queries: dict[str, list[str]] = field(default_factory=dict)
    task_candidates: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    segments: dict[tuple[str, str], list[tuple[float, float, float, float]]] = field(default_factory=dict)

    def all_videos(self) -> set[str]:
        ids = set(self.queries) | set(self.database)
        for c in (self.candidates or {}).values():
            ids.update(c)
        for per in self.task_candidates.values():
            for c in per.values():
                ids.update(c)
        return ids

    def candidates_of(self, qid: str, task: str | None = None) -> list[str]:
        per = self.task_candidates.get(task)
        if per is not None:
            return per.get(qid, [])
        return self.candidates[qid] if self.candidates is not None else self.database

    def queries_of(self, task: str) -> list[str]:
        return self.task_queries.get(task, self.queries)

    def without(self, excluded: set[str], suffix: str) -> Benchmark:
        """The same benchmark with ``excluded`` videos removed from every candidate list and
        ground truth; the queries stay (FIVR's hard variant drops the easy duplicates from the
        database, as the release does)."""
        def keep(ids):
            return [v for v in ids if v not in excluded]

        return replace(
            self, name=self.name + suffix, database=keep(self.database),
            positives={t: {q: p - excluded for q, p in per.items()} for t, per in self.positives.items()},
            candidates=None if self.candidates is None else {q: keep(c) for q, c in self.candidates.items()},
            task_candidates={t: {q: keep(c) for q, c in per.items()} for t, per in self.task_candidates.items()},
            detection=dict(self.detection))

    def renamed(self, new: dict[str, str]) -> Benchmark:
        """The same benchmark with ids renamed by ``new`` (ids not in it stay)."""
        def r(v):
            return new.get(v, v)

        return replace(
            self, queries=[r(q) for q in self.queries], database=[r(v) for v in self.database],
            positives={t: {r(q): {r(v) for v in p} for q, p in per.items()} for t, per in self.positives.items()},
            candidates=None if self.candidates is None else {r(q): [r(v) for v in c]
                                                             for q, c in self.candidates.items()},
            task_queries={t: [r(q) for q in qs] for t, qs in self.task_queries.items()},
            task_candidates={t: {r(q): [r(v) for v in c] for q, c in per.items()}
                             for t, per in self.task_candidates.items()},
            groups={r(q): g for q, g in self.groups.items()},
            segments={(r(a), r(b)): s for (a, b), s in self.segments.items()})


@dataclass
class EvaluationResult:
    retrieval: dict[str, float]  # task -> mAP
    detection: dict[str, float]  # name -> uAP
    queries_used: dict[str, int]
    queries_skipped: dict[str, list[str]]  # task -> queries without ground truth among present videos
    per_query_ap: dict[str, dict[str, float]]
    pooled: dict[str, tuple[list[float], list[bool], int]] = field(default_factory=dict)  # task -> uAP pool
    queries_missing: list[str] = field(default_factory=list)  # present queries without scores (--scores)


_AP = {
    "standard": metrics.average_precision,
    "sklearn": lambda s, r, n: metrics.average_precision(s, r, n, tie_groups=True),
    "trapezoid": metrics.trapezoidal_average_precision,
}


def _query_ranking(bench: Benchmark, task: str, q: str, row: dict, present: set[str]):
    """The scores and relevance of query ``q``'s ranked candidates for ``task``, and its ``|GT|``."""
    p = bench.protocol
    listed = bench.candidates_of(q, task)
    cands = sorted({v for v in listed if v in present and v in row and not (p.exclude_query and v == q)})
    positives = bench.positives[task].get(q, set())
    if p.gt_scope == "all":
        gt = set(positives)
    elif p.gt_scope == "database":
        gt = positives & {v for v in listed if v in present}
    else:
        gt = {v for v in positives if v in present}
    if p.gt_drops_query:
        gt.discard(q)
    return [row[v] for v in cands], [v in gt for v in cands], len(gt)


def evaluate_scores(bench: Benchmark, scores: dict[str, dict[str, float]], present: set[str],
                    missing_scores: Literal["error", "skip"] = "error") -> EvaluationResult:
    """Applies ``bench.protocol`` to ``scores[qid][vid]`` (the similarity of candidate ``vid``
    to query ``qid``); ``present`` holds the ids that have features. mAP averages the AP of the
    task's present queries (those without positives skipped and listed, or counted as 0 where
    the protocol says so); uAP pools every present query's ranked pairs of the task, so a query
    without positives adds its candidates as negatives (as the releases' ``calculate_uAP``).
    ``missing_scores="skip"``: a present query with no scores is left out and listed (scores
    read from a file); a candidate without a score is not ranked by that query."""
    result = EvaluationResult({}, {}, {}, {}, {})
    ap_fn = _AP[bench.protocol.ap_style]
    for task in bench.positives:
        aps, skipped = {}, []
        pool_s, pool_r, pool_gt = [], [], 0
        for q in bench.queries_of(task):
            if q not in present:
                continue
            row = scores.get(q)
            if row is None:
                if missing_scores == "error":
                    raise KeyError(f"no scores for query {q!r}")
                if q not in result.queries_missing:
                    result.queries_missing.append(q)
                continue
            s, r, n_gt = _query_ranking(bench, task, q, row, present)
            pool_s += s
            pool_r += r
            pool_gt += n_gt
            if n_gt == 0 and bench.protocol.empty_gt == "skip":
                skipped.append(q)
                continue
            aps[q] = ap_fn(s, r, n_gt) if n_gt else 0.0
        if aps:
            result.retrieval[task] = metrics.mean_average_precision(aps.values())
            _group_means(bench, task, aps, result.retrieval)
        result.queries_used[task] = len(aps)
        result.queries_skipped[task] = skipped
        result.per_query_ap[task] = aps
        result.pooled[task] = (pool_s, pool_r, pool_gt)
    for name, task in bench.detection.items():
        s, r, gt = result.pooled[task]
        result.detection[name] = metrics.micro_average_precision(s, r, gt) if gt else 0.0
    return result


def _group_means(bench: Benchmark, task: str, aps: dict[str, float], out: dict[str, float]) -> None:
    """EVVE's second figure: the mean over events of each event's mean AP (its present queries)."""
    if not bench.groups:
        return
    by_group: dict[str, list[float]] = {}
    for q, ap in aps.items():
        by_group.setdefault(bench.groups[q], []).append(ap)
    out[f"{task} (mean over events)"] = sum(sum(v) / len(v) for v in by_group.values()) / len(by_group)
