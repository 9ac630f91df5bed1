"""Benchmark of hapvr.retrieval: index build, two-stage query latency and memory, coarse recall
against exhaustive search, duplicates(), and the coarse stage alone at a million descriptors.

The runs recorded in ``benchmarks/results/search.json`` (each part < ~10 min on 2 cores):

    python -m benchmarks.bench_search --part index,latency,recall --size 1000
    python -m benchmarks.bench_search --part latency,recall,duplicates --size 1000 --threads 1
    python -m benchmarks.bench_search --part index --size 20000 --threads 1
    python -m benchmarks.bench_search --part latency --size 20000            # and --threads 1
    python -m benchmarks.bench_search --part recall --size 20000 --recall-queries 10
    python -m benchmarks.bench_search --part duplicates --size 20000 --min-coarse 0.5 --threads 1
    python -m benchmarks.bench_search --part coarse --rows 1000000 --threads 1
    python -m benchmarks.bench_search --part report                          # table + PASS/FAIL
    python -m benchmarks.bench_search --part index,latency,recall --size 20000 --storage int8
    python -m benchmarks.bench_search --part index,latency,recall --size 20000 --storage pq128
    python -m benchmarks.bench_search --part index,latency --size 100000 --storage pq128
    python -m benchmarks.bench_search --part recall --size 100000 --storage pq128 --recall-queries 30
    python -m benchmarks.bench_search --part recall --size 100000 --storage pq128 --recall-queries 10 \
        --coarse flat            # or ivf, ivfpq with --nprobe / --shortlist: recall_coarse-... entries
    python -m benchmarks.bench_search --part add --size 100000 --storage pq128 --add 10000
    python -m benchmarks.bench_search --part rowcodes --size 20000 --storage pq128
    python -m benchmarks.bench_search --part bound --size 20000 --recall-queries 30

``add`` appends ``--add`` new videos to a copy of an index (time per thousand, bytes written,
files appended rather than rewritten, the search's pick-up of them); ``rowcodes`` simulates
descriptor rows stored as PQ codes (``--storage ...:rowsM``) on an index; ``bound`` re-ranks
each query's 400 candidates of the float16 index from its features through PQ 128 and through
the Gaussian test channel at 2-3 bits a dimension (what any code of that size can keep).

``--storage int8`` builds and measures an index whose frames are int8 codes (its own folder, its
numbers under ``storage-int8`` in the JSON); ``--storage pq128`` (or ``pqM`` / ``opqM``) one whose
frames are the codes of a product quantiser trained on 50,000 region vectors of the collection's
first videos; the recall part of either also scores its two-stage top-10
against the float16 index's exhaustive top-10 when that index is in ``--workdir``. Exhaustive
top-10s are kept in ``--workdir`` (``truth-SIZE-STORAGE.json``) as they are scored, so a recall part
killed at 100k or 1M videos resumes where it stopped.

Data: :class:`hapvr.retrieval.planted.PlantedCollection` (R = 9, D = 512, 10-60 frames a video;
20 % of the videos in planted groups of a source and 3 copies made by frame drops, shuffles,
speed changes, sub-clips, a copy-wide shift and per-region noise; the rest distractors that
share Zipf-popular scenes). Queries are held-out copies cut or filled to 30 frames (a short copy
is followed by unrelated frames, as in a compilation). Full float16 features are on disk in the
index. Scorer: :class:`hapvr.evaluation.scorers.ChamferBaseline` (fp32; no checkpoint needed).

Each part runs in under ~10 minutes on a 2-core machine and merges its numbers into the JSON
file (``--json``, default ``benchmarks/results/search.json``) with the date, machine and load.
Indexes are kept in ``--workdir`` between parts (a killed build resumes where it stopped).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import _harness as H
from hapvr.cli import int_at_least

HERE = Path(__file__).resolve().parent

QUERY_FRAMES = 30
CANDIDATES = (25, 50, 100, 200, 400)
TARGETS = {"latency_s": 1.0, "rss_bytes": 4 * 1024 ** 3, "recall": 0.95}


def collection(size: int):
    from hapvr.retrieval.planted import PlantedCollection, PlantedConfig

    return PlantedCollection(PlantedConfig(n_videos=size))


def space() -> dict:
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.index_store import feature_space

    return feature_space(ChamferBaseline(), backbone="synthetic-planted", pca=None, region_shape=[9, 512])


def index_path(args, size: int, storage: str | None = None) -> Path:
    storage = storage or args.storage
    return Path(args.workdir) / (f"index-{size}" + ("" if storage == "float16" else f"-{storage}"))


def queries(col, n: int, first: int = 0) -> list[tuple[np.ndarray, str]]:
    return [col.query(i, frames=QUERY_FRAMES) for i in range(first, first + n)]


# --- parts ------------------------------------------------------------------------------------


def stored_as(storage: str, col, sample_vectors: int = 50_000) -> tuple[str, object]:
    """``(IndexStore storage, codebook)`` of ``--storage``: ``pqM`` / ``opqM`` train a product
    quantiser of M bytes (with OPQ's rotation for ``opq``) on ``sample_vectors`` region vectors of
    the collection's first videos (timed, printed)."""
    if storage in ("float16", "int8"):
        return storage, None
    from hapvr.retrieval.codecs import ProductQuantizer

    rotate, m = storage.startswith("opq"), int(storage.lstrip("opq"))
    vectors, n = [], 0
    for vid in col.ids:
        x = col.video(vid).reshape(-1, 512)
        vectors.append(x)
        n += len(x)
        if n >= sample_vectors:
            break
    t0 = time.perf_counter()
    codebook = ProductQuantizer.train(np.concatenate(vectors)[:sample_vectors], m, rotate=rotate)
    print(f"{codebook.name}: trained on {min(n, sample_vectors)} region vectors in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return "pq", codebook


def part_index(args, size: int) -> dict:
    """Builds (or resumes) the index of ``size`` videos; times only the index's own work."""
    from hapvr.retrieval.index_store import IndexStore

    col = collection(size)
    path = index_path(args, size)
    if (path / "manifest.json").exists():
        store = IndexStore.open(path, space(), writable=True)
    else:
        storage, codebook = stored_as(args.storage, col)
        store = IndexStore.create(path, space(), (9, 512), storage=storage, codebook=codebook)
    present = set(store.ids())
    todo = [v for v in col.ids if v not in present]
    index_seconds, generate_seconds, frames = 0.0, 0.0, 0
    from hapvr.progress import progress

    bar = progress(total=len(todo), unit="video", desc=f"indexing {size}")
    for b0 in range(0, len(todo), 256):
        t0 = time.perf_counter()
        batch = [(v, col.video(v)) for v in todo[b0: b0 + 256]]
        t1 = time.perf_counter()
        store.add_many(batch)  # one sync per call
        index_seconds += time.perf_counter() - t1
        generate_seconds += t1 - t0
        frames += sum(x.shape[0] for _, x in batch)
        bar.update(len(batch))
    bar.close()
    out = {"videos": len(store), "resumed_from": len(present), "added": len(todo),
           "add_seconds": round(index_seconds, 2), "generate_seconds": round(generate_seconds, 2),
           "frames_added": frames, "disk_bytes": store.disk_bytes(),
           "frames_bytes": (path / f"g{store.generation}.frames").stat().st_size,
           "descriptor_bytes": (path / f"g{store.generation}.desc").stat().st_size}
    if todo:
        out["videos_per_s"] = round(len(todo) / index_seconds, 1)
    store.close()
    return out


def _evict(path: Path) -> None:
    """Drops this index's frames from the page cache (this file only), for a cold-cache query."""
    for p in path.glob("g*.frames"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def latency_child(args, size: int) -> dict:
    """In a fresh process: opening, the coarse index (flat: ready on open; an IVF trained, saved
    and read back for comparison), 30-frame queries warm and cold, and the peak resident memory."""
    import faiss

    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.coarse import CoarseConfig, CoarseIndex, coarse_index, video_descriptors
    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.search import DEFAULT_CANDIDATES, Searcher

    col = collection(size)
    qs = queries(col, args.latency_queries, first=1000)
    path = index_path(args, size)
    t0 = time.perf_counter()
    store = IndexStore.open(path, space())
    out = {"open_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    coarse = coarse_index(store, CoarseConfig(), persist=False)
    out["coarse_default"] = {"kind": coarse.kind, "rows": coarse.rows, "ready_after_open_s": time.perf_counter() - t0}
    scorer = ChamferBaseline()
    searcher = Searcher(store, scorer, prebuilt=coarse)
    for name, evict in (("warm", False), ("cold", True)):
        totals, coarse_s, rerank_s = [], [], []
        for i, (q, _) in enumerate(qs):
            if evict:
                _evict(path)
            t0 = time.perf_counter()
            r = searcher.search(q, k=10, candidates=DEFAULT_CANDIDATES)
            totals.append(time.perf_counter() - t0)
            coarse_s.append(r.coarse_seconds)
            rerank_s.append(r.rerank_seconds)
        out[f"query_{name}"] = {"median_s": statistics.median(totals), "max_s": max(totals),
                                "p95_s": float(np.percentile(totals, 95)),
                                "coarse_median_s": statistics.median(coarse_s),
                                "rerank_median_s": statistics.median(rerank_s)}
    out["peak_rss_bytes"] = H._status_kib("VmHWM:") * 1024  # open, coarse index and queries
    # the IVF alternative: trained now, or saved and read back
    live = np.concatenate([np.arange(s, s + c) for _, s, c in zip(*store.row_layout())])
    t0 = time.perf_counter()
    ivf = CoarseIndex.build(coarse.vectors, CoarseConfig(kind="ivf"), live)
    ivf_s = time.perf_counter() - t0
    ivf.set_videos(*store.row_layout())
    saved = Path(args.workdir) / f"ivf-{size}.faiss"
    t0 = time.perf_counter()
    ivf.save(saved, store.state())
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    faiss.read_index(str(saved))
    out["coarse_ivf"] = {"nlist": int(ivf.ann.nlist), "train_and_add_s": ivf_s, "save_s": save_s,
                         "read_back_s": time.perf_counter() - t0, "file_bytes": saved.stat().st_size}
    for name, index in (("flat", coarse), ("ivf", ivf)):
        times = []
        for q, _ in qs:
            rows = video_descriptors(q, store.descriptor)
            t0 = time.perf_counter()
            index.search(rows, DEFAULT_CANDIDATES)
            times.append(time.perf_counter() - t0)
        out[f"coarse_{name}_search_median_s"] = statistics.median(times)
    del ivf
    out["candidates"] = DEFAULT_CANDIDATES
    out["faiss_threads"] = faiss.omp_get_max_threads()
    out["peak_rss_with_ivf_training_bytes"] = H._status_kib("VmHWM:") * 1024
    return out


def part_latency(args, size: int) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--latency-child", str(size), "--workdir", args.workdir,
           "--latency-queries", str(args.latency_queries), "--storage", args.storage] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=H.ROOT)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"latency child for {size} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def exhaustive_top10(args, size: int, storage: str, qs) -> tuple[list[list[tuple[str, float]]], float]:
    """Each query's exhaustive top-10 ``(id, score)`` on the ``storage`` index of ``size`` videos,
    kept in ``--workdir`` (``truth-SIZE-STORAGE.json``, written atomically after every 5 queries) so
    that a killed run resumes (hours at a million videos); and the mean seconds a query took
    (scored in batches of 5), over the runs that scored them."""
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.io.files import write_json
    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.search import Searcher

    path = Path(args.workdir) / f"truth-{size}-{storage}.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    todo = [i for i in range(len(qs)) if str(i) not in done]
    if todo:
        with IndexStore.open(index_path(args, size, storage), space()) as store:
            searcher = Searcher(store, ChamferBaseline())
            for b0 in range(0, len(todo), 5):
                batch = todo[b0: b0 + 5]
                t0 = time.perf_counter()
                found = searcher.search_many([qs[i][0] for i in batch], k=10, exhaustive=True)
                each = (time.perf_counter() - t0) / len(batch)
                done.update({str(i): {"top": [[h.id, h.score] for h in r.hits], "seconds": each}
                             for i, r in zip(batch, found)})
                write_json(path, done)
                print(f"  exhaustive {storage}: {len(done)}/{len(qs)} queries ({each:.1f} s a query)", flush=True)
    mine = [done[str(i)] for i in range(len(qs))]
    return [[tuple(x) for x in q["top"]] for q in mine], statistics.mean(q["seconds"] for q in mine)


def part_recall(args, size: int) -> dict:
    """Fraction of the exhaustive top-10 in the coarse top-C, per query, and the speed-up."""
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.search import DEFAULT_CANDIDATES, Searcher

    col = collection(size)
    qs = queries(col, args.recall_queries)
    exhaustive, batched_s = exhaustive_top10(args, size, args.storage, qs)
    with IndexStore.open(index_path(args, size), space()) as store:
        searcher = Searcher(store, ChamferBaseline(), coarse_config(args), persist_coarse=args.coarse == "auto")
        single_s = None
        if size <= 20_000:  # one more exhaustive query alone: minutes past that
            t0 = time.perf_counter()
            searcher.search(qs[0][0], k=10, exhaustive=True)
            single_s = time.perf_counter() - t0
        recall = {C: [] for C in CANDIDATES}
        recall_copies = {C: [] for C in CANDIDATES}
        per_query = []
        for (q, source), ex in zip(qs, exhaustive):
            top = [v for v, _ in ex]
            planted = [v for v in top if col.group_of.get(v) == source]
            cands, _ = searcher.candidates(q, max(CANDIDATES))
            for C in CANDIDATES:
                found = set(cands[:C])
                recall[C].append(sum(v in found for v in top) / len(top))
                if planted:
                    recall_copies[C].append(sum(v in found for v in planted) / len(planted))
            per_query.append({"planted_in_top10": len(planted), "top10_scores": [round(s, 4) for _, s in ex]})
        t0 = time.perf_counter()
        two_stage = [searcher.search(q, k=10) for q, _ in qs]
        two_stage_s = (time.perf_counter() - t0) / len(qs)
        same_top1 = float(np.mean([a.hits[0].id == b[0][0] for a, b in zip(two_stage, exhaustive)]))
    extra = {}
    if args.storage != "float16" and (index_path(args, size, "float16") / "manifest.json").exists():
        truth, _ = exhaustive_top10(args, size, "float16", qs)  # against float16's exhaustive top-10
        kept = [len({h.id for h in a.hits} & {v for v, _ in b}) / len(b) for a, b in zip(two_stage, truth)]
        extra = {"recall_of_float16_exhaustive_top10": round(float(np.mean(kept)), 4),
                 "recall_of_float16_exhaustive_top10_min": round(float(np.min(kept)), 2)}
    speed = lambda t: None if t is None else t / two_stage_s  # noqa: E731
    return extra | {"queries": len(qs), "candidates_default": DEFAULT_CANDIDATES,
            "recall_top10": {C: round(float(np.mean(v)), 4) for C, v in recall.items()},
            "recall_top10_min": {C: round(float(np.min(v)), 2) for C, v in recall.items()},
            "recall_top10_ci95": {C: _bootstrap_ci(v) for C, v in recall.items()},
            "recall_planted_in_top10": {C: round(float(np.mean(v)), 4) if v else None
                                        for C, v in recall_copies.items()},
            "exhaustive_single_query_s": single_s, "exhaustive_batched_per_query_s": batched_s,
            "two_stage_per_query_s": two_stage_s, "speedup_vs_single": speed(single_s),
            "speedup_vs_batched": speed(batched_s), "two_stage_top1_equals_exhaustive": same_top1,
            "per_query": per_query}


def _io_written() -> int:
    """Bytes this process has passed to write calls so far (``wchar`` of /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def part_add(args, size: int) -> dict:
    """``--add`` new videos into a copy of the ``size`` index (the index itself stays as the other
    parts measured it): the appends' time per thousand videos, the bytes written against the
    index's size (appends, not a rewrite: the files' earlier bytes are left as they were, checked
    by CRC), and the search's pick-up of them (the saved IVF extended, not trained again)."""
    import shutil
    import zlib

    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.planted import PlantedCollection, PlantedConfig
    from hapvr.retrieval.search import Searcher

    source = index_path(args, size)
    copy = Path(args.workdir) / f"add-{source.name}"
    shutil.rmtree(copy, ignore_errors=True)
    t0 = time.perf_counter()
    shutil.copytree(source, copy)
    copy_s = time.perf_counter() - t0
    try:
        with IndexStore.open(copy, space()) as store:  # the coarse file as a search leaves it
            Searcher(store, ChamferBaseline())
        before = {p.name: (p.stat().st_size, p.stat().st_ino) for p in copy.iterdir()}
        crc_of = lambda p, n: zlib.crc32(p.open("rb").read(min(n, 1 << 26)))  # noqa: E731  first 64 MiB
        crcs = {n: crc_of(copy / n, sz) for n, (sz, _) in before.items()}
        extra = PlantedCollection(PlantedConfig(n_videos=args.add, seed=7))  # others than the index's
        store = IndexStore.open(copy, space(), writable=True)
        wrote0, add_s, frames = _io_written(), 0.0, 0
        for b0 in range(0, args.add, 256):
            batch = [(f"add-{v}", extra.video(v)) for v in extra.ids[b0: b0 + 256]]
            frames += sum(len(x) for _, x in batch)
            t1 = time.perf_counter()
            store.add_many(batch)
            add_s += time.perf_counter() - t1
        written = _io_written() - wrote0
        store.close()
        t1 = time.perf_counter()
        with IndexStore.open(copy, space()) as store:
            searcher = Searcher(store, ChamferBaseline())  # extends the saved IVF by the new rows, saves it
            pickup_s = time.perf_counter() - t1
            kind, found = searcher.kind, searcher.search(extra.video(extra.ids[0])[:QUERY_FRAMES], k=1).hits[0].id
        after = {p.name: (p.stat().st_size, p.stat().st_ino) for p in copy.iterdir()}
        kept = {n: after.get(n, (0, 0))[1] == ino and after[n][0] >= sz and crc_of(copy / n, sz) == crcs[n]
                for n, (sz, ino) in before.items() if not n.endswith((".faiss", ".json"))}
        return {"index_videos": size, "added": args.add, "frames_added": frames, "copy_s": round(copy_s, 1),
                "add_s": round(add_s, 2), "add_s_per_1000": round(add_s * 1000 / args.add, 2),
                "bytes_written": written, "index_bytes_before": sum(sz for sz, _ in before.values()),
                "files_appended_not_rewritten": kept, "coarse": kind,
                "search_pickup_s": round(pickup_s, 1), "first_added_found_first": found == f"add-{extra.ids[0]}"}
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def coarse_config(args):
    """The coarse settings of ``--coarse``, ``--nprobe`` and ``--shortlist`` (a non-default one is not saved in the
    index folder, so the IVF that searches use stays as it was)."""
    from hapvr.retrieval.coarse import CoarseConfig

    settings = {k: v for k, v in (("nprobe", args.nprobe), ("shortlist_per_row", args.shortlist)) if v}
    return CoarseConfig.named(args.coarse, **settings)


def part_duplicates(args, size: int) -> dict:
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.search import DuplicatesConfig, duplicates

    col = collection(size)
    cfg = DuplicatesConfig(neighbours=args.neighbours, min_coarse=args.min_coarse)
    with IndexStore.open(index_path(args, size), space()) as store:
        t0 = time.perf_counter()
        found = duplicates(store, ChamferBaseline(), args.threshold, cfg=cfg, progress=True)
        seconds = time.perf_counter() - t0
    truth = {frozenset((s, c)) for s, copies in col.groups.items() for c in copies}  # copy-source pairs
    got = {frozenset((p.a, p.b)) for p in found.pairs}
    planted_clusters = {frozenset([s, *c]) for s, c in col.groups.items()}
    exact = sum(frozenset(c) in planted_clusters for c in found.clusters)
    return {"threshold": args.threshold, "neighbours": cfg.neighbours, "min_coarse": cfg.min_coarse,
            "seconds": seconds, "coarse_seconds": found.seconds["coarse"], "scoring_seconds": found.seconds["scoring"],
            "candidate_pairs": found.candidate_pairs, "pairs_found": len(found.pairs),
            "copy_source_pairs_recall": len(truth & got) / len(truth),
            "pairs_outside_planted_groups": sum(1 for p in found.pairs if col.group_of.get(p.a) is None
                                                or col.group_of.get(p.a) != col.group_of.get(p.b)),
            "clusters": len(found.clusters), "planted_groups": len(planted_clusters),
            "clusters_equal_to_a_planted_group": exact}


def part_rowcodes(args, size: int) -> dict:
    """Descriptor rows stored as PQ codes (``IndexStore.create(desc_codebook=...)``), simulated on the
    ``size`` index: its rows coded and decoded with a codebook of M bytes (trained on 20,000 of
    them), then per query against the float32 rows: the overlap of the coarse top-100, the
    two-stage top-10's agreement, and whether the planted copies of that top-10 stay."""
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.codecs import ProductQuantizer
    from hapvr.retrieval.coarse import CoarseConfig, CoarseIndex
    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.search import Searcher

    col = collection(size)
    qs = queries(col, args.recall_queries)
    out = {"queries": len(qs)}
    with IndexStore.open(index_path(args, size), space()) as store:
        rows = np.asarray(store.descriptor_matrix())
        layout = store.row_layout(views=True)

        def run(vectors):
            coarse = CoarseIndex(vectors, None, CoarseConfig(kind="flat"))
            coarse.set_videos(*layout)
            searcher = Searcher(store, ChamferBaseline(), prebuilt=coarse)
            return [(searcher.candidates(q, 100)[0], [h.id for h in searcher.search(q, k=10).hits]) for q, _ in qs]

        exact = run(rows)
        sample = rows[np.sort(np.random.default_rng(0).choice(len(rows), min(len(rows), 20_000), replace=False))]
        for m in (16, 32, 64, 128):
            book = ProductQuantizer.train(sample, m, rotate=False)
            decoded = np.concatenate([book.decode(book.encode(torch.from_numpy(np.ascontiguousarray(rows[i: i + 65536]))))
                                     .numpy() for i in range(0, len(rows), 65536)])
            got = run(decoded)
            agree = [len(set(a[1]) & set(b[1])) / len(b[1]) for a, b in zip(got, exact)]
            planted = [[v for v in b[1] if col.group_of.get(v) == src] for b, (_, src) in zip(exact, qs)]
            out[f"pq{m}"] = {"bytes_per_row": m, "relative_mse": float(((decoded - rows) ** 2).sum() / (rows ** 2).sum()),
                             "coarse_top100_overlap": float(np.mean([len(set(a[0]) & set(b[0])) / 100
                                                                     for a, b in zip(got, exact)])),
                             "two_stage_top10_agreement": float(np.mean(agree)),
                             "two_stage_top10_agreement_min": float(np.min(agree)),
                             "planted_kept": float(np.mean([all(v in a[1] for v in pl) for a, pl in zip(got, planted)]))}
            print(f"  rows as pq{m}: {out[f'pq{m}']}", flush=True)
    return out


def part_bound(args, size: int) -> dict:
    """How far any 128-byte code of a 512-d region vector (2 bits a dimension) can keep the float16
    top-10, on the float16 index of ``size`` videos: each query's 400 coarse candidates (which hold
    ~0.99 of its exhaustive top-10) re-ranked from their float16 features, from those features
    through the PQ 128 codebook of the ``pq128`` index (or one trained here), and through the
    Gaussian test channel of relative error ``d`` (``x' = (1 - d) x + sqrt(d (1 - d)) |x| z / sqrt(D)``,
    the error of a rate-distortion-optimal code of a Gaussian source: ``d = 2^(-2 R)`` at R bits a
    dimension); per variant the agreement of its top-10 with float16's."""
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.codecs import ProductQuantizer
    from hapvr.retrieval.index_store import CODEBOOK, IndexStore
    from hapvr.retrieval.search import Searcher

    col = collection(size)
    qs = queries(col, args.recall_queries)
    book_path = index_path(args, size, "pq128") / CODEBOOK
    book = ProductQuantizer.load(book_path) if book_path.exists() else stored_as("pq128", col)[1]
    scorer, rng = ChamferBaseline(), np.random.default_rng(0)
    channels = {"pq128": None, "gauss-2.0bit": 1 / 16, "gauss-2.5bit": 1 / 32, "gauss-3.0bit": 1 / 64}
    agree = {k: [] for k in channels}
    err = {k: [] for k in channels}
    with IndexStore.open(index_path(args, size, "float16"), space()) as store:
        searcher = Searcher(store, scorer)
        for q, _ in qs:
            cands, _ = searcher.candidates(q, 400)
            feats = store.load_many(cands)

            def top10(xs):
                scores = np.concatenate([_pairwise(scorer, q, xs[i: i + 64]) for i in range(0, len(xs), 64)])
                return {cands[i] for i in np.lexsort((np.arange(len(xs)), -scores))[:10]}

            exact = top10(feats)
            for name, d in channels.items():
                if d is None:
                    xs = [book.decode(book.encode(x.float())) for x in feats]
                else:
                    xs = [(1 - d) * x.float() + math.sqrt(d * (1 - d)) * x.float().norm(dim=-1, keepdim=True)
                          * torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)) / math.sqrt(x.shape[-1])
                          for x in feats]
                err[name].append(float(sum(((a - b.float()) ** 2).sum() for a, b in zip(xs, feats))
                                       / sum((b.float() ** 2).sum() for b in feats)))
                agree[name].append(len(top10(xs) & exact) / 10)
    out = {"queries": len(qs), "candidates": 400}
    for name in channels:
        out[name] = {"relative_mse": round(float(np.mean(err[name])), 4), "top10_agreement": round(float(np.mean(agree[name])), 4),
                     "top10_agreement_ci95": _bootstrap_ci(agree[name])}
        print(f"  {name}: {out[name]}", flush=True)
    return out


