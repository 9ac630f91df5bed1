"""Evaluate video similarity on a retrieval benchmark.

Features: an HDF5 file with one dataset [T, R, D] per video id (the public FIVR / EVVE / SVD
feature files as they are, or python -m hapvr.extract's output). Annotations: the benchmark's
own file (JSON, or a pickle read as plain data only); the accepted layouts of every --dataset are
in docs/formats.md. Prints mAP (retrieval) and uAP (detection) as a table, writes JSON
(--output) and precision-recall curves (--plot). Similarities are cached under --cache-dir, keyed
on the feature data and the model, so an interrupted run resumes and a changed input is refused.
"""

from __future__ import annotations

import sys

from hapvr.cli import (
    ArgumentParser,
    fail,
    input_file,
    int_at_least,
    output_file,
    output_folder,
    run_main,
)
from hapvr.evaluation.benchmarks import LOADERS, evaluate_scores, load_benchmark
from hapvr.evaluation.engine import EngineConfig, compute_scores_in_job
from hapvr.evaluation.feature_store import FeatureStore
from hapvr.evaluation.report import (
    format_table,
    plot_pr,
    pooled_rankings,
    read_ids,
    results_payload,
)
from hapvr.evaluation.scorers import ChamferBaseline, load_scorer
from hapvr.io.files import write_json
from hapvr.ops import BACKEND_NAMES
from hapvr.ops._spatial_tiled import default_workspace_bytes
from hapvr.precision import PRECISIONS
from hapvr.runtime import (
    cores_per_rank,
    default_threads,
    job,
    process_device,
    set_threads,
)

EXAMPLES = """\
  python -m hapvr.evaluate --dataset fivr-5k --features fivr.hdf5 --annotations fivr.pickle --features-only
  python -m hapvr.evaluate --dataset custom --features feats.hdf5 --annotations mine.json --checkpoint ckpt.pt --output r.json --plot pr.png
  torchrun --nproc-per-node 2 -m hapvr.evaluate --dataset fivr-5k --features fivr.hdf5 --annotations fivr.pickle --features-only --cache-dir runs/cache
"""


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.evaluate", description=__doc__, examples=EXAMPLES)
    ap.add_argument("--dataset", required=True, choices=sorted(LOADERS), help="benchmark protocol")
    ap.add_argument("--features", required=True, help="HDF5 feature file (one [T, R, D] dataset per video id)")
    ap.add_argument("--annotations", required=True,
                    help="the benchmark's annotation file (layouts per --dataset in docs/formats.md)")
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="trained hapvr model checkpoint (python -m hapvr.train's checkpoint.pt)")
    model.add_argument("--features-only", action="store_true",
                       help="untrained baseline: region Chamfer then frame Chamfer on the raw features")
    ap.add_argument("--easy-duplicates", help="FIVR: file of easy-duplicate ids (one per line or a JSON list); "
                                              "adds the 'hard' variant without them")
    ap.add_argument("--output", help="write the results (mAP, uAP, per-query AP) as JSON here")
    ap.add_argument("--plot", help="write precision-recall curves (PNG) here")
    ap.add_argument("--cache-dir", help="cache similarities here (resumable; needed for several ranks)")
    ap.add_argument("--chunk-frames", type=int_at_least(1), default=EngineConfig.chunk_frames,
                    help="split longer targets into chunks of this many frames and average their similarities")
    ap.add_argument("--max-map-elements", type=int_at_least(1), default=EngineConfig.max_map_elements,
                    help="bound on query frames x target frames scored per fused call (memory)")
    ap.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES,
                    help="similarity operator backend: auto is cpp on the CPU, tiled on CUDA")
    ap.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                    help="dtype of the similarity GEMMs (fp32 accumulation); bf16/fp16 pay off on GPUs and on CPUs "
                         "with avx512_bf16/AMX")
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when available, else CPU; under torchrun cuda:LOCAL_RANK), cpu, cuda or cuda:N")
    ap.add_argument("--no-progress", action="store_true", help="no progress display")
    return ap


def check_args(args) -> None:
    """Every path argument, before any work: inputs exist and are readable, outputs can be written."""
    for arg, path in (("--features", args.features), ("--annotations", args.annotations),
                      ("--checkpoint", args.checkpoint), ("--easy-duplicates", args.easy_duplicates)):
        if path:
            input_file(path, arg)
    for arg, path in (("--output", args.output), ("--plot", args.plot)):
        if path:
            output_file(path, arg)
    if args.plot and not args.plot.lower().endswith((".png", ".pdf", ".svg", ".jpg")):
        fail(f"--plot {args.plot}: expected a .png, .pdf, .svg or .jpg file name")
    if args.cache_dir:
        output_folder(args.cache_dir, "--cache-dir")
    if job().world > 1 and not args.cache_dir:
        fail("a sharded run (WORLD_SIZE > 1) needs --cache-dir on storage every rank can reach")


def make_scorer(args):
    try:
        device = process_device(args.device)
    except ValueError as exc:
        fail(f"--device: {exc}")
    try:
        default_workspace_bytes(device.type)  # the tiled backend's bound, checked before any work
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
        fail(f"--annotations {exc}" if args.annotations not in str(exc) else str(exc))
    try:
        store = FeatureStore(args.features)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        fail(f"--features {args.features}: {exc}" if args.features not in str(exc) else str(exc))
    easy = read_ids(args.easy_duplicates) if args.easy_duplicates else None
    scorer = make_scorer(args)
    present = store.ids() & bench.all_videos()
    queries = sorted(q for q in bench.queries if q in present)
    targets = sorted({v for q in queries for v in bench.candidates_of(q) if v in present})
    absent = len(bench.all_videos() - present)
    print(f"{bench.name}: {len(queries)}/{len(bench.queries)} queries and {len(targets)} candidates have features"
          f" ({absent} annotated videos are missing from {args.features})", file=sys.stderr)
    if not queries:
        fail(f"--features {args.features}: no query of the benchmark has features in it "
             f"(ids as in --annotations {args.annotations}, e.g. {sorted(bench.queries)[:3]})")
    try:
        scores = compute_scores_in_job(scorer, store, queries, targets,
                                       EngineConfig(chunk_frames=args.chunk_frames,
                                                    max_map_elements=args.max_map_elements),
                                       args.cache_dir, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:  # feature data, a cache of other inputs (names the file)
        fail(str(exc))
    except KeyError as exc:
        fail(str(exc.args[0]))
    if scores is not None:  # None: a rank other than 0 of a sharded run
        _report(args, bench, scores, present, easy)
    return 0


def _report(args, bench, scores, present, easy) -> None:
    variants = {bench.name: bench}
    if easy is not None:
        hard = bench.without(easy, "-hard")
        variants[hard.name] = hard
    results = {name: evaluate_scores(b, scores, present) for name, b in variants.items()}
    print(format_table(results))
    if args.output:
        write_json(args.output, results_payload(results), indent=2)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.plot:
        plot_pr(pooled_rankings(bench, scores, present), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
