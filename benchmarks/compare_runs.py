"""Trained runs against the baseline and against each other on the built-in held-out benchmark,
with 95 % paired bootstrap intervals over its queries, and the queries where each run loses.

    python -m benchmarks.compare_runs runs/hapvr runs/am --json benchmarks/results/compare_runs.json

For each run folder (a checkpoint of python -m hapvr.train over the default cached features) it
scores the benchmark with the run's model and with the features-only baseline over that run's
PCA (a run trained on another pool whitens differently), prints mAP / uAP per level with intervals, the interval of run - baseline and of every
later run - the first run, and lists per query the levels where the run's AP is below the
baseline's. Needs the benchmark cache that python -m hapvr.train builds (--cache-dir).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import torch

from benchmarks import _harness as H


def _load(run: str, bench):
    from hapvr.features.pca import PCAWhitening
    from hapvr.io.serialization import load_torch_file
    from hapvr.models import VideoSimilarityModel
    from hapvr.models.loading import load_similarity_model

    state = load_torch_file(os.path.join(run, "checkpoint.pt"), "checkpoint", allow_numpy=True)
    cfg = state["config"]
    pca = PCAWhitening(state["pca"]["mean"].shape[0], cfg["pca_dim"])
    pca.load_state_dict(state["pca"])
    feats = {k: pca(v.float()) for k, v in bench.desc.items()}
    model = load_similarity_model(os.path.join(run, "checkpoint.pt"))  # its head, settings and weights
    baseline = VideoSimilarityModel(cfg["pca_dim"], cfg["k_s"], cfg["k_t"], attention=False, comparator=False)
    return feats, model.eval(), baseline, state.get("step")


def main(argv=None) -> int:
    from hapvr.runtime import default_cache_dir
    from hapvr.evaluation.levels import (LEVEL_LABELS, all_similarities, bootstrap_levels, evaluate_levels,
                                        intervals_table, losses_line, per_query_losses)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (each with checkpoint.pt)")
    ap.add_argument("--cache-dir", default=default_cache_dir())
    ap.add_argument("--benchmark-set", default="builtin", choices=("builtin", "test", "validation"),
                    help="which held-out benchmark (built and cached on first use, as python -m hapvr.train does)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--json", help="write the intervals and per-query losses here")
    args = ap.parse_args(argv)
    for run in args.runs:
        if not os.path.isfile(os.path.join(run, "checkpoint.pt")):
            ap.error(f"{run}: no checkpoint.pt there (a run folder of python -m hapvr.train)")
    bench = H.heldout_benchmark(args.benchmark_set, args.cache_dir)
    sims, losses = {}, {}
    for run in args.runs:
        feats, model, baseline, step = _load(run, bench)
        database = sorted(feats)
        with torch.no_grad():
            sims[run] = all_similarities(model, feats, bench.queries, database)
            # the baseline over this run's PCA (runs trained on other pools whiten differently)
            sims[f"baseline {run}"] = all_similarities(baseline, feats, bench.queries, database)
        res = evaluate_levels(sims[run], bench.labels, database)
        base = evaluate_levels(sims[f"baseline {run}"], bench.labels, database)
        losses[run] = per_query_losses(sims[run], sims[f"baseline {run}"], bench.labels, database)
        print(f"{run} (step {step}): mAP " + " / ".join(f"{100 * res[t].map:.2f}" for t in LEVEL_LABELS)
              + "; baseline " + " / ".join(f"{100 * base[t].map:.2f}" for t in LEVEL_LABELS))
    database = sorted(bench.desc)
    out = {}
    for run in args.runs:
        iv = bootstrap_levels({"baseline": sims[f"baseline {run}"], run: sims[run]}, bench.labels, database,
                              difference=(run, "baseline"), n=args.resamples)
        print("\n" + intervals_table(iv, len(bench.queries), args.resamples))
        out[run] = iv
        print(losses_line(losses[run]))
    for run in args.runs[1:]:
        iv = bootstrap_levels({run: sims[run], args.runs[0]: sims[args.runs[0]]}, bench.labels, database,
                              difference=(run, args.runs[0]), n=args.resamples)
        print("\n" + intervals_table(iv, len(bench.queries), args.resamples))
        out[f"{run} - {args.runs[0]}"] = iv
    if args.json:
        import dataclasses

        payload = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(),
                   "command": "python -m benchmarks.compare_runs " + " ".join(args.runs)
                   + f" --benchmark-set {args.benchmark_set}", "benchmark_set": args.benchmark_set,
                   "intervals": {k: {t: {n: {m: dataclasses.asdict(i) for m, i in per.items()} for n, per in x.items()}
                                     for t, x in v.items()} for k, v in out.items()},
                   "losses": losses}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
