"""Benchmarks as data: which videos are queries, which are candidates, which are relevant.

Every dataset is loaded into one :class:`Benchmark`; :func:`evaluate_scores` then applies the
protocol of SPEC section 4: only videos present in the feature file count, a query is excluded
from its own ranking and ground truth, queries without ground truth are skipped (and counted).

Annotation formats read:

- FIVR (the predecessor's pickle): ``{'5k': {'queries', 'database'}, '200k': {...},
  'annotation': {qid: {'ND': [...], 'DS': [...], 'CS': [...], 'IS': [...]}}}``.
  DSVR positives = ND+DS, CSVR = +CS, ISVR = +IS; DSVD/CSVD/ISVD are the same labels scored by uAP.
- EVVE (JSON or pickle): ``{'database': [...], 'events': {name: {'queries': [...], 'positives': [...]}}}``;
  trapezoidal AP per query, plus uAP.
- SVD (JSON or pickle): ``{'queries': {qid: {'positives': [...], 'negatives': [...]}}, 'unlabelled': [...]}``;
  each query ranks its labelled candidates plus the unlabelled distractors (negatives),
  scikit-learn-style AP (equal scores form one step).
- VCDB (JSON or pickle): ``{'videos': [...core ids...], 'pairs': [[a, b], ...], 'distractors': [...]}``;
  every core video is a query, its copy partners are the positives, all other videos the negatives.
- custom (JSON): ``{'queries': [...], 'database': [...], 'positives': {qid: [...]}}``, or several
  relevance levels ``'levels': {name: {qid: [...]}}`` instead of ``'positives'``; optional
  ``'detection': true`` to also report uAP per level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hapvr import metrics
from hapvr.io.serialization import load_plain_pickle

APStyle = Literal["standard", "trapezoid", "sklearn"]


@dataclass
class Benchmark:
    """Queries, candidates and relevance of one benchmark.

    ``positives[task][qid]`` are the relevant videos of query ``qid`` for retrieval task
    ``task``; ``candidates[qid]`` (or ``database`` when absent) are what the query ranks.
    ``detection[name] = task`` reports uAP of ``task``'s labels under ``name``.
    """

    name: str
    queries: list[str]
    database: list[str]
    positives: dict[str, dict[str, set[str]]]
    detection: dict[str, str] = field(default_factory=dict)
    candidates: dict[str, list[str]] | None = None
    ap_style: APStyle = "standard"

    def all_videos(self) -> set[str]:
        ids = set(self.queries) | set(self.database)
        if self.candidates:
            for c in self.candidates.values():
                ids.update(c)
        return ids

    def candidates_of(self, qid: str) -> list[str]:
        return self.candidates[qid] if self.candidates is not None else self.database

    def without(self, excluded: set[str], suffix: str) -> "Benchmark":
        """The same benchmark with ``excluded`` videos removed from every ranking and ground truth
        (FIVR's hard variant drops the easy duplicates)."""
        return Benchmark(
            name=self.name + suffix,
            queries=[q for q in self.queries if q not in excluded],
            database=[v for v in self.database if v not in excluded],
            positives={t: {q: p - excluded for q, p in per.items()} for t, per in self.positives.items()},
            detection=dict(self.detection),
            candidates=None if self.candidates is None else
            {q: [v for v in c if v not in excluded] for q, c in self.candidates.items()},
            ap_style=self.ap_style,
        )


def _read(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return load_plain_pickle(path, "--annotations")


def _need(data, key: str, fmt: str):
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{fmt} annotations must contain the key {key!r}")
    return data[key]


FIVR_LABELS = {"DSVR": ("ND", "DS"), "CSVR": ("ND", "DS", "CS"), "ISVR": ("ND", "DS", "CS", "IS")}


def load_fivr(path: str | Path, version: str = "5k") -> Benchmark:
    data = _read(path)
    split = _need(data, version, f"FIVR ({version})")
    annotation = _need(data, "annotation", "FIVR")
    queries = [str(q) for q in _need(split, "queries", f"FIVR {version}")]
    database = [str(v) for v in _need(split, "database", f"FIVR {version}")]
    positives: dict[str, dict[str, set[str]]] = {t: {} for t in FIVR_LABELS}
    for q in queries:
        labels = annotation.get(q, {})
        for task, keys in FIVR_LABELS.items():
            positives[task][q] = {str(v) for k in keys for v in labels.get(k, [])}
    return Benchmark(f"fivr-{version}", queries, database, positives,
                     detection={"DSVD": "DSVR", "CSVD": "CSVR", "ISVD": "ISVR"})


def load_evve(path: str | Path) -> Benchmark:
    data = _read(path)
    events = _need(data, "events", "EVVE")
    database = [str(v) for v in _need(data, "database", "EVVE")]
    queries, pos = [], {}
    for name, ev in events.items():
        members = {str(v) for v in _need(ev, "positives", f"EVVE event {name!r}")}
        for q in _need(ev, "queries", f"EVVE event {name!r}"):
            queries.append(str(q))
            pos[str(q)] = set(members)
    return Benchmark("evve", queries, database, {"EVVE": pos}, detection={"EVVE-uAP": "EVVE"},
                     ap_style="trapezoid")


def load_svd(path: str | Path) -> Benchmark:
    data = _read(path)
    per_query = _need(data, "queries", "SVD")
    unlabelled = [str(v) for v in data.get("unlabelled", [])]
    queries, pos, candidates = [], {}, {}
    for q, lab in per_query.items():
        q = str(q)
        p = [str(v) for v in _need(lab, "positives", f"SVD query {q!r}")]
        n = [str(v) for v in lab.get("negatives", [])]
        queries.append(q)
        pos[q] = set(p)
        candidates[q] = sorted(set(p) | set(n) | set(unlabelled))
    database = sorted({v for c in candidates.values() for v in c})
    return Benchmark("svd", queries, database, {"SVD": pos}, detection={"SVD-uAP": "SVD"},
                     candidates=candidates, ap_style="sklearn")


def load_vcdb(path: str | Path) -> Benchmark:
    data = _read(path)
    core = [str(v) for v in _need(data, "videos", "VCDB")]
    pos: dict[str, set[str]] = {v: set() for v in core}
    for a, b in _need(data, "pairs", "VCDB"):
        a, b = str(a), str(b)
        if a != b:
            pos.setdefault(a, set()).add(b)
            pos.setdefault(b, set()).add(a)
    database = core + [str(v) for v in data.get("distractors", [])]
    return Benchmark("vcdb", core, database, {"VCDB": pos}, detection={"VCDB-uAP": "VCDB"})


def load_custom(path: str | Path) -> Benchmark:
    data = _read(path)
    queries = [str(q) for q in _need(data, "queries", "custom")]
    database = [str(v) for v in _need(data, "database", "custom")]
    if "levels" in data:
        levels = {str(name): {str(q): {str(v) for v in vs} for q, vs in per.items()}
                  for name, per in data["levels"].items()}
    else:
        levels = {"retrieval": {str(q): {str(v) for v in vs}
                                for q, vs in _need(data, "positives", "custom").items()}}
    detection = {f"{name}-uAP": name for name in levels} if data.get("detection") else {}
    return Benchmark(str(data.get("name", "custom")), queries, database, levels, detection=detection)


LOADERS = {
    "fivr-5k": lambda p: load_fivr(p, "5k"),
    "fivr-200k": lambda p: load_fivr(p, "200k"),
    "evve": load_evve,
    "svd": load_svd,
    "vcdb": load_vcdb,
    "custom": load_custom,
}


def load_benchmark(dataset: str, path: str | Path) -> Benchmark:
    """The benchmark in ``path``, read as data (JSON, or a pickle of plain containers only);
    formats in docs/formats.md. A file of the wrong layout raises ``ValueError`` naming it."""
    if dataset not in LOADERS:
        raise ValueError(f"dataset must be one of {sorted(LOADERS)}, got {dataset!r}")
    try:
        return LOADERS[dataset](path)
    except FileNotFoundError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        if str(path) in str(exc):
            raise ValueError(str(exc)) from None
        raise ValueError(f"{path}: not a valid {dataset} annotation file ({type(exc).__name__}: {exc}); "
                         f"the formats are in docs/formats.md") from None


@dataclass
class EvaluationResult:
    retrieval: dict[str, float]  # task -> mAP
    detection: dict[str, float]  # name -> uAP
    queries_used: dict[str, int]
    queries_skipped: dict[str, list[str]]  # task -> queries without ground truth among present videos
    per_query_ap: dict[str, dict[str, float]]


def evaluate_scores(bench: Benchmark, scores: dict[str, dict[str, float]], present: set[str]) -> EvaluationResult:
    """Applies the protocol to ``scores[qid][vid]`` (the similarity of candidate ``vid`` to
    query ``qid``); ``present`` holds the ids that have features. mAP averages the AP of the
    queries with ground truth at a level (the others are listed as skipped); uAP pools the
    candidates of every present query, so a query without positives at a level adds its
    candidates as negatives (as the release's ``calculate_uAP`` does)."""
    retrieval, detection, used, skipped, per_query = {}, {}, {}, {}, {}
    ap_fn = {
        "standard": metrics.average_precision,
        "sklearn": lambda s, r, n: metrics.average_precision(s, r, n, tie_groups=True),
        "trapezoid": metrics.trapezoidal_average_precision,
    }[bench.ap_style]
    pooled: dict[str, tuple[list[float], list[bool], int]] = {}
    for task, per in bench.positives.items():
        aps, missing = {}, []
        all_s, all_r, all_gt = [], [], 0
        for q in bench.queries:
            if q not in present:
                continue
            cands = sorted({v for v in bench.candidates_of(q) if v in present and v != q})
            gt = {v for v in per.get(q, set()) if v in present and v != q}
            row = scores.get(q)
            if row is None:
                raise KeyError(f"no scores for query {q!r}")
            s = [row[v] for v in cands]
            if not gt:  # no AP of its own, but its candidates stay in the detection pool as negatives
                missing.append(q)
                all_s += s
                all_r += [False] * len(s)
                continue
            r = [v in gt for v in cands]
            n_gt = len(gt)  # relevant videos outside the candidate list count as never found
            aps[q] = ap_fn(s, r, n_gt)
            all_s += s
            all_r += r
            all_gt += n_gt
        if aps:
            retrieval[task] = metrics.mean_average_precision(aps.values())
        used[task] = len(aps)
        skipped[task] = missing
        per_query[task] = aps
        pooled[task] = (all_s, all_r, all_gt)
    for name, task in bench.detection.items():
        s, r, gt = pooled[task]
        detection[name] = metrics.micro_average_precision(s, r, gt) if gt else 0.0
    return EvaluationResult(retrieval, detection, used, skipped, per_query)
