"""The built-in benchmark's figures: mAP and uAP per relevance level (DSVR, CSVR, ISVR, as FIVR
defines them), the scores of every query against every database video, bootstrap intervals
over the queries, and the tables that print them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hapvr import metrics
from hapvr.evaluation.benchmarks import Benchmark, evaluate_scores
from hapvr.evaluation.bootstrap import Ranking, bootstrap
from hapvr.models.padding import pad_stack

# FIVR-style tasks of the built-in benchmark: which labels count as relevant at each level
LEVEL_LABELS = {"DSVR": ("DS",), "CSVR": ("DS", "CS"), "ISVR": ("DS", "CS", "IS")}


@dataclass
class LevelResult:
    task: str
    map: float
    uap: float
    queries: int


def evaluate_levels(similarities: dict[str, dict[str, float]], labels: dict[str, dict[str, list[str]]],
                    database: list[str]) -> dict[str, LevelResult]:
    """mAP / uAP per level with the protocol of :func:`hapvr.evaluation.benchmarks.evaluate_scores`
    (query excluded from its ranking, ground truth restricted to the database, queries without
    ground truth skipped). ``similarities[q][t]``: score of query q against database video t."""
    db = set(database)
    positives = {task: {q: {v for k in kinds for v in labels.get(q, {}).get(k, []) if v in db} for q in similarities}
                 for task, kinds in LEVEL_LABELS.items()}
    bench = Benchmark("built-in", list(similarities), list(database), positives,
                      detection={task: task for task in LEVEL_LABELS})
    res = evaluate_scores(bench, similarities, present=db | set(similarities))
    return {task: LevelResult(task, res.retrieval.get(task, float("nan")), res.detection[task], res.queries_used[task])
            for task in LEVEL_LABELS}


BOOTSTRAP_RESAMPLES = 1000


def level_rankings(similarities: dict[str, dict[str, float]], labels: dict[str, dict[str, list[str]]],
                   database: list[str]):
    """``{task: [Ranking per query]}`` (queries sorted) with the protocol of
    :func:`evaluate_levels`: a query's candidates are the database without itself, its
    positives those of the level's labels found in the database."""
    out = {}
    for task, kinds in LEVEL_LABELS.items():
        rows = []
        for q in sorted(similarities):
            cands = [v for v in database if v != q]
            gt = {v for k in kinds for v in labels.get(q, {}).get(k, []) if v in cands}
            rows.append(Ranking(np.array([similarities[q][v] for v in cands], dtype=np.float64),
                                np.array([v in gt for v in cands]), len(gt)))
        out[task] = rows
    return out