def _bootstrap_ci(values: list[float], n: int = 2000) -> list[float]:
    """95 % percentile bootstrap interval of the mean over queries."""
    from hapvr.evaluation.bootstrap import resamples

    means = np.asarray(values, np.float64)[resamples(len(values), n)].mean(axis=1)
    return [round(float(x), 4) for x in np.percentile(means, [2.5, 97.5])]


def _pairwise(scorer, q: np.ndarray, xs: list) -> np.ndarray:
    """ChamferBaseline scores of one query against a few videos (padded)."""
    qi = scorer.index(torch.as_tensor(q))[None]
    lengths = torch.tensor([len(x) for x in xs])
    batch = torch.zeros(len(xs), int(lengths.max()), *xs[0].shape[1:])
    for i, x in enumerate(xs):
        batch[i, : len(x)] = scorer.index(x)
    return scorer.pairwise(qi, torch.tensor([len(qi[0])]), batch, lengths)[0].numpy()


def part_coarse(args) -> dict:
    """The coarse stage alone on ``--rows`` synthetic 512-d descriptor rows (no features): flat and
    IVF build time, latency of a 30-frame query's rows, IVF agreement with flat, peak memory."""
    proc = subprocess.run([sys.executable, "-m", __spec__.name, "--coarse-child", str(args.rows)]
                          + (["--threads", str(args.threads)] if args.threads else []),
                          capture_output=True, text=True, timeout=3600, cwd=H.ROOT)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("coarse child failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def coarse_child(rows: int) -> dict:
    from hapvr.retrieval.coarse import CoarseConfig, CoarseIndex, DescriptorConfig
    from hapvr.retrieval.planted import planted_descriptors

    per_query = -(-QUERY_FRAMES // DescriptorConfig().segment_frames)  # rows of a 30-frame query
    t0 = time.perf_counter()
    vectors = np.concatenate(list(planted_descriptors(rows, 512, seed=7)))
    out = {"rows": rows, "query_rows": per_query, "rows_per_video": 17, "generate_s": time.perf_counter() - t0}
    rows_per_video = 17  # a 34-frame video at the default 2-frame segments
    n_videos = rows // rows_per_video
    starts = np.arange(n_videos) * rows_per_video
    counts = np.full(n_videos, rows_per_video)
    ids = [f"v{i}" for i in range(n_videos)]
    rng = np.random.default_rng(0)
    qs = [vectors[s: s + per_query] + 0.3 / np.sqrt(512) * rng.standard_normal((per_query, 512)).astype(np.float32)
          for s in rng.choice(rows - per_query, 20, replace=False)]
    results = {}
    for kind in ("flat", "ivf", "ivfpq64"):
        t0 = time.perf_counter()
        index = CoarseIndex.build(vectors, CoarseConfig(kind=kind[:3] if kind != "flat" else kind,
                                                        ivf_bytes=64 if kind == "ivfpq64" else 0))
        build = time.perf_counter() - t0
        index.set_videos(ids, starts, counts)
        entry = {"build_s": build, "rss_after_build_bytes": H._status_kib("VmRSS:") * 1024}
        settings = [(None, None)] if kind == "flat" else \
            [(16, 250), (16, 500), (16, 1000), (16, 2000), (8, 1000), (32, 1000), (64, 1000)]
        for nprobe, shortlist in settings:
            index.search(qs[0], 100, nprobe=nprobe, shortlist_per_row=shortlist)
            times, found = [], []
            for q in qs:
                t0 = time.perf_counter()
                pos, _ = index.search(q, 100, nprobe=nprobe, shortlist_per_row=shortlist)
                times.append(time.perf_counter() - t0)
                found.append(pos)
            name = "search" if nprobe is None else f"nprobe{nprobe}-shortlist{shortlist}"
            entry[name] = {"median_s": statistics.median(times), "max_s": max(times)}
            results.setdefault("_found", {})[name] = found
        if kind != "flat":
            entry["nlist"] = int(index.ann.nlist)
            entry["list_bytes"] = int(index.ann.ntotal * (index.ann.code_size + 8))  # codes and ids
            for name in list(results["_found"]):
                if name != "search" and not name.startswith("ivf"):
                    results["_found"][f"{kind}:{name}"] = results["_found"].pop(name)
        results[kind] = entry
        del index
    exact = results["_found"]["search"]
    for name, approx in results["_found"].items():
        if name != "search":
            kind, setting = name.split(":")
            results[kind][setting]["overlap_with_flat_top100"] = float(np.mean(
                [len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))
    del results["_found"]
    out.update(results)
    out["peak_rss_bytes"] = H._status_kib("VmHWM:") * 1024
    return out


# --- reporting ----------------------------------------------------------------------------------


def machine() -> dict:
    import faiss

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "faiss": faiss.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def report(results: dict) -> None:
    rows = []
    for size, r in sorted(((int(k.split("-")[1]), v) for k, v in results.items() if k.startswith("size-")),
                          key=lambda kv: kv[0]):
        if "index" in r:
            i = r["index"]
            rows.append([f"{size}", "index build", f"{i.get('add_seconds', 0):.1f} s for {i['added']} videos"
                         f" ({i.get('videos_per_s', '-')} videos/s); {H.fmt_bytes(i['disk_bytes'])} on disk"
                         f" (frames {H.fmt_bytes(i['frames_bytes'])}, "
                         f"descriptors {H.fmt_bytes(i['descriptor_bytes'])})"])
        if "latency" in r:
            lat = r["latency"]
            c = lat["coarse_default"]
            iv = lat["coarse_ivf"]
            rows.append([f"{size}", "coarse index", f"{c['kind']} over {c['rows']} rows: ready "
                         f"{fmt_s(c['ready_after_open_s'])} "
                         f"after open, search {fmt_s(lat['coarse_flat_search_median_s'])}; IVF ({iv['nlist']} lists): "
                         f"train+add {fmt_s(iv['train_and_add_s'])}, saved {fmt_s(iv['save_s'])}, read back "
                         f"{fmt_s(iv['read_back_s'])}, search {fmt_s(lat['coarse_ivf_search_median_s'])}"])
            runs = sorted((v for k, v in r.items() if k.startswith("latency_threads")), key=lambda v: v["threads"])
            for run in runs or [lat]:
                for name in ("warm", "cold"):
                    q = run[f"query_{name}"]
                    load = run.get("load_average", [float("nan")])[0]
                    rows.append([f"{size}", f"{QUERY_FRAMES}-frame query, {name} cache (C={run['candidates']}), "
                                 f"{run.get('threads')} thread(s), load {load:.1f}",
                                 f"median {fmt_s(q['median_s'])} (coarse {fmt_s(q['coarse_median_s'])}, "
                                 f"re-rank {fmt_s(q['rerank_median_s'])}), "
                                 + (f"p95 {fmt_s(q['p95_s'])}, " if "p95_s" in q else "") + f"max {fmt_s(q['max_s'])}"])
            rows.append([f"{size}", "peak resident memory (whole process)", f"{H.fmt_bytes(lat['peak_rss_bytes'])} "
                         f"searching; {H.fmt_bytes(lat.get('peak_rss_with_ivf_training_bytes'))} "
                         "with the IVF trained beside"])
        if "recall" in r:
            rc = r["recall"]
            rows.append([f"{size}", f"coarse recall of exhaustive top-10 ({rc['queries']} queries)",
                         ", ".join(f"C={C}: {v}" for C, v in rc["recall_top10"].items())])
            rows.append([f"{size}", "  of the planted copies in that top-10",
                         ", ".join(f"C={C}: {v}" for C, v in rc["recall_planted_in_top10"].items())])
            if rc["exhaustive_single_query_s"] and rc["exhaustive_batched_per_query_s"]:
                rows.append([f"{size}", "exhaustive vs two-stage", f"exhaustive {fmt_s(rc['exhaustive_single_query_s'])} "
                             f"(batched {fmt_s(rc['exhaustive_batched_per_query_s'])}/query), two-stage "
                             f"{fmt_s(rc['two_stage_per_query_s'])}: x{rc['speedup_vs_single']:.0f} "
                             f"(x{rc['speedup_vs_batched']:.0f} vs batched)"])
        if "duplicates" in r:
            d = r["duplicates"]
            rows.append([f"{size}", f"duplicates(threshold={d['threshold']}, neighbours={d['neighbours']}, "
                         f"min_coarse={d['min_coarse']}), {d.get('threads')} thread(s)",
                         f"{fmt_s(d['seconds'])} (coarse {fmt_s(d['coarse_seconds'])}, scoring "
                         f"{fmt_s(d['scoring_seconds'])} of {d['candidate_pairs']} pairs); copy-source pairs found "
                         f"{d['copy_source_pairs_recall']:.3f}; {d['clusters_equal_to_a_planted_group']}/"
                         f"{d['planted_groups']} clusters exactly a planted group; "
                         f"{d['pairs_outside_planted_groups']} pairs outside them"])
        if "add" in r:
            a = r["add"]
            rows.append([f"{size}", f"add {a['added']} videos ({a['frames_added']} frames)",
                         f"{a['add_s_per_1000']:.1f} s per 1000 videos; {H.fmt_bytes(a['bytes_written'])} written to an "
                         f"index of {H.fmt_bytes(a['index_bytes_before'])}, files appended "
                         f"({'all' if all(a['files_appended_not_rewritten'].values()) else 'NOT all'}); "
                         f"search picks them up in {a['search_pickup_s']} s ({a['coarse']})"])
    if "coarse" in results:
        c = results["coarse"]
        flat, ivf = c["flat"], c["ivf"]
        rows.append([f"{c['rows']} rows", "coarse alone, flat", f"build {fmt_s(flat['build_s'])}, query "
                     f"({c['query_rows']} rows, C=100) {fmt_s(flat['search']['median_s'])}"])
        for k, v in ivf.items():
            if k.startswith("nprobe"):
                rows.append([f"{c['rows']} rows", f"coarse alone, IVF {ivf['nlist']} lists, {k}",
                             f"query {fmt_s(v['median_s'])}, top-100 overlap with flat "
                             f"{v['overlap_with_flat_top100']:.3f}"])
        rows.append([f"{c['rows']} rows", "coarse alone", f"IVF build {fmt_s(ivf['build_s'])}; peak resident "
                     f"{H.fmt_bytes(c['peak_rss_bytes'])}"])
    H.print_table(["size", "measure", "result"], rows)


def verdicts(results: dict) -> list[str]:
    lines = []
    r = results.get("size-20000", {})
    if "latency" in r:
        q = r["latency"]["query_warm"]["median_s"]
        lines.append(f"{'PASS' if q < TARGETS['latency_s'] else 'FAIL'}: 20k videos, {QUERY_FRAMES}-frame query "
                     f"median {q:.3f} s (target < 1 s; cold cache {r['latency']['query_cold']['median_s']:.3f} s)")
        m = r["latency"]["peak_rss_bytes"]
        lines.append(f"{'PASS' if m < TARGETS['rss_bytes'] else 'FAIL'}: 20k videos, peak resident "
                     f"{H.fmt_bytes(m)} (target < 4 GiB)")
    for size in sorted(int(k.split("-")[1]) for k in results if k.startswith("size-")):
        rc = results[f"size-{size}"].get("recall")
        if rc:
            C = rc["candidates_default"]
            v = rc["recall_top10"][str(C)] if str(C) in rc["recall_top10"] else rc["recall_top10"][C]
            lines.append(f"{'PASS' if v >= TARGETS['recall'] else 'FAIL'}: {size} videos, coarse recall of the "
                         f"exhaustive top-10 at C={C}: {v:.3f} over {rc['queries']} queries (target >= 0.95)")
    return lines


def storage_name(text: str) -> str:
    import re

    if text in ("float16", "int8") or re.fullmatch(r"o?pq(8|16|32|64|128)", text):
        return text
    raise argparse.ArgumentTypeError(f"expected float16, int8, pqM or opqM (M in 8, 16, 32, 64, 128), got {text!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="index,latency,recall,duplicates",
                   help="comma-separated: index, latency, recall, duplicates, add, rowcodes, bound, coarse; or report (print the "
                        "results file) (default: %(default)s)")
    p.add_argument("--size", type=int, action="append", help="indexed videos (repeatable; default 1000)")
    p.add_argument("--rows", type=int, default=1_000_000,
                   help="descriptor rows for --part coarse (default: %(default)s)")
    p.add_argument("--workdir", default="/tmp/hapvr-bench-search", help="where indexes are kept (default: %(default)s)")
    p.add_argument("--latency-queries", type=int, default=20, help="30-frame queries timed (default: %(default)s)")
    p.add_argument("--recall-queries", type=int, default=30, help="queries scored exhaustively (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.7, help="duplicates() threshold (default: %(default)s)")
    p.add_argument("--neighbours", type=int, default=10, help="duplicates() coarse neighbours (default: %(default)s)")
    p.add_argument("--min-coarse", type=float, default=None, help="duplicates() coarse floor (default: none)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and faiss threads (default: theirs, one per core); on a machine others load, 1 "
                        "avoids OpenMP threads waiting on each other")
    p.add_argument("--json", default=str(HERE / "results" / "search.json"),
                   help="results file (merged; default: %(default)s)")
    p.add_argument("--storage", default="float16", type=storage_name,
                   help="how the index stores its frames: float16, int8, pqM or opqM (M bytes a region vector, "
                        "the codebook trained on the collection's first videos) (default: %(default)s)")
    p.add_argument("--add", type=int_at_least(1), default=10_000, help="videos the add part appends (default: %(default)s)")
    p.add_argument("--coarse", default="auto", choices=("auto", "flat", "ivf", "ivfpq"),
                   help="the recall part's coarse stage (hapvr.search's --coarse); other than auto its numbers "
                        "are kept as recall_coarse-KIND[-nprobeN][-shortlistN] (default: %(default)s)")
    p.add_argument("--nprobe", type=int_at_least(1), default=None, help="the recall part's IVF lists per query row "
                                                            "(default: CoarseConfig's)")
    p.add_argument("--shortlist", type=int_at_least(1), default=None, help="the recall part's IVF rows per query row scored "
                                                               "exactly (default: CoarseConfig's)")
    p.add_argument("--latency-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--coarse-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:  # torch's and faiss's OpenMP pools alike
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    if args.latency_child:
        print(json.dumps(latency_child(args, args.latency_child)))
        return
    if args.coarse_child:
        print(json.dumps(coarse_child(args.coarse_child)))
        return
    parts = [x.strip() for x in args.part.split(",") if x.strip()]
    if parts == ["report"]:  # the table and verdicts of the results file, nothing run
        results = json.loads(Path(args.json).read_text())
        report(results)
        for line in verdicts(results):
            print(line)
        return
    unknown = set(parts) - {"index", "latency", "recall", "duplicates", "add", "rowcodes", "bound", "coarse"}
    if unknown:
        p.error(f"unknown part(s) {sorted(unknown)}")
    for size in args.size or [1000]:  # the parts that read an index someone else built
        for part, storage in (("add", args.storage), ("rowcodes", args.storage), ("bound", "float16")):
            built_here = "index" in parts and storage == args.storage
            if part in parts and not built_here and not (index_path(args, size, storage) / "manifest.json").exists():
                p.error(f"--part {part} needs the {storage} index of {size} videos in {args.workdir}: run --part index "
                        f"--size {size}" + ("" if storage == "float16" else f" --storage {storage}") + " first")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    runs = results.setdefault("runs", [])
    run = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "command": "python -m benchmarks.bench_search " + " ".join(argv if argv is not None else sys.argv[1:])}
    results["scorer"] = "ChamferBaseline (hapvr.evaluation.scorers, fp32, backend auto): chamfer-baseline-v1"
    section = results if args.storage == "float16" else results.setdefault(f"storage-{args.storage}", {})
    for size in args.size or [1000]:
        entry = section.setdefault(f"size-{size}", {})
        for part in ("index", "latency", "recall", "duplicates", "add", "rowcodes", "bound"):
            if part in parts:
                print(f"[{size}] {part} ...", flush=True)
                t0 = time.perf_counter()
                fn = {"index": part_index, "latency": part_latency, "recall": part_recall,
                      "duplicates": part_duplicates, "add": part_add, "rowcodes": part_rowcodes,
                      "bound": part_bound}[part]
                result = fn(args, size) | {"date": run["date"], "load_average": os.getloadavg(),
                                           "threads": torch.get_num_threads()}
                if part == "index" and result["added"] == 0 and "index" in entry:
                    entry["index"]["checked_complete"] = run["date"]  # keep the build's own numbers
                elif part == "recall" and (args.coarse != "auto" or args.nprobe or args.shortlist):
                    entry[f"recall_coarse-{args.coarse}" + (f"-nprobe{args.nprobe}" if args.nprobe else "")
                          + (f"-shortlist{args.shortlist}" if args.shortlist else "")] = result
                else:
                    entry[part] = result
                if part == "latency":  # kept per thread count too: both are worth comparing
                    entry[f"latency_threads{result['threads']}"] = result
                print(f"[{size}] {part} done in {time.perf_counter() - t0:.0f} s", flush=True)
    if "coarse" in parts:
        print(f"[coarse {args.rows} rows] ...", flush=True)
        results["coarse"] = part_coarse(args) | {"date": run["date"], "load_average": os.getloadavg()}
    run["machine"]["load_average_at_end"] = os.getloadavg()
    runs.append(run)
    results["verdicts"] = verdicts(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    H.write_json(args.json, results)
    report(results)
    for line in results["verdicts"]:
        print(line)


if __name__ == "__main__":
    main()
