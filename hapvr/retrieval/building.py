"""Building and extending an index from video files (``python -m hapvr.index build`` / ``add``).

``model`` is a :class:`hapvr.api.VideoModel` (anything with ``features(path)``, ``scorer()``,
``fingerprint()``, ``name`` and ``model.dim``). The index records the model's feature space
(:func:`model_space`) and refuses another. A build is resumable: videos already in the index are
skipped, so a killed build continues where it stopped.

Sharded (:func:`build_sharded`, under torchrun): every rank extracts every ``world``-th of the
videos still to add and keeps each finished one in ``INDEX/staging/`` (one file a video, written
atomically); its failures go to ``INDEX/staging/failures.rankR.txt``. Rank 0 alone creates and
writes the index (it holds the writer's lock throughout): once every rank is done it adds the
staged videos in the order of the inputs, deletes them, and writes ``INDEX/failures.txt`` for
all ranks. The index is the one a single process would build (bit for bit with the same
threads). What is in the index or staged is never extracted again.

A new index stored as ``pqM`` / ``opqM`` (``index build --storage opq64``) first trains its
codebook (:class:`~hapvr.retrieval.codecs.ProductQuantizer`) on the region vectors of its first
videos, :data:`CODEBOOK_SAMPLE` of them (the features extracted for it are then added, not
extracted again); later adds code with the same codebook. ``:rowsM`` (``--storage pq128:rows64``)
also stores the coarse descriptor rows as M-byte PQ codes, their codebook trained on the same
videos' rows (docs/scale.md measures what that costs the coarse stage). A sharded build extends
such an index once one process has started it.

An index created with ``insets=True`` (``index build --insets``) also keeps each video's inset
views (:meth:`hapvr.api.VideoModel.views`: the rectangles :func:`hapvr.data.insets.detect_insets`
finds, each cropped and extracted); staged videos carry theirs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import chain
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hapvr.data.video import VideoDecodeError
from hapvr.errors import InputError, Interrupted
from hapvr.io.files import write_text
from hapvr.io.staging import StagedVideos
from hapvr.progress import progress as progress_bar
from hapvr.retrieval.coarse import DescriptorConfig, video_descriptors
from hapvr.retrieval.codecs import CENTROIDS, ProductQuantizer, coded_rows, needs_training, parse_storage
from hapvr.retrieval.index_store import IndexLockedError, IndexStore, feature_space, read_manifest
from hapvr.runtime import join_group, leave_group

STAGING = "staging"  # INDEX/staging/: videos extracted by the ranks of a sharded build, not yet in the index
GROUP_TIMEOUT_DAYS = 30  # ranks wait for the slowest at the end; a large collection extracts for days
CODEBOOK_SAMPLE = 50_000  # region vectors a new pq index's codebook is trained on (~150 videos of 34 frames)


def model_space(model) -> dict:
    """What an index records of the model it was built with."""
    return feature_space(model.scorer(), model=model.fingerprint())


def open_index(path: str | Path, model=None, writable: bool = False) -> IndexStore:
    """The index at ``path``; with ``model``, refused (one clear error) when built with another."""
    try:
        return IndexStore.open(path, model_space(model) if model is not None else None, writable=writable)
    except FileNotFoundError:
        raise InputError(f"{path}: no index there (make one with python -m hapvr.index build)", "index") from None
    except IndexLockedError as exc:
        raise InputError(f"{path}: {exc}", "index") from None
    except ValueError as exc:  # another model, or a damaged index (CorruptFileError is a ValueError too)
        raise InputError(str(exc), None if str(path) in str(exc) else "index") from None


def staging_area(index: str | Path) -> StagedVideos:
    """The folder of videos extracted by a sharded build's ranks and not yet in the index."""
    return StagedVideos(Path(index) / STAGING)


@dataclass
class BuildReport:
    """What a build or add did; ``failures``: ``(id, why)`` of the videos that could not be added."""

    inputs: int
    present: int = 0  # of the inputs, already in the index
    added: int = 0
    resumed: int = 0  # of those added, staged by an interrupted sharded build
    failures: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0  # videos in the index at the end
    failures_file: Path | None = None


