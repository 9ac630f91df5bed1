"""Search an index (python -m hapvr.index) for copies of query videos, or list its duplicates.

Search runs in two stages: a coarse stage (faiss over segment-level descriptors: exact for
small collections, IVF for large ones) picks --candidates videos, which the model then scores
exactly; --exhaustive scores every indexed video. Each result gets its copied segments (query and
target spans in seconds). Queries shorter than the model's minimum length are repeated, as the
model does; a result below the copy threshold gets none, and a copy without one says why. --json writes
{"queries": [{"query", "results": [{"id", "similarity", "segments", "reason", "query_view",
"target_view"}]}]} (docs/formats.md).

With --insets (the default on an index built with --insets) the rectangles found inside the
frames (picture-in-picture, borders, stacks) are compared too, and with --mirror the query
mirrored left-right: a video scores its best pair of views, localised on it, with both
rectangles in the result (docs/scores.md).

--duplicates lists every pair of indexed videos whose similarity reaches --threshold (default:
the model's calibrated "copy" threshold, docs/scores.md), says how they relate (the same video,
one part of the other, sharing a part, or alike with no copied segment) and groups the same
videos into clusters, using the coarse stage to avoid all-pairs work (each video proposes its
--neighbours nearest videos; --min-coarse drops weak proposals); --symmetric scores a pair by the
mean of both directions (whole-video duplicates), otherwise by the shorter video against the
longer (a clip cut from a longer video is found too).

Repeated --index folders are the shards of one collection (python -m hapvr.index build --shard I/N),
searched and deduplicated as one index; --cluster runs the shards on a Dask cluster, at once.

--coarse chooses the coarse search: flat (exact, over the memory-mapped descriptor file) or ivf
(a faiss IVF, trained on first use and saved in the index, searching --nprobe lists per row;
ivfpq: lists of PQ codes, for millions of rows); auto picks flat up to 1M descriptor rows (~60k
videos) and IVF above (hapvr/retrieval/coarse.py has the measurements behind it).
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack

from hapvr.api import model_of_index
from hapvr.cli import (ArgumentParser, add_precision, add_threads, check_device, fail, finite_float, float_in,
                       input_file, int_at_least, output_file, positive_float, run_main)
from hapvr.data.video import VideoDecodeError
from hapvr.io.files import write_json, write_text
from hapvr.retrieval.building import model_space, open_index
from hapvr.retrieval.cluster import ClusterError, dask_shards
from hapvr.retrieval.coarse import CoarseConfig
from hapvr.retrieval.index_store import is_index
from hapvr.retrieval.report import duplicates_csv, duplicates_json, hit_results, pair_line, search_table
from hapvr.retrieval.search import DuplicatesConfig, Searcher
from hapvr.retrieval.shards import ShardedSearcher
from hapvr.runtime import default_threads, set_threads

EXAMPLES = """\
  python -m hapvr.search --index my.index suspect.mp4
  python -m hapvr.search --index my.index a.mp4 b.mp4 --top 5 --json results.json
  python -m hapvr.search --index my.index --duplicates --csv duplicates.csv
  python -m hapvr.search --index s0 --index s1 --index s2 --cluster tcp://scheduler:8786 suspect.mp4
  python -m hapvr.search --index big.index --duplicates --coarse ivf --neighbours 5 --min-coarse 0.5 --threads 8
