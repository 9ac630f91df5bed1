"""Two-stage search of an indexed collection, and near-duplicate detection within it.

Stage 1 (:mod:`hapvr.retrieval.coarse`) picks ``candidates`` videos by segment-level descriptor
similarity; stage 2 scores the query against each of them with the scorer, exactly as the
evaluation engine scores a database (the same chunking of long videos, the same length-bucketed
padded batches, the same repetition of videos shorter than ``scorer.min_frames``), and ranks
by that score. ``exhaustive=True`` skips stage 1 and scores every indexed video.

Views. A query may come as several views (the whole frame, then the rectangles
:func:`hapvr.data.insets.detect_insets` found in it), and an index built with insets holds its
videos' views as entries of their own. The coarse stage looks for each query view's rows among
every entry's rows; the exact stage scores every query view against every candidate entry; a
video's score is the best over those pairs, and its hit names the pair (``query_view``: the
position of the query's view, 0 for the whole frame; ``target_view``: the rectangle of the
video's view, None for the whole frame). Without views on either side this is the plain search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from hapvr.evaluation.engine import EngineConfig, plan_batches, query_groups
from hapvr.evaluation.scorers import Scorer
from hapvr.localization import Segment, chamfer_frame_map, localize_explained
from hapvr.models.padding import pad_stack, repeat_to, split_chunks
from hapvr.progress import progress as progress_bar
from hapvr.retrieval.coarse import CoarseConfig, CoarseIndex, coarse_index, video_descriptors
from hapvr.retrieval.index_store import IndexStore, comparable_space, parent_of, space_differences

# The coarse top-100 held 99 % of the exhaustive top-10 at 1k and 20k videos (97-99 % at C = 50),
# and re-ranking 100 candidates keeps a 30-frame query under 1 s at 20k on 2 cores (benchmark).
DEFAULT_CANDIDATES = 100


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # the scorer's similarity of the query to this video (best over the views compared)
    coarse: float | None  # its coarse similarity (None when the search was exhaustive)
    query_view: int = 0  # which of the query's views scored it (0: the whole frame)
    target_view: dict | None = None  # the rectangle of the video's view that did (None: the whole frame)
    entry: str | None = None  # that view's entry key in the index (None: the video itself)

    @property
    def target(self) -> str:
        """The index entry whose features scored this hit (load it to localise the copy)."""
        return self.entry or self.id


@dataclass
class SearchResult:
    hits: list[Hit]  # best first, at most k
    scored: int  # videos the scorer compared with the query
    coarse_seconds: float
    rerank_seconds: float


def _check_scorer(store: IndexStore, scorer: Scorer) -> None:
    stored = store.space.get("scorer") if isinstance(store.space, dict) else None
    given = scorer.fingerprint()
    if stored is not None:  # another precision is allowed (comparable_space)
        stored = comparable_space({"scorer": stored})["scorer"]
        given = comparable_space({"scorer": given})["scorer"]
    if stored is not None and stored != given:
        diff = space_differences(stored, given) if isinstance(stored, dict) and isinstance(given, dict) else []
        raise ValueError(f"index {store.path} was built for scorer {stored}, but this search uses {given}"
                         f"{' (' + '; '.join(diff) + ')' if diff else ''}; search with the scorer it was built "
                         "for, or rebuild the index")


def _as_tensor(features) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if x.dim() != 3 or x.shape[0] < 1:
        raise ValueError(f"query features must be [T >= 1, R, D], got {list(x.shape)}")
    return x.float()


def score_videos(scorer: Scorer, store: IndexStore, queries: list[torch.Tensor], vids: list[str],
                 engine: EngineConfig = EngineConfig()) -> np.ndarray:
    """Exact similarity ``[len(queries), len(vids)]`` of each query (``[T, R, D]`` features in the
    index's space) to each of ``vids``, each target read once for all queries.

    As :func:`hapvr.evaluation.engine.compute_scores`: queries are padded in groups of similar
    length, targets are cut into chunks of ``engine.chunk_frames`` frames and packed by length
    into padded batches, a video's score is the mean of its chunks', and queries and chunks
    shorter than ``scorer.min_frames`` are repeated up to it."""
    out = np.zeros((len(queries), len(vids)), np.float32)
    if not vids or not queries:
        return out
    groups = query_groups([repeat_to(scorer.index(q), scorer.min_frames) for q in queries], engine)
    query_frames = max(len(members) * int(qlen.max()) for members, _, qlen in groups)
    position = {v: i for i, v in enumerate(vids)}
    chunks = [c for v in vids for c in split_chunks(v, store.length(v), engine.chunk_frames)]
    remaining: dict[str, int] = {}
    for c in chunks:
        remaining[c.vid] = remaining.get(c.vid, 0) + 1
    counts = np.array([remaining[v] for v in vids], np.float64)
    sums = np.zeros((len(queries), len(vids)), np.float64)
    loaded: dict[str, torch.Tensor] = {}
    for batch in plan_batches(chunks, query_frames, engine):
        missing = list(dict.fromkeys(c.vid for c in batch if c.vid not in loaded))
        loaded.update(zip(missing, store.load_many(missing)))
        targets = [repeat_to(scorer.index(loaded[c.vid][c.start: c.end]), scorer.min_frames) for c in batch]
        for c in batch:  # a long video's frames are kept only until its last chunk is scored
            remaining[c.vid] -= 1
            if remaining[c.vid] == 0:
                del loaded[c.vid]
        tpad, tlen = pad_stack(targets)
        del targets
        tlen = tlen.to(tpad.device)
        columns = np.array([position[c.vid] for c in batch])
        for members, qpad, qlen in groups:
            sims = scorer.pairwise(qpad, qlen, tpad, tlen).float().cpu().numpy()  # [Q_g, B]
            np.add.at(sums, (members.numpy()[:, None], columns[None, :]), sims)
    out[:] = sums / counts[None, :]
    return out


class Searcher:
    """Searches one index with one scorer; the coarse index is opened (or an IVF trained or
    loaded) once, here. ``prebuilt``: a coarse index to use instead.

    Raises ValueError if the index was built for another scorer (its manifest's ``scorer``
    entry differs from ``scorer.fingerprint()``)."""

    def __init__(self, store: IndexStore, scorer: Scorer, coarse: CoarseConfig = CoarseConfig(),
                 engine: EngineConfig = EngineConfig(), persist_coarse: bool = True,
                 prebuilt: CoarseIndex | None = None):
        _check_scorer(store, scorer)
        self.store, self.scorer, self.engine = store, scorer, engine
        self.coarse_cfg, self.persist_coarse = coarse, persist_coarse
        self.coarse = prebuilt if prebuilt is not None else coarse_index(store, coarse, persist_coarse)

    @property
    def kind(self) -> str:
        """The coarse search: ``flat`` or ``ivf``."""
        return self.coarse.kind

    @property
    def insets(self) -> bool:
        """Whether the index keeps its videos' inset views."""
        return self.store.insets

    def __len__(self) -> int:
        return len(self.store)

    def load(self, key: str) -> torch.Tensor:
        """The stored features of a video or view entry (a hit's ``target``)."""
        return self.store.load(key)

    def duplicates(self, threshold: float, symmetric: bool = False, cfg: "DuplicatesConfig | None" = None,
                   progress: bool = False) -> "Duplicates":
        """:func:`duplicates` of this index."""
        return duplicates(self.store, self.scorer, threshold, symmetric, cfg or DuplicatesConfig(),
                          engine=self.engine, searcher=self, progress=progress)

    def refresh(self) -> None:
        """Picks up videos added or removed since (the store's :meth:`refresh`; a saved IVF is
        extended, not trained again)."""
        self.store.refresh()
        self.coarse = coarse_index(self.store, self.coarse_cfg, self.persist_coarse)

    def candidates(self, query, candidates: int = DEFAULT_CANDIDATES) -> tuple[list[str], np.ndarray]:
        """Stage 1 alone: the ``candidates`` best videos by coarse similarity, and those similarities
        (a video found through several of its views once, at its best)."""
        entries, sims = self._entry_candidates([self._check_query(query)], candidates)
        best: dict[str, float] = {}
        for e, s in zip(entries, sims.tolist()):
            p = parent_of(e)
            best[p] = max(best.get(p, s), s)
        return list(best), np.array(list(best.values()), np.float32)

    def _entry_candidates(self, views: list[torch.Tensor], candidates: int) -> tuple[list[str], np.ndarray]:
        """Index entries (videos and their views) proposed by any query view, with the best coarse
        similarity any view gave each; ``candidates`` per query view."""
        return union_of_candidates([self.view_candidates(x, candidates) for x in views])

    def view_candidates(self, view: torch.Tensor, candidates: int) -> list[tuple[str, float]]:
        """The ``candidates`` entries of best coarse similarity to one query view, best first."""
        pos, sims = self.coarse.search(video_descriptors(view.numpy(), self.store.descriptor), candidates)
        return [(self.coarse.ids[i], s) for i, s in zip(pos.tolist(), sims.tolist())]

    def search(self, query, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
               exhaustive: bool = False) -> SearchResult:
        """The ``k`` indexed videos most similar to ``query`` (``[T, R, D]`` float, torch or numpy,
        in the index's feature space, or a list of views: the module docstring). Queries shorter
        than ``scorer.min_frames`` are repeated."""
        return self.search_many([query], k, candidates, exhaustive)[0]

    def search_many(self, queries: list, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
                    exhaustive: bool = False) -> list[SearchResult]:
        """:meth:`search` for several queries. Exhaustively, every entry is read once and scored
        against all the queries' views together (the times reported are shared); with the coarse
        stage, each query is re-ranked on its own candidates. A query is ``[T, R, D]`` features,
        or a list of views: features, or ``(rectangle or None, features)`` pairs, the whole frame
        first."""
        views = [self._query_views(q) for q in queries]
        if exhaustive:
            start = time.perf_counter()
            entries = self.store.entries()
            scores = score_videos(self.scorer, self.store, [x for v in views for x in v], entries, self.engine)
            seconds = time.perf_counter() - start
            bounds = np.cumsum([0] + [len(v) for v in views])
            return [SearchResult(self._top(entries, scores[a:b], None, k), len(self.store), 0.0, seconds)
                    for a, b in zip(bounds[:-1], bounds[1:])]
        results = []
        for xs in views:
            start = time.perf_counter()
            entries, coarse = self._entry_candidates(xs, candidates)
            mid = time.perf_counter()
            scores = score_videos(self.scorer, self.store, xs, entries, self.engine)
            results.append(SearchResult(self._top(entries, scores, coarse, k), len({parent_of(e) for e in entries}),
                                        mid - start, time.perf_counter() - mid))
        return results

    def query_views(self, query) -> list[torch.Tensor]:
        """A query's views as checked features (the whole frame first): see :meth:`search_many`."""
        return self._query_views(query)

    def _query_views(self, query) -> list[torch.Tensor]:
        return query_views(query, self.store.region_shape)

    def _check_query(self, query) -> torch.Tensor:
        return check_query(query, self.store.region_shape)

    def _top(self, entries: list[str], scores: np.ndarray, coarse: np.ndarray | None, k: int) -> list[Hit]:
        return best_videos(entries, scores, coarse, k, self.store.rect)


def query_views(query, region_shape: tuple[int, int]) -> list[torch.Tensor]:
    """A query's views as features checked against an index's ``[R, D]`` (the whole frame first):
    ``[T, R, D]`` features, or a list of views, each features or ``(rectangle or None, features)``."""
    if isinstance(query, (list, tuple)):
        if not query:
            raise ValueError("a query given as views needs at least one (the whole frame first)")
        return [check_query(v[1] if isinstance(v, tuple) else v, region_shape) for v in query]
    return [check_query(query, region_shape)]


def check_query(query, region_shape: tuple[int, int]) -> torch.Tensor:
    x = _as_tensor(query)
    R, D = region_shape
    if tuple(x.shape[1:]) != (R, D):
        raise ValueError(f"query features are [T, {x.shape[1]}, {x.shape[2]}], the index holds [T, {R}, {D}]")
    return x


def union_of_candidates(lists: list[list[tuple[str, float]]]) -> tuple[list[str], np.ndarray]:
    """Entries proposed by any of ``lists`` (one per query view), in order of first proposal, each
    with the best coarse similarity it was proposed at."""
    best: dict[str, float] = {}
    for found in lists:
        for key, s in found:
            best[key] = max(best.get(key, s), s)
    return list(best), np.array(list(best.values()), np.float32)


def best_videos(entries: list[str], scores: np.ndarray, coarse: np.ndarray | None, k: int, rect_of) -> list[Hit]:
    """The ``k`` best videos from the scores ``[query views, entries]``: a video at the best
    pair of a query view and one of its entries (the first such pair on ties); ``rect_of``
    gives a view entry's rectangle."""
    view_of = scores.argmax(0)
    best = scores[view_of, np.arange(len(entries))]
    parents = [parent_of(e) for e in entries]
    chosen: dict[str, int] = {}  # video -> its best entry's position (its first on ties)
    near: dict[str, float] = {}  # video -> its best coarse similarity over its entries
    for j, p in enumerate(parents):
        if p not in chosen or best[j] > best[chosen[p]]:
            chosen[p] = j
        if coarse is not None:
            near[p] = max(near.get(p, -np.inf), float(coarse[j]))
    vids = list(chosen)  # in the order of their first entry (the coarse order, or index order)
    top = np.array([best[chosen[v]] for v in vids])
    order = np.lexsort((np.arange(len(vids)), -top))[:k]  # ties: the coarse order, then index order
    hits = []
    for i in order:
        j = chosen[vids[i]]
        view = entries[j] != vids[i]
        hits.append(Hit(vids[i], float(top[i]), near.get(vids[i]), int(view_of[j]),
                        rect_of(entries[j]) if view else None, entries[j] if view else None))
    return hits


def search(store: IndexStore, scorer: Scorer, query, k: int = 10, candidates: int = DEFAULT_CANDIDATES,
           exhaustive: bool = False, coarse: CoarseConfig = CoarseConfig(),
           engine: EngineConfig = EngineConfig()) -> SearchResult:
    """One search; for many, make one :class:`Searcher` (it builds the coarse index once)."""
    return Searcher(store, scorer, coarse, engine).search(query, k, candidates, exhaustive)


# --- near duplicates within the collection -----------------------------------------------------


@dataclass(frozen=True)
class DuplicatePair:
    """Two indexed videos whose similarity reaches the threshold, and how they relate
    (:data:`RELATIONS`): the share of each one's time inside the copied segments found between
    them decides it."""

    a: str  # the query side: the shorter video (ties: the smaller id)
    b: str
    score: float  # s(a -> b), or the mean of both directions when symmetric
    forward: float  # s(a -> b)
    backward: float | None  # s(b -> a), computed only when symmetric
    relation: str = "same"
    coverage: tuple[float, float] = (1.0, 1.0)  # share of a's and of b's time in the segments
    segments: tuple[Segment, ...] = ()  # a (query) -> b (target), seconds
    reason: str | None = None  # why no segment was found (relation "no segment")


# How two duplicates relate: the same video (each covered by the copied segments, up to edits), one
# inside the other (a clip cut from it, or shown inside it), sharing a part (common footage), or
# alike with no copied segment found (heavily edited; the reason says what was seen).
RELATIONS = ("same", "a in b", "b in a", "share a part", "no segment")


@dataclass
class Duplicates:
    pairs: list[DuplicatePair]  # score >= threshold, best first
    clusters: list[list[str]]  # videos joined by "same" links (>= 2 videos), largest first
    candidate_pairs: int  # pairs the coarse stage proposed (each scored once per direction asked)
    seconds: dict = field(default_factory=dict)

    def links(self, cluster: list[str]) -> list[DuplicatePair]:
        """The "same" pairs inside ``cluster``: what joined it."""
        members = set(cluster)
        return [p for p in self.pairs if p.relation == "same" and p.a in members and p.b in members]


@dataclass(frozen=True)
class DuplicatesConfig:
    neighbours: int = 10  # coarse neighbours each video proposes
    min_coarse: float | None = None  # skip proposals with a lower coarse similarity
    shortlist_per_row: int = 32  # nearest rows per descriptor row whose videos are considered (IVF)
    rescore_factor: int = 4  # of those, 4 x (neighbours + 1) are scored exactly (IVF)
    nprobe: int = 2  # IVF lists searched per row: a copy's rows fall in the lists of its source's
    flat_rows: int = 5_000  # up to this many rows (~300 videos), neighbours come from the exact search
    block: int = 256  # videos whose IVF searches go to faiss together
    same_coverage: float = 0.8  # a pair is the same video when the segments cover this share of both
    k_s: float = 0.1  # top-k rate of the frame map the segments are found on (compare's)
    fps: float = 1.0  # frames per second of the index's features (for the segments' seconds)


def duplicates(store: IndexStore, scorer: Scorer, threshold: float, symmetric: bool = False,
               cfg: DuplicatesConfig = DuplicatesConfig(), coarse: CoarseConfig = CoarseConfig(),
               engine: EngineConfig = EngineConfig(), searcher: Searcher | None = None,
               progress: bool = False) -> Duplicates:
    """Every pair of indexed videos whose similarity reaches ``threshold``, grouped into clusters.

    No all-pairs work: each video proposes its ``cfg.neighbours`` nearest videos of the coarse
    stage, and only those pairs are scored. A pair's score is one direction of the scorer,
    the shorter video as the query (Chamfer similarity is high when the query's frames all
    appear in the target, so a clip of a longer video is found), or, with ``symmetric``, the
    mean of both directions (lower for a clip and its source: use it to keep only whole-video
    copies).

    Each pair that passes is then localised (compare's segments, on the frame map of the two
    videos' stored features) and related by how much of each video the segments cover: the
    same video when they cover ``cfg.same_coverage`` of both, one in the other when they cover
    that much of one only (a clip of a longer video, a video shown inside another), sharing a
    part otherwise (common filler, a host both were pasted into). Clusters join only the same
    videos, so footage two unrelated videos share never chains them into one cluster; the other
    relations are listed with their pairs.

    The proposals come from the exact coarse search on small collections (up to
    ``cfg.flat_rows`` descriptor rows) and from an IVF beyond (trained once and saved beside the
    index), each video's rows asking ``cfg.nprobe`` lists for ``cfg.shortlist_per_row`` rows.
    Scoring dominates: ~4 ms a pair on 2 cores for 10-60-frame videos, so ``cfg.min_coarse``
    (skip weak proposals) is the lever on large collections: at 20k planted videos, with 0.5,
    29k pairs were scored in ~2 min and 98.7 % of the copy-source pairs found (benchmark).

    In an index built with insets, a video's views propose their video like its own rows do;
    pairs are scored on the whole frames."""
    searcher = searcher or Searcher(store, scorer, coarse, engine)
    t0 = time.perf_counter()
    proposals = _coarse_pairs(searcher, cfg, progress)
    coarse_seconds = time.perf_counter() - t0

    def score(items: list[tuple[str, list[str]]]) -> dict[tuple[str, str], float]:
        out = {}
        for a, targets in items:
            sims = score_videos(scorer, store, [store.load(a)], targets, engine)[0]
            out.update(((a, b), float(s)) for b, s in zip(targets, sims))
        return out

    def relate(pairs: list[DuplicatePair]) -> list[DuplicatePair]:
        return [related(store.load(p.a), store.load(p.b), p, cfg) for p in pairs]

    lengths = {v: store.length(v) for v in store.ids()}
    return judge_pairs(proposals, lengths, score, relate, threshold, symmetric, coarse_seconds, progress)


def judge_pairs(proposals: set[tuple[str, str]], lengths: dict[str, int], score, relate, threshold: float,
                symmetric: bool, coarse_seconds: float = 0.0, progress: bool = False, block: int = 64) -> Duplicates:
    """The :class:`Duplicates` of the coarse stage's unordered ``proposals``: each pair scored with
    the shorter video as the query (and back, with ``symmetric``), those reaching ``threshold``
    related and clustered. ``score([(a, targets)])`` gives ``{(a, b): s(a -> b)}`` for ``block``
    query videos at a time; ``relate(pairs)`` gives the pairs with their segments and relation
    (:func:`related`). Shared by one index and by shards (``hapvr.retrieval.shards``)."""
    def query_side(u: str, v: str) -> tuple[str, str]:
        return (u, v) if (lengths[u], u) <= (lengths[v], v) else (v, u)

    t1 = time.perf_counter()
    pairs = sorted({query_side(u, v) for u, v in proposals})
    directed: dict[str, list[str]] = {}
    for a, b in pairs:
        directed.setdefault(a, []).append(b)
        if symmetric:
            directed.setdefault(b, []).append(a)
    bar = None
    if progress:
        bar = progress_bar(total=len(directed), unit="video", desc="scoring duplicate candidates")
    scores: dict[tuple[str, str], float] = {}
    queries = sorted(directed)
    for b0 in range(0, len(queries), block):
        scores.update(score([(a, directed[a]) for a in queries[b0: b0 + block]]))
        if bar:
            bar.update(len(queries[b0: b0 + block]))
    if bar:
        bar.close()
    found = []
    for a, b in pairs:
        forward = scores[(a, b)]
        backward = scores[(b, a)] if symmetric else None
        value = (forward + backward) / 2 if symmetric else forward
        if value >= threshold:
            found.append(DuplicatePair(a, b, value, forward, backward))
    t2 = time.perf_counter()
    found = sorted(relate(found), key=lambda p: (-p.score, p.a, p.b))
    t3 = time.perf_counter()
    return Duplicates(found, _components([(p.a, p.b) for p in found if p.relation == "same"]), len(pairs),
                      {"coarse": coarse_seconds, "scoring": t2 - t1, "relations": t3 - t2})


def related(a: torch.Tensor, b: torch.Tensor, pair: DuplicatePair, cfg: DuplicatesConfig) -> DuplicatePair:
    """``pair`` with its copied segments (on the frame map of ``a``'s and ``b``'s features), the
    share of each video they cover, and the relation."""
    segments, reason = localize_explained(chamfer_frame_map(a, b, cfg.k_s), cfg.fps)
    if not segments:
        return replace(pair, relation="no segment", coverage=(0.0, 0.0), reason=reason)
    cover_a = _covered([(s.query_start, s.query_end) for s in segments]) * cfg.fps / a.shape[0]
    cover_b = _covered([(s.target_start, s.target_end) for s in segments]) * cfg.fps / b.shape[0]
    full_a, full_b = cover_a >= cfg.same_coverage, cover_b >= cfg.same_coverage
    relation = "same" if full_a and full_b else "a in b" if full_a else "b in a" if full_b else "share a part"
    return replace(pair, relation=relation, coverage=(round(cover_a, 3), round(cover_b, 3)), segments=tuple(segments))


def _covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``spans``."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def duplicates_index(searcher: Searcher, cfg: DuplicatesConfig) -> CoarseIndex:
    """The coarse index that proposes duplicates: the searcher's, or an IVF beyond ``cfg.flat_rows``
    rows (the exact search would cost every row against every row)."""
    index = searcher.coarse
    if index.kind == "flat" and index.rows > cfg.flat_rows:
        index = coarse_index(searcher.store, replace(searcher.coarse_cfg, kind="ivf"), searcher.persist_coarse)
    return index


def neighbours(index: CoarseIndex, rows: list[np.ndarray], cfg: DuplicatesConfig) -> list[list[tuple[str, float]]]:
    """For each video's descriptor rows, its ``cfg.neighbours + 1`` nearest entries (itself among
    them when indexed here) with their coarse similarities, best first."""
    found = index.search_many(rows, cfg.neighbours + 1, nprobe=cfg.nprobe, shortlist_per_row=cfg.shortlist_per_row,
                              rescore=cfg.rescore_factor * (cfg.neighbours + 1))
    return [[(index.ids[p], c) for p, c in zip(pos.tolist(), sims.tolist())] for pos, sims in found]


def add_proposals(ids: list[str], found: list[list[tuple[str, float]]], cfg: DuplicatesConfig,
                  out: set[tuple[str, str]]) -> None:
    """Adds the unordered pairs ``(u, v)``, ``u < v``, of each video ``u`` of ``ids`` and its
    neighbours ``found`` (a proposal through a view proposes its video; weak ones are dropped)."""
    for u, cands in zip(ids, found):
        for key, c in cands:
            v = parent_of(key)
            if u == v or (cfg.min_coarse is not None and c < cfg.min_coarse):
                continue
            out.add((u, v) if u < v else (v, u))


def video_rows(index: CoarseIndex, starts: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """The descriptor rows of the videos whose row runs are ``starts``, ``counts``."""
    return [np.asarray(index.vectors[a: a + n], dtype=np.float32) for a, n in zip(starts.tolist(), counts.tolist())]


def _coarse_pairs(searcher: Searcher, cfg: DuplicatesConfig, progress: bool = False) -> set[tuple[str, str]]:
    """Unordered pairs ``(u, v)``, ``u < v``, where one proposed the other."""
    index = duplicates_index(searcher, cfg)
    ids, starts, counts = searcher.store.row_layout()
    out: set[tuple[str, str]] = set()
    bar = None
    if progress:
        bar = progress_bar(total=len(ids), unit="video", desc="coarse neighbours")
    for b0 in range(0, len(ids), cfg.block):
        b1 = min(b0 + cfg.block, len(ids))
        add_proposals(ids[b0:b1], neighbours(index, video_rows(index, starts[b0:b1], counts[b0:b1]), cfg), cfg, out)
        if bar:
            bar.update(b1 - b0)
    if bar:
        bar.close()
    return out


def _components(edges: list[tuple[str, str]]) -> list[list[str]]:
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))