LARGE_COLLECTION = 10_000  # videos: a new index built from this many stores int8 frames unless told otherwise


def default_storage(videos: int) -> str:
    """How a new index of ``videos`` inputs stores its frames when not told: float16 below
    :data:`LARGE_COLLECTION` videos, int8 from there (half the bytes; every mAP / uAP of the test
    benchmark within 0.03 point, docs/scale.md)."""
    return "int8" if videos >= LARGE_COLLECTION else "float16"


def check_against(index: Path, insets: bool, storage: str | None) -> None:
    """Refuses build options an existing index was not made with (InputError naming the option)."""
    manifest = read_manifest(index)
    if insets and not manifest.get("insets"):
        raise InputError(f"--insets: --index {index} was built without inset views; build a new index with --insets",
                         "insets")
    rows = re.fullmatch(r"o?pq(\d+).*", manifest.get("desc_codebook", ""))  # the rows' codebook: its M bytes
    stored = manifest.get("codebook", manifest.get("storage_dtype", "float16")) + (f":rows{rows[1]}" if rows else "")
    if storage not in (None, stored):
        raise InputError(f"--storage: --index {index} stores its frames as {stored}; build a new index for {storage}",
                         "storage")


def open_for_writing(index: Path, model, exists: bool, insets: bool = False, storage: str = "float16",
                     codebooks: tuple = (None, None)) -> IndexStore:
    """The index open for writing (created when it does not exist, with inset views if ``insets``
    and its frames stored as ``storage``: float16, int8, or pqM / opqM coded by the first of
    ``codebooks``, its descriptor rows coded by the second with ``:rowsM``)."""
    if exists:
        return open_index(index, model, writable=True)
    return IndexStore.create(index, model_space(model), (9, int(model.model.dim)), built_with=model.source,
                             insets=insets, storage=parse_storage(storage)[0], codebook=codebooks[0],
                             desc_codebook=codebooks[1])


