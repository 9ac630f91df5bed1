"""The coarse stage: cheap descriptors of each video, and the search over them that picks the
candidates the scorer then ranks exactly.

**Descriptor.** A frame vector is the normalised mean of the frame's normalised region features;
a video is described by one row per segment of ``segment_frames`` consecutive frames (the
normalised sum of their frame vectors). The coarse similarity of a query to a video is a
Chamfer similarity at segment level: the mean over the query's rows of the best inner product
with any of the video's rows. It mirrors the exact score (the mean over query frames of the best
target frame), so a query that is a sub-clip of a long video, or a video that shows the query
among other shots, still ranks high; one mean vector per video blurs the shots together.
Fraction of the exhaustive top-10 (ChamferBaseline scores) found in the coarse top-C, on the
planted collection of ``benchmarks/bench_search.py`` with 30-frame queries (30 queries at 1000
videos, 8 at 20000; exact coarse similarity):

===============================  ======  =====  =====  =====
rows per video (segment_frames)  videos  C=50   C=100  C=200
===============================  ======  =====  =====  =====
1 (one mean per video)           1000    0.667  0.783  0.857
4.7 (8)                          1000    0.860  0.913  0.983
8.9 (4)                          1000    0.933  0.967  0.993
17 (2, the default)              1000    0.990  0.993  1.000
34 (1: every frame)              1000    0.997  1.000  1.000
1 (one mean per video)           20000   0.475  0.512  0.562
8.9 (4)                          20000   0.850  0.912  0.912
17 (2, the default)              20000   0.962  0.988  0.988
34 (1: every frame)              20000   1.000  1.000  1.000
===============================  ======  =====  =====  =====

Two-frame segments keep the recall near 0.99 at C = 100 with 17 rows of 2 KiB a video (next
to ~320 KiB of float16 frames); every frame would double the rows for little more.
``segment_frames = 0`` gives the single mean vector, for collections too large to keep 17
rows a video in memory, at the recall above.

**Search.** ``flat`` (exact): the inner products of the query's rows with every stored row
(GEMMs over the memory-mapped descriptor file, ``block_rows`` at a time) and every video's best
row. faiss's ``IndexFlatIP`` was tried first, but its k-NN interface returns only the k best
rows per query row, and crediting the videos outside them lost recall (0.74 instead of 0.99
at 20k videos, C = 100) while costing as much as computing all rows. ``ivf``: a faiss
``IndexIVFFlat`` (``nlist = 4 sqrt(rows)`` lists, ``nprobe`` searched) returns the
``shortlist_per_row`` nearest rows of each query row, and the videos they belong to are scored
by the exact coarse similarity. Measured with a 30-frame query (15 rows) on a shared 2-core
machine, one thread: flat takes ~0.2 s at 345k rows (20k videos) and ~0.6 s at 1M rows (0.3 s
with two threads on an idle machine); at 1M rows the IVF (4000 lists, 16 searched) needs 2000
rows a row to agree with flat on 95 % of the top-100 and then takes ~0.46 s (1000 rows: 83 %,
0.29 s), a cost bounded by the shortlist rather than by the collection. So ``auto`` stays
exact up to ``ivf_threshold`` = 1M rows (~60k videos, 2 GB of descriptors) and uses IVF beyond,
where it wins as the collection grows. The trained IVF is saved beside the index (training
takes 20-50 s at 345k rows and ~2 min at 1M; reading it back ~0.5-2 s); the flat search needs
nothing but the descriptor file, ready as soon as the index is open (its CRCs are checked
then: 0.5-1.8 s at 20k videos, depending on the page cache).

**PQ lists** (``ivf_bytes``, ``--coarse ivfpq``). An ``IndexIVFFlat`` keeps a copy of every row
in memory: 2.06 GB of lists at 1M rows, 35 GB at a million videos (17M rows). An ``IndexIVFPQ``
keeps 64-byte codes instead (72 MB at 1M rows); its approximate similarities only choose the
shortlist, which the exact rows then score as before. Measured at 1M rows (``python -m
benchmarks.bench_search --part coarse --rows 1000000 --threads 1``, 2026-12-07; ``coarse-ivfpq``
in benchmarks/results/search.json), 16 lists and 2000 rows a row: agreement with the flat top-100
0.938 instead of 0.951, 0.44 s instead of 0.48 s a query, trained in 156 s instead of 117 s.
``auto`` uses PQ lists whenever it uses an IVF (beyond ``ivfpq_threshold`` = ``ivf_threshold`` = 1M
rows): at 100,000 planted videos (1.7M rows) full-row lists took 3.5 GB of memory and the search
peaked at 9.1 GB resident, with PQ lists at 5.1 GB and the same 0.38 s a query (``bench_search
--part latency --size 100000 --storage pq128``), so the memory, not the 1.3 points of shortlist
agreement, decides; ``--coarse ivf`` keeps full rows.

**How many lists and rows.** At 100,000 planted videos in PQ 128 (1.7M rows, 5,200 lists),
fraction of each query's exhaustive top-10 in the 100 candidates (``bench_search --part recall
--size 100000 --storage pq128 --coarse ... --nprobe ... --shortlist ...``, 2026-12-07):

======================================  =======  =====  ======  ==============
coarse stage                            queries  C=100  C=400   two-stage query
======================================  =======  =====  ======  ==============
flat (exact, the ceiling)               10       0.96   0.99    2.6 s
IVF, full rows, 16 lists, 2000 rows     10       0.91   0.93    0.51 s
IVF, PQ lists, 16 lists, 2000 rows      10       0.89   0.91    0.33 s
IVF, PQ lists, 64 lists, 2000 rows      10       0.91   0.93    0.40 s
IVF, PQ lists, 64 lists, 4000 rows      30       0.950  0.970   0.48 s
IVF, PQ lists, 64 lists, 8000 rows      10       0.95   0.98    1.7 s
======================================  =======  =====  ======  ==============

The shortlist, not the PQ lists, loses what the IVF loses (full rows gain 2 points, more rows
per query row 4-5), so the defaults are 64 lists and 4,000 rows a query row: 0.95 of the
exhaustive top-10 (95 % bootstrap interval over the queries [0.913, 0.980]; 0.98 of its planted
copies, the first result always the same) at 0.48 s.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from hapvr.io.files import atomic_path, write_json


@dataclass(frozen=True)
class DescriptorConfig:
    """How a video's descriptor rows are made (stored in the index manifest; a change of these
    needs a rebuilt index)."""

    segment_frames: int = 2  # frames per descriptor row; 0: one row, the mean of the video
    version: int = 1  # of the recipe below


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def video_descriptors(features: np.ndarray, cfg: DescriptorConfig = DescriptorConfig()) -> np.ndarray:
    """``[T, R, D]`` region features -> ``[ceil(T / segment_frames), D]`` float32 unit rows
    (one row for ``segment_frames = 0``). Queries and indexed videos use the same recipe."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"features must be [T >= 1, R, D], got {list(x.shape)}")
    frames = _normalize(_normalize(x).mean(axis=1))  # [T, D]
    L = cfg.segment_frames
    if L <= 0:
        return _normalize(frames.mean(axis=0, keepdims=True)).astype(np.float32)
    return _normalize(np.add.reduceat(frames, np.arange(0, frames.shape[0], L), axis=0)).astype(np.float32)