"""


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.search", description=__doc__, examples=EXAMPLES)
    ap.add_argument("queries", nargs="*", metavar="QUERY_VIDEO", help="query video files")
    ap.add_argument("--index", required=True, action="append", help="index folder made by python -m hapvr.index "
                    "build; repeated: the shards of one collection, searched as one (docs/scale.md)")
    ap.add_argument("--cluster", metavar="ADDRESS", help="search the --index shards on a Dask distributed cluster, "
                    "each opened by a worker (round robin; its folder must be at that path there): the scheduler's "
                    "address (tcp://host:8786), or local:N for N worker processes here (docs/scale.md)")
    ap.add_argument("--top", type=int_at_least(1), default=10, help="results per query")
    ap.add_argument("--candidates", type=int_at_least(1), default=100,
                    help="videos (and views, with insets) the coarse stage passes to the exact scoring, per query view")
    ap.add_argument("--exhaustive", action="store_true", help="score every indexed video (no coarse stage)")
    ap.add_argument("--coarse", choices=("auto", "flat", "ivf", "ivfpq"), default=CoarseConfig.kind,
                    help=f"coarse search: flat (exact), ivf (faiss IVF, trained once and saved in the index; ivfpq: "
                         f"its lists hold 64-byte codes of the rows, ~30x less memory), or "
                         f"auto: flat up to {CoarseConfig.ivf_threshold:,} descriptor rows (~60k videos), IVF above")
    ap.add_argument("--nprobe", type=int_at_least(1),
                    help=f"IVF lists searched per query descriptor row (default: {CoarseConfig.nprobe}; with "
                         f"--duplicates {DuplicatesConfig.nprobe})")
    add_threads(ap)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--duplicates", action="store_true", help="list the duplicate pairs and clusters of the index")
    ap.add_argument("--threshold", type=finite_float(), help="similarity of a copy: the results localised, the duplicate pairs "
                                                             "(default: the model's copy threshold)")
    ap.add_argument("--symmetric", action="store_true", help="with --duplicates: mean of both directions")
    ap.add_argument("--csv", help="with --duplicates: write the pairs here as CSV")
    ap.add_argument("--neighbours", type=int_at_least(1),
                    help=f"with --duplicates: coarse neighbours each video proposes for exact scoring "
                         f"(default: {DuplicatesConfig.neighbours})")
    ap.add_argument("--min-coarse", type=float_in(-1.0, 1.0),
                    help="with --duplicates: drop proposals whose coarse similarity (in [-1, 1]) is below this; "
                         "the lever on large collections (default: keep all)")
    ap.add_argument("--no-segments", action="store_true", help="skip the localisation of copied segments")
    ap.add_argument("--insets", action="store_true", help="also search the rectangles found inside the query's "
                    "frames (picture-in-picture, borders, stacks); the default on an index built with --insets")
    ap.add_argument("--mirror", action="store_true", help="also search the query mirrored left-right")
    ap.add_argument("--checkpoint", help="the model's checkpoint (default: the one the index was built with, which "
                                         "it records; the default model for an index built without one)")
    ap.add_argument("--baseline", action="store_true",
                    help="the features-only Chamfer baseline (default: as the index was built)")
    ap.add_argument("--fps", type=positive_float(),
                    help="frames per second decoded from query videos (default: the index's)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    add_precision(ap)
    return ap


def _search(args, model, searcher) -> int:
    if not len(searcher):
        fail(f"--index {' '.join(args.index)}: the index is empty (add videos with python -m hapvr.index add)")
    insets = args.insets or searcher.insets
    features = []  # per query: its views, (rectangle or None, features), the whole frame first
    for q in args.queries:
        try:
            features.append(model.views(q, insets, args.mirror) if insets or args.mirror else [(None, model.features(q))])
        except (VideoDecodeError, ValueError) as exc:
            fail(f"QUERY {exc}" if q in str(exc) else f"QUERY {q}: {exc}")
    out = []
    copy = model.scale.threshold if args.threshold is None else args.threshold
    for q, views in zip(args.queries, features):
        res = searcher.search(views, k=args.top, candidates=args.candidates, exhaustive=args.exhaustive)
        results = hit_results(res.hits, views, lambda h: searcher.load(h.target), model.locate_copies, copy,
                              segments=not args.no_segments)
        out.append({"query": q, "results": results})
        print(f"\n{q}: {len(searcher)} indexed videos" + (f" in {len(args.index)} shards" if len(args.index) > 1 else "")
              + f", {res.scored} scored" + (f", {len(views)} views of the query" if len(views) > 1 else "") + " "
              f"({'exhaustive' if args.exhaustive else f'coarse stage ({searcher.kind}) + exact scoring'}), "
              f"{1000 * (res.coarse_seconds + res.rerank_seconds):.0f} ms")
        for line in search_table(results, copy, segments_looked_for=not args.no_segments):
            print(line)
    if args.json:
        write_json(args.json, {"queries": out}, announce=True)
    return 0


def _duplicates(args, model, searcher) -> int:
    threshold = args.threshold if args.threshold is not None else \
        model.scale.symmetric_threshold if args.symmetric else model.scale.threshold
    cfg = DuplicatesConfig(neighbours=args.neighbours or DuplicatesConfig.neighbours, min_coarse=args.min_coarse,
                           nprobe=args.nprobe or DuplicatesConfig.nprobe, fps=model.fps, k_s=model.model.k_s,
                           # flat asked for: exact neighbours however many rows (all rows against all rows)
                           flat_rows=sys.maxsize if args.coarse == "flat" else DuplicatesConfig.flat_rows)
    found = searcher.duplicates(threshold, symmetric=args.symmetric, cfg=cfg, progress=True)
    print(f"{len(searcher)} indexed videos, {found.candidate_pairs} candidate pairs from the coarse stage, "
          f"{len(found.pairs)} pairs with similarity >= {threshold:g}"
          f"{' (symmetric)' if args.symmetric else ''}, {len(found.clusters)} cluster{'' if len(found.clusters) == 1 else 's'} of the same video; "
          f"{1000 * sum(found.seconds.values()):.0f} ms")
    for i, cluster in enumerate(found.clusters, 1):
        print(f"  cluster {i}: {', '.join(cluster)}")
        for p in found.links(cluster):
            print(f"    {pair_line(p)}")
    others = [p for p in found.pairs if p.relation != "same"]
    if others:
        print(f"  {len(others)} other pairs: one video holds part of the other, both share a part, or they look "
              f"alike with no copied segment:")
    for p in others[:50]:
        print(f"    {pair_line(p)}")
    if args.json:
        write_json(args.json, duplicates_json(found, threshold, args.symmetric), announce=True)
    if args.csv:
        write_text(args.csv, duplicates_csv(found))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def _open(args, model, opened: ExitStack):
    """The searcher of the --index folders: one index, shards in this process, or shards on --cluster."""
    coarse, scorer = CoarseConfig.named(args.coarse, nprobe=args.nprobe or CoarseConfig.nprobe), model.scorer()
    try:  # several shards: refused when they share an id
        if args.cluster:
            return ShardedSearcher(opened.enter_context(dask_shards(args.cluster, args.index, scorer, model_space(model),
                                                                    coarse)))
        stores = [opened.enter_context(open_index(path, model)) for path in args.index]
        return Searcher(stores[0], scorer, coarse) if len(stores) == 1 else ShardedSearcher(stores, scorer, coarse)
    except (ImportError, ClusterError) as exc:
        fail(f"--cluster {args.cluster}: {exc}")
    except ValueError as exc:
        fail(f"--index: {exc}")


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_device(args)
    if args.duplicates == bool(args.queries):
        fail("give QUERY_VIDEO files to search for, or --duplicates (not both)")
    for arg, value in (("--csv", args.csv), ("--neighbours", args.neighbours), ("--min-coarse", args.min_coarse),
                       ("--symmetric", args.symmetric or None)):
        if value is not None and not args.duplicates:
            fail(f"{arg} goes with --duplicates")
    if args.exhaustive and (args.coarse != "auto" or args.nprobe):
        fail("--exhaustive scores every video without a coarse stage: drop --coarse and --nprobe")
    if args.nprobe and args.coarse == "flat":
        fail("--nprobe sets the IVF search; --coarse flat has none (use --coarse ivf or auto)")
    for q in args.queries:
        if not os.path.isdir(q):
            input_file(q, "QUERY")
    for arg, path in (("--json", args.json), ("--csv", args.csv), ("--checkpoint", args.checkpoint)):
        if path:
            input_file(path, arg) if arg == "--checkpoint" else output_file(path, arg)
    for path in args.index:
        if not is_index(path):
            fail(f"--index {path}: no index there (make one with python -m hapvr.index build)")
    set_threads(args.threads or default_threads())
    try:
        model = model_of_index(args.index[0], args.checkpoint, baseline=args.baseline, fps=args.fps,
                               device=args.device, precision=args.precision)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    with ExitStack() as opened:
        searcher = _open(args, model, opened)
        return _duplicates(args, model, searcher) if args.duplicates else _search(args, model, searcher)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
