"""Evaluate video similarity on a retrieval benchmark, with the protocol of its public release.

Features: an HDF5 file with one dataset [T, R, D] per video id (the public FIVR / EVVE / SVD
feature files as they are, or python -m hapvr.extract's output). Annotations: the benchmark's
files as the releases publish them (fivr.pickle, evve.pickle, SVD's test_groundtruth and
unlabeled-data-id, vcdb.pickle or VCDB's annotation folder, cc_web_video.pickle), or hapvr's own
JSON layouts; all are read as data only (docs/formats.md shows each layout and protocol). Ids
that differ from the feature file's only by a video extension (x.mp4) are matched. --scores
evaluates precomputed similarities ({query: {video: score}}, JSON or the releases' pickle)
instead of features; --save-scores writes the ones computed here. Prints mAP (retrieval) and uAP
(detection) as a table, writes JSON (--output) and precision-recall curves (--plot).
Similarities are cached under --cache-dir, keyed on the feature data and the model, so an
interrupted run resumes and a changed input is refused. --localization (annotations with
copied segments: VCDB's folder) also localises every annotated pair and scores the segments.
"""

from __future__ import annotations

import os
import sys

from hapvr.cli import ArgumentParser, add_precision, fail, input_file, int_at_least, output_file, output_folder, run_main
from hapvr.evaluation.annotations import LAYOUTS, load_benchmark, match_ids
from hapvr.evaluation.benchmarks import evaluate_scores
from hapvr.evaluation.copy_localization import localize_annotated
from hapvr.evaluation.engine import EngineConfig, compute_scores_in_job
from hapvr.evaluation.feature_store import FeatureStore
from hapvr.evaluation.report import format_table, plot_pr, pooled_rankings, read_ids, results_payload
from hapvr.evaluation.score_files import read_scores, scores_present, write_scores
from hapvr.evaluation.scorers import ChamferBaseline, load_scorer
from hapvr.io.files import write_json
from hapvr.ops import BACKEND_NAMES
from hapvr.ops._spatial_tiled import default_workspace_bytes
from hapvr.precision import configure_tf32
from hapvr.runtime import cores_per_rank, default_threads, job, process_device, set_threads

EXAMPLES = """\
  python -m hapvr.evaluate --dataset fivr-5k --features fivr.hdf5 --annotations fivr.pickle --features-only
  python -m hapvr.evaluate --dataset evve --features evve.hdf5 --annotations evve.pickle --checkpoint ckpt.pt
  python -m hapvr.evaluate --dataset svd --features svd.hdf5 --annotations svd_annotations/ --features-only
  python -m hapvr.evaluate --dataset vcdb --scores vcdb_similarities.pk --annotations vcdb.pickle
  python -m hapvr.evaluate --dataset custom --features feats.hdf5 --annotations mine.json --checkpoint ckpt.pt --output r.json --plot pr.png
  torchrun --nproc-per-node 2 -m hapvr.evaluate --dataset fivr-5k --features fivr.hdf5 --annotations fivr.pickle --features-only --cache-dir runs/cache
"""


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.evaluate", description=__doc__, examples=EXAMPLES)
    ap.add_argument("--dataset", required=True, choices=sorted(LAYOUTS), help="benchmark and its protocol")
    ap.add_argument("--features", help="HDF5 feature file (one [T, R, D] dataset per video id)")
    ap.add_argument("--annotations", required=True, nargs="+", metavar="PATH",
                    help="the benchmark's annotation file or folder (SVD: the folder, or test_groundtruth and "
                         "unlabeled-data-id); layouts per --dataset in docs/formats.md")
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="trained hapvr model checkpoint (python -m hapvr.train's checkpoint.pt)")
    model.add_argument("--features-only", action="store_true",
                       help="untrained baseline: region Chamfer then frame Chamfer on the raw features")
    model.add_argument("--scores", help="precomputed similarities {query: {video: score}} (JSON, or a pickle as the "
                                        "releases store them) to evaluate instead of features")
    ap.add_argument("--save-scores", help="write the similarities computed here as JSON (what --scores reads)")
    ap.add_argument("--localization", action="store_true",
                    help="also localise every annotated copied segment pair (VCDB's annotation folder) on the "
                         "Chamfer map of the features and score the segments (VCSL and VSC forms)")
    ap.add_argument("--easy-duplicates", help="FIVR: file of easy-duplicate ids (one per line or a JSON list); "
                                              "adds the 'hard' variant without them")
    ap.add_argument("--output", help="write the results (mAP, uAP, per-query AP) as JSON here")
    ap.add_argument("--plot", help="write precision-recall curves (PNG) here")
    ap.add_argument("--cache-dir", help="cache similarities here (resumable; needed for several ranks)")
    ap.add_argument("--chunk-frames", type=int_at_least(1), default=EngineConfig.chunk_frames,
                    help="split longer targets into chunks of this many frames and average their similarities")
    ap.add_argument("--max-map-elements", type=int_at_least(1), default=None,
                    help="bound on query frames x target frames scored per fused call (memory; default "
                         f"{EngineConfig.max_map_elements} on the CPU, from the GPU's memory on CUDA)")
    ap.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES,
                    help="similarity operator backend: auto is cpp on the CPU, tiled on CUDA")
    add_precision(ap)
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when available, else CPU; under torchrun cuda:LOCAL_RANK), cpu, cuda or cuda:N")
    ap.add_argument("--no-progress", action="store_true", help="no progress display")
    return ap