@dataclass(frozen=True)
class CoarseConfig:
    """Choice and settings of the coarse search (see the module docstring)."""

    kind: str = "auto"  # "flat" (exact), "ivf", or "auto": flat up to ivf_threshold rows
    ivf_threshold: int = 1_000_000  # descriptor rows (~60k videos of 17 rows); see the module docstring
    nlist: int | None = None  # IVF lists; None: 4 sqrt(rows)
    nprobe: int = 64  # IVF lists searched per query row (module docstring: measured at 100k videos)
    shortlist_per_row: int = 4000  # IVF: nearest rows per query row whose videos are scored exactly
    train_per_list: int = 40  # IVF training rows per list (faiss warns below 39)
    ivf_bytes: int = 0  # IVF lists holding PQ codes of this many bytes a row (IndexIVFPQ); 0: full rows
    ivfpq_threshold: int = 1_000_000  # auto: beyond this many rows, IVF lists of PQ codes (module docstring)
    block_rows: int = 65536  # flat: rows per GEMM block (bounds the transient [n, block] scores)
    seed: int = 1234

    @classmethod
    def named(cls, kind: str, **settings) -> "CoarseConfig":
        """The settings of a command's ``--coarse``: ``auto``, ``flat``, ``ivf``, or ``ivfpq`` (an
        IVF whose lists keep :data:`IVFPQ_BYTES`-byte PQ codes of the rows)."""
        return cls(kind="ivf", ivf_bytes=IVFPQ_BYTES, **settings) if kind == "ivfpq" else cls(kind=kind, **settings)


