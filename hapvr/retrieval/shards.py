"""Searching several index folders as one collection (``python -m hapvr.search --index A --index B``).

A large collection is split into shards: index folders built with the same model, one per disk
or machine. **A video id lives in one shard**: :func:`shard_of` gives it (CRC-32 of the id,
modulo the number of shards), ``python -m hapvr.index build --shard I/N`` keeps only the inputs
of shard ``I``, and opening shards that share an id is refused (the same video in two shards
would be counted twice and removed from one only).

The merge is exact: the result of searching N shards is the result of searching one index that
holds all their videos, in shard order.

- Exhaustive: every shard scores all its entries; the scores are put side by side.
- Coarse stage: for each query view, every shard proposes its ``candidates`` best entries with
  their coarse similarities; the ``candidates`` best of all of them are the ones a single index
  would propose (a video's coarse similarity depends on its own rows only, so the best of the
  whole collection are among the best of its shard), and only those are scored exactly, each
  on its shard. With ``--coarse ivf`` each shard searches its own IVF, which is what a single
  index's IVF would find only up to the lists probed (both are approximations of the flat search).
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import torch

from hapvr.evaluation.engine import EngineConfig
from hapvr.evaluation.scorers import Scorer
from hapvr.retrieval.coarse import CoarseConfig
from hapvr.retrieval.index_store import IndexStore, parent_of
from hapvr.retrieval.search import DEFAULT_CANDIDATES, Searcher, SearchResult, best_videos, score_videos


def shard_of(vid: str, shards: int) -> int:
    """The shard (``0 .. shards - 1``) a video id belongs to: CRC-32 of its UTF-8 bytes, modulo
    ``shards`` (stable across machines, Python versions and runs)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return zlib.crc32(vid.encode("utf-8")) % shards


def check_disjoint(stores: list[IndexStore]) -> None:
    """Refuses shards that share a video id (ValueError naming the id and both folders)."""
    folders = [store.path.resolve() for store in stores]
    for i, folder in enumerate(folders):
        if folder in folders[:i]:
            raise ValueError(f"{stores[i].path} is given twice")
    seen: dict[str, IndexStore] = {}
    for store in stores:
        for vid in store.ids():
            other = seen.setdefault(vid, store)
            if other is not store:
                raise ValueError(f"video {vid!r} is in both {other.path} and {store.path}: a video id lives in one "
                                 "shard (hapvr.retrieval.shards.shard_of; index build --shard I/N); remove it from "
                                 "one of them")


class ShardedSearcher:
    """:class:`~hapvr.retrieval.search.Searcher` over several shards (the module docstring)."""

    def __init__(self, stores: list[IndexStore], scorer: Scorer, coarse: CoarseConfig = CoarseConfig(),
                 engine: EngineConfig = EngineConfig(), persist_coarse: bool = True):
        if not stores:
            raise ValueError("a sharded search needs at least one index")
        check_disjoint(stores)
        self.searchers = [Searcher(s, scorer, coarse, engine, persist_coarse) for s in stores]
        self.scorer, self.engine = scorer, engine

    @property
    def kind(self) -> str:
        """The shards' coarse searches, ``flat``, ``ivf`` or ``flat/ivf`` (``auto`` chooses per shard)."""
        return "/".join(sorted({s.kind for s in self.searchers}))

    def __len__(self) -> int:
        return sum(len(s.store) for s in self.searchers)

    def search(self, query, k: int = 10, candidates: int = DEFAULT_CANDIDATES, exhaustive: bool = False
               ) -> SearchResult:
        return self.search_many([query], k, candidates, exhaustive)[0]

    def search_many(self, queries: list, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
                    exhaustive: bool = False) -> list[SearchResult]:
        """As :meth:`Searcher.search_many` on one index holding every shard's videos."""
        views = [self.searchers[0].query_views(q) for q in queries]
        for s in self.searchers[1:]:  # every shard checks the queries' shape against its own
            for q in queries:
                s.query_views(q)
        if exhaustive:
            start = time.perf_counter()
            flat = [x for v in views for x in v]
            parts = [(s, s.store.entries()) for s in self.searchers]
            scores = [score_videos(self.scorer, s.store, flat, entries, self.engine) for s, entries in parts]
            seconds = time.perf_counter() - start
            bounds = np.cumsum([0] + [len(v) for v in views])
            out = []
            for a, b in zip(bounds[:-1], bounds[1:]):
                hits = self._merge([(s, e, sc[a:b]) for (s, e), sc in zip(parts, scores)], None, k)
                out.append(SearchResult(hits, len(self), 0.0, seconds))
            return out
        return [self._search_one(xs, k, candidates) for xs in views]

    def _search_one(self, xs: list[torch.Tensor], k: int, candidates: int) -> SearchResult:
        start = time.perf_counter()
        chosen: dict[str, tuple[int, float]] = {}  # entry -> (shard, best coarse similarity)
        for x in xs:  # per query view: the best `candidates` of every shard's best `candidates`
            proposals = [(sim, n, key) for n, s in enumerate(self.searchers) for key, sim in s.view_candidates(x, candidates)]
            order = sorted(range(len(proposals)), key=lambda i: -proposals[i][0])[:candidates]
            for i in order:
                sim, n, key = proposals[i]
                chosen[key] = (n, max(chosen[key][1], sim) if key in chosen else sim)
        mid = time.perf_counter()
        parts = []
        for n, s in enumerate(self.searchers):
            entries = [key for key, (m, _) in chosen.items() if m == n]
            if entries:
                parts.append((s, entries, score_videos(self.scorer, s.store, xs, entries, self.engine)))
        coarse = {key: sim for key, (_, sim) in chosen.items()}
        hits = self._merge(parts, coarse, k)
        return SearchResult(hits, len({parent_of(key) for key in chosen}), mid - start, time.perf_counter() - mid)

    def _merge(self, parts, coarse: dict[str, float] | None, k: int):
        """The ``k`` best videos over every shard's ``(searcher, entries, scores [views, entries])``."""
        if not parts:
            return []
        entries = [e for _, es, _ in parts for e in es]
        scores = np.concatenate([sc for _, _, sc in parts], axis=1)
        rect = {e: s.store.rect for s, es, _ in parts for e in es}
        near = None if coarse is None else np.array([coarse[e] for e in entries], np.float32)
        return best_videos(entries, scores, near, k, lambda e: rect[e](e))
