"""The held-out benchmark during training: mAP / uAP per level, the results table and heatmaps."""

from __future__ import annotations

import torch

from dataclasses import dataclass, field

from hapvr.batching import pad_stack as pad
from hapvr.evaluation.benchmarks import Benchmark, evaluate_scores

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
    import numpy as np

    from hapvr.evaluation.bootstrap import Ranking

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
    from hapvr.evaluation.bootstrap import bootstrap

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
    """Where a model's parameters live (the CPU for a parameter-free baseline)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


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
        db, db_len = pad([features[t] for t in ids])
        db_parts.append((ids, model.index_video(db.to(dev)), db_len.to(dev)))
    sims = {q: {} for q in queries}
    ordered = sorted(queries, key=lambda q: features[q].shape[0])
    for s in range(0, len(ordered), query_chunk):
        qs = ordered[s:s + query_chunk]
        q, q_len = pad([features[x] for x in qs])
        q = model.index_video(q.to(dev))
        for ids, db, db_len in db_parts:
            out = model(q, db, q_len.to(dev), db_len, indexed=True).video.float().cpu()
            for i, qid in enumerate(qs):
                sims[qid].update({t: float(out[i, j]) for j, t in enumerate(ids)})
    model.train(was_training)
    return {q: {t: sims[q][t] for t in database} for q in queries}


def per_query_ap(sims, labels, database) -> dict[str, dict[str, float | None]]:
    """``{level: {query: AP}}`` (None for a query without ground truth), the protocol's rankings."""
    from hapvr import metrics

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


@dataclass
class LocalizationResult:
    """Segment metrics over the partial copies (:mod:`hapvr.metrics`): VCSL-style macro
    precision / recall / F1 over pairs and the VSC micro-AP."""

    precision: float
    recall: float
    f1: float
    micro_ap: float
    pairs: int
    per_pair: dict[str, dict] = field(default_factory=dict)
    negative_pairs: int = 0
    negatives_with_segments: int = 0


@torch.no_grad()
def evaluate_localization(maps, partial: list[dict], fps: float = 1.0, negatives=(),
                          **localize_options) -> LocalizationResult:
    """Localise every partial copy and score it against its known spans (in frames; ``fps``
    frames a second on both axes). ``maps(query_id, target_id)`` gives the pair's map and the
    map's own frames per second (the comparator's output has one cell per 4 frames).

    ``negatives``: ``(query, target)`` pairs without any copy. As in VSC's matching track, the
    segments found there are false positives of the micro-AP; precision / recall / F1 follow
    VCSL, over the copy pairs."""
    from hapvr.localization import localize
    from hapvr.metrics import segment_micro_ap, segment_precision_recall, segment_prf_over_pairs

    predicted, truth, per_pair = {}, {}, {}
    for p in partial:
        key = (p["query"], p["target"])
        m, map_fps = maps(*key)
        predicted[key] = localize(m, fps=map_fps, **localize_options)
        truth[key] = [tuple(x / fps for x in span) for span in p["spans"]]
        prf = segment_precision_recall(predicted[key], truth[key])
        per_pair[p["target"]] = {"speeds": list(p["speeds"]), "f1": prf.f1, "truth": truth[key],
                                 "found": [[round(v, 2) for v in s.to_dict().values()] for s in predicted[key]]}
    agg = segment_prf_over_pairs(predicted, truth)
    found_on_negatives = {}
    for q, t in negatives:
        m, map_fps = maps(q, t)
        found_on_negatives[(q, t)] = localize(m, fps=map_fps, **localize_options)
    micro_ap = segment_micro_ap({**predicted, **found_on_negatives}, truth)
    return LocalizationResult(agg.precision, agg.recall, agg.f1, micro_ap, len(partial), per_pair,
                              len(found_on_negatives), sum(bool(v) for v in found_on_negatives.values()))


def negative_pairs(partial: list[dict], labels: dict[str, dict[str, list[str]]]) -> list[tuple[str, str]]:
    """For each partial copy's query, the next partial target (in order) that holds nothing
    related to it: not its own, not hosted in its footage, not a copy of a query it is labelled
    related to (either way)."""
    from hapvr.data.corpus import PARTIAL_HOSTS

    def related(a, b):
        return a == b or b in {v for vs in labels.get(a, {}).values() for v in vs} \
            or a in {v for vs in labels.get(b, {}).values() for v in vs}

    out = []
    for i, p in enumerate(partial):
        q = p["query"]
        for k in range(1, len(partial)):
            other = partial[(i + k) % len(partial)]
            if not related(q, other["query"]) and PARTIAL_HOSTS.get(other["query"]) != q:
                out.append((q, other["target"]))
                break
    return out