def train_codebook(items, storage: str, dim: int, sample: int = CODEBOOK_SAMPLE, log=print):
    """``((frames' codebook, rows' codebook), the items read)`` of a new index stored as ``storage``
    (``pqM`` / ``opqM`` frames, ``:rowsM`` rows; None for what is not coded): the product quantisers
    trained on the region vectors of the first ``items`` (``(id, features, views)`` as
    :func:`extract` yields them, views included) up to ``sample`` vectors, or all, and on the
    descriptor rows of the same videos (:func:`train_row_codebook`)."""
    kind, m, rotate = parse_storage(storage)
    rows_m = coded_rows(storage)
    head, clips, n = [], [], 0
    for item in items:
        head.append(item)
        clips += [np.asarray(x, np.float32) for x in [item[1], *(v for _, v in item[2])]]  # [T, R, D] each
        n = sum(x.shape[0] * x.shape[1] for x in clips)
        if n >= sample:
            break
    if kind == "pq" and n < CENTROIDS:
        raise InputError(f"{storage}: the codebook is trained on the region vectors of the first videos, and these "
                         f"give {n} (at least {CENTROIDS}; tens of thousands for a good codebook)", "storage")
    rows = sum(x.shape[0] + -(-x.shape[0] // DescriptorConfig().segment_frames) for x in clips)
    if rows_m and rows < CENTROIDS:  # checked before the frames' codebook is trained for nothing
        raise InputError(f"rows{rows_m}: the descriptor rows' codebook is trained on the descriptor rows of the first "
                         f"videos, and these give {rows} (at least {CENTROIDS})", "storage")
    start, codebook = time.perf_counter(), None
    few = "; few for a good codebook (tens of thousands make one)" if min(n, sample) < 10_000 else ""
    if kind == "pq":
        codebook = ProductQuantizer.train(np.concatenate([x.reshape(-1, dim) for x in clips])[:sample], m, rotate=rotate)
        log(f"codebook {codebook.name} ({m} bytes a region vector) trained on {min(n, sample)} region vectors of "
            f"the first {len(head)} videos in {time.perf_counter() - start:.0f} s{few}")
        clips = [codebook.decode(codebook.encode(torch.from_numpy(x))).numpy() for x in clips]  # as stored
    return (codebook, rows_m and train_row_codebook(clips, rows_m, log)), head


def train_row_codebook(clips: list[np.ndarray], m: int, log=print) -> ProductQuantizer:
    """The product quantiser of ``m`` bytes of an index's coarse descriptor rows, trained on the rows
    of ``clips`` (``[T, R, D]`` features as the index stores them), with their one-frame rows
    beside (the same space; more rows)."""
    rows = np.concatenate([video_descriptors(x, cfg) for x in clips
                           for cfg in (DescriptorConfig(), DescriptorConfig(segment_frames=1))])
    start = time.perf_counter()
    codebook = ProductQuantizer.train(rows, m, rotate=False)
    log(f"descriptor rows' codebook {codebook.name} trained on {len(rows)} rows in {time.perf_counter() - start:.0f} s"
        + ("; few for a good codebook (tens of thousands make one)" if len(rows) < 10_000 else ""))
    return codebook


def extract(model, todo, failures: list, quiet: bool, rank: int | None = None, log=print, insets: bool = False):
    """``(id, features, views)`` of each video of ``todo`` that decodes (``views``: ``(inset,
    features)`` pairs with ``insets``, else none); the others are logged and appended to
    ``failures``. ``rank``: a sharded build's rank, named in its messages."""
    who = "" if rank is None else f"rank {rank}: "
    for vid, path in progress_bar(todo, desc=f"{who}indexing", unit="video", disable=quiet, position=rank or 0):
        try:
            if insets:
                (_, feats), *views = model.views(path)
            else:
                feats, views = model.features(path), []
        except (VideoDecodeError, ValueError) as exc:
            log(f"{who}warning: skipping {vid}: {exc}")
            failures.append((vid, str(exc)))
            continue
        yield vid, feats, views


def add_staged(store: IndexStore, staging: StagedVideos, inputs, failures: list) -> list[str]:
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
                yield vid, staging.read(staged[vid]), staging.read_views(staged[vid])
            except (OSError, KeyError) as exc:  # damaged on disk: extracted again by the next run
                failures.append((vid, f"its staged features are unreadable ({exc}); a rerun extracts it again"))
                continue
            added.append(vid)

    store.add_many(read())  # durable when it returns
    staging.clear(staged)
    return added


def write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    """``ID<TAB>why`` lines (newlines in ``why`` become spaces), written atomically; no file when
    there are none."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    write_text(path, "".join(f"{vid}\t{' '.join(why.splitlines())}\n" for vid, why in failures))


def read_failures(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split("\t", 1)) for line in path.read_text().splitlines() if "\t" in line]


def plan(store: IndexStore, staging: StagedVideos, inputs, index: Path, model_name: str, ranks: int = 1,
         log=print) -> tuple[list, int, set[str]]:
    """``(videos to extract, how many of the inputs are in the index, staged ids it lacks)``, announced."""
    present = set(store.ids())
    staged = set(staging.done()) - present
    todo = [(vid, path) for vid, path in inputs if vid not in present and vid not in staged]
    in_index = sum(vid in present for vid, _ in inputs)
    log(f"{len(inputs)} videos, {in_index} already in {index}"
        + (f", {len(staged)} staged by an interrupted run" if staged else "")
        + f", {len(todo)} to add" + (f" on {ranks} ranks" if ranks > 1 else "") + f" (model: {model_name})")
    return todo, in_index, staged


def finish(report: BuildReport, index: Path, inputs) -> BuildReport:
    """Sorts the failures in input order and writes ``INDEX/failures.txt``."""
    place = {vid: i for i, (vid, _) in enumerate(inputs)}
    report.failures = sorted(report.failures, key=lambda f: (place.get(f[0], len(place)), f[0]))
    report.failures_file = index / "failures.txt"
    write_failures(report.failures_file, report.failures)
    return report


def build(model, index: Path, inputs: list[tuple[str, str]], exists: bool, quiet: bool = False,
          log=print, insets: bool = False, storage: str = "float16") -> BuildReport:
    """Adds every video of ``inputs`` the index lacks, in one process (the index is created when
    ``exists`` is False, with inset views if ``insets``); staged videos of an interrupted sharded
    build are added first."""
    staging = staging_area(index)
    report = BuildReport(len(inputs))
    codebooks, items = (None, None), None
    if not exists and needs_training(storage):  # a new index: nothing in it or staged
        items = extract(model, inputs, report.failures, quiet, log=log, insets=insets)
        try:
            codebooks, head = train_codebook(items, storage, int(model.model.dim), log=log)
        except KeyboardInterrupt:
            raise Interrupted(f"nothing saved yet (the codebook of {index} was being trained)") from None
        items = chain(head, items)
    with open_for_writing(index, model, exists, insets, storage, codebooks) as store:
        todo, report.present, _ = plan(store, staging, inputs, index, model.name, log=log)
        report.resumed = len(add_staged(store, staging, inputs, report.failures))
        extracted = 0
        try:
            for vid, feats, views in items or extract(model, todo, report.failures, quiet, log=log, insets=store.insets):
                store.add(vid, feats, views)
                extracted += 1
        except KeyboardInterrupt:
            raise Interrupted(f"{len(store)} videos saved in {index}; run the same command to continue") from None
        report.added = report.resumed + extracted
        report.total = len(store)
    return finish(report, index, inputs)


def build_sharded(model, index: Path, inputs: list[tuple[str, str]], exists: bool, rank: int, world: int,
                  quiet: bool = False, log=print, insets: bool = False, storage: str = "float16"
                  ) -> BuildReport | None:
    """Rank ``rank`` of ``world`` (see the module docstring); returns the report on rank 0, None
    on the others. A problem rank 0 finds before any extraction (another model, a locked index)
    is raised there as :class:`InputError`; the other ranks then return None."""
    join_group("gloo", timedelta(days=GROUP_TIMEOUT_DAYS))
    staging = staging_area(index)
    store, todo, present, leftovers = None, [None], 0, set()
    try:
        if rank == 0:
            try:
                if not exists and needs_training(storage):
                    raise InputError(f"{storage}: a new index with a codebook is started by one process (it trains "
                                     "the codebook on its first videos); add the rest under torchrun", "storage")
                store = open_for_writing(index, model, exists, insets, storage)
                for old in staging.dir.glob("failures.rank*.txt"):  # an earlier run's: its videos are retried
                    old.unlink()
                todo = [(*plan(store, staging, inputs, index, model.name, world, log), store.insets)]
                present, leftovers = todo[0][1], todo[0][2]
            except (ValueError, OSError) as exc:  # another model, a locked or foreign folder
                todo = [exc if isinstance(exc, InputError) else InputError(str(exc), "index")]
        dist.broadcast_object_list(todo, src=0)  # the videos to extract, or why there are none
        if isinstance(todo[0], BaseException):
            if rank == 0:
                raise todo[0]
            return None
        failures: list[tuple[str, str]] = []
        try:
            for vid, feats, views in extract(model, todo[0][0][rank::world], failures, quiet, rank, log, todo[0][3]):
                staging.write(vid, feats.numpy(), [(inset.to_dict(), x.numpy()) for inset, x in views])
        except KeyboardInterrupt:
            raise Interrupted(f"rank {rank}: the videos it extracted are kept in {staging.dir}; run the same "
                              f"command to continue") from None
        if failures:
            staging.dir.mkdir(parents=True, exist_ok=True)
        write_failures(staging.dir / f"failures.rank{rank}.txt", failures)
        dist.barrier()
        if rank != 0:
            return None
        report = BuildReport(len(inputs), present)
        report.failures = [f for r in range(world) for f in read_failures(staging.dir / f"failures.rank{r}.txt")]
        for r in range(world):
            (staging.dir / f"failures.rank{r}.txt").unlink(missing_ok=True)
        added = add_staged(store, staging, inputs, report.failures)
        report.added, report.resumed, report.total = len(added), len(leftovers.intersection(added)), len(store)
        return finish(report, index, inputs)
    finally:
        if store is not None:
            store.close()
        leave_group(wait=False)
