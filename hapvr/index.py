"""Build and maintain a search index of a video collection (for python -m hapvr.search).

    build   extract every video of --videos (a folder, a list file of ID<TAB>PATH lines, or one
            video; ids as python -m hapvr.extract gives them) and store its features under
            --index. Resumable: videos already in the index are skipped, so a killed build
            continues where it stopped; videos that fail to decode are listed in
            INDEX/failures.txt and in the summary.
    add     the same on an existing index (new videos only).
    remove  drop ids from the index.
    info    what the index holds and the model it was built with.

The index records the model and feature space it was built with (backbone, PCA, similarity
weights, fps) and refuses to be extended or searched with another one. Without --checkpoint the
default model is used (python -m hapvr.default_model).

Sharded under torchrun (build and add): every rank loads the model (--device auto: cuda:LOCAL_RANK
on a CUDA machine, else the CPU) and extracts every WORLD_SIZE-th of the videos still to add
into INDEX/staging/; rank 0 alone writes the index, in the order of --videos, and prints the
summary (hapvr/retrieval/building.py). The index is the one a single process would build (bit
for bit with the same --threads). A killed sharded build resumes like any other (a rerun with
one process adds the staged videos too). Each rank uses its share of the machine's cores unless
--threads says otherwise. docs/formats.md describes the index folder and the staging files.
"""

from __future__ import annotations

import json
from pathlib import Path

from hapvr.api import load_model
from hapvr.cli import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    ArgumentParser,
    UserError,
    add_precision,
    add_threads,
    check_device,
    fail,
    input_file,
    output_folder,
    positive_float,
    run_main,
    shard_spec,
    storage_spec,
)
from hapvr.data.inputs import check_unique, list_inputs
from hapvr.errors import InputError
from hapvr.progress import note
from hapvr.retrieval.building import (LARGE_COLLECTION, BuildReport, build, build_sharded, check_against,
                                      default_storage, open_index, staging_area)
from hapvr.retrieval.index_store import is_index
from hapvr.retrieval.shards import shard_of
from hapvr.runtime import cores_per_rank, default_threads, job, process_device, set_threads

EXAMPLES = """\
  python -m hapvr.index build --videos my_videos/ --index my.index
  python -m hapvr.index add --videos new_videos/ --index my.index
  python -m hapvr.index remove --index my.index holiday_2019 holiday_2020
  torchrun --nproc-per-node 4 -m hapvr.index build --videos my_videos/ --index my.index
"""


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.index", description=__doc__, examples=EXAMPLES)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{build,add,remove,info}")
    for name, text in (("build", "create an index (or continue an interrupted build) from videos"),
                       ("add", "add new videos to an index")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--videos", required=True,
                       help="a folder of videos (recursive), a list file of ID<TAB>PATH lines, or one video")
        p.add_argument("--index", required=True, help="index folder")
        p.add_argument("--checkpoint", help="training checkpoint of python -m hapvr.train (default: the default model)")
        p.add_argument("--baseline", action="store_true",
                       help="the features-only Chamfer baseline over the checkpoint's features")
        p.add_argument("--fps", type=positive_float(), default=1.0, help="frames per second decoded from videos")
        p.add_argument("--device", default="auto",
                       help="auto (CUDA when available, else CPU; under torchrun cuda:LOCAL_RANK), cpu, cuda or cuda:N")
        add_precision(p)
        add_threads(p, "one per core; under torchrun the cores divided among this machine's ranks")
        p.add_argument("--no-progress", action="store_true", help="no progress display")
        p.add_argument("--shard", type=shard_spec, metavar="I/N",
                       help="keep only the videos of shard I of N (ids by hapvr.retrieval.shards.shard_of): one index "
                            "folder per shard, searched together with search --index A --index B ... (docs/scale.md)")
        if name == "build":
            p.add_argument("--storage", type=storage_spec, metavar="{float16,int8,pqM,opqM}[:rowsM]",
                           help="how the frames are stored: float16; int8 codes with a scale per region vector (half "
                                "the bytes; mAP/uAP within 0.03 point on the built-in benchmark); pqM or opqM: M bytes a "
                                "region vector (8-128), a product quantiser (opq: rotated first) trained on the first "
                                f"videos' features; :rowsM also codes the coarse descriptor rows (M bytes instead of 2 KiB a "
                                f"row). Default: float16 below {LARGE_COLLECTION:,} videos, int8 from there (docs/scale.md)")
            p.add_argument("--insets", action="store_true",
                           help="also keep each video's inset views (picture-in-picture, the picture inside borders, "
                                "the halves of a stack), found and extracted at build and add time; search then "
                                "compares them too (docs/scores.md)")
    p = sub.add_parser("remove", help="remove videos by id", description="remove videos by id")
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("ids", nargs="+", help="ids to remove")
    p = sub.add_parser("info", help="what the index holds", description="what the index holds")
    p.add_argument("--index", required=True, help="index folder")
    return ap


