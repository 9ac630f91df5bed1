"""What a score means: each model's score range and the "copy" threshold at a stated precision,
calibrated on the built-in held-out benchmark: its DS level (the query's own footage re-edited,
re-encoded, cropped, captioned, picture-in-picture) are the copies, the videos unrelated to the
query the non-copies; the CS and IS levels (the same scene by another camera, another scene of
the same source) are neither and are left out of the calibration (their range is reported).

    python -m benchmarks.calibrate_scores --checkpoint runs/hapvr/checkpoint.pt --precision-target 0.95 \
        --json benchmarks/results/scores.json

Needs the benchmark cache that python -m hapvr.train builds (--cache-dir, default ~/.cache/hapvr).
For each model (the features-only baseline and the checkpoint's trained model, both over the
checkpoint's PCA) it scores every query against every other benchmark video, in both directions
and symmetrised, and prints: the range of the scores, of the copies' and of the others'; the
lowest threshold whose pooled precision (copies above it / all above it) reaches the target, and
the recall there. docs/scores.md shows the table; hapvr.api.BASELINE_SCALE / TRAINED_SCALE hold
the thresholds.
"""

from __future__ import annotations

import argparse

from benchmarks import _harness as H


def threshold_at_precision(scores: list[float], copy: list[bool], target: float):
    """Lowest threshold t (a score value) such that precision of {s >= t} >= target; (t, precision, recall)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    total = sum(copy)
    best = None
    tp = 0
    for n, i in enumerate(order, 1):
        tp += copy[i]
        if n < len(order) and scores[order[n]] == scores[i]:
            continue  # ties enter together
        if tp / n >= target:
            best = (scores[i], tp / n, tp / total)
    return best


def main(argv=None) -> None:
    from hapvr.io.paths import input_file
    from hapvr.models import VideoSimilarityModel
    from hapvr.io.serialization import load_torch_file
    from hapvr.runtime import default_cache_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cache-dir", default=default_cache_dir())
    ap.add_argument("--precision-target", type=float, default=0.95)
    ap.add_argument("--benchmark-set", default="builtin", choices=("builtin", "test", "validation"),
                    help="which held-out benchmark (built and cached on first use, as python -m hapvr.train does)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    input_file(args.checkpoint, "--checkpoint")
    bench = H.heldout_benchmark(args.benchmark_set, args.cache_dir)
    state = load_torch_file(args.checkpoint, "--checkpoint", allow_numpy=True)
    from hapvr.features.pca import PCAWhitening

    pca_state = state["pca"]
    pca = PCAWhitening(pca_state["projection"].shape[0], pca_state["projection"].shape[1])
    pca.load_state_dict(pca_state)
    feats = {v: pca(d.float()) for v, d in bench.desc.items()}
    cfg = state["config"]
    trained = VideoSimilarityModel.from_config(cfg).eval()
    trained.load_state_dict(state["model"])
    models = {"baseline (features-only Chamfer)": VideoSimilarityModel(cfg.get("pca_dim", 512), attention=False,
                                                                      comparator=False).eval(),
              "HAP-VR (trained)": trained}
    rows, out = [], {}
    for name, model in models.items():
        for mode in ("query -> target", "symmetric"):
            scores, copy, related = [], [], []
            for q in bench.queries:
                ds = set(bench.labels[q].get("DS", []))
                near = set(bench.labels[q].get("CS", [])) | set(bench.labels[q].get("IS", []))
                for v in sorted(feats):
                    if v == q:
                        continue
                    s = model.similarity(feats[q], feats[v])
                    if mode == "symmetric":
                        s = 0.5 * (s + model.similarity(feats[v], feats[q]))
                    if v in near:
                        related.append(s)
                        continue
                    scores.append(s)
                    copy.append(v in ds)
            pos = [s for s, c in zip(scores, copy) if c]
            neg = [s for s, c in zip(scores, copy) if not c]
            cal = threshold_at_precision(scores, copy, args.precision_target)
            out[f"{name} {mode}"] = dict(min=min(scores + related), max=max(scores + related),
                                         copies=[min(pos), max(pos)], unrelated=[min(neg), max(neg)],
                                         related=[min(related), max(related)], pairs=len(scores), copies_n=len(pos),
                                         threshold=None if cal is None else cal[0],
                                         precision=None if cal is None else cal[1],
                                         recall=None if cal is None else cal[2])
            r = out[f"{name} {mode}"]
            rows.append([name, mode, f"{r['min']:.3f} .. {r['max']:.3f}", f"{min(pos):.3f} .. {max(pos):.3f}",
                         f"{min(neg):.3f} .. {max(neg):.3f}", f"{min(related):.3f} .. {max(related):.3f}",
                         "-" if cal is None else f"{cal[0]:.3f}", "-" if cal is None else f"{cal[1]:.3f}",
                         "-" if cal is None else f"{cal[2]:.3f}"])
    print(f"{args.benchmark_set} benchmark: {len(bench.queries)} queries x {len(feats) - 1} videos; copies = DS level, "
          f"non-copies = unrelated videos, related = CS/IS levels (left out); threshold = lowest score with "
          f"pooled precision >= {args.precision_target} (copies vs unrelated)")
    H.print_table(["model", "direction", "all scores", "copies", "unrelated", "related (CS/IS)", "threshold",
                   "precision", "recall"], rows)
    if args.json:
        H.write_json(args.json, dict(precision_target=args.precision_target, benchmark=args.benchmark_set,
                                     checkpoint=args.checkpoint, results=out))


if __name__ == "__main__":
    from hapvr.cli import run_main

    raise SystemExit(run_main(main))
