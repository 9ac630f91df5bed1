"""What a training run reports: the validation history of its selection, the held-out
benchmark's table (baseline against trained) with bootstrap intervals, the localisation of its
partial copies, the heatmaps, OUT/results.txt and OUT/results.json.

``t`` is a :class:`hapvr.training.trainer.Trainer`.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
import time

import torch

from hapvr.evaluation.copy_localization import copy_truths, localization_rows, localization_table
from hapvr.evaluation.levels import (all_similarities, bootstrap_levels, copies_found, device_of, evaluate_levels,
                                     intervals_table, losses_line, per_query_losses, results_table)
from hapvr.io.files import write_json, write_text
from hapvr.models.scales import scale_of
from hapvr.training.config import restarts
from hapvr.training.data import whiten_cpu
from hapvr.training.schedule import round_length
from hapvr.training.selection import history_table


def selection_report(t) -> str:
    """Prints and returns the validation history with the baseline's row and the selected step."""
    sel = t.selection
    fig = sel.score_baseline(t.baseline)
    base = {"score": 100 * sum(fig.values()) / len(fig), **{k: 100 * v for k, v in fig.items()}}
    rounds = (f" (round {max(sel.best_step - 1, 0) // round_length(t.cfg) + 1} of {restarts(t.cfg)})"
              if restarts(t.cfg) > 1 else "")
    verdict = (f"step {sel.best_step} selected{rounds}" if sel.best_step >= 0 else
               "no scored step was at or above the baseline on every figure: the last weights are reported")
    text = (f"model selection on the validation benchmark ({len(sel.queries)} queries, never reported; "
            f"score = mean of mAP and uAP over the levels, among the steps at or above the baseline on all "
            f"six): {verdict}\n" + history_table(sel.history, sel.best_step, base) + "\n\n")
    print("\n" + text, end="")
    return text


def _tables(t, model, database: list[str]) -> tuple[str, dict, dict, dict]:
    """The benchmark table and its intervals, printed; (text, results, intervals, per-query losses)."""
    bench, feats = t.bench, t.bench_feats
    sims = {"baseline": all_similarities(t.baseline, feats, bench.queries, database),
            "trained": all_similarities(model, feats, bench.queries, database)}
    rows = {"baseline (features-only Chamfer)": evaluate_levels(sims["baseline"], bench.labels, database),
            "HAP-VR (trained)": evaluate_levels(sims["trained"], bench.labels, database)}
    table = results_table(rows)
    n_q = {task: r.queries for task, r in next(iter(rows.values())).items()}
    print(f"\nheld-out benchmark: {len(feats)} videos, queries per level {n_q}")
    print(table)
    intervals = bootstrap_levels(sims, bench.labels, database, difference=("trained", "baseline"))
    losses = per_query_losses(sims["trained"], sims["baseline"], bench.labels, database)
    iv_table = intervals_table(intervals, len(bench.queries)) + "\n" + losses_line(losses)
    print("\n" + iv_table)
    found = _found_table(t, model, sims)
    print("\n" + found)
    iv_table += "\n\n" + found
    results = {name: {task: dataclasses.asdict(r) for task, r in res.items()} for name, res in rows.items()}
    intervals = {task: {name: {m: dataclasses.asdict(iv) for m, iv in per.items()} for name, per in x.items()}
                 for task, x in intervals.items()}
    return table + "\n\n" + iv_table, results, intervals, losses


def _found_table(t, model, sims) -> str:
    """Copies found at each model's own copy threshold (docs/scores.md), per copy kind, and the
    unrelated pairs that reach it."""
    names = {"baseline": t.baseline, "trained": model}
    rows = {name: copies_found(sims[name], t.bench.copies, t.bench.labels, scale_of(m).threshold)
            for name, m in names.items()}
    kinds = list(rows["trained"][0])
    head = f"{'copy kind':<28}{'pairs':>6}" + "".join(
        f"{f'{n} >= {scale_of(m).threshold:g}':>20}" for n, m in names.items())
    lines = ["copies found at the copy threshold, per kind (held-out benchmark):", head]
    for kind in kinds:
        total = rows["trained"][0][kind][1]
        lines.append(f"{kind:<28}{total:>6}" + "".join(f"{rows[n][0].get(kind, (0, 0))[0]:>20}" for n in names))
    unrelated = rows["trained"][1][1]
    lines.append(f"{'false copies (unrelated)':<28}{unrelated:>6}" + "".join(f"{rows[n][1][0]:>20}" for n in names))
    return "\n".join(lines)


def _localization(t, model) -> tuple[str, dict]:
    """The partial copies' localisation table, printed; (text, rows)."""
    bench = t.bench
    partial_feats = {k: whiten_cpu(t.extractor, v) for k, v in bench.partial_desc.items()}
    truths = copy_truths(bench.copies, bench.partial)
    loc = localization_rows(t.baseline, model, t.bench_feats, partial_feats, truths, bench.partial, bench.labels)
    table = localization_table(loc)
    print(f"\ncopy localisation on the benchmark's {len(truths)} copies, per kind (segment P/R/F1 per pair in the "
          f"VSC form: unions, geometric mean of the axes; macro over pairs as VCSL; VSC micro-AP with one copy-free "
          f"pair per partial copy):")
    print(table)
    return table, {name: dataclasses.asdict(r) for name, r in loc.items()}