def localization_rows(baseline, model, feats: dict[str, torch.Tensor], partial_feats: dict[str, torch.Tensor],
                      partial: list[dict], labels: dict | None = None) -> dict[str, LocalizationResult]:
    """The default localisation (compare's: the Chamfer map of the features, default
    parameters), and the trained model's own comparator output (``PRESETS["trained"]``); with
    ``labels``, one negative pair per copy (:func:`negative_pairs`) counts in the micro-AP."""
    from hapvr.localization import PRESETS, chamfer_frame_map

    def chamfer(q, t):
        return chamfer_frame_map(feats[q], partial_feats[t], baseline.k_s), 1.0

    def comparator(q, t):
        dev = device_of(model)
        was = model.training
        model.eval()
        out = model(feats[q][None].float().to(dev), partial_feats[t][None].float().to(dev))
        model.train(was)
        own = out.frame_maps if out.raw is None else torch.nn.functional.hardtanh(out.raw)  # attention head: m_s
        return own[0, 0].float().cpu(), 1.0 / model.raw_frames_per_cell

    neg = negative_pairs(partial, labels) if labels is not None else []
    # the residual and attention heads' output is a (corrected) Chamfer map: the Chamfer map's parameters
    preset = PRESETS["trained" if getattr(model, "head", "visil") == "visil" else "chamfer"]
    return {"Chamfer map (compare's, both models)": evaluate_localization(chamfer, partial, negatives=neg),
            "HAP-VR comparator output": evaluate_localization(comparator, partial, negatives=neg, **preset)}


def localization_table(rows: dict[str, LocalizationResult]) -> str:
    head = (f"{'localised on':<38}{'pairs':>6}{'precision':>11}{'recall':>9}{'F1':>8}{'micro-AP':>10}"
            f"{'negatives with segments':>25}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<38}{r.pairs:>6}{100 * r.precision:>11.1f}{100 * r.recall:>9.1f}"
                     f"{100 * r.f1:>8.1f}{100 * r.micro_ap:>10.1f}"
                     f"{f'{r.negatives_with_segments} of {r.negative_pairs}':>25}")
    return "\n".join(lines)


def results_table(rows: dict[str, dict[str, LevelResult]]) -> str:
    """Plain-text table: one row per model, mAP and uAP per level (percent)."""
    tasks = list(LEVEL_LABELS)
    head = f"{'model':<28}" + "".join(f"{'mAP ' + t:>11}" for t in tasks) + "".join(f"{'uAP ' + t:>11}" for t in tasks)
    lines = [head, "-" * len(head)]
    for name, res in rows.items():
        lines.append(f"{name:<28}" + "".join(f"{100 * res[t].map:>11.2f}" for t in tasks)
                     + "".join(f"{100 * res[t].uap:>11.2f}" for t in tasks))
    return "\n".join(lines)


@torch.no_grad()
def draw_heatmaps(path: str, baseline, model, features, thumbs, pairs: list[tuple[str, str, str]]) -> None:
    """PNG: per (query, target, relation) row, the two thumbnails, the baseline's frame map, the
    trained model's frame map ``m_s`` and its comparator output after Hardtanh."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    fig, axes = plt.subplots(len(pairs), 5, figsize=(13, 2.6 * len(pairs)), squeeze=False)
    for r, (q, t, rel) in enumerate(pairs):
        bq, bt = features[q][None], features[t][None]
        base = baseline(bq.to(device_of(baseline)), bt.to(device_of(baseline))).cpu()
        dev = device_of(model)
        out = model(bq.to(dev), bt.to(dev)).cpu()
        panels = [(thumbs[q].permute(1, 2, 0).numpy(), f"query {q}"), (thumbs[t].permute(1, 2, 0).numpy(), f"{rel}: {t}"),
                  (base.frame_maps[0, 0].numpy(), f"baseline Chamfer  s={float(base.video[0, 0]):.2f}"),
                  (out.frame_maps[0, 0].numpy(), "trained m_s (attention)"),
                  (out.frame_maps[0, 0].numpy() if out.raw is None else torch.nn.functional.hardtanh(out.raw[0, 0]).numpy(),
                   f"trained {'m_s' if out.raw is None else 'psi'}  s={float(out.video[0, 0]):.2f}")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            if c < 2:
                ax.imshow(img)
            else:
                im = ax.imshow(img, cmap="viridis", vmin=-1 if c == 4 else None, vmax=1 if c == 4 else None)
                fig.colorbar(im, ax=ax, fraction=0.046)
                per_frame = c < 4 or getattr(model, "raw_frames_per_cell", 4) == 1
                ax.set_xlabel("target frame" if per_frame else "target step")
                ax.set_ylabel("query frame" if per_frame else "query step")
            ax.set_title(title[:40], fontsize=8)
            if c < 2:
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
