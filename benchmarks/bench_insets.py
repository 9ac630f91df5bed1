"""Inset detection (hapvr/data/insets.py) on the built-in benchmark's picture-in-picture copies.

    python -m benchmarks.bench_insets [--set validation|test] [--json PATH] [--score]

Builds the benchmark's videos (hapvr.data.corpus, about a minute), noting where each
picture-in-picture copy's inset was pasted (the corpus draws the place at random and keeps no
record of it, so this script wraps ``hapvr.data.augment.video_in_video`` while it builds), then
runs :func:`hapvr.data.insets.detect_insets` on every video: for the copies, the overlap (IoU)
of the best detected rectangle with the true inset; for every other video, whether anything is
detected at all (a false inset); and the time per video.

``--score``: what views give the default model. Every video's features are extracted from its
whole frame and from each detected rectangle (cropped, resized to 224 x 224), and each query's
from its frames mirrored too; a pair's score is the best over the views of a setting: the whole
frame, the query mirrored, the insets, insets and mirror. Printed per setting: copies at or
above the model's copy threshold per copy kind, the unrelated pairs at or above it (false
copies), mAP / uAP per level with 95 % paired bootstrap intervals of the difference to the whole
frame over the queries. Then insets + mirror through the index and search (an index built with
insets, every query searched with its views, 100 candidates), and what the views cost:
extraction time (detection, crops and backbone) and stored frames per video.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from benchmarks import _harness as H


def build(which: str):
    from hapvr.data import augment, corpus

    places = []
    original = augment.video_in_video

    def noting(host, guest, rng, scale=(0.3, 0.5)):
        state = rng.getstate()
        out = original(host, guest, rng, scale)
        again = random.Random()
        again.setstate(state)  # the same draws as video_in_video made: its size, then its place
        T, _, H_, W_ = host.shape
        s = again.uniform(*scale)
        h, w = max(8, round(H_ * s)), max(8, round(W_ * s))
        places.append((again.randint(0, H_ - h), again.randint(0, W_ - w), h, w))
        return out

    augment.video_in_video = noting
    try:
        bench = corpus.build_benchmark(corpus.CorpusConfig(), which)
    finally:
        augment.video_in_video = original
    copies = [c for c in bench.copies if c.kind == "picture-in-picture"]
    if len(copies) != len(places):
        raise SystemExit(f"{len(copies)} picture-in-picture copies but {len(places)} pastes noted")
    return bench, dict(zip((c.target for c in copies), places))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="validation", choices=("validation", "test"))
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--score", action="store_true", help="also score the benchmark with views of the insets")
    args = ap.parse_args()
    from hapvr.data.insets import detect_insets

    t0 = time.time()
    bench, truth = build(args.set)
    print(f"built the {args.set} benchmark in {time.time() - t0:.0f} s: {len(bench.videos)} videos, "
          f"{len(truth)} picture-in-picture copies", file=sys.stderr)
    ious, false, kinds, seconds = {}, [], {}, 0.0
    for vid, frames in bench.videos.items():
        start = time.perf_counter()
        found = detect_insets(frames)
        seconds += time.perf_counter() - start
        if vid in truth:
            ious[vid] = max((f.iou(truth[vid]) for f in found), default=0.0)
        elif found:
            false.append(vid)
            for f in found:
                kinds[f.kind] = kinds.get(f.kind, 0) + 1
    n, others = len(bench.videos), len(bench.videos) - len(truth)
    rows = [[f"IoU >= {t}", f"{sum(v >= t for v in ious.values())} / {len(ious)}"] for t in (0.5, 0.7, 0.85)]
    rows.append(["other videos with a detection", f"{len(false)} / {others} {kinds}"])
    rows.append(["ms per video (frames as decoded)", f"{1000 * seconds / n:.1f}"])
    H.print_table([f"{args.set}: picture-in-picture copies", "count"], rows)
    scored = score_with_views(bench) if args.score else None
    if args.json:
        H.write_json(args.json, dict(set=args.set, iou=ious, false_detections=false, kinds=kinds,
                                     ms_per_video=1000 * seconds / n, videos=n, scored=scored))
        print(f"wrote {args.json}")


SETTINGS = ("whole frame", "mirror", "insets", "insets + mirror")


def score_with_views(bench) -> dict:
    import torch

    import hapvr
    from hapvr.data.insets import Inset
    from hapvr.data.video import center_crop
    from hapvr.evaluation.levels import bootstrap_levels, copies_found, evaluate_levels, intervals_table

    model = hapvr.load_model()
    threshold = model.scale.threshold
    cost = {"whole frame s": 0.0, "views s": 0.0, "mirror s": 0.0}

    def views(vid, frames):  # as VideoModel.views does for a file: the whole frame, [mirrored,] each rectangle
        start = time.perf_counter()
        with torch.no_grad():
            whole = model.extractor(center_crop(frames)).float()
        mid = time.perf_counter()
        out = [(None, whole)] + model.inset_views(frames)
        cost["whole frame s"] += mid - start
        cost["views s"] += time.perf_counter() - mid
        if vid in bench.queries:  # the mirrored view is the query's only
            start = time.perf_counter()
            with torch.no_grad():
                mirrored = model.extractor(center_crop(frames).flip(-1)).float()
            cost["mirror s"] += time.perf_counter() - start
            out.insert(1, (Inset("mirrored", 0, 0, frames.shape[-2], frames.shape[-1], 1.0), mirrored))
        return out

    VR = {vid: views(vid, frames) for vid, frames in bench.videos.items()}
    related = {q: {v for level in bench.labels[q].values() for v in level} for q in bench.queries}
    kind_of = {vid: [None if r is None else r.kind for r, _ in vr] for vid, vr in VR.items()}
    sims = {name: {} for name in SETTINGS}
    for q in bench.queries:
        for t in bench.videos:
            if t == q:
                continue
            targets = [x for r, x in VR[t] if r is None or r.kind != "mirrored"]
            pair = [[model.similarity(a, b) for b in targets] for _, a in VR[q]]
            mirror = [i for i, k in enumerate(kind_of[q]) if k == "mirrored"]
            plain = [i for i, k in enumerate(kind_of[q]) if k != "mirrored"]
            sims["whole frame"].setdefault(q, {})[t] = pair[0][0]
            sims["mirror"].setdefault(q, {})[t] = max(pair[i][0] for i in [0] + mirror)
            sims["insets"].setdefault(q, {})[t] = max(pair[i][j] for i in plain for j in range(len(targets)))
            sims["insets + mirror"].setdefault(q, {})[t] = max(max(row) for row in pair)
    found = {n: copies_found(sims[n], bench.copies, bench.labels, threshold) for n in SETTINGS}
    kinds = list(found["whole frame"][0])
    rows = [[k] + [f"{found[n][0][k][0]} / {found[n][0][k][1]}" for n in SETTINGS] for k in kinds]
    rows.append(["false copies (unrelated pairs)"] + [str(found[n][1][0]) for n in SETTINGS])
    print(f"\ncopies at or above the copy threshold {threshold:g} (default model; "
          f"{sum(any(r is not None and r.kind != 'mirrored' for r, _ in v) for v in VR.values())} of {len(VR)} "
          f"videos have inset views; the mirrored view is the query's)\n")
    H.print_table(["copy kind", *SETTINGS], rows)
    database = sorted(bench.videos)
    levels = {n: evaluate_levels(sims[n], bench.labels, database) for n in SETTINGS}
    H.print_table(["setting"] + [f"{m} {t}" for m in ("mAP", "uAP") for t in levels["whole frame"]],
                  [[n] + [f"{100 * getattr(r, m):.2f}" for m in ("map", "uap") for r in levels[n].values()]
                   for n in SETTINGS])
    intervals = {}
    for n in SETTINGS[1:]:
        iv = bootstrap_levels({n: sims[n], "whole frame": sims["whole frame"]}, bench.labels, database,
                              difference=(n, "whole frame"))
        print(intervals_table({task: {f"{n} - whole frame": per[f"{n} - whole frame"]} for task, per in iv.items()},
                              len(bench.queries)))
        intervals[n] = {task: {m: [per[f"{n} - whole frame"][m].low, per[f"{n} - whole frame"][m].high]
                               for m in ("mAP", "uAP")} for task, per in iv.items()}
    out = {n: {k: list(v) for k, v in found[n][0].items()} | {"false copies": found[n][1][0]} for n in SETTINGS}
    out["levels"] = {n: {t: {"mAP": r.map, "uAP": r.uap} for t, r in levels[n].items()} for n in SETTINGS}
    out["false_pairs"] = {n: sorted([q, t, sims[n][q][t]] for q in sims[n] for t in sims[n][q]
                                    if sims[n][q][t] >= threshold and t not in related[q] and t != q) for n in SETTINGS}
    out["difference_intervals"] = intervals
    out["search"] = search_with_views(bench, model, VR, {(c.query, c.target): c.kind for c in bench.copies},
                                      related, threshold)
    frames = sum(len(v[0][1]) for v in VR.values()), sum(len(x) for v in VR.values() for r, x in v
                                                          if r is None or r.kind != "mirrored")
    n = len(VR)
    out["cost"] = {"extraction_ms_per_video": {k: 1000 * v / n for k, v in cost.items()},
                   "extraction_growth": (cost["whole frame s"] + cost["views s"]) / cost["whole frame s"],
                   "query_extraction_growth": (cost["whole frame s"] + cost["views s"] + cost["mirror s"] * n / len(bench.queries))
                   / cost["whole frame s"],
                   "stored_frames": {"whole frame": frames[0], "with views": frames[1]},
                   "bytes_growth": frames[1] / frames[0]}
    c = out["cost"]
    H.print_table(["cost of the views", "value"], [
        ["extraction ms per video, whole frame", f"{c['extraction_ms_per_video']['whole frame s']:.1f}"],
        ["  + detection, crops and their features", f"{c['extraction_ms_per_video']['views s']:.1f}"],
        ["extraction time growth (index side)", f"{c['extraction_growth']:.2f}x"],
        ["  a query, with its mirrored view", f"{c['query_extraction_growth']:.2f}x"],
        ["index bytes growth (stored frames)", f"{c['bytes_growth']:.3f}x ({frames[1]} / {frames[0]})"]])
    return out


def search_with_views(bench, model, VR, kinds, related, threshold, candidates: int = 100) -> dict:
    """Every query searched, with its views, in an index built with insets (a temporary folder)."""
    import tempfile
    from pathlib import Path

    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.search import Searcher

    found, false = {}, []
    with tempfile.TemporaryDirectory() as d:
        dim = int(next(iter(VR.values()))[0][1].shape[-1])
        with IndexStore.create(Path(d) / "i", {"bench": "insets"}, (9, dim), durable=False, insets=True) as store:
            for vid, vr in VR.items():  # the index keeps the insets (the mirrored view is the query's)
                store.add(vid, vr[0][1], [(r, x) for r, x in vr[1:] if r.kind != "mirrored"])
            searcher = Searcher(store, model.scorer(), persist_coarse=False)
            for q in bench.queries:
                hits = searcher.search(VR[q], k=len(store), candidates=candidates).hits
                score = {h.id: h.score for h in hits if h.id != q}
                for t in bench.videos:
                    if (q, t) in kinds:
                        found.setdefault(kinds[(q, t)], []).append(score.get(t, -1.0) >= threshold)
                    elif t != q and score.get(t, -1.0) >= threshold and t not in related[q]:
                        false.append([q, t, score[t]])
    rows = [[kind, f"{sum(v)} / {len(v)}"] for kind, v in found.items()]
    rows.append(["false copies (unrelated pairs)", str(len(false))])
    print(f"\ninsets + mirror through index build --insets and search --mirror ({candidates} candidates a "
          "query view):\n")
    H.print_table(["copy kind", "found by search"], rows)
    return {k: [sum(v), len(v)] for k, v in found.items()} | {"false copies": len(false), "false_pairs": sorted(false)}


if __name__ == "__main__":
    main()