# ``--coarse ivfpq``: at 1M descriptor rows its lists take 72 MB instead of 2.06 GB, and agree with
# the flat top-100 on 0.938 instead of 0.951 (16 lists, 2000 rows a row; benchmarks/bench_search.py)
IVFPQ_BYTES = 64


def choose_kind(rows: int, cfg: CoarseConfig) -> str:
    if cfg.kind not in ("auto", "flat", "ivf"):
        raise ValueError(f"coarse index kind must be auto, flat or ivf, got {cfg.kind!r}")
    if cfg.kind != "auto":
        return cfg.kind
    return "ivf" if rows > cfg.ivf_threshold else "flat"


def segment_chamfer(query_rows: np.ndarray, vectors: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Coarse similarity of a query to each video whose rows are ``vectors[starts[j]:starts[j] +
    counts[j]]``: the mean over query rows of the best inner product with the video's rows.
    ``starts`` must be increasing and the runs disjoint; rows between runs are ignored."""
    n = len(starts)
    if n == 0:
        return np.zeros(0, np.float32)
    lo, hi = int(starts[0]), int(starts[-1] + counts[-1])
    # through torch, so that torch.set_num_threads governs this GEMM as it does the scorer's
    # (numpy's BLAS keeps its own threads, which wait on each other on a loaded machine)
    sims = (torch.from_numpy(np.ascontiguousarray(query_rows, dtype=np.float32))
            @ torch.from_numpy(np.asarray(vectors[lo:hi])).T).numpy()  # [q, hi - lo]
    # reduceat over (start, end) pairs: even outputs are the runs, odd ones the gaps between
    bounds = np.stack([starts - lo, starts - lo + counts], axis=1).reshape(-1)
    bounds = bounds[:-1] if bounds[-1] == hi - lo else bounds
    best = np.maximum.reduceat(sims, bounds, axis=1)[:, 0::2]  # [q, n]
    return best.mean(axis=0)


class CoarseIndex:
    """The coarse search over a collection's descriptor rows.

    ``vectors`` holds every stored row by its global row number (the index store's descriptor
    file, memory-mapped); :meth:`set_videos` says which row runs are live videos (rows of
    removed videos are never scored). ``ann`` is None for the exact search, or a faiss IVF
    whose ids are global row numbers."""

    def __init__(self, vectors: np.ndarray, ann, cfg: CoarseConfig = CoarseConfig(), rows_indexed: int = 0):
        self.vectors = vectors
        self.ann = ann
        self.cfg = cfg
        self.rows_indexed = rows_indexed  # rows [0, rows_indexed) are in ann
        self.ids: list[str] = []
        self._order = np.zeros(0, np.int64)  # video positions sorted by first row
        self._starts = np.zeros(0, np.int64)  # sorted first rows
        self._counts = np.zeros(0, np.int64)

    @property
    def kind(self) -> str:
        return "flat" if self.ann is None else "ivf"

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: CoarseConfig = CoarseConfig(), live_rows: np.ndarray | None = None
              ) -> "CoarseIndex":
        """A coarse index over ``vectors [M, D]`` (row ``r`` = global row ``r``); an IVF is trained
        and filled when ``choose_kind`` says so (``live_rows``: the rows to put in it; all by default)."""
        kind = choose_kind(len(vectors), cfg)
        if kind == "flat":
            return cls(vectors, None, cfg, 0)
        out = cls(vectors, train_ivf(vectors, cfg, live_rows), cfg, 0)
        out.add_rows(np.arange(len(vectors)) if live_rows is None else live_rows)
        return out

    def add_rows(self, rows: np.ndarray) -> None:
        """Puts rows (global numbers, e.g. of videos added since it was built) into the IVF."""
        rows = np.asarray(rows, np.int64)
        if self.ann is None or not len(rows):
            return
        for b0 in range(0, len(rows), self.cfg.block_rows):
            block = rows[b0: b0 + self.cfg.block_rows]
            self.ann.add_with_ids(np.ascontiguousarray(self.vectors[block], dtype=np.float32), block)
        self.rows_indexed = max(self.rows_indexed, int(rows.max()) + 1)

    def set_videos(self, ids: list[str], starts: np.ndarray, counts: np.ndarray) -> None:
        """The live videos and their row runs (global row numbers), e.g. ``store.row_layout()``."""
        starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
        self._order = np.argsort(starts, kind="stable")
        self._starts, self._counts = starts[self._order], counts[self._order]
        self.ids = list(ids)

    def video_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Video position of each global row number; -1 for rows of removed videos (or -1 rows)."""
        rows = np.asarray(rows, np.int64)
        if not len(self._starts):
            return np.full(rows.shape, -1, np.int64)
        k = np.searchsorted(self._starts, rows, side="right") - 1
        kk = np.maximum(k, 0)
        ok = (k >= 0) & (rows >= 0) & (rows < self._starts[kk] + self._counts[kk])
        return np.where(ok, self._order[kk], -1)

    def search(self, query_rows: np.ndarray, candidates: int, nprobe: int | None = None,
               shortlist_per_row: int | None = None, rescore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``candidates`` videos of highest coarse similarity to a query's descriptor rows
        ``[n, D]``: ``(positions into ids, similarities)``, best first (ties: lower position).

        IVF only: ``rescore`` limits the exact scoring to that many shortlisted videos, those
        with the best :func:`retrieved_chamfer` (None: all of them)."""
        return self.search_many([query_rows], candidates, nprobe, shortlist_per_row, rescore)[0]

    def search_many(self, queries: list[np.ndarray], candidates: int, nprobe: int | None = None,
                    shortlist_per_row: int | None = None, rescore: int | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for several queries (the IVF is asked once for all their rows)."""
        queries = [np.ascontiguousarray(q, dtype=np.float32) for q in queries]
        if candidates < 1 or not self.ids or not queries:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        if self.ann is None:
            shortlists = [np.arange(len(self._starts))] * len(queries)
        else:
            self.ann.nprobe = min(nprobe or self.cfg.nprobe, self.ann.nlist)
            k = min(shortlist_per_row or self.cfg.shortlist_per_row, max(int(self.ann.ntotal), 1))
            sims, rows = self.ann.search(np.concatenate(queries), k)
            rank = np.empty(len(self._order), np.int64)  # video position -> place in the start-sorted arrays
            rank[self._order] = np.arange(len(self._order))
            shortlists, at = [], 0
            for q in queries:
                videos = self.video_of_rows(rows[at: at + len(q)])
                if rescore is None:
                    found = videos[videos >= 0]
                else:
                    found, _ = retrieved_chamfer(sims[at: at + len(q)], videos, len(self.ids), rescore)
                shortlists.append(np.unique(rank[found]))  # increasing, as _scores needs
                at += len(q)
        out = []
        for q, sorted_pos in zip(queries, shortlists):
            scores = self._scores(q, sorted_pos)
            videos = self._order[sorted_pos]
            top = np.lexsort((videos, -scores))[:candidates]
            out.append((videos[top], scores[top].astype(np.float32)))
        return out

    def _scores(self, q: np.ndarray, sorted_pos: np.ndarray) -> np.ndarray:
        """Exact coarse similarity to the videos at ``sorted_pos`` (increasing) of the start-sorted
        arrays, about ``block_rows`` rows at a time (one video may exceed it)."""
        starts, counts = self._starts[sorted_pos], self._counts[sorted_pos]
        out = np.empty(len(sorted_pos), np.float64)
        if self.ann is None:  # every live video: contiguous runs, read as slices of the file
            i = 0
            while i < len(starts):
                j = max(i + 1, int(np.searchsorted(starts, starts[i] + self.cfg.block_rows, side="left")))
                out[i:j] = segment_chamfer(q, self.vectors, starts[i:j], counts[i:j])
                i = j
            return out
        ends = np.cumsum(counts)  # a shortlist: scattered runs, gathered a block at a time
        i = 0
        while i < len(starts):
            j = max(i + 1, int(np.searchsorted(ends, ends[i] - counts[i] + self.cfg.block_rows, side="right")))
            c = counts[i:j]
            local = np.concatenate([[0], np.cumsum(c)[:-1]])
            rows = np.repeat(starts[i:j] - local, c) + np.arange(int(c.sum()))
            out[i:j] = segment_chamfer(q, np.asarray(self.vectors[rows]), local, c)
            i = j
        return out

    # --- persistence of the IVF ----------------------------------------------------------------

    def save(self, path: str | Path, store_state: dict) -> None:
        """Writes the IVF to ``path`` and what it covers to ``path.json``, each atomically."""
        import faiss

        if self.ann is None:
            raise ValueError("a flat coarse index has nothing to save: it reads the descriptor file")
        path = Path(path)
        with atomic_path(path) as tmp:
            faiss.write_index(self.ann, str(tmp))
        meta = {"config": asdict(self.cfg), "rows_indexed": self.rows_indexed, "store": store_state}
        write_json(path.with_name(path.name + ".json"), meta, indent=None, sort_keys=True)


def retrieved_chamfer(sims: np.ndarray, videos: np.ndarray, n_videos: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The segment-level Chamfer similarity estimated from k-NN results alone, for the ``top``
    best videos: ``sims, videos`` are ``[n, k]`` retrieved similarities (descending per row) and
    their videos (-1: none). A video's estimate is the mean over query rows of its best
    retrieved similarity in the row, or the row's last retrieved similarity if it has none there
    (an upper bound). Cheap but rough (recall 0.74 against 0.99 exact at 20k videos): used to
    choose which shortlisted videos to score exactly."""
    n, k = sims.shape
    valid = videos >= 0
    fallback = np.where(valid.any(axis=1), np.where(valid, sims, np.inf).min(axis=1), 0.0).astype(np.float64)
    qrow = np.broadcast_to(np.arange(n)[:, None], (n, k))[valid]
    vid, sim = videos[valid], sims[valid].astype(np.float64)
    key = qrow * n_videos + vid
    order = np.lexsort((-sim, key))  # by key, best first within a key
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    best = order[first]  # the best retrieved similarity of each (query row, video)
    gain = np.bincount(vid[best], weights=sim[best] - fallback[qrow[best]], minlength=n_videos)
    seen = np.unique(vid[best])
    scores = (fallback.sum() + gain[seen]) / n
    keep = np.lexsort((seen, -scores))[:top]
    return seen[keep], scores[keep]


def train_ivf(vectors: np.ndarray, cfg: CoarseConfig, live_rows: np.ndarray | None = None):
    """An empty, trained faiss ``IndexIVFFlat`` (inner product) for these rows, or with
    ``cfg.ivf_bytes`` an ``IndexIVFPQ`` whose lists keep that many bytes a row (its similarities
    only pick the shortlist, which the exact rows then score); ids are added by the caller.
    Trained on ``train_per_list x nlist`` rows (at least 10,000 with PQ) drawn with ``cfg.seed``."""
    import faiss

    pool = np.arange(len(vectors)) if live_rows is None else np.asarray(live_rows, np.int64)
    M, D = len(pool), vectors.shape[1]
    nlist = cfg.nlist or max(1, int(round(4 * math.sqrt(max(M, 1)))))
    nlist = max(1, min(nlist, M // 39))  # faiss wants >= 39 training rows per list
    quantizer = faiss.IndexFlatIP(D)
    if cfg.ivf_bytes:
        if M < 256:
            raise ValueError(f"IVF lists of PQ codes (--coarse ivfpq) are trained on at least 256 descriptor rows; "
                             f"this index has {M} (use --coarse flat or ivf)")
        if D % cfg.ivf_bytes:
            raise ValueError(f"ivf_bytes must divide the descriptor dimension {D}, got {cfg.ivf_bytes}")
        index = faiss.IndexIVFPQ(quantizer, D, nlist, cfg.ivf_bytes, 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.min_points_per_centroid = 1  # small collections: trained on what there is
    else:
        index = faiss.IndexIVFFlat(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = cfg.seed
    n_train = min(M, max(cfg.train_per_list * nlist, 10_000 if cfg.ivf_bytes else 0))
    sample = np.sort(np.random.default_rng(cfg.seed).choice(pool, n_train, replace=False))
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    index.nprobe = min(cfg.nprobe, nlist)
    return index


COARSE_FILE = "coarse-ivf.faiss"
_BUILD_FIELDS = ("nlist", "train_per_list", "seed", "ivf_bytes")  # settings that shape a trained IVF


def coarse_index(store, cfg: CoarseConfig = CoarseConfig(), persist: bool = True) -> CoarseIndex:
    """The coarse index of an :class:`~hapvr.retrieval.index_store.IndexStore`.

    Flat: the memory-mapped descriptor file, nothing to build. IVF: the one saved in the index
    folder (``coarse-ivf.faiss``) is reused when it was trained on this index (same creation id
    and generation) with the same settings, with the rows added since put in; otherwise one is
    trained. ``persist``: save what was trained or extended (skipped where the folder is not
    writable)."""
    vectors = store.descriptor_matrix()
    ids, starts, counts = store.row_layout(views=True)  # a video's inset views are found on their own rows too
    live = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)]) if len(ids) else np.zeros(0, np.int64)
    kind = choose_kind(len(live), cfg)
    if cfg.kind == "auto" and not cfg.ivf_bytes and len(live) > cfg.ivfpq_threshold and \
            vectors.shape[1] % IVFPQ_BYTES == 0:
        cfg = replace(cfg, ivf_bytes=IVFPQ_BYTES)  # full rows: a second copy of the descriptors in memory
    index = CoarseIndex(vectors, None, cfg)
    if kind == "ivf":
        path = Path(store.path) / COARSE_FILE
        state = store.state()
        ann, covered = _load_ivf(path, state, cfg)
        if ann is None:
            ann, covered = train_ivf(vectors, cfg, live), 0
        index = CoarseIndex(vectors, ann, cfg, covered)
        new = live[live >= covered]
        index.add_rows(new)
        if persist and len(new):
            try:
                index.save(path, state)
            except OSError:
                pass
    index.set_videos(ids, starts, counts)
    return index


def _load_ivf(path: Path, state: dict, cfg: CoarseConfig):
    import faiss

    meta_path = path.with_name(path.name + ".json")
    if not (path.exists() and meta_path.exists()):
        return None, 0
    try:
        meta = json.loads(meta_path.read_text())
        saved = meta["store"]
        fits = (saved["uid"] == state["uid"] and saved["generation"] == state["generation"]
                and int(meta["rows_indexed"]) <= state["rows"]
                and all(meta["config"].get(k, 0 if k == "ivf_bytes" else None) == getattr(cfg, k)
                        for k in _BUILD_FIELDS))  # an IVF saved before ivf_bytes existed has full rows
        if not fits:
            return None, 0
        return faiss.read_index(str(path)), int(meta["rows_indexed"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):  # unreadable: trained again
        return None, 0
