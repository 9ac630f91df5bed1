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
on a CUDA machine, else the CPU), extracts every WORLD_SIZE-th of the videos still to add, and
keeps each finished one in INDEX/staging/ (one file a video, written to a temporary name and
renamed); its failures go to INDEX/staging/failures.rankR.txt. Rank 0 alone creates and writes
the index (it holds the writer's lock throughout): once every rank is done it adds the staged
videos in the order of --videos, deletes them, writes INDEX/failures.txt for all ranks and
prints the summary. The index is the one a single process would build (bit for bit with the
same --threads). A killed sharded build resumes like any other: what is in the index or staged
is not extracted again (a rerun with one process adds the staged videos too). Each rank uses
its share of the machine's cores unless --threads says otherwise. docs/formats.md describes
the index folder and the staging files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hapvr.cli import (ArgumentParser, UserError, add_threads, cpu_cores, fail, input_file, output_folder,
                       positive_float, run_main, set_threads)

EXAMPLES = """\
  python -m hapvr.index build --videos my_videos/ --index my.index
  python -m hapvr.index add --videos new_videos/ --index my.index
  python -m hapvr.index remove --index my.index holiday_2019 holiday_2020
  torchrun --nproc-per-node 4 -m hapvr.index build --videos my_videos/ --index my.index
"""
STAGING = "staging"  # INDEX/staging/: videos extracted by the ranks of a sharded build, not yet in the index
GROUP_TIMEOUT_DAYS = 30  # ranks wait for the slowest at the end; a large collection extracts for days


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
        add_threads(p, "one per core; under torchrun the cores divided among this machine's ranks")
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


def staging_area(index: Path):
    """The folder of videos extracted by a sharded build's ranks and not yet in the index."""
    from hapvr.extract import Parts

    return Parts(index / STAGING)


# --- build and add ------------------------------------------------------------------------------

def _check_build_args(args, create: bool) -> tuple[Path, list[tuple[str, str]], bool]:
    """``(index folder, (id, path) inputs, whether the index exists)``; every argument checked,
    nothing written but the --index folder's parent."""
    from hapvr.extract import check_unique, list_inputs

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
    return index, inputs, exists


def _load_model(args):
    from hapvr.api import load_model
    from hapvr.precision import process_device

    try:
        device = process_device(args.device)
        return load_model(args.checkpoint, baseline=args.baseline, device=str(device), fps=args.fps)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def _open_store(args, index: Path, exists: bool, model):
    """The index open for writing (created when it does not exist)."""
    from hapvr.retrieval.index_store import IndexStore

    if exists:
        return open_index(args.index, model, writable=True)
    return IndexStore.create(index, model_space(model), (9, int(model.model.dim)))


def _extract(model, todo, failures: list, quiet: bool, rank: int | None = None):
    """``(id, features)`` of each video of ``todo`` that decodes; the others are warned about and
    appended to ``failures``. ``rank``: a sharded build's rank, named in its messages."""
    from hapvr.data.video import VideoDecodeError
    from hapvr.progress import progress

    who = "" if rank is None else f"rank {rank}: "
    for vid, path in progress(todo, desc=f"{who}indexing", unit="video", disable=quiet, position=rank or 0):
        try:
            feats = model.features(path)
        except (VideoDecodeError, ValueError) as exc:
            print(f"{who}warning: skipping {vid}: {exc}", file=sys.stderr)
            failures.append((vid, str(exc)))
            continue
        yield vid, feats


def _add_staged(store, staging, inputs, failures: list) -> list[str]:
    """Adds the staged videos that the index lacks, in the order of ``inputs`` (others after, by
    id), then deletes the staged files; returns the ids added. A staged file is deleted only
    after the index holds its video durably, so a kill in between loses nothing."""
    staged = staging.done()
    place = {vid: i for i, (vid, _) in enumerate(inputs)}
    fresh = sorted((v for v in staged if v not in store), key=lambda v: (place.get(v, len(place)), v))

    added = []

    def read():
        for vid in fresh:
            try:
                yield vid, staging.read(staged[vid])
            except (OSError, KeyError) as exc:  # damaged on disk: extracted again by the next run
                failures.append((vid, f"its staged features are unreadable ({exc}); a rerun extracts it again"))
                continue
            added.append(vid)

    store.add_many(read())  # durable when it returns
    staging.clear(staged)
    return added


def _write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    """``ID<TAB>why`` lines (one line each: newlines in ``why`` become spaces), written atomically;
    no file when there are none."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for vid, why in failures:
            f.write(f"{vid}\t{' '.join(why.splitlines())}\n")
    os.replace(tmp, path)


def _read_failures(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split("\t", 1)) for line in path.read_text().splitlines() if "\t" in line]


def _summary(index: Path, inputs, present: int, added: int, resumed: int, failures, total: int) -> None:
    fail_file = index / "failures.txt"
    place = {vid: i for i, (vid, _) in enumerate(inputs)}
    failures = sorted(failures, key=lambda f: (place.get(f[0], len(place)), f[0]))
    _write_failures(fail_file, failures)
    print(f"added {added}" + (f" ({resumed} staged by an interrupted run)" if resumed else "")
          + f", already present {present}, failed {len(failures)}"
          + (f" (listed in {fail_file})" if failures else "") + f"; the index holds {total} videos", file=sys.stderr)
    for vid, why in failures[:10]:
        print(f"  failed: {vid}: {why}", file=sys.stderr)


def _plan(args, store, staging, inputs, model_name: str, ranks: int = 1) -> tuple[list, int, set[str]]:
    """``(videos to extract, how many of the inputs are in the index, staged ids it lacks)``, announced."""
    present = set(store.ids())
    staged = set(staging.done()) - present
    todo = [(vid, path) for vid, path in inputs if vid not in present and vid not in staged]
    in_index = sum(vid in present for vid, _ in inputs)
    print(f"{len(inputs)} videos, {in_index} already in {args.index}"
          + (f", {len(staged)} staged by an interrupted run" if staged else "")
          + f", {len(todo)} to add" + (f" on {ranks} ranks" if ranks > 1 else "")
          + f" (model: {model_name})",
          file=sys.stderr)
    return todo, in_index, staged


def _build(args, create: bool) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        index, inputs, exists = _check_build_args(args, create)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if args.threads or world > 1:  # torchrun's default of 1 thread a rank leaves cores idle
            set_threads(args.threads or max(1, cpu_cores() // local_ranks))
        model = _load_model(args)
    except UserError:
        if rank == 0:
            raise
        return 2  # every rank checks the same input: rank 0 alone says what is wrong
    if world == 1:
        return _build_one(args, index, inputs, exists, model)
    return _build_sharded(args, index, inputs, exists, model, rank, world)


def _build_one(args, index: Path, inputs, exists: bool, model) -> int:
    staging = staging_area(index)
    failures: list[tuple[str, str]] = []
    with _open_store(args, index, exists, model) as store:
        todo, present, _ = _plan(args, store, staging, inputs, model.name)
        resumed = len(_add_staged(store, staging, inputs, failures))
        extracted = 0
        for vid, feats in _extract(model, todo, failures, args.no_progress):
            store.add(vid, feats)
            extracted += 1
        total = len(store)
    _summary(index, inputs, present, resumed + extracted, resumed, failures, total)
    return 0


def _build_sharded(args, index: Path, inputs, exists: bool, model, rank: int, world: int) -> int:
    """Rank ``rank`` of ``world``: see the module docstring. Rank 0 opens (or creates) the index and
    sends every rank the list of videos to extract; all extract into the staging folder; after the
    last has finished, rank 0 adds what they staged."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(days=GROUP_TIMEOUT_DAYS))
    staging = staging_area(index)
    store, todo, present, leftovers = None, [None], 0, set()
    try:
        if rank == 0:
            try:
                store = _open_store(args, index, exists, model)
                for old in staging.dir.glob("failures.rank*.txt"):  # an earlier run's: its videos are retried
                    old.unlink()
                plan, present, leftovers = _plan(args, store, staging, inputs, model.name, world)
                todo = [plan]
            except (UserError, ValueError, OSError) as exc:
                todo = [str(exc)]
        dist.broadcast_object_list(todo, src=0)  # the videos to extract, or why there are none
        if isinstance(todo[0], str):
            if rank == 0:
                raise UserError(todo[0])
            return 2
        failures: list[tuple[str, str]] = []
        for vid, feats in _extract(model, todo[0][rank::world], failures, args.no_progress, rank):
            staging.write(vid, feats.numpy())
        if failures:
            staging.dir.mkdir(parents=True, exist_ok=True)
        _write_failures(staging.dir / f"failures.rank{rank}.txt", failures)
        dist.barrier()
        if rank != 0:
            return 0
        failures = [f for r in range(world) for f in _read_failures(staging.dir / f"failures.rank{r}.txt")]
        for r in range(world):
            (staging.dir / f"failures.rank{r}.txt").unlink(missing_ok=True)
        added = _add_staged(store, staging, inputs, failures)
        _summary(index, inputs, present, len(added), len(leftovers.intersection(added)), failures, len(store))
        return 0
    finally:
        if store is not None:
            store.close()
        dist.destroy_process_group()


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
        staged = set(staging_area(Path(args.index)).done()) - set(store.ids())
    if staged:
        print(f"{len(staged)} more videos staged by an interrupted sharded build (a rerun of build or add adds them)")
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
