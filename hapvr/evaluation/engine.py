"""Query-versus-database similarities at benchmark scale.

- Long targets are cut into chunks of at most ``chunk_frames`` frames (2048, as the
  predecessor) whose scores are averaged; a chunk shorter than the scorer's ``min_frames`` is
  repeated up to it, so a short tail never crashes.
- Chunks are sorted by length and packed into batches whose all-pairs frame maps stay under
  ``max_map_elements``; each batch is padded and scored against every query in one fused call.
- The database streams from the HDF5 file batch by batch, so memory stays bounded whatever its
  size.
- Every finished batch is appended to a cache file (one JSON line per chunk, flushed and fsynced)
  so an interrupted run resumes where it stopped; a cache made with other queries, scorer or
  chunking is refused rather than mixed in.
- With ``world_size > 1`` each rank scores every ``world_size``-th batch into its own cache file;
  :func:`collect_scores` merges the shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from hapvr.evaluation.feature_store import FeatureStore
from hapvr.evaluation.scorers import Scorer


@dataclass(frozen=True)
class EngineConfig:
    chunk_frames: int = 2048
    max_map_elements: int = 1 << 25  # queries x query frames x target frames per fused call
    max_batch_videos: int = 256
    max_batch_frames: int = 16384  # target frames held in memory at once (16384 x 9 x 512 fp32 = 302 MB)
    max_padding_ratio: float = 1.3  # longest / shortest video in one padded batch or query group


@dataclass(frozen=True)
class Chunk:
    vid: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def key(self) -> str:
        return f"{self.vid}\t{self.start}\t{self.end}"


def split_chunks(vid: str, length: int, chunk_frames: int) -> list[Chunk]:
    if length <= 0:
        return []
    return [Chunk(vid, s, min(s + chunk_frames, length)) for s in range(0, length, chunk_frames)]


def repeat_to(x: torch.Tensor, min_frames: int) -> torch.Tensor:
    """Self-concatenates a short video until it has at least ``min_frames`` frames."""
    if x.shape[0] >= min_frames or x.shape[0] == 0:
        return x
    reps = -(-min_frames // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))


def pad_stack(videos: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([v.shape[0] for v in videos], dtype=torch.int64)
    out = videos[0].new_zeros((len(videos), int(lengths.max()), *videos[0].shape[1:]))
    for i, v in enumerate(videos):
        out[i, : v.shape[0]] = v
    return out, lengths


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


class ScoreCache:
    """Append-only JSON-lines file of chunk scores, headed by what they were computed with."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.header = header
        self.done: dict[str, list[float]] = {}
        if path.exists():
            lines = path.read_text().splitlines()
            if lines:
                if json.loads(lines[0]) != header:
                    raise RuntimeError(
                        f"the cache {path} was computed with other queries, scorer or chunking; "
                        "delete it or pass another --cache-dir")
                for line in lines[1:]:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interruption
                        continue
                    self.done[rec["chunk"]] = rec["scores"]
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rewrite cleanly (drops a torn last line), then append.
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(header) + "\n")
            for key, scores in self.done.items():
                f.write(json.dumps({"chunk": key, "scores": scores}) + "\n")
        os.replace(tmp, path)
        self._fh = open(path, "a")

    def add(self, records: Iterable[tuple[str, list[float]]]) -> None:
        for key, scores in records:
            self.done[key] = scores
            self._fh.write(json.dumps({"chunk": key, "scores": scores}) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _header(query_ids, scorer: Scorer, cfg: EngineConfig) -> dict:
    return {"queries": list(query_ids), "scorer": scorer.fingerprint(), "chunk_frames": cfg.chunk_frames}


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

    With ``world_size > 1`` this rank scores its share into ``cache_dir`` and returns None;
    merge with :func:`collect_scores` once every rank is done.
    """
    if world_size > 1 and cache_dir is None:
        raise ValueError("sharded scoring (world_size > 1) needs a cache_dir shared by all ranks")
    missing = [q for q in query_ids if q not in store]
    if missing:
        raise KeyError(f"queries without features: {missing[:5]}{'...' if len(missing) > 5 else ''}")
    queries = [repeat_to(scorer.index(store.load(q)), scorer.min_frames) for q in query_ids]
    groups = _query_groups(queries, cfg)
    chunks = [c for vid in target_ids for c in split_chunks(vid, store.length(vid), cfg.chunk_frames)]
    query_frames = max((len(g) * int(lens.max()) for g, _, lens in groups), default=1)
    batches = plan_batches(chunks, query_frames, cfg)
    mine = [b for i, b in enumerate(batches) if i % world_size == rank]

    cache = None
    if cache_dir is not None:
        cache = ScoreCache(Path(cache_dir) / f"scores.rank{rank}-of-{world_size}.jsonl",
                           _header(query_ids, scorer, cfg))
    done = cache.done if cache else {}
    todo = [b for b in mine if any(c.key() not in done for c in b)]
    results: dict[str, list[float]] = dict(done)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="batch",
                   desc=f"scoring{f' rank {rank}' if world_size > 1 else ''}")
    try:
        for batch in todo:
            targets = [repeat_to(scorer.index(store.load(c.vid, c.start, c.end)), scorer.min_frames) for c in batch]
            tpad, tlen = pad_stack(targets)
            tlen = tlen.to(tpad.device)
            sims = torch.empty(len(query_ids), len(batch))
            for members, qpad, qlen in groups:
                sims[members] = scorer.pairwise(qpad, qlen, tpad, tlen).float().cpu()  # [Q_g, B]
            records = [(c.key(), [float(v) for v in sims[:, j].tolist()]) for j, c in enumerate(batch)]
            results.update(records)
            if cache:
                cache.add(records)
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
        if cache:
            cache.close()
    if world_size > 1:
        return None
    return _average_chunks(query_ids, chunks, results)


def _query_groups(queries: list[torch.Tensor], cfg: EngineConfig, max_group: int = 16):
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
    """Merges the cache shards of a sharded run into ``scores[qid][vid]``; fails if a chunk is missing."""
    header = _header(query_ids, scorer, cfg)
    results: dict[str, list[float]] = {}
    for r in range(world_size):
        path = Path(cache_dir) / f"scores.rank{r}-of-{world_size}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"rank {r} left no scores at {path}")
        cache = ScoreCache(path, header)
        results.update(cache.done)
        cache.close()
    chunks = [c for vid in target_ids for c in split_chunks(vid, store.length(vid), cfg.chunk_frames)]
    absent = [c.key() for c in chunks if c.key() not in results]
    if absent:
        raise RuntimeError(f"{len(absent)} chunks were never scored (first: {absent[0]!r}); rerun the missing ranks")
    return _average_chunks(query_ids, chunks, results)
