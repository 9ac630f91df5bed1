"""Query-versus-database similarities at benchmark scale.

- Long targets are cut into chunks of at most ``chunk_frames`` frames (2048, as the
  predecessor) whose scores are averaged; a chunk shorter than the scorer's ``min_frames`` is
  repeated up to it, so a short tail never crashes.
- Chunks are sorted by length and packed into batches whose all-pairs frame maps stay under
  ``max_map_elements``; each batch is padded and scored against every query in one fused call.
- The database streams from the HDF5 file batch by batch, so memory stays bounded whatever its
  size.
- Every finished batch is appended to a cache file (one JSON line per chunk, flushed and fsynced)
  so an interrupted run resumes where it stopped, even after a kill
  (:class:`~hapvr.evaluation.score_cache.ScoreCache`).
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
- The device is kept busy: a background thread reads, checks and hashes the next batch while the
  current one is scored, straight into one padded buffer (pinned memory on CUDA, copied with a
  non-blocking transfer), and the finiteness check runs once per batch on that buffer. A batch's
  scores come back to the host in one read (the only one per batch: docs/gpu.md, "Host reads").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hapvr.evaluation.feature_store import FeatureStore, frames_digest
from hapvr.evaluation.score_cache import ScoreCache, ScoreCacheError, cache_header, listed
from hapvr.evaluation.scorers import Scorer
from hapvr.models.padding import Chunk, pad_stack, repeat_to, split_chunks
from hapvr.progress import progress as progress_bar
from hapvr.runtime import job, join_group, leave_group


@dataclass(frozen=True)
class EngineConfig:
    chunk_frames: int = 2048
    max_map_elements: int = 1 << 25  # queries x query frames x target frames per fused call
    max_batch_videos: int = 256
    max_batch_frames: int = 16384  # target frames held in memory at once (16384 x 9 x 512 fp32 = 302 MB)
    max_padding_ratio: float = 1.3  # longest / shortest video in one padded batch or query group

    @classmethod
    def for_device(cls, device: torch.device | str, total_memory: int | None = None, **overrides) -> "EngineConfig":
        """The defaults above on the CPU (sized for its memory and caches); on CUDA the two memory
        bounds come from the device's memory (``total_memory`` stands in for it in tests): the
        maps of one fused call may take a 16th of it (at about 16 bytes per map element with
        their masks and the comparator's input) and a batch's target frames a 32nd (float32 at
        R = 9, D = 512: 18 KB a frame). An 80 GB GPU: 312M map elements and 136k frames a batch,
        9x and 8x the CPU's (``max_batch_videos`` still caps a batch at 256 videos). Under
        torchrun every rank must plan the same batches: give the ranks the same GPU model, or
        ``--max-map-elements``. ``overrides`` win."""
        device = torch.device(device)
        if device.type != "cuda":
            return cls(**overrides)
        if total_memory is None:
            total_memory = torch.cuda.get_device_properties(device).total_memory
        sized = dict(max_map_elements=max(cls.max_map_elements, int(total_memory) // 16 // 16),
                     max_batch_frames=max(cls.max_batch_frames, int(total_memory) // 32 // (9 * 512 * 4)))
        return cls(**{**sized, **overrides})


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


def _verify_cached(store: FeatureStore, chunks: list[Chunk], cache: ScoreCache, progress: bool,
                   changed: set[str]) -> None:
    """Rereads the frames of every cached chunk about to be reused and compares their digests with
    the cache's. Costs one read of the already-scored part (no scoring): the price of never
    reusing scores of features re-extracted under the same ids. ``changed``: videos already known
    to differ (their length changed, so their cached chunks no longer exist)."""
    changed = set(changed)
    bar = None
    if progress and chunks:
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
            f"{store.path} changed since it was written ({listed(changed)}). Pass another --cache-dir, or delete "
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
    :class:`ScoreCacheError`, a damaged one :class:`~hapvr.io.serialization.CorruptFileError`.
    With ``world_size > 1`` this rank scores its share into ``cache_dir`` and returns None;
    merge with :func:`collect_scores` once every rank is done.
    """
    if world_size > 1 and cache_dir is None:
        raise ValueError("sharded scoring (world_size > 1) needs a cache_dir shared by all ranks")
    if not query_ids:  # nothing to score against
        return {} if world_size == 1 else None
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
                           cache_header(query_ids, query_digests, scorer.fingerprint(), cfg.chunk_frames))
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


@dataclass
class PreparedBatch:
    """A batch of target chunks read for scoring: ``frames [B, T, R, D]`` float32, zero-padded and
    repeated up to the scorer's ``min_frames`` (on the scorer's device, or pinned on the way to
    it), ``lengths [B]`` after repetition, and per chunk the digest of the frames as stored."""

    chunks: list[Chunk]
    digests: list[str]
    frames: torch.Tensor
    lengths: torch.Tensor