def _check_build_args(args, create: bool) -> tuple[Path, list[tuple[str, str]], bool]:
    """``(index folder, (id, path) inputs, whether the index exists)``; every argument checked,
    nothing written but the --index folder's parent."""
    if args.checkpoint:
        input_file(args.checkpoint, "--checkpoint")
    inputs = list_inputs(args.videos, log=note)
    if not inputs:
        fail(f"--videos {args.videos}: no video found")
    check_unique(inputs, args.videos)
    if args.shard:
        i, n = args.shard
        kept = [(vid, path) for vid, path in inputs if shard_of(vid, n) == i]
        note(f"--shard {i}/{n}: {len(kept)} of the {len(inputs)} videos")
        inputs = kept
    index = Path(args.index)
    exists = is_index(index)
    if exists:
        check_against(index, getattr(args, "insets", False), getattr(args, "storage", None))
    else:
        if not create:
            fail(f"--index {args.index}: no index there (make one with python -m hapvr.index build)")
        if index.exists() and (not index.is_dir() or any(index.iterdir())):
            fail(f"--index {args.index}: exists and is not an index or an empty folder")
        output_folder(str(index.parent) if str(index.parent) else ".", "--index", what=args.index)
    return index, inputs, exists


def _summary(report: BuildReport) -> None:
    listed = f" (listed in {report.failures_file})" if report.failures else ""
    note(f"added {report.added}" + (f" ({report.resumed} staged by an interrupted run)" if report.resumed else "")
         + f", already present {report.present}, failed {len(report.failures)}{listed}"
         + f"; the index holds {report.total} videos")
    for vid, why in report.failures[:10]:
        note(f"  failed: {vid}: {why}")


def _creation(args, inputs, exists: bool) -> dict:
    """How a new index is made (build's options; an existing index keeps its own)."""
    storage = getattr(args, "storage", None) or default_storage(len(inputs))
    if not (exists or getattr(args, "storage", None)) and storage != "float16":
        note(f"frames stored as {storage}: the default for {LARGE_COLLECTION:,} videos or more (--storage float16 to keep "
             "float16; docs/scale.md)")
    return {"insets": getattr(args, "insets", False), "storage": storage}


def _build(args, create: bool) -> int:
    here = job()
    try:
        index, inputs, exists = _check_build_args(args, create)
        # torchrun's default of 1 thread a rank would leave cores idle
        set_threads(args.threads or default_threads(cores_per_rank()))
        try:
            model = load_model(args.checkpoint, baseline=args.baseline, device=str(process_device(args.device)),
                               fps=args.fps, precision=args.precision)
        except (ValueError, FileNotFoundError) as exc:
            fail(str(exc))
    except (UserError, InputError):
        if here.rank == 0:
            raise
        return 2  # every rank checks the same input: rank 0 alone says what is wrong
    if here.world == 1:
        report = build(model, index, inputs, exists, args.no_progress, note, **_creation(args, inputs, exists))
    else:
        report = build_sharded(model, index, inputs, exists, here.rank, here.world, args.no_progress, note,
                               **_creation(args, inputs, exists))
    if report is None:  # a rank other than 0
        return EXIT_OK
    _summary(report)
    if report.failures and not (report.added or report.present):
        fail(f"--videos {args.videos}: none of the {len(inputs)} videos could be used (listed in {report.failures_file})")
    # under torchrun a non-zero code would make torchrun report the job as crashed: the failures are listed
    return EXIT_SOME_FAILED if report.failures and here.world == 1 else EXIT_OK


def _remove(args) -> int:
    with open_index(args.index, writable=True) as store:
        missing = [v for v in args.ids if v not in store]
        if missing:
            fail(f"ids not in --index {args.index}: {', '.join(missing[:10])}; nothing was removed")
        for vid in args.ids:
            store.remove(vid)
        left = len(store)
    note(f"removed {len(args.ids)}; the index holds {left} videos")
    return 0


def _info(args) -> int:
    with open_index(args.index) as store:
        views = sum(len(store.views(v)) for v in store.ids()) if store.insets else 0
        print(f"index {args.index}: {len(store)} videos"
              + (f" ({views} inset views, kept for {sum(bool(store.views(v)) for v in store.ids())} of them)"
                 if store.insets else "") + f", frames stored as {store.manifest.get('codebook', store.storage)}"
              + (f", descriptor rows as {store.desc_codebook.name}" if store.desc_codebook else "")
              + f", {store.disk_bytes() / 2**20:.1f} MiB on disk")
        print("built with: " + json.dumps(store.space, sort_keys=True))
        staged = set(staging_area(args.index).done()) - set(store.ids())
    if staged:
        print(f"{len(staged)} more videos staged by an interrupted sharded build (a rerun of build or add adds them)")
    return 0


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_device(args)
    if args.command in ("build", "add"):
        return _build(args, create=args.command == "build")
    if args.command == "remove":
        return _remove(args)
    return _info(args)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
