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
- Duplicates: each video's descriptor rows ask every shard for its nearest entries; the best
  ``neighbours + 1`` of all of them are the ones one index would propose. A pair is scored and
  localised on the target's shard, the query video's features brought from its own shard when
  the two differ. Beyond ``flat_rows`` descriptor rows in all, every shard proposes through its
  own IVF (an approximation, as one index's IVF is).

Each shard is a :class:`Shard`: plain values in and out, so that the same object answers in
this process (:class:`LocalShards`, the default) or as an actor on the machine that holds the
folder (:class:`hapvr.retrieval.cluster.DaskShards`), the shards then working at the same time.
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hapvr.evaluation.engine import EngineConfig
from hapvr.evaluation.scorers import Scorer
from hapvr.progress import progress as progress_bar
from hapvr.retrieval.coarse import CoarseConfig
from hapvr.retrieval.index_store import IndexStore, parent_of
from hapvr.retrieval.search import (DEFAULT_CANDIDATES, DuplicatePair, Duplicates, DuplicatesConfig, Searcher,
                                    SearchResult, add_proposals, best_videos, duplicates_index, judge_pairs,
                                    neighbours, query_views, related, score_videos, video_rows)


def shard_of(vid: str, shards: int) -> int:
    """The shard (``0 .. shards - 1``) a video id belongs to: CRC-32 of its UTF-8 bytes, modulo
    ``shards`` (stable across machines, Python versions and runs)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return zlib.crc32(vid.encode("utf-8")) % shards


def check_disjoint(shards: list[dict]) -> None:
    """Refuses shards (:meth:`Shard.describe`) given twice or sharing a video id (ValueError
    naming the id and both folders)."""
    folders = [info["folder"] for info in shards]
    for i, folder in enumerate(folders):
        if folder in folders[:i]:
            raise ValueError(f"{shards[i]['path']} is given twice")
    seen: dict[str, str] = {}
    for info in shards:
        for vid in info["ids"]:
            other = seen.setdefault(vid, info["path"])
            if other != info["path"]:
                raise ValueError(f"video {vid!r} is in both {other} and {info['path']}: a video id lives in one "
                                 "shard (hapvr.retrieval.shards.shard_of; index build --shard I/N); remove it from "
                                 "one of them")


class Shard:
    """One shard's side of a sharded search or duplicates run. ``store``: an open index, or the
    folder of one (opened here, refused if made in another feature ``space`` than given)."""

    def __init__(self, store: IndexStore | str | Path, scorer: Scorer, coarse: CoarseConfig = CoarseConfig(),
                 engine: EngineConfig = EngineConfig(), persist_coarse: bool = True, space: dict | None = None):
        self.owned = not isinstance(store, IndexStore)  # opened here: closed by close()
        self.store = IndexStore.open(store, space) if self.owned else store
        try:
            self.searcher = Searcher(self.store, scorer, coarse, engine, persist_coarse)
        except BaseException:
            self.close()
            raise
        self._duplicates_index = None

    def close(self) -> None:
        if self.owned:
            self.store.close()

    def describe(self) -> dict:
        return {"path": str(self.store.path), "folder": str(self.store.path.resolve()), "ids": self.store.ids(),
                "videos": len(self.store), "rows": self.searcher.coarse.rows, "kind": self.searcher.kind, "insets": self.store.insets,
                "region_shape": tuple(self.store.region_shape)}

    def propose(self, views: list[torch.Tensor], candidates: int) -> list[list[tuple[str, float]]]:
        """Per query view, this shard's ``candidates`` best entries with their coarse similarities."""
        return [self.searcher.view_candidates(x, candidates) for x in views]

    def score(self, views: list[torch.Tensor], entries: list[str] | None = None):
        """``(entries, scores [views, entries], rectangles of the view entries)``; every entry by default."""
        entries = self.store.entries() if entries is None else entries
        scores = score_videos(self.searcher.scorer, self.store, views, entries, self.searcher.engine)
        return entries, scores, {e: self.store.rect(e) for e in entries if e != parent_of(e)}

    # --- duplicates ---------------------------------------------------------------------------

    def lengths(self) -> dict[str, int]:
        return {v: self.store.length(v) for v in self.store.ids()}

    def video_rows(self, start: int, stop: int, cfg: DuplicatesConfig) -> tuple[list[str], list[np.ndarray]]:
        """The ids of this shard's videos ``[start, stop)`` and their descriptor rows."""
        ids, starts, counts = self.store.row_layout()
        return ids[start:stop], video_rows(self._index(cfg), starts[start:stop], counts[start:stop])

    def neighbours(self, rows: list[np.ndarray], cfg: DuplicatesConfig) -> list[list[tuple[str, float]]]:
        """Each video's (of any shard) ``cfg.neighbours + 1`` nearest entries here, best first."""
        return neighbours(self._index(cfg), rows, cfg)

    def features(self, vids: list[str]) -> list[torch.Tensor]:
        return self.store.load_many(vids)

    def score_pairs(self, items: list[tuple[str, torch.Tensor | None, list[str]]]) -> list[np.ndarray]:
        """``s(a -> b)`` for each ``(a, a's features or None when a is here, targets b here)``."""
        s = self.searcher
        return [score_videos(s.scorer, self.store, [self.store.load(a) if x is None else x], targets, s.engine)[0]
                for a, x, targets in items]

    def relate(self, items: list[tuple[DuplicatePair, torch.Tensor | None]], cfg: DuplicatesConfig
               ) -> list[DuplicatePair]:
        """Each pair (its ``b`` here) with segments and relation; ``a``'s features given or here."""
        return [related(self.store.load(p.a) if x is None else x, self.store.load(p.b), p, cfg) for p, x in items]

    def _index(self, cfg: DuplicatesConfig):
        if self._duplicates_index is None:
            self._duplicates_index = duplicates_index(self.searcher, cfg)
        return self._duplicates_index


class LocalShards:
    """Shards in this process, asked one after another."""

    def __init__(self, shards: list[Shard]):
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def ask(self, method: str, args: list[tuple | None]) -> list:
        """``shard.method(*args[n])`` of every shard ``n`` whose ``args[n]`` is not None (else None)."""
        return [None if a is None else getattr(s, method)(*a) for s, a in zip(self.shards, args)]

    def each(self, method: str, *args) -> list:
        return self.ask(method, [args] * len(self))


class ShardedSearcher:
    """:class:`~hapvr.retrieval.search.Searcher` over several shards (the module docstring):
    ``shards`` are open indexes (searched in this process) or a pool of shards already opened
    (:class:`LocalShards`, :class:`hapvr.retrieval.cluster.DaskShards`)."""

    def __init__(self, shards, scorer: Scorer | None = None, coarse: CoarseConfig = CoarseConfig(),
                 engine: EngineConfig = EngineConfig(), persist_coarse: bool = True):
        if isinstance(shards, (list, tuple)):
            if not shards:
                raise ValueError("a sharded search needs at least one index")
            shards = LocalShards([Shard(s, scorer, coarse, engine, persist_coarse) for s in shards])
        self.pool = shards
        self.info = self.pool.each("describe")
        check_disjoint(self.info)
        self.where = {v: n for n, info in enumerate(self.info) for v in info["ids"]}

    @property
    def kind(self) -> str:
        """The shards' coarse searches, ``flat``, ``ivf`` or ``flat/ivf`` (``auto`` chooses per shard)."""
        return "/".join(sorted({info["kind"] for info in self.info}))

    def __len__(self) -> int:
        return sum(info["videos"] for info in self.info)

    @property
    def insets(self) -> bool:
        """Whether any shard keeps its videos' inset views."""
        return any(info["insets"] for info in self.info)

    def load(self, key: str) -> torch.Tensor:
        """The stored features of a video or view entry (a hit's ``target``), read on its shard."""
        n = self.where[parent_of(key)]
        return self.pool.ask("features", [([key],) if m == n else None for m in range(len(self.pool))])[n][0]

    def query_views(self, query) -> list[torch.Tensor]:
        """The query's views, checked against every shard's ``[R, D]``."""
        shapes = list(dict.fromkeys(info["region_shape"] for info in self.info))
        views = query_views(query, shapes[0])
        for shape in shapes[1:]:
            query_views(query, shape)
        return views

    def search(self, query, k: int = 10, candidates: int = DEFAULT_CANDIDATES, exhaustive: bool = False
               ) -> SearchResult:
        return self.search_many([query], k, candidates, exhaustive)[0]

    def search_many(self, queries: list, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
                    exhaustive: bool = False) -> list[SearchResult]:
        """As :meth:`Searcher.search_many` on one index holding every shard's videos."""
        views = [self.query_views(q) for q in queries]
        if not exhaustive:
            return [self._search_one(xs, k, candidates) for xs in views]
        start = time.perf_counter()
        parts = self.pool.each("score", [x for v in views for x in v])
        seconds = time.perf_counter() - start
        bounds = np.cumsum([0] + [len(v) for v in views])
        return [SearchResult(self._merge([(e, sc[a:b], r) for e, sc, r in parts], None, k), len(self), 0.0, seconds)
                for a, b in zip(bounds[:-1], bounds[1:])]

    def _search_one(self, xs: list[torch.Tensor], k: int, candidates: int) -> SearchResult:
        start = time.perf_counter()
        proposed = self.pool.each("propose", xs, candidates)  # [shard][view] -> [(entry, coarse)]
        chosen: dict[str, tuple[int, float]] = {}  # entry -> (shard, best coarse similarity)
        for i in range(len(xs)):  # per query view: the best `candidates` of every shard's best `candidates`
            proposals = [(sim, n, key) for n, per_view in enumerate(proposed) for key, sim in per_view[i]]
            for sim, n, key in sorted(proposals, key=lambda p: -p[0])[:candidates]:
                chosen[key] = (n, max(chosen[key][1], sim) if key in chosen else sim)
        mid = time.perf_counter()
        wanted = [[key for key, (m, _) in chosen.items() if m == n] for n in range(len(self.pool))]
        parts = [p for p in self.pool.ask("score", [(xs, e) if e else None for e in wanted]) if p is not None]
        hits = self._merge(parts, {key: sim for key, (_, sim) in chosen.items()}, k)
        return SearchResult(hits, len({parent_of(key) for key in chosen}), mid - start, time.perf_counter() - mid)

    @staticmethod
    def _merge(parts, coarse: dict[str, float] | None, k: int):
        """The ``k`` best videos over every shard's ``(entries, scores [views, entries], rectangles)``."""
        if not parts:
            return []
        entries = [e for es, _, _ in parts for e in es]
        scores = np.concatenate([sc for _, sc, _ in parts], axis=1)
        rects = {e: r for _, _, rs in parts for e, r in rs.items()}
        near = None if coarse is None else np.array([coarse[e] for e in entries], np.float32)
        return best_videos(entries, scores, near, k, rects.get)

    # --- duplicates across the shards ---------------------------------------------------------

    def duplicates(self, threshold: float, symmetric: bool = False, cfg: DuplicatesConfig = DuplicatesConfig(),
                   progress: bool = False) -> Duplicates:
        """:func:`hapvr.retrieval.search.duplicates` of the collection the shards hold together. Up to
        ``cfg.flat_rows`` descriptor rows in all, every shard proposes from its exact search (the
        result is then one index's); beyond, every shard from its IVF."""
        t0 = time.perf_counter()
        rows = sum(info["rows"] for info in self.info)
        cfg = replace(cfg, flat_rows=sys.maxsize if rows <= cfg.flat_rows else -1)
        proposals: set[tuple[str, str]] = set()
        bar = progress_bar(total=len(self.where), unit="video", desc="coarse neighbours") if progress else None
        for n, info in enumerate(self.info):
            for b0 in range(0, len(info["ids"]), cfg.block):
                ids, rows = self.pool.ask("video_rows", [(b0, b0 + cfg.block, cfg) if m == n else None
                                                         for m in range(len(self.pool))])[n]
                found = self.pool.each("neighbours", rows, cfg)  # [shard][video] -> [(entry, coarse)]
                merged = [sorted((c for per_video in found for c in per_video[j]), key=lambda c: -c[1])
                          [:cfg.neighbours + 1] for j in range(len(ids))]
                add_proposals(ids, merged, cfg, proposals)
                if bar:
                    bar.update(len(ids))
        if bar:
            bar.close()
        lengths = {v: n for part in self.pool.each("lengths") for v, n in part.items()}
        return judge_pairs(proposals, lengths, self._score_pairs, lambda pairs: self._relate(pairs, cfg), threshold,
                           symmetric, time.perf_counter() - t0, progress)

    def _features(self, vids) -> dict[str, torch.Tensor]:
        """Features of ``vids``, each read on its shard."""
        wanted = [sorted(v for v in vids if self.where[v] == n) for n in range(len(self.pool))]
        got = self.pool.ask("features", [(w,) if w else None for w in wanted])
        return {v: x for w, xs in zip(wanted, got) if w for v, x in zip(w, xs)}

    def _score_pairs(self, items: list[tuple[str, list[str]]]) -> dict[tuple[str, str], float]:
        """``{(a, b): s(a -> b)}``, scored on each target's shard."""
        where = self.where
        feats = self._features({a for a, targets in items if any(where[b] != where[a] for b in targets)})
        asked = [[] for _ in range(len(self.pool))]
        for a, targets in items:
            for n in sorted({where[b] for b in targets}):
                asked[n].append((a, None if where[a] == n else feats[a], [b for b in targets if where[b] == n]))
        out = {}
        for mine, sims in zip(asked, self.pool.ask("score_pairs", [(m,) if m else None for m in asked])):
            for (a, _, targets), row in zip(mine, sims or []):
                out.update(((a, b), float(s)) for b, s in zip(targets, row))
        return out

    def _relate(self, pairs: list[DuplicatePair], cfg: DuplicatesConfig) -> list[DuplicatePair]:
        where = self.where
        feats = self._features({p.a for p in pairs if where[p.a] != where[p.b]})
        asked = [[(p, None if where[p.a] == n else feats[p.a]) for p in pairs if where[p.b] == n]
                 for n in range(len(self.pool))]
        return [p for done in self.pool.ask("relate", [(m, cfg) if m else None for m in asked]) if done for p in done]