def repeated_length(length: int, min_frames: int) -> int:
    """The length :func:`~hapvr.models.padding.repeat_to` gives a video of ``length`` frames."""
    return length if length >= min_frames or length == 0 else -(-min_frames // length) * length


def prepare_batch(store: FeatureStore, chunks: list[Chunk], min_frames: int,
                  device: torch.device = torch.device("cpu"), digests: bool = True) -> PreparedBatch:
    """Reads ``chunks`` into one padded buffer (the host work of a batch: read, check, hash, pad),
    validated once for NaN / infinity, and starts its transfer to ``device``. A chunk shorter
    than ``min_frames`` is repeated in the buffer, as :func:`repeat_to` does. ``digests=False``
    skips the hashing (a third of the host work; only a score cache needs the digests) and
    leaves ``PreparedBatch.digests`` empty strings."""
    R, D = store.region_shape
    lengths = [c.end - c.start for c in chunks]
    padded = [repeated_length(n, min_frames) for n in lengths]
    pin = device.type == "cuda"
    buf = torch.empty((len(chunks), max(padded), R, D), dtype=torch.float32, pin_memory=pin)
    hashes = []
    for i, (c, n, m) in enumerate(zip(chunks, lengths, padded)):
        store.read_into(buf[i, :n].numpy(), c.vid, c.start, c.end)
        hashes.append(frames_digest(buf[i, :n]) if digests else "")
        for s in range(n, m, n):  # repeat a short chunk up to the minimum length
            buf[i, s:min(s + n, m)] = buf[i, :min(n, m - s)]
        buf[i, m:].zero_()  # only the padding is cleared
    # One check per batch: the smallest and largest value (one pass, no temporary) are finite
    # exactly when every value is; the culprit is named below.
    if not all(bool(v.isfinite()) for v in torch.aminmax(buf)):
        for c, n, i in zip(chunks, lengths, range(len(chunks))):
            if not bool(torch.isfinite(buf[i, :n]).all()):
                store.not_finite(c.vid, c.start, c.end)
    frames = buf.to(device, non_blocking=True) if device != buf.device else buf
    lengths = torch.tensor(padded, dtype=torch.int64).to(device, non_blocking=True)
    return PreparedBatch(chunks, hashes, frames, lengths)


def _score_batches(scorer: Scorer, store: FeatureStore, groups, n_queries: int, todo: list[list[Chunk]],
                   results: dict[str, list[float]], cache: ScoreCache | None, progress: str | bool, total: int) -> None:
    """Scores ``todo`` batch by batch while a background thread prepares the next one
    (:func:`prepare_batch`): the device waits for the disk only when reading is slower than scoring."""
    bar = None
    if progress:
        bar = progress_bar(total=total, initial=total - len(todo), unit="batch", desc=progress)
    device = torch.device(getattr(scorer, "device", "cpu"))
    if device.type == "cuda" and device.index is None:  # the reader thread's current device may differ
        device = torch.device("cuda", torch.cuda.current_device())
    members = torch.cat([m for m, _, _ in groups])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hapvr-reader") as reader:
        hashed = cache is not None  # the digests key the cache; without one nothing reads them
        ahead = reader.submit(prepare_batch, store, todo[0], scorer.min_frames, device, hashed) if todo else None
        try:
            for b in range(len(todo)):
                batch = ahead.result()
                ahead = reader.submit(prepare_batch, store, todo[b + 1], scorer.min_frames, device, hashed) \
                    if b + 1 < len(todo) else None
                targets = scorer.index(batch.frames)
                parts = [scorer.pairwise(qpad, qlen, targets, batch.lengths).float() for _, qpad, qlen in groups]
                scored = torch.cat(parts)  # on the scorer's device (a custom scorer may not say which)
                sims = torch.empty((n_queries, len(batch.chunks)), device=scored.device)
                sims[members.to(scored.device)] = scored  # [Q, B], queries back in their order
                rows = sims.T.cpu().tolist()  # the batch's one read back from the device
                records = [(c.key(), digest, row) for c, digest, row in zip(batch.chunks, batch.digests, rows)]
                results.update((key, scores) for key, _, scores in records)
                if cache:
                    cache.add(records)
                if bar:
                    bar.update(1)
        finally:
            if ahead is not None:
                ahead.cancel()
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
    header = cache_header(query_ids, [frames_digest(store.load(q)) for q in query_ids], scorer.fingerprint(),
                          cfg.chunk_frames)
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


def compute_scores_in_job(scorer: Scorer, store: FeatureStore, query_ids: list[str], target_ids: list[str],
                          cfg: EngineConfig = EngineConfig(), cache_dir: str | Path | None = None,
                          progress: bool = True) -> dict[str, dict[str, float]] | None:
    """:func:`compute_scores` in this process, or, under torchrun, this rank's share followed by
    the merge on rank 0 (the other ranks return None)."""
    here = job()
    if here.world == 1:
        return compute_scores(scorer, store, query_ids, target_ids, cfg, cache_dir, progress=progress)
    join_group("gloo")
    try:
        compute_scores(scorer, store, query_ids, target_ids, cfg, cache_dir, here.rank, here.world, progress)
        dist.barrier()
        if here.rank != 0:
            return None
        return collect_scores(scorer, store, query_ids, target_ids, cache_dir, here.world, cfg)
    finally:
        leave_group(wait=False)
