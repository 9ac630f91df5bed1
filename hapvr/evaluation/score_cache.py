"""The evaluation engine's on-disk score cache (:class:`ScoreCache`): one JSON-lines file per
rank, keyed on everything the scores depend on, resumable after a kill."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

from hapvr.io.files import fsync_dir, try_lock
from hapvr.io.records import committed_lines, damaged, json_crc, parse_object
from hapvr.io.serialization import CorruptFileError

CACHE_FORMAT = "hapvr-score-cache-2"  # 2: keyed on feature data digests and scorer weights


class ScoreCacheError(ValueError, RuntimeError):
    """The cache cannot serve this run: it was computed with other features, queries, weights or
    settings, or another run is writing it. Also a RuntimeError (docs/compatibility.md)."""


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
            if not try_lock(self._fh):
                raise ScoreCacheError(f"the score cache {self.path} is being written by another running evaluation; "
                                      "wait for it or pass another --cache-dir")
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
                fsync_dir(self.path.parent)
        except BaseException:
            self.close()
            raise

    def _read(self, data: bytes) -> int:
        """Loads the committed records; returns the byte length of the committed part (0: no header)."""
        lines, ends = committed_lines(data)
        if not lines:
            return 0
        old = parse_object(lines[0])
        if old is None:
            raise CorruptFileError(f"score cache {self.path} line 1: unreadable header (not a JSON object); "
                                   "delete the file or pass another --cache-dir")
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
        return ends[-1]

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
    return json_crc([key, digest, scores])


def _format_record(key: str, digest: str, scores: list[float]) -> str:
    return json.dumps({"chunk": key, "data": digest, "scores": scores, "crc": _record_crc(key, digest, scores)}) + "\n"


def _parse_record(line: bytes, n_queries: int, path: Path, number: int) -> tuple[str, str, list[float]]:
    def bad(why: str):
        return damaged(f"score cache {path}", number, why, "the file is damaged: delete it (its scores are "
                       "recomputed) or pass another --cache-dir")

    rec = parse_object(line)
    if rec is None:
        raise bad("not a JSON record")
    if not (isinstance(rec.get("chunk"), str) and isinstance(rec.get("data"), str)
            and isinstance(rec.get("scores"), list) and isinstance(rec.get("crc"), str)):
        raise bad("not a chunk record")
    key, digest, scores = rec["chunk"], rec["data"], rec["scores"]
    if len(scores) != n_queries or not all(isinstance(v, float) and math.isfinite(v) for v in scores):
        raise bad(f"expected {n_queries} finite scores")
    if rec["crc"] != _record_crc(key, digest, scores):
        raise bad("checksum mismatch")
    return key, digest, scores


def listed(ids, limit: int = 5) -> str:
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
            changes.append("the queries differ" + (f" (added: {listed(added)})" if added else "")
                           + (f" (removed: {listed(removed)})" if removed else ""))
        else:
            changes.append("the queries differ")
    old_data = old.get("query_data") if isinstance(old.get("query_data"), dict) else {}
    changed = [q for q, d in new["query_data"].items() if q in old_data and old_data[q] != d]
    if changed:
        changes.append(f"the features of queries {listed(changed)} changed")
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


def _scorer_fingerprint(fp) -> dict:
    if isinstance(fp, dict):
        return {"scorer": str(fp.get("scorer")), "weights": fp.get("weights"), "settings": dict(fp.get("settings", {}))}
    return {"scorer": str(fp), "weights": None, "settings": {}}  # a one-string fingerprint (docs/compatibility.md)


def cache_header(query_ids, query_digests: list[str], fingerprint, chunk_frames: int) -> dict:
    """What a cache file's first line holds: the queries and their data digests, the scorer's
    fingerprint (``Scorer.fingerprint()``) and the chunk size."""
    return {"format": CACHE_FORMAT, "queries": list(query_ids), "query_data": dict(zip(query_ids, query_digests)),
            "scorer": _scorer_fingerprint(fingerprint), "chunk_frames": chunk_frames}