def check_args(args) -> None:
    """Every path argument, before any work: inputs exist and are readable, outputs can be written."""
    if args.scores is None and args.features is None:
        fail("--features is needed (or --scores with precomputed similarities)")
    if args.scores is not None:
        for arg in ("--features", "--save-scores", "--localization"):
            if getattr(args, arg[2:].replace("-", "_")):
                fail(f"{arg} goes with features; --scores evaluates the similarities as they are")
    for arg, path in (("--features", args.features), ("--checkpoint", args.checkpoint),
                      ("--easy-duplicates", args.easy_duplicates), ("--scores", args.scores)):
        if path:
            input_file(path, arg)
    for path in args.annotations:
        if not os.path.isdir(path):
            input_file(path, "--annotations")
    for arg, path in (("--output", args.output), ("--plot", args.plot), ("--save-scores", args.save_scores)):
        if path:
            output_file(path, arg)
    if args.plot and not args.plot.lower().endswith((".png", ".pdf", ".svg", ".jpg")):
        fail(f"--plot {args.plot}: expected a .png, .pdf, .svg or .jpg file name")
    if args.cache_dir:
        output_folder(args.cache_dir, "--cache-dir")
    if job().world > 1 and not args.cache_dir:
        fail("a sharded run (WORLD_SIZE > 1) needs --cache-dir on storage every rank can reach")


def engine_config(args, scorer) -> EngineConfig:
    """The engine's bounds for the scorer's device (:meth:`EngineConfig.for_device`), with the options given."""
    given = {"chunk_frames": args.chunk_frames}
    if args.max_map_elements is not None:
        given["max_map_elements"] = args.max_map_elements
    return EngineConfig.for_device(getattr(scorer, "device", "cpu"), **given)


def make_scorer(args):
    try:
        device = process_device(args.device)
    except ValueError as exc:
        fail(f"--device: {exc}")
    try:
        default_workspace_bytes(device.type)  # the tiled backend's bound, checked before any work
        configure_tf32(device)
    except ValueError as exc:
        fail(str(exc))
    if args.features_only:
        return ChamferBaseline(backend=args.backend, precision=args.precision, device=device)
    try:
        return load_scorer(args.checkpoint, backend=args.backend, precision=args.precision, device=device)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(default_threads(cores_per_rank()))
    check_args(args)
    try:
        bench = load_benchmark(args.dataset, args.annotations)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--annotations {exc}" if not any(p in str(exc) for p in args.annotations) else str(exc))
    if args.localization and not bench.segments:
        fail(f"--localization: --annotations {' '.join(args.annotations)} holds no copied segments (VCDB's "
             f"annotation folder has them)")
    easy = read_ids(args.easy_duplicates) if args.easy_duplicates else None
    if args.scores:
        scores = read_scores(args.scores)
        present = scores_present(scores)
        bench = _matched(bench, present, f"--scores {args.scores}")
        _report(args, bench, scores, present, easy, missing="skip")
        return 0
    try:
        store = FeatureStore(args.features)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        fail(f"--features {args.features}: {exc}" if args.features not in str(exc) else str(exc))
    bench = _matched(bench, store.ids(), f"--features {args.features}")
    scorer = make_scorer(args)
    present = store.ids() & bench.all_videos()
    queries = sorted(q for q in bench.queries if q in present)
    targets = sorted({v for q in queries for t in bench.positives for v in bench.candidates_of(q, t) if v in present})
    if not queries:
        fail(f"--features {args.features}: no query of the benchmark has features in it "
             f"(ids as in --annotations, e.g. {sorted(bench.queries)[:3]})")
    try:
        scores = compute_scores_in_job(scorer, store, queries, targets,
                                       engine_config(args, scorer),
                                       args.cache_dir, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:  # feature data, a cache of other inputs (names the file)
        fail(str(exc))
    except KeyError as exc:
        fail(str(exc.args[0]))
    if scores is not None:  # None: a rank other than 0 of a sharded run
        if args.save_scores:
            write_scores(args.save_scores, scores)
            print(f"wrote {args.save_scores}", file=sys.stderr)
        _report(args, bench, scores, present, easy)
        if args.localization:
            print(localize_annotated(bench, store, float(getattr(getattr(scorer, "model", None), "k_s", 0.1))))
    return 0


def _matched(bench, available: set[str], source: str):
    """The benchmark with its ids spelt as ``source`` spells them; says what it covers."""
    bench, renamed = match_ids(bench, available)
    present = available & bench.all_videos()
    queries = sum(q in present for q in bench.queries)
    note = f"; {renamed} ids matched without their video extension" if renamed else ""
    print(f"{bench.name}: {queries}/{len(bench.queries)} queries and {len(present)} of {len(bench.all_videos())} "
          f"annotated videos are in {source}{note}", file=sys.stderr)
    return bench


def _report(args, bench, scores, present, easy, missing: str = "error") -> None:
    variants = {bench.name: bench}
    if easy is not None:
        hard = bench.without(easy, "-hard")
        variants[hard.name] = hard
    results = {name: evaluate_scores(b, scores, present, missing) for name, b in variants.items()}
    print(format_table(results))
    lost = results[bench.name].queries_missing
    if lost:
        print(f"{len(lost)} queries have no scores in --scores and were left out: {', '.join(lost[:10])}"
              f"{' ...' if len(lost) > 10 else ''}", file=sys.stderr)
    if args.output:
        write_json(args.output, results_payload(results), indent=2)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.plot:
        plot_pr(pooled_rankings(bench, results[bench.name]), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
