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
"""

from __future__ import annotations

import sys
from pathlib import Path

from hapvr.cli import ArgumentParser, fail, input_file, output_folder, positive_float, run_main

EXAMPLES = """\
  python -m hapvr.index build --videos my_videos/ --index my.index
  python -m hapvr.index add --videos new_videos/ --index my.index
  python -m hapvr.index remove --index my.index holiday_2019 holiday_2020
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
        p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
        p.add_argument("--no-progress", action="store_true", help="no progress display")
    p = sub.add_parser("remove", help="remove videos by id", description="remove videos by id")
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("ids", nargs="+", help="ids to remove")
    p = sub.add_parser("info", help="what the index holds", description="what the index holds")
    p.add_argument("--index", required=True, help="index folder")
    return ap


def model_space(model) -> dict:
    """What an index records of the model it was built with."""
    from hapvr.retrieval.index_store import feature_space

    return feature_space(model.scorer(), model=model.fingerprint())


def open_index(path: str, model=None, writable: bool = False):
    """The index at ``path``; with ``model``, refused (one clear error) when built with another."""
    from hapvr.retrieval.index_store import IndexStore

    try:
        return IndexStore.open(path, model_space(model) if model is not None else None, writable=writable)
    except FileNotFoundError:
        fail(f"--index {path}: no index there (make one with python -m hapvr.index build)")
    except ValueError as exc:  # another model, or a damaged index (CorruptFileError is a ValueError too)
        fail(f"--index {exc}" if str(path) not in str(exc) else str(exc))
    except RuntimeError as exc:  # locked by a running writer
        fail(f"--index {path}: {exc}")


def _build(args, create: bool) -> int:
    from hapvr.api import load_model
    from hapvr.data.video import VideoDecodeError
    from hapvr.extract import check_unique, list_inputs
    from hapvr.progress import progress
    from hapvr.retrieval.index_store import IndexStore

    if args.checkpoint:
        input_file(args.checkpoint, "--checkpoint")
    inputs = list_inputs(args.videos, log=lambda m: print(m, file=sys.stderr))
    if not inputs:
        fail(f"--videos {args.videos}: no video found")
    check_unique(inputs, args.videos)
    index = Path(args.index)
    exists = (index / "manifest.json").is_file()
    if not exists:
        if not create:
            fail(f"--index {args.index}: no index there (make one with python -m hapvr.index build)")
        if index.exists() and (not index.is_dir() or any(index.iterdir())):
            fail(f"--index {args.index}: exists and is not an index or an empty folder")
        output_folder(str(index.parent) if str(index.parent) else ".", "--index", what=args.index)
    try:
        model = load_model(args.checkpoint, baseline=args.baseline, device=args.device, fps=args.fps)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if exists:
        store = open_index(args.index, model, writable=True)
    else:
        store = IndexStore.create(index, model_space(model), (9, int(model.model.dim)))
    failures: list[tuple[str, str]] = []
    added = 0
    with store:
        present = set(store.ids())
        todo = [(vid, path) for vid, path in inputs if vid not in present]
        print(f"{len(inputs)} videos, {len(inputs) - len(todo)} already in {args.index}, {len(todo)} to add "
              f"(model: {model.name})", file=sys.stderr)
        for vid, path in progress(todo, desc="indexing", unit="video", disable=args.no_progress):
            try:
                feats = model.features(path)
            except (VideoDecodeError, ValueError) as exc:
                print(f"warning: skipping {vid}: {exc}", file=sys.stderr)
                failures.append((vid, str(exc)))
                continue
            store.add(vid, feats)
            added += 1
        total = len(store)
    fail_file = index / "failures.txt"
    if failures:
        with open(fail_file, "w") as f:
            for vid, why in failures:
                f.write(f"{vid}\t{why}\n")
    elif fail_file.exists():
        fail_file.unlink()
    print(f"added {added}, already present {len(inputs) - len(todo)}, failed {len(failures)}"
          + (f" (listed in {fail_file})" if failures else "") + f"; the index holds {total} videos", file=sys.stderr)
    for vid, why in failures[:10]:
        print(f"  failed: {vid}: {why}", file=sys.stderr)
    return 0


def _remove(args) -> int:
    store = open_index(args.index, writable=True)
    with store:
        missing = [v for v in args.ids if v not in store]
        if missing:
            fail(f"ids not in --index {args.index}: {', '.join(missing[:10])}; nothing was removed")
        for vid in args.ids:
            store.remove(vid)
        left = len(store)
    print(f"removed {len(args.ids)}; the index holds {left} videos", file=sys.stderr)
    return 0


def _info(args) -> int:
    import json

    store = open_index(args.index)
    with store:
        print(f"index {args.index}: {len(store)} videos, {store.disk_bytes() / 2**20:.1f} MiB on disk")
        print("built with: " + json.dumps(store.space, sort_keys=True))
    return 0


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("build", "add"):
        return _build(args, create=args.command == "build")
    if args.command == "remove":
        return _remove(args)
    return _info(args)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