def bootstrap_levels(sims: dict[str, dict[str, dict[str, float]]], labels, database: list[str],
                     difference: tuple[str, str] | None = None, n: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
    """``{task: {model or "a - b": {"mAP": Interval, "uAP": Interval}}}``: 95 % paired bootstrap
    intervals over the queries (:mod:`hapvr.evaluation.bootstrap`) of every model in ``sims``."""
    ranks = {name: level_rankings(s, labels, database) for name, s in sims.items()}
    return {task: bootstrap({name: r[task] for name, r in ranks.items()}, n=n, seed=seed, difference=difference)
            for task in LEVEL_LABELS}


def intervals_table(intervals, n_queries: int, n: int = BOOTSTRAP_RESAMPLES) -> str:
    """Plain-text table of :func:`bootstrap_levels`' intervals (percent)."""
    names = list(next(iter(intervals.values())))
    width = max(24, *(len(x) + 2 for x in names))
    lines = [f"95 % bootstrap intervals over the {n_queries} queries ({n} paired resamples), percent:",
             f"{'level':<7}{'metric':<8}" + "".join(f"{x:>{width}}" for x in names)]
    for task, per in intervals.items():
        for metric in ("mAP", "uAP"):
            cells = []
            for x in names:
                iv = per[x][metric]
                diff = " - " in x

                def pct(v, signed=False):
                    return "n/a" if v is None else (f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}")

                cells.append(f"{pct(iv.value, diff)} [{pct(iv.low, diff)}, {pct(iv.high, diff)}]")
            lines.append(f"{task:<7}{metric:<8}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def device_of(model) -> torch.device:
    """Where a model runs: its parameters' device, else its buffers' (a parameter-free baseline keeps
    an empty one for this), else the CPU."""
    for tensors in (model.parameters(), model.buffers()):
        p = next(iter(tensors), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def all_similarities(model, features: dict[str, torch.Tensor], queries: list[str], database: list[str],
                     query_chunk: int = 4, db_chunk: int = 64) -> dict[str, dict[str, float]]:
    """``sims[q][t]`` for every query and database video (model in eval mode, [-1, 1] scores).

    Queries and database are taken in order of length and in chunks (``query_chunk`` x
    ``db_chunk`` videos), each padded to its own longest video only: a few long videos do not
    make every pair pay for their length."""
    was_training = model.training
    model.eval()
    dev = device_of(model)
    by_len = sorted(database, key=lambda t: features[t].shape[0])
    db_parts = []
    for s in range(0, len(by_len), db_chunk):
        ids = by_len[s:s + db_chunk]
        db, db_len = pad_stack([features[t] for t in ids])
        db_parts.append((ids, model.index_video(db.to(dev)), db_len.to(dev)))
    sims = {q: {} for q in queries}
    ordered = sorted(queries, key=lambda q: features[q].shape[0])
    for s in range(0, len(ordered), query_chunk):
        qs = ordered[s:s + query_chunk]
        q, q_len = pad_stack([features[x] for x in qs])
        q = model.index_video(q.to(dev))
        for ids, db, db_len in db_parts:
            out = model(q, db, q_len.to(dev), db_len, indexed=True).video.float().cpu()
            for i, qid in enumerate(qs):
                sims[qid].update({t: float(out[i, j]) for j, t in enumerate(ids)})
    model.train(was_training)
    return {q: {t: sims[q][t] for t in database} for q in queries}


def per_query_ap(sims, labels, database) -> dict[str, dict[str, float | None]]:
    """``{level: {query: AP}}`` (None for a query without ground truth), the protocol's rankings."""
    queries = sorted(sims)
    return {task: {q: metrics.average_precision(r.scores, r.relevant, r.n_relevant) if r.n_relevant else None
                   for q, r in zip(queries, rows)}
            for task, rows in level_rankings(sims, labels, database).items()}


def per_query_losses(sims, base_sims, labels, database) -> dict[str, dict[str, float]]:
    """``{query: {level: AP points lost}}``: the levels where ``sims`` ranks a query's relevant
    videos worse than ``base_sims`` (the baseline) does."""
    ours, theirs = per_query_ap(sims, labels, database), per_query_ap(base_sims, labels, database)
    out = {}
    for task in LEVEL_LABELS:
        for q, ap in ours[task].items():
            if ap is not None and ap < theirs[task][q] - 1e-9:
                out.setdefault(q, {})[task] = round(100 * (ap - theirs[task][q]), 2)
    return out


def losses_line(losses: dict[str, dict[str, float]]) -> str:
    return "queries where it loses to the baseline (AP points): " + (
        "; ".join(f"{q}: " + ", ".join(f"{t} {d:+.2f}" for t, d in v.items()) for q, v in losses.items()) or "none")


def evaluate_model(model, features, queries, labels) -> dict[str, LevelResult]:
    database = sorted(features)
    return evaluate_levels(all_similarities(model, features, queries, database), labels, database)


def results_table(rows: dict[str, dict[str, LevelResult]]) -> str:
    """Plain-text table: one row per model, mAP and uAP per level (percent)."""
    tasks = list(LEVEL_LABELS)
    head = f"{'model':<28}" + "".join(f"{'mAP ' + t:>11}" for t in tasks) + "".join(f"{'uAP ' + t:>11}" for t in tasks)
    lines = [head, "-" * len(head)]
    for name, res in rows.items():
        lines.append(f"{name:<28}" + "".join(f"{100 * res[t].map:>11.2f}" for t in tasks)
                     + "".join(f"{100 * res[t].uap:>11.2f}" for t in tasks))
    return "\n".join(lines)


def copies_found(sims: dict[str, dict[str, float]], copies, labels: dict[str, dict[str, list[str]]],
                 threshold: float) -> tuple[dict[str, tuple[int, int]], tuple[int, int]]:
    """What a copy threshold does on a benchmark: per copy kind (``copies``: objects with
    ``query``, ``target``, ``kind`` as :class:`hapvr.data.corpus.CopyTruth`, or dicts of them as the
    benchmark cache holds them), ``(found, total)``
    over the scored pairs, a copy found when its similarity reaches ``threshold``; and the false
    copies ``(count, unrelated pairs)``: pairs of a query and a video at none of its levels that
    reach it."""
    per: dict[str, list[int]] = {}
    for c in copies:
        query, target, kind = (c["query"], c["target"], c["kind"]) if isinstance(c, dict) else (c.query, c.target, c.kind)
        s = sims.get(query, {}).get(target)
        if s is not None:
            got = per.setdefault(kind, [0, 0])
            got[0] += s >= threshold
            got[1] += 1
    false = unrelated = 0
    for q, row in sims.items():
        related = {v for level in labels.get(q, {}).values() for v in level}
        for t, s in row.items():
            if t != q and t not in related:
                unrelated += 1
                false += s >= threshold
    return {k: (v[0], v[1]) for k, v in per.items()}, (false, unrelated)