def heatmap_pairs(bench, feats, count: int) -> list[tuple[str, str, str]]:
    """``(query, target, relation)`` pairs to draw: the first DS (else CS) positive of the first
    ``count`` queries, and one negative."""
    pairs = []
    for q in bench.queries[:count]:
        lab = bench.labels[q]
        for rel in ("DS", "CS"):
            if lab[rel]:
                pairs.append((q, lab[rel][0], rel))
                break
    q0 = bench.queries[0]
    neg = next(v for v in sorted(feats) if v not in {x for vs in bench.labels[q0].values() for x in vs}
               and v != q0 and not v.startswith(q0))
    pairs.append((q0, neg, "negative"))
    return pairs


def report(t) -> tuple[dict, dict]:
    """The held-out benchmark's report (see the module docstring), printed and written to
    OUT/results.txt and heatmaps.png. Returns ({model: {level: mAP/uAP}}, {"intervals": ...,
    "localization": ...})."""
    model = t.report_model
    pre, extra = "", {}
    if t.selection is not None:
        pre = selection_report(t)
        extra["selection"] = t.selection.state()
    text, results, extra["intervals"], extra["losses"] = _tables(t, model, sorted(t.bench_feats))
    text = pre + text
    if t.bench.copies or t.bench.partial:
        loc_text, extra["localization"] = _localization(t, model)
        text += "\n\n" + loc_text
    write_text(os.path.join(t.cfg.out, "results.txt"), text + "\n")
    png = os.path.join(t.cfg.out, "heatmaps.png")
    draw_heatmaps(png, t.baseline, model, t.bench_feats, t.bench.thumbs,
                  heatmap_pairs(t.bench, t.bench_feats, t.cfg.heatmaps))
    print(f"heatmaps: {png}")
    extra = {k: extra[k] for k in ("selection", "losses", "intervals", "localization") if k in extra}
    return results, extra


def verdict(intervals: dict, n_queries: int, split: str = "test") -> str:
    """In words: whether the trained model beat the baseline on the held-out benchmark, figure by
    figure, by the 95 % intervals of the difference (``{level: {"trained - baseline": {metric:
    Interval fields}}}``)."""
    above, inside, below = [], [], []
    for task, per in intervals.items():
        for metric, iv in per.get("trained - baseline", {}).items():
            if iv["value"] is None or iv["low"] is None:
                continue
            text = f"{metric} {task} {100 * iv['value']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]"
            (above if iv["low"] > 0 else below if iv["high"] < 0 else inside).append(text)
    parts = []
    if above:
        parts.append(f"above the features-only baseline beyond the noise at {len(above)} of 6 figures ({'; '.join(above)})")
    if inside:
        parts.append(f"within the noise of it at {len(inside)} ({'; '.join(inside)}: the interval holds 0, a "
                     f"difference the {n_queries} queries cannot tell from chance)")
    if below:
        parts.append(f"below it beyond the noise at {len(below)} ({'; '.join(below)})")
    return (f"On the held-out {split} benchmark the trained model is " + ", and ".join(parts)
            + " (95 % paired bootstrap intervals over the queries, percent points).")


def closing(t) -> str:
    """Where the model is, and which model the other tools use."""
    return (f"Your trained model is {t.ckpt_path}. python -m hapvr.compare, hapvr.index and hapvr.search use "
            f"the default model shipped with hapvr unless you pass --checkpoint {t.ckpt_path} "
            f"(in Python: hapvr.load_model({t.ckpt_path!r})).")


def finish(t, t_train: float) -> dict:
    """The report (main process) and OUT/results.json."""
    cfg = t.cfg
    results, extra = report(t) if t.info.main and t.bench_feats is not None else ({}, {})
    if t.info.main and t.bench_feats is None and t.selection is not None:  # --benchmark false: the history alone
        write_text(os.path.join(cfg.out, "results.txt"), selection_report(t))
        extra["selection"] = t.selection.state()
    if t.info.main:
        summary = dict(results=results, **extra, skipped_videos=[p for p, _ in t.skipped], steps=cfg.iterations,
                       seconds=dict(data=round(t.t_data, 1), train=round(t_train, 1),
                                    total=round(time.time() - t.t_start, 1)),
                       config=dataclasses.asdict(cfg))
        write_json(os.path.join(cfg.out, "results.json"), summary)
        if t.skipped:
            print(f"skipped {len(t.skipped)} unreadable videos (see warnings above)")
        print(f"checkpoint: {t.ckpt_path}   logs: {os.path.join(cfg.out, 'log.csv')}, "
              f"{os.path.join(cfg.out, 'tensorboard')}")
        print(f"time: data {t.t_data:.0f} s, training {t_train:.0f} s, total {time.time() - t.t_start:.0f} s")
        if extra.get("intervals"):
            print("\n" + textwrap.fill(verdict(extra["intervals"], len(t.bench.queries), cfg.benchmark_set), 100))
        print(textwrap.fill(closing(t), 100))
    return results


@torch.no_grad()
def draw_heatmaps(path: str, baseline, model, features, thumbs, pairs: list[tuple[str, str, str]]) -> None:
    """PNG: per (query, target, relation) row, the two thumbnails, the baseline's frame map, the
    trained model's frame map ``m_s`` and its comparator output after Hardtanh."""
    from matplotlib.figure import Figure

    model.eval()
    fig = Figure(figsize=(13, 2.6 * len(pairs)))
    axes = fig.subplots(len(pairs), 5, squeeze=False)
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
