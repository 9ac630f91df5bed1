"""Query-versus-database similarities at benchmark scale.

- Long targets are cut into chunks of at most ``chunk_frames`` frames (2048, as the
  predecessor) whose scores are averaged; a chunk shorter than the scorer's ``min_frames`` is
  repeated up to it, so a short tail never crashes.
- Chunks are sorted by length and packed into batches whose all-pairs frame maps stay under
  ``max_map_elements``; each batch is padded and scored against every query in one fused call.
- The database streams from the HDF5 file batch by batch, so memory stays bounded whatever its
  size.
- Every finished batch is appended to a cache file (one JSON line per chunk, flushed and fsynced)
  so an interrupted run resumes where it stopped, even after a kill (see :class:`ScoreCache`).
  The cache is keyed on what the scores depend on: the query ids and a digest of their frames,
  the scorer (its name, a digest of its weights, its settings), the chunk size, and per chunk a
  digest of the frames scored. A cache made with anything else is refused rather than mixed in.
  Why per chunk: a fresh run hashes frames it has just read for scoring (SHA-256, about 1.5 GB/s
  a core with SHA instructions: around 1% of the time of scoring them), and a resumed run rereads
  only the chunks it reuses (about 450 MB/s read + hash from the page cache, against ~25 MB/s
  of features-only scoring with 4 queries on one core). A whole-file digest would cost a full
  extra read on every run; file sizes or modification times would not catch a re-extraction.
- With ``world_size > 1`` each rank scores every ``world_size``-th batch into its own cache file;
  :func:`collect_scores` merges the shards.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from hapvr.batching import Chunk, pad_stack, repeat_to, split_chunks  # noqa: F401  (re-exported)
from hapvr.evaluation.feature_store import FeatureStore, frames_digest
from hapvr.evaluation.scorers import Scorer
from hapvr.serialization import CorruptFileError
from hapvr.serialization import fsync_dir as _fsync_dir


@dataclass(frozen=True)
class EngineConfig:
    chunk_frames: int = 2048
    max_map_elements: int = 1 << 25  # queries x query frames x target frames per fused call
    max_batch_videos: int = 256
    max_batch_frames: int = 16384  # target frames held in memory at once (16384 x 9 x 512 fp32 = 302 MB)
    max_padding_ratio: float = 1.3  # longest / shortest video in one padded batch or query group


def plan_batches(chunks: list[Chunk], query_frames: int, cfg: EngineConfig) -> list[list[Chunk]]:
    """Length-bucketed batches: sorted by length, cut where the padded frame maps
    ``query_frames x batch x longest`` would pass ``max_map_elements``."""
    batches, current, longest = [], [], 0
    for c in sorted(chunks, key=lambda c: (c.length, c.vid, c.start)):
        new_longest = max(longest, c.length)
        if current and (query_frames * (len(current) + 1) * new_longest > cfg.max_map_elements
                        or len(current) >= cfg.max_batch_videos
                        or (len(current) + 1) * new_longest > cfg.max_batch_frames
                        or new_longest > cfg.max_padding_ratio * max(current[0].length, 1)):
            batches.append(current)
            current, new_longest = [], c.length
        current.append(c)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


CACHE_FORMAT = "hapvr-score-cache-2"  # 2: keyed on feature data digests and scorer weights


class ScoreCacheError(ValueError, RuntimeError):
    """The cache cannot serve this run: it was computed with other features, queries, weights or
    settings, or another run is writing it. (A RuntimeError too, as the first cache format raised.)"""


class ScoreCache:
    """Append-only JSON-lines file of chunk scores, headed by what they were computed with.

    Line 1 is the header: format, query ids and the digests of their features, the scorer's
    name, weight digest and settings, and the chunk size. Every other line is one chunk:
    ``{"chunk", "data": digest of its frames, "scores": one per query, "crc"}``, the CRC-32 of
    the rest, so a damaged line is caught rather than used.

    Crash safety: records are appended a batch at a time and fsynced. A line counts once its
    newline is on disk, so the only damage a kill can do is a torn last line (or a torn header
    in a file just created), which is dropped on opening (the file is truncated back to its last
    newline) and its chunks scored again. Any other line that does not parse or fails its CRC
    is an error naming the file and line. The file is locked (flock) before it is read, so a
    second run on the same file is refused instead of truncating or interleaving the first's
    lines; the kernel releases the lock of a killed process.
    """

    def __init__(self, path: Path, header: dict, writable: bool = True):
        self.path = Path(path)
        self.header = header
        self.done: dict[str, list[float]] = {}
        self.digests: dict[str, str] = {}  # chunk key -> digest of the frames it was scored on
        self._fh = None
        if not writable:
            if self.path.exists():
                self._read(self.path.read_bytes())
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fh = open(self.path, "a+b")  # appends always go to the end, whatever is read
        try:
            _lock(self._fh, self.path)
            self._fh.seek(0)
            data = self._fh.read()
            committed = self._read(data)
            if committed < len(data):  # a torn last line: the normal resume case after a kill
                self._fh.truncate(committed)
            if committed == 0:
                self._fh.write((json.dumps(self.header) + "\n").encode())
            self._fh.flush()
            os.fsync(self._fh.fileno())
            if created:
                _fsync_dir(self.path.parent)
        except BaseException:
            self.close()
            raise

    def _read(self, data: bytes) -> int:
        """Loads the committed records; returns the byte length of the committed part (0: no header)."""
        committed = data.rfind(b"\n") + 1
        lines = data[:committed].split(b"\n")[:-1]
        if not lines:
            return 0
        try:
            old = json.loads(lines[0])
            if not isinstance(old, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise CorruptFileError(f"score cache {self.path} line 1: unreadable header ({exc}); "
                                   "delete the file or pass another --cache-dir") from None
        if old != self.header:
            raise ScoreCacheError(
                f"the score cache {self.path} was computed with other queries, scorer or chunking than this run: "
                f"{'; '.join(_header_changes(old, self.header))}. Pass another --cache-dir, or delete the file "
                "to recompute")
        n_queries = len(self.header["queries"])
        for number, line in enumerate(lines[1:], start=2):
            key, digest, scores = _parse_record(line, n_queries, self.path, number)
            self.done[key] = scores
            self.digests[key] = digest
        return committed

    def add(self, records: Iterable[tuple[str, str, list[float]]]) -> None:
        """Appends ``(chunk key, frames digest, scores)`` records and makes them durable."""
        lines = []
        for key, digest, scores in records:
            self.done[key] = scores
            self.digests[key] = digest
            lines.append(_format_record(key, digest, scores))
        self._fh.write("".join(lines).encode())  # one write per batch: a kill tears at most the last line
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # also releases the lock
            self._fh = None


def _record_crc(key: str, digest: str, scores: list[float]) -> str:
    text = json.dumps([key, digest, scores], separators=(",", ":"))
    return f"{zlib.crc32(text.encode()):08x}"


def _format_record(key: str, digest: str, scores: list[float]) -> str:
    return json.dumps({"chunk": key, "data": digest, "scores": scores, "crc": _record_crc(key, digest, scores)}) + "\n"


def _parse_record(line: bytes, n_queries: int, path: Path, number: int) -> tuple[str, str, list[float]]:
    def bad(why: str):
        return CorruptFileError(f"score cache {path} line {number}: {why}; the file is damaged: delete it "
                                "(its scores are recomputed) or pass another --cache-dir")

    try:
        rec = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        raise bad("not a JSON record") from None
    if not (isinstance(rec, dict) and isinstance(rec.get("chunk"), str) and isinstance(rec.get("data"), str)
            and isinstance(rec.get("scores"), list) and isinstance(rec.get("crc"), str)):
        raise bad("not a chunk record")
    key, digest, scores = rec["chunk"], rec["data"], rec["scores"]
    if len(scores) != n_queries or not all(isinstance(v, float) and math.isfinite(v) for v in scores):
        raise bad(f"expected {n_queries} finite scores")
    if rec["crc"] != _record_crc(key, digest, scores):
        raise bad("checksum mismatch")
    return key, digest, scores


def _lock(fh, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ScoreCacheError(f"the score cache {path} is being written by another running evaluation; "
                              "wait for it or pass another --cache-dir") from None
    except OSError:  # a file system without locks (some network mounts): proceed unlocked
        pass


def _listed(ids, limit: int = 5) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _header_changes(old: dict, new: dict) -> list[str]:
    """What differs between a cache's header and this run's, in words."""
    if old.get("format") != new["format"]:
        return [f"it was written in another cache format ({old.get('format', 'the first, without feature digests')})"]
    changes = []
    old_q, new_q = old.get("queries"), new["queries"]
    if old_q != new_q:
        if isinstance(old_q, list) and set(old_q) == set(new_q):
            changes.append("the queries are in another order")
        elif isinstance(old_q, list):
            added, removed = set(new_q) - set(old_q), set(old_q) - set(new_q)
            changes.append("the queries differ" + (f" (added: {_listed(added)})" if added else "")
                           + (f" (removed: {_listed(removed)})" if removed else ""))
        else:
            changes.append("the queries differ")
    old_data = old.get("query_data") if isinstance(old.get("query_data"), dict) else {}
    changed = [q for q, d in new["query_data"].items() if q in old_data and old_data[q] != d]
    if changed:
        changes.append(f"the features of queries {_listed(changed)} changed")
    old_s, new_s = old.get("scorer") if isinstance(old.get("scorer"), dict) else {}, new["scorer"]
    if old_s.get("scorer") != new_s["scorer"]:
        changes.append(f"the scorer changed ({old_s.get('scorer')} -> {new_s['scorer']})")
    else:
        if old_s.get("weights") != new_s["weights"]:
            changes.append("the model weights changed")
        old_set = old_s.get("settings") if isinstance(old_s.get("settings"), dict) else {}
        for name in sorted(set(old_set) | set(new_s["settings"])):
            if old_set.get(name) != new_s["settings"].get(name):
                changes.append(f"{name} changed ({old_set.get(name)} -> {new_s['settings'].get(name)})")
    if old.get("chunk_frames") != new["chunk_frames"]:
        changes.append(f"--chunk-frames changed ({old.get('chunk_frames')} -> {new['chunk_frames']})")
    return changes or ["its header differs"]


def _scorer_fingerprint(scorer: Scorer) -> dict:
    fp = scorer.fingerprint()
    if isinstance(fp, dict):
        return {"scorer": str(fp.get("scorer")), "weights": fp.get("weights"), "settings": dict(fp.get("settings", {}))}
    return {"scorer": str(fp), "weights": None, "settings": {}}  # a scorer of the older protocol (one string)


def _header(query_ids, query_digests: list[str], scorer: Scorer, cfg: EngineConfig) -> dict:
    return {"format": CACHE_FORMAT, "queries": list(query_ids), "query_data": dict(zip(query_ids, query_digests)),
            "scorer": _scorer_fingerprint(scorer), "chunk_frames": cfg.chunk_frames}


def _verify_cached(store: FeatureStore, chunks: list[Chunk], cache: ScoreCache, progress: bool,
                   changed: set[str]) -> None:
    """Rereads the frames of every cached chunk about to be reused and compares their digests with
    the cache's. Costs one read of the already-scored part (no scoring): the price of never
    reusing scores of features re-extracted under the same ids. ``changed``: videos already known
    to differ (their length changed, so their cached chunks no longer exist)."""
    changed = set(changed)
    bar = None
    if progress and chunks:
        from hapvr.progress import progress as progress_bar

        bar = progress_bar(total=len(chunks), unit="chunk", desc="checking cached scores")
    for c in chunks:
        if frames_digest(store.load(c.vid, c.start, c.end)) != cache.digests[c.key()]:
            changed.add(c.vid)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    if changed:
        videos = f"{len(changed)} video{'s' if len(changed) > 1 else ''}"
        raise ScoreCacheError(
            f"the score cache {cache.path} holds scores of other feature data: the features of {videos} in "
            f"{store.path} changed since it was written ({_listed(changed)}). Pass another --cache-dir, or delete "
            "the file to recompute")


def compute_scores(
    scorer: Scorer,
    store: FeatureStore,
    query_ids: list[str],
    target_ids: list[str],
    cfg: EngineConfig = EngineConfig(),
    cache_dir: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, float]] | None:
    """Similarity of every target to every query: ``scores[qid][vid]``.

    With ``cache_dir``, scores are cached per chunk under a key of everything they depend on
    (see :class:`ScoreCache`), and a cached chunk is reused only after its frames are reread and
    found unchanged; a cache of other data, weights or settings raises
    :class:`ScoreCacheError`, a damaged one :class:`~hapvr.serialization.CorruptFileError`.
    With ``world_size > 1`` this rank scores its share into ``cache_dir`` and returns None;
    merge with :func:`collect_scores` once every rank is done.
    """
    if world_size > 1 and cache_dir is None:
        raise ValueError("sharded scoring (world_size > 1) needs a cache_dir shared by all ranks")
    missing = [q for q in query_ids if q not in store]
    if missing:
        raise KeyError(f"queries without features: {missing[:5]}{'...' if len(missing) > 5 else ''}")
    stored = [store.load(q) for q in query_ids]
    query_digests = [frames_digest(x) for x in stored]
    queries = [repeat_to(scorer.index(x), scorer.min_frames) for x in stored]
    del stored
    groups = query_groups(queries, cfg)
    chunks = [c for vid in target_ids for c in split_chunks(vid, store.length(vid), cfg.chunk_frames)]
    query_frames = max((len(g) * int(lens.max()) for g, _, lens in groups), default=1)
    batches = plan_batches(chunks, query_frames, cfg)
    mine = [b for i, b in enumerate(batches) if i % world_size == rank]

    cache = None
    if cache_dir is not None:
        cache = ScoreCache(Path(cache_dir) / f"scores.rank{rank}-of-{world_size}.jsonl",
                           _header(query_ids, query_digests, scorer, cfg))
    try:
        done = cache.done if cache else {}
        complete = [all(c.key() in done for c in b) for b in mine]  # a torn batch is scored again whole
        todo = [b for b, full in zip(mine, complete) if not full]
        reused = [c for b, full in zip(mine, complete) if full for c in b]
        if cache:
            planned, wanted = {c.key() for c in chunks}, set(target_ids)
            resized = {vid for vid in (key.rsplit("\t", 2)[0] for key in done if key not in planned) if vid in wanted}
            _verify_cached(store, reused, cache, progress, changed=resized)
        results: dict[str, list[float]] = {c.key(): done[c.key()] for c in reused}
        _score_batches(scorer, store, groups, len(query_ids), todo, results, cache,
                       progress and f"scoring{f' rank {rank}' if world_size > 1 else ''}", len(mine))
    finally:
        if cache:
            cache.close()
    if world_size > 1:
        return None
    return _average_chunks(query_ids, chunks, results)


def _score_batches(scorer: Scorer, store: FeatureStore, groups, n_queries: int, todo: list[list[Chunk]],
                   results: dict[str, list[float]], cache: ScoreCache | None, progress: str | bool, total: int) -> None:
    bar = None
    if progress:
        from hapvr.progress import progress as progress_bar

        bar = progress_bar(total=total, initial=total - len(todo), unit="batch", desc=progress)
    try:
        for batch in todo:
            frames = [store.load(c.vid, c.start, c.end) for c in batch]
            digests = [frames_digest(x) for x in frames]
            targets = [repeat_to(scorer.index(x), scorer.min_frames) for x in frames]
            del frames
            tpad, tlen = pad_stack(targets)
            tlen = tlen.to(tpad.device)
            sims = torch.empty(n_queries, len(batch))
            for members, qpad, qlen in groups:
                sims[members] = scorer.pairwise(qpad, qlen, tpad, tlen).float().cpu()  # [Q_g, B]
            records = [(c.key(), digest, [float(v) for v in sims[:, j].tolist()])
                       for j, (c, digest) in enumerate(zip(batch, digests))]
            results.update((key, scores) for key, _, scores in records)
            if cache:
                cache.add(records)
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()


def query_groups(queries: list[torch.Tensor], cfg: EngineConfig, max_group: int = 16):
    """Queries sorted by length and padded in groups of similar length, so padding wastes little."""
    order = sorted(range(len(queries)), key=lambda i: queries[i].shape[0])
    groups, current = [], []
    for i in order:
        if current and (len(current) >= max_group
                        or queries[i].shape[0] > cfg.max_padding_ratio * max(queries[current[0]].shape[0], 1)):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    out = []
    for members in groups:
        qpad, qlen = pad_stack([queries[i] for i in members])
        out.append((torch.tensor(members), qpad, qlen.to(qpad.device)))
    return out


def _average_chunks(query_ids, chunks: list[Chunk], results: dict[str, list[float]]):
    sums: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for c in chunks:
        s = results[c.key()]
        acc = sums.setdefault(c.vid, [0.0] * len(query_ids))
        for i, v in enumerate(s):
            acc[i] += v
        counts[c.vid] = counts.get(c.vid, 0) + 1
    return {q: {vid: sums[vid][i] / counts[vid] for vid in sums} for i, q in enumerate(query_ids)}


def collect_scores(scorer: Scorer, store: FeatureStore, query_ids: list[str], target_ids: list[str],
                   cache_dir: str | Path, world_size: int, cfg: EngineConfig = EngineConfig()):
    """Merges the cache shards of a sharded run into ``scores[qid][vid]``; fails if a chunk is missing.

    The shards are read, not written. Their headers are checked against this run's (queries and
    their features, scorer, chunking); the target chunks' digests are not reread here, because
    each rank checked the ones it reused (and wrote the others) in its :func:`compute_scores`."""
    header = _header(query_ids, [frames_digest(store.load(q)) for q in query_ids], scorer, cfg)
    results: dict[str, list[float]] = {}
    for r in range(world_size):
        path = Path(cache_dir) / f"scores.rank{r}-of-{world_size}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"rank {r} left no scores at {path}")
        results.update(ScoreCache(path, header, writable=False).done)
    chunks = [c for vid in target_ids for c in split_chunks(vid, store.length(vid), cfg.chunk_frames)]
    absent = [c.key() for c in chunks if c.key() not in results]
    if absent:
        raise RuntimeError(f"{len(absent)} chunks were never scored (first: {absent[0]!r}); rerun the missing ranks")
    return _average_chunks(query_ids, chunks, results)
