"""What an evaluation shows: the results table, the JSON payload, precision-recall curves."""

from __future__ import annotations

import json
from pathlib import Path

from hapvr import metrics
from hapvr.errors import InputError
from hapvr.evaluation.benchmarks import Benchmark, EvaluationResult


def read_ids(path: str) -> set[str]:
    """Ids listed in a text file (one per line) or a JSON list (FIVR's easy duplicates)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (expected one id per line or a JSON list)",
                         "easy_duplicates") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {line.strip() for line in text.splitlines() if line.strip()}
    if not isinstance(value, list):
        raise InputError(f"{path}: a JSON file must hold a list of ids", "easy_duplicates")
    return {str(v) for v in value}


def format_table(results: dict[str, EvaluationResult]) -> str:
    """A Markdown table: one row per benchmark variant, task and metric (percent)."""
    rows = []
    for variant, res in results.items():
        for task, value in res.retrieval.items():
            used = (f"{res.queries_used[task]} ({len(res.queries_skipped[task])} without GT skipped)"
                    if task in res.queries_used else "")
            rows.append((variant, task, "mAP", f"{100 * value:.2f}", used))
        for name, value in res.detection.items():
            rows.append((variant, name, "uAP", f"{100 * value:.2f}", ""))
    headers = ("benchmark", "task", "metric", "%", "queries")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(out)


def results_payload(results: dict[str, EvaluationResult]) -> dict:
    """The ``--output`` JSON: per variant, mAP, uAP, queries used and skipped, per-query AP."""
    return {name: {"retrieval_mAP": r.retrieval, "detection_uAP": r.detection, "queries_used": r.queries_used,
                   "queries_skipped": r.queries_skipped, "queries_without_scores": r.queries_missing,
                   "per_query_AP": r.per_query_ap} for name, r in results.items()}


def pooled_rankings(bench: Benchmark, result: EvaluationResult) -> dict:
    """``{"<benchmark> <task>": (scores, relevant, positives)}``: the pooled ranking of every
    task that reports a uAP, as :func:`~hapvr.evaluation.benchmarks.evaluate_scores` pooled it."""
    return {f"{bench.name} {task}": result.pooled[task] for task in dict.fromkeys(bench.detection.values())}


def plot_pr(pooled: dict, path: str) -> None:
    """Precision-recall curves of :func:`pooled_rankings` as a PNG (or PDF, SVG, JPG)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for label, (s, r, gt) in pooled.items():
        if gt:
            p, rc = metrics.precision_recall_curve(s, r, gt)
            ax.plot(rc, p, label=f"{label} (uAP {100 * metrics.micro_average_precision(s, r, gt):.1f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("precision-recall over all query-candidate pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
