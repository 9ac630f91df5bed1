"""The coarse stage: cheap descriptors of each video and a faiss index over them, which picks the
few hundred candidates that the scorer then ranks exactly.

Descriptor (what, and why not one vector per video). A video's frame vector is the normalised
mean of its normalised region features; a video is described by one row per segment of
``segment_frames`` consecutive frames (the normalised mean of their frame vectors), and the
coarse similarity of a query to a video is a Chamfer similarity at segment level: the mean over
the query's segments of the best inner product with any of the video's segments. This mirrors
the exact score (the mean over query frames of the best target frame), so a query that is a
sub-clip of a long video, or a video that holds the query among other shots, still ranks high.
A single mean vector per video blurs the shots together. Measured on the planted collection of
``benchmarks/bench_search.py`` (1000 videos, 30 queries, fraction of the exhaustive top-10 found
in the coarse top-C; ``docs`` in the benchmark results):

============================  ======  ======  ======  ======
rows per video (segment)      C=25    C=50    C=100   C=200
============================  ======  ======  ======  ======
1 (mean of the video)         0.587   0.667   0.783   0.857
2.6 (16 frames)               0.710   0.780   0.853   0.923
4.7 (8 frames)                0.797   0.860   0.913   0.983
8.9 (4 frames, the default)   0.897   0.933   0.967   0.993
34 (every frame)              0.990   0.997   1.000   1.000
============================  ======  ======  ======  ======

Four-frame segments keep the recall above 0.95 at C = 100 with 9 rows a video (18 KiB of
descriptors next to ~320 KiB of float16 frames); per-frame rows would find everything but make
the coarse index as large as a tenth of the features.

Index. Rows go into faiss with their row number in the index store as id. Up to
``ivf_threshold`` rows an exact ``IndexFlatIP`` is used; above it an ``IndexIVFFlat`` with
``nlist = 4 sqrt(rows)`` lists, ``nprobe`` of them searched (see the benchmark for the
latency and recall that set the threshold and the default nprobe). Each query row retrieves
``per_candidate x C`` nearest rows; a video that a query row did not retrieve is credited with
that row's last retrieved similarity (an upper bound on what it would have had), which
measured better than crediting zero.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DescriptorConfig:
    """How a video's descriptor rows are made (stored in the index manifest; a change of these
    needs a rebuilt index)."""

    segment_frames: int = 4  # frames per descriptor row; 0: one row, the mean of the video
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
        return _normalize(frames.mean(axis=0, keepdims=True))
    T = frames.shape[0]
    starts = np.arange(0, T, L)
    sums = np.add.reduceat(frames, starts, axis=0)
    return _normalize(sums).astype(np.float32)


@dataclass(frozen=True)
class CoarseConfig:
    """Choice and settings of the faiss index (documented in the module docstring)."""

    kind: str = "auto"  # "flat" (exact), "ivf", or "auto": flat up to ivf_threshold rows
    ivf_threshold: int = 400_000  # descriptor rows; measured crossing point, see the benchmark
    nlist: int | None = None  # IVF lists; None: 4 sqrt(rows)
    nprobe: int = 32  # IVF lists searched per query row
    per_candidate: int = 8  # rows retrieved per query row, times the candidates asked for
    train_per_list: int = 40  # IVF training rows per list (faiss warns below 39)
    seed: int = 1234


def choose_kind(rows: int, cfg: CoarseConfig) -> str:
    if cfg.kind not in ("auto", "flat", "ivf"):
        raise ValueError(f"coarse index kind must be auto, flat or ivf, got {cfg.kind!r}")
    if cfg.kind != "auto":
        return cfg.kind
    return "ivf" if rows > cfg.ivf_threshold else "flat"


class CoarseIndex:
    """Descriptor rows of a collection in faiss, each tagged with its global row number; a
    video is the run of rows ``[start, start + count)``.

    ``videos`` maps live rows back to video positions; rows of videos not listed (removed since
    the index was built) are skipped at search time."""

    def __init__(self, index, kind: str, cfg: CoarseConfig, rows_indexed: int):
        self.index = index
        self.kind = kind
        self.cfg = cfg
        self.rows_indexed = rows_indexed  # rows [0, rows_indexed) of the store are in the index
        self.ids: list[str] = []
        self._starts = np.zeros(0, np.int64)
        self._ends = np.zeros(0, np.int64)
        self._order = np.zeros(0, np.int64)

    @classmethod
    def build(cls, vectors: np.ndarray, row_ids: np.ndarray, cfg: CoarseConfig = CoarseConfig()) -> "CoarseIndex":
        """An index over ``vectors [M, D]`` whose global row numbers are ``row_ids [M]``."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        M, D = vectors.shape
        kind = choose_kind(M, cfg)
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
        else:
            nlist = cfg.nlist or max(1, int(round(4 * math.sqrt(max(M, 1)))))
            nlist = min(nlist, max(1, M // 39))  # faiss needs ~39 training rows per list
            quantizer = faiss.IndexFlatIP(D)
            index = faiss.IndexIVFFlat(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = cfg.seed
            n_train = min(M, cfg.train_per_list * nlist)
            sample = np.random.default_rng(cfg.seed).choice(M, n_train, replace=False) if n_train < M else slice(None)
            index.train(vectors[sample])
            index.nprobe = min(cfg.nprobe, nlist)
        if M:
            index.add_with_ids(vectors, np.ascontiguousarray(row_ids, dtype=np.int64))
        out = cls(index, kind, cfg, int(row_ids.max()) + 1 if M else 0)
        return out

    def add(self, vectors: np.ndarray, row_ids: np.ndarray) -> None:
        """Adds rows appended to the store since the build (an IVF keeps its trained lists)."""
        if len(row_ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                    np.ascontiguousarray(row_ids, dtype=np.int64))
            self.rows_indexed = max(self.rows_indexed, int(row_ids.max()) + 1)

    def set_videos(self, ids: list[str], starts: np.ndarray, counts: np.ndarray) -> None:
        """The live videos and their row runs in the store (global row numbers)."""
        starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
        self._order = np.argsort(starts, kind="stable")
        self._starts = starts[self._order]
        self._ends = self._starts + counts[self._order]
        self.ids = list(ids)

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    def video_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Video position of each global row number, -1 for rows of removed videos (or none)."""
        pos = np.searchsorted(self._starts, rows, side="right") - 1
        ok = (pos >= 0) & (rows >= 0)
        pos = np.where(ok, pos, 0)
        ok &= rows < self._ends[pos] if len(self._ends) else False
        return np.where(ok, self._order[pos] if len(self._order) else 0, -1)

    def search(self, query_rows: np.ndarray, candidates: int, per_candidate: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``candidates`` videos for a query's descriptor rows ``[n, D]``: ``(positions into
        ids, coarse similarities)``, best first (ties: lower position)."""
        return self.search_many([query_rows], candidates, per_candidate, nprobe)[0]

    def search_many(self, queries: list[np.ndarray], candidates: int, per_candidate: int | None = None,
                    nprobe: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`search` for several queries with one faiss call (its GEMMs fill better)."""
        if candidates < 1 or not self.ids or not queries:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        q = np.ascontiguousarray(np.concatenate(queries), dtype=np.float32)
        k = min(self.rows, candidates * (per_candidate or self.cfg.per_candidate))
        if self.kind == "ivf":
            self.index.nprobe = min(nprobe or self.cfg.nprobe, self.index.nlist)
        sims, rows = self.index.search(q, k)
        videos = self.video_of_rows(rows)
        out, at = [], 0
        for rows_q in queries:
            n = len(rows_q)
            out.append(_aggregate(sims[at: at + n], videos[at: at + n], len(self.ids), candidates))
            at += n
        return out

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path, store_state: dict) -> None:
        """Writes ``path`` (faiss) and ``path.json`` (what it covers), each atomically."""
        import faiss

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)
        meta = {"kind": self.kind, "config": asdict(self.cfg), "rows_indexed": self.rows_indexed,
                "store": store_state}
        meta_tmp = path.with_name(path.name + ".json.tmp")
        meta_tmp.write_text(json.dumps(meta, sort_keys=True))
        os.replace(meta_tmp, path.with_name(path.name + ".json"))

    @classmethod
    def load(cls, path: str | Path) -> tuple["CoarseIndex", dict]:
        """The index saved at ``path`` and its metadata (rows covered, store state when saved)."""
        import faiss

        path = Path(path)
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        index = faiss.read_index(str(path))
        return cls(index, meta["kind"], CoarseConfig(**meta["config"]), int(meta["rows_indexed"])), meta


def _aggregate(sims: np.ndarray, videos: np.ndarray, n_videos: int, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment-level Chamfer similarity from per-row nearest neighbours.

    ``sims, videos``: ``[n, k]`` retrieved similarities (descending per row) and the video of
    each (-1: none or removed). A video's score is the mean over query rows of its best
    retrieved similarity in that row, or of the row's last retrieved similarity if it has none
    there."""
    n, k = sims.shape
    valid = videos >= 0
    # the credit of an unretrieved video: the row's smallest retrieved similarity
    fallback = np.where(valid.any(axis=1), np.where(valid, sims, np.inf).min(axis=1), 0.0).astype(np.float64)
    qrow = np.broadcast_to(np.arange(n)[:, None], (n, k))[valid]
    vid, sim = videos[valid], sims[valid].astype(np.float64)
    key = qrow * n_videos + vid
    order = np.lexsort((-sim, key))  # by key, best first within a key
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    best = order[first]  # the best retrieved similarity of each (query row, video)
    gain = np.bincount(vid[best], weights=sim[best] - fallback[qrow[best]], minlength=n_videos)
    seen = np.zeros(n_videos, bool)
    seen[vid[best]] = True
    cand = np.flatnonzero(seen)
    scores = (fallback.sum() + gain[cand]) / n
    top = np.lexsort((cand, -scores))[:candidates]
    return cand[top], scores[top].astype(np.float32)


COARSE_FILE = "coarse.faiss"


def _build_fields(cfg: CoarseConfig) -> dict:
    """The settings that shape a built index (the others apply at search time)."""
    return {k: v for k, v in asdict(cfg).items() if k in ("kind", "ivf_threshold", "nlist", "train_per_list", "seed")}


def coarse_index(store, cfg: CoarseConfig = CoarseConfig(), persist: bool | None = None) -> CoarseIndex:
    """The coarse index of an :class:`~hapvr.retrieval.index_store.IndexStore`.

    A saved one (``coarse.faiss`` in the index folder) is reused when it was built from this
    index (same creation id and generation) with the same settings; rows added since are added
    to it and removed videos are skipped, so an IVF is trained once. Otherwise it is built from
    the stored descriptors. ``persist``: save what was built or updated (default: for IVF only,
    whose training is what costs; a flat index is rebuilt faster than read, see the benchmark).
    Saving is skipped where the folder is not writable."""
    path = Path(store.path) / COARSE_FILE
    state = store.state()
    index = None
    if path.exists() and path.with_name(path.name + ".json").exists():
        try:
            saved, meta = CoarseIndex.load(path)
        except (OSError, ValueError, KeyError, RuntimeError):
            saved, meta = None, {}  # unreadable cache: rebuilt below
        fits = (saved is not None and meta.get("store", {}).get("uid") == state["uid"]
                and meta["store"].get("generation") == state["generation"]
                and saved.rows_indexed <= state["rows"] and _build_fields(saved.cfg) == _build_fields(cfg)
                and saved.kind == choose_kind(state["rows"], cfg))
        if fits:
            index = saved
            index.cfg = cfg  # search-time settings of this run
            new = store.descriptors(since_row=index.rows_indexed)
            index.add(new.vectors, new.rows)
            changed = len(new.rows) > 0
    if index is None:
        desc = store.descriptors()
        index = CoarseIndex.build(desc.vectors, desc.rows, cfg)
        del desc
        changed = True
    index.set_videos(*store.row_layout())
    if (persist if persist is not None else index.kind == "ivf") and changed:
        try:
            index.save(path, {**state, "rows": index.rows_indexed})
        except OSError:
            pass
    return index
