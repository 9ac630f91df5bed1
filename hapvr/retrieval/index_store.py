"""An on-disk index of a video collection: full region features, ids, coarse descriptors, and
the feature space they were made in.

Layout of the folder (generation ``g`` counts compactions)::

    manifest.json   format, feature space (caller's dict), region shape, descriptor settings,
                    generation; written once (atomically: temporary file, fsync, rename)
    g<g>.frames     every added video's frames back to back, float16 [T, R, D] each (or, with
                    storage "int8", int8 codes [T, R, D] then float16 scales [T, R]; with
                    storage "pq", uint8 codes [T, R, M])
    codebook.npz    (storage "pq" only) the product quantiser, CRC-32 in the manifest
    g<g>.desc       their coarse descriptors back to back, float32 [rows, D] each (or, with a
                    descriptor codebook, uint8 PQ codes [rows, M]: format 3)
    desc-codebook.npz  (coded descriptor rows only) their product quantiser, CRC-32 in the manifest
    g<g>.journal    one JSON line per event: ``add`` (id, frame offset, length, descriptor rows,
                    CRC-32s of both), ``view`` (the same for one inset view of a video, with its
                    rectangle; written before the video's ``add``), ``remove`` (a tombstone, of the
                    video and its views), ``sync`` (all before is on disk)
    lock            held (flock) by the one writer
    coarse-ivf.faiss  (only for collections searched through an IVF) the trained IVF and
                    ``.json`` saying what it covers; a cache, rebuilt when missing or stale

Why this layout:

- *Fast candidate reads.* A query reads a few hundred videos at unrelated places. Each video is
  one contiguous run of bytes, so it costs one ``pread`` (sorted by offset); there is no
  per-video object to open and no chunk index to walk, as an HDF5 dataset per video would have.
  float16 halves the bytes read and stored; the stored features are unit vectors (PCA
  whitening ends with a normalisation), so the rounding is ~5e-4 relative, far below what
  separates a copy from a distractor (Chamfer scores move by ~3e-5 on the test set; a test
  checks < 1e-3).
- *Crash-safe appends.* Files are only ever appended to: a video's frames and descriptor rows
  are written first, then its journal line; a video exists once its line ends with a newline.
  A kill (even SIGKILL) part way through an add leaves, at worst, bytes past the last journal
  line and a torn last line, which opening drops (a writer truncates them away). HDF5 updates
  its B-trees and free lists in place, and a writer killed mid-update can leave the whole file
  unreadable, which is what this layout avoids.
- *Power loss.* ``sync()`` fsyncs the data files, then appends a ``sync`` line and fsyncs the
  journal. Opening verifies the CRCs of the videos added after the last ``sync`` line (their
  data may not have reached the disk before their line did) and drops the first bad one and
  all after it. With ``durable=True`` (the default) every ``add`` is synced; ``add_many`` syncs
  once per call.
- *Removal.* ``remove`` appends a tombstone; the bytes stay until :meth:`IndexStore.compact`
  rewrites the live videos into generation ``g + 1`` and switches the manifest to it (one
  atomic rename: a crash before it leaves the old generation in force, after it the new one;
  the other's files are deleted by the next writer).
- *Views.* An index created with ``insets=True`` (``python -m hapvr.index build --insets``) also
  stores, per video, the features of each rectangle :func:`hapvr.data.insets.detect_insets` found
  in it (a picture-in-picture inset, the picture inside borders, the halves of a stack): one
  ``view`` record each, numbered from 1, with the rectangle. A video's views are written before
  its ``add`` line and belong to it only once that line is committed, so a kill leaves either a
  video with all its views or none of it. Views are entries of their own for reading and for
  the coarse stage (:meth:`IndexStore.entries`, keys from :func:`view_key`), never videos:
  ``ids()``, ``len()`` and ``in`` count whole videos. Versions of hapvr without views refuse
  such an index (an unknown journal operation) instead of misreading it.
- *The feature space.* Scores are only meaningful between features of one backbone, PCA and
  model; the manifest keeps the caller's description of them, and opening with another one
  is refused with both named, instead of searching one space with queries from another.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from hapvr.io.files import try_lock, write_json
from hapvr.io.records import committed_lines, damaged, json_crc, parse_object
from hapvr.io.serialization import CorruptFileError
from hapvr.retrieval.codecs import DecodedRows, ProductQuantizer
from hapvr.retrieval.coarse import DescriptorConfig, video_descriptors

FORMAT = "hapvr-video-index-1"
FORMAT_INT8 = "hapvr-video-index-2"  # coded frames: a new name, so that versions reading only float16 refuse it
FORMAT_CODED_ROWS = "hapvr-video-index-3"  # coded descriptor rows too: refused by versions that read them as float32
FORMATS = (FORMAT, FORMAT_INT8, FORMAT_CODED_ROWS)
STORAGE_DTYPE = np.float16
# How frames are stored: float16 (2 D bytes a region vector), or int8 codes with one float16 scale
# per region vector (D + 2 bytes; a video's codes [T, R, D] then its scales [T, R]). Measured on
# the built-in test benchmark (benchmarks/bench_compression.py, docs/scale.md): int8 moves every
# mAP / uAP by at most 0.03 point and keeps 0.997 of the float16 top-10. Or "pq": M bytes a region
# vector, codes of a product quantiser (hapvr.retrieval.codecs) kept in the folder.
STORAGES = ("float16", "int8", "pq")
CODEBOOK = "codebook.npz"
DESC_CODEBOOK = "desc-codebook.npz"  # coded descriptor rows: their product quantiser (docs/scale.md)
DESCRIPTOR_DTYPE = np.float32
_GENERATION_FILE = re.compile(r"^g(\d+)\.(frames|desc|journal)$")
VIEW_SEP = "\x00"  # an entry key of a view is ``video id + VIEW_SEP + view number`` (ids never hold it)


def view_key(vid: str, view: int) -> str:
    """The entry key of view ``view`` (1, 2, ...) of video ``vid``; view 0 is the video itself."""
    return vid if view == 0 else f"{vid}{VIEW_SEP}{view}"


def parent_of(key: str) -> str:
    """The video an entry key belongs to (the key itself for a whole video)."""
    return key.split(VIEW_SEP, 1)[0]


def _describe(key: str) -> str:
    vid, _, view = key.partition(VIEW_SEP)
    return f"video {vid!r}" + (f" (view {view})" if view else "")


class IndexLockedError(RuntimeError):
    """Another process is writing this index."""


@dataclass(frozen=True)
class VideoRecord:
    """Where one video lies: frames ``[frame, frame + frames)`` of the frames file, descriptor
    rows ``[row, row + rows)`` of the descriptor file, and the CRC-32s of those bytes."""

    id: str
    frame: int
    frames: int
    row: int
    rows: int
    crc: int
    desc_crc: int
    rect: dict | None = None  # a view's rectangle (None for a whole video)


@dataclass
class Descriptors:
    """Descriptor rows of live videos: ``vectors[i]`` is global row ``rows[i]`` of the store and
    belongs to video ``ids[owners[i]]``; each video's rows are contiguous, in ``ids`` order."""

    ids: list[str]
    vectors: np.ndarray  # [M, D] float32
    owners: np.ndarray  # [M] int64, positions into ids
    rows: np.ndarray  # [M] int64, global row numbers (stable until compaction)


def is_index(path: str | Path) -> bool:
    """Whether ``path`` holds an index (its manifest)."""
    return (Path(path) / "manifest.json").is_file()


def read_manifest(path: str | Path) -> dict:
    """The manifest of the index at ``path`` (what it holds and how it was built), read alone."""
    path = Path(path)
    if not is_index(path):
        raise FileNotFoundError(f"no index at {path} (no manifest.json); create one first")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise CorruptFileError(f"index {path}: unreadable manifest.json ({exc})") from None
    if manifest.get("format") not in FORMATS:
        raise CorruptFileError(f"index {path}: manifest format {manifest.get('format')!r}, expected one of "
                               f"{', '.join(map(repr, FORMATS))} (a newer hapvr wrote it?)")
    return manifest


def space_differences(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """What differs between two feature-space descriptions, one ``key: a -> b`` entry each."""
    out = []
    for key in sorted(set(stored) | set(given), key=str):
        a, b = stored.get(key, "<absent>"), given.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += space_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def comparable_space(space):
    """``space`` without what may differ between building and searching an index: the scorer's
    precision. The index stores features, not scores, so it can be searched at any precision; scores
    at bf16 and fp32 agree to about 1e-3 (docs/scores.md). The manifest keeps the precision it was
    built at."""
    if not isinstance(space, dict):
        return space
    out = dict(space)
    scorer = out.get("scorer")
    if isinstance(scorer, dict) and isinstance(scorer.get("settings"), dict):
        settings = {k: v for k, v in scorer["settings"].items() if k != "precision"}
        out["scorer"] = {**scorer, "settings": settings}
    return out


def feature_space(scorer, **identity) -> dict:
    """The description of a feature space that an index records: the scorer's fingerprint and
    whatever else identifies the features (``backbone=``, ``pca=`` digest of the PCA file,
    ``region_shape=``...), all JSON values."""
    return {"scorer": scorer.fingerprint(), **identity}


def _as_json(space: dict) -> dict:
    """``space`` as it reads back from the manifest (tuples become lists), so equal ones compare equal."""
    if not isinstance(space, dict):
        raise ValueError(f"space must be a dict describing the feature space, got {type(space).__name__}")
    try:
        return json.loads(json.dumps(space, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"space must be JSON-serialisable ({exc})") from None


def _rect(rect) -> dict:
    """A view's rectangle as stored: an :class:`~hapvr.data.insets.Inset` or a dict with ``top``,
    ``left``, ``height`` and ``width`` (pixels; more keys kept)."""
    out = rect.to_dict() if hasattr(rect, "to_dict") else rect
    if not isinstance(out, dict) or not all(isinstance(out.get(k), int) and out[k] >= 0
                                            for k in ("top", "left", "height", "width")):
        raise ValueError(f"a view's rectangle must give top, left, height and width in pixels, got {rect!r}")
    return _as_json(out)


def _to_numpy(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    return np.asarray(features)


class IndexStore:
    """A video collection on disk; see the module docstring for the layout.

    Open with :meth:`create` or :meth:`open`; readers need no lock and see the index as it was
    when opened (:meth:`refresh` picks up later appends); one writer at a time."""

    def __init__(self, path: Path, manifest: dict, writable: bool, durable: bool):
        self.path = Path(path)
        self.manifest = manifest
        self.writable = writable
        self.durable = durable
        self.region_shape: tuple[int, int] = tuple(manifest["region_shape"])
        self.storage = manifest.get("storage_dtype", "float16")
        if self.storage not in STORAGES:
            raise CorruptFileError(f"index {path}: its frames are stored as {self.storage!r}, which this version of "
                                   f"hapvr cannot read (it reads {', '.join(STORAGES)})")
        self.codebook = self._codebook(CODEBOOK, "codebook") if self.storage == "pq" else None
        # descriptor rows as PQ codes (None: float32 rows); the format says so as well, or the manifest is damaged
        if (manifest.get("format") == FORMAT_CODED_ROWS) != ("desc_codebook" in manifest):
            raise CorruptFileError(f"index {path}: manifest format {manifest.get('format')!r} "
                                   f"{'with' if 'desc_codebook' in manifest else 'without'} a descriptor codebook")
        self.desc_codebook = self._codebook(DESC_CODEBOOK, "desc_codebook") if "desc_codebook" in manifest else None
        self.descriptor = DescriptorConfig(**manifest["descriptor"])
        self.generation = int(manifest["generation"])
        self._lock_fh = None
        self._records: dict[str, VideoRecord] = {}  # live videos in the order they were added
        self._views: dict[str, list[VideoRecord]] = {}  # live videos' views, by video id
        self._view_records: dict[str, VideoRecord] = {}  # the same by entry key
        self._pending: dict[str, list[VideoRecord]] = {}  # views whose video's add line is not read yet
        self._frame_end = 0  # committed frames
        self._row_end = 0  # committed descriptor rows
        self._journal_pos = 0  # committed journal bytes
        self._journal_lines = 0
        self._dead_frames = 0
        self._fds: dict[str, int] = {}

    def _codebook(self, name: str, key: str) -> ProductQuantizer:
        try:
            return ProductQuantizer.load(self.path / name, self.manifest.get(f"{key}_crc"))
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"index {self.path}: its codebook {name} cannot be read ({exc})") from None

    # --- opening --------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, space: dict, region_shape: tuple[int, int],
               descriptor: DescriptorConfig = DescriptorConfig(), durable: bool = True,
               built_with: dict | None = None, insets: bool = False, storage: str = "float16",
               codebook: ProductQuantizer | None = None, desc_codebook: ProductQuantizer | None = None
               ) -> "IndexStore":
        """A new empty index at ``path`` (a folder that does not exist or is empty), open for writing.

        ``space`` describes the feature space, e.g. ``{"scorer": scorer.fingerprint(), "backbone":
        ..., "pca": digest of the PCA file}``; it must be JSON-serialisable, and later opens must
        pass an equal one. ``region_shape`` is ``(R, D)`` of every video's ``[T, R, D]``.
        ``built_with``: how to load that model again (a checkpoint path, ...), kept for the tools
        and not compared. ``insets``: the index also stores the videos' inset views (the module
        docstring); recorded in the manifest, so every later ``add`` gives them. ``storage``: how
        frames are stored, ``float16``, ``int8`` or ``pq`` (:data:`STORAGES`) with ``codebook``, a
        :class:`~hapvr.retrieval.codecs.ProductQuantizer` of D-dimensional vectors. ``desc_codebook``:
        store the coarse descriptor rows as its codes instead of float32 (M bytes a row instead of 4 D)."""
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if (storage == "pq") != (codebook is not None):
            raise ValueError("storage 'pq' needs a codebook (hapvr.retrieval.codecs.ProductQuantizer), and only it")
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"cannot create an index at {path}: it exists and is not an empty folder "
                                  "(open it to add to it, or choose another path)")
        R, D = (int(v) for v in region_shape)
        if R < 1 or D < 1:
            raise ValueError(f"region_shape must be (R, D) with both >= 1, got {tuple(region_shape)}")
        for name, book in (("codebook", codebook), ("desc_codebook", desc_codebook)):
            if book is not None and book.dim != D:
                raise ValueError(f"{name} codes {book.dim}-dimensional vectors, the index holds D = {D}")
        space = _as_json(space)
        path.mkdir(parents=True, exist_ok=True)
        form = FORMAT_CODED_ROWS if desc_codebook is not None else FORMAT if storage == "float16" else FORMAT_INT8
        manifest = {"format": form, "uid": uuid.uuid4().hex, "space": space, "region_shape": [R, D],
                    "storage_dtype": storage, "descriptor": asdict(descriptor),
                    "generation": 0}
        if insets:
            manifest["insets"] = True
        if built_with is not None:
            manifest["built_with"] = _as_json(built_with)
        if codebook is not None:  # written before the manifest: an index is never without its codebook
            manifest["codebook_crc"] = codebook.save(path / CODEBOOK)
            manifest["codebook"] = codebook.name
        if desc_codebook is not None:
            manifest["desc_codebook_crc"] = desc_codebook.save(path / DESC_CODEBOOK)
            manifest["desc_codebook"] = desc_codebook.name
        store = cls(path, manifest, writable=True, durable=durable)
        store._lock()
        for kind in ("frames", "desc", "journal"):
            store._file(kind, 0).touch()
        write_json(path / "manifest.json", manifest, indent=2, sort_keys=True)
        store._open_files()
        return store

    @classmethod
    def open(cls, path: str | Path, space: dict | None = None, writable: bool = False,
             durable: bool = True) -> "IndexStore":
        """Opens an existing index. With ``space``, refuses (ValueError naming both) an index made in
        another feature space. ``writable``: take the writer's lock and drop what a killed writer
        left half-written."""
        path = Path(path)
        manifest = read_manifest(path)
        if space is not None:
            space = _as_json(space)
        if space is not None and comparable_space(manifest["space"]) != comparable_space(space):
            raise ValueError(
                f"index {path} was built with another model or feature settings (index -> this run: "
                f"{'; '.join(space_differences(comparable_space(manifest['space']), comparable_space(space)))}); search it with the model and settings "
                "it was built with, or rebuild it")
        store = cls(path, manifest, writable=writable, durable=durable)
        if writable:
            store._lock()
            store._remove_other_generations()
        store._open_files()
        store._replay()
        return store

    def _file(self, kind: str, generation: int | None = None) -> Path:
        return self.path / f"g{self.generation if generation is None else generation}.{kind}"

    def _lock(self) -> None:
        self._lock_fh = open(self.path / "lock", "a+b")
        if not try_lock(self._lock_fh):
            self._lock_fh.close()
            self._lock_fh = None
            raise IndexLockedError(f"index {self.path} is being written by another process; "
                                   "wait for it to finish (readers need no lock)")

    def _open_files(self) -> None:
        flags = os.O_RDWR if self.writable else os.O_RDONLY
        for kind in ("frames", "desc", "journal"):
            path = self._file(kind)
            try:
                self._fds[kind] = os.open(path, flags)
            except FileNotFoundError:
                self.close()
                raise CorruptFileError(f"index {self.path}: {path.name} is missing") from None

    def _remove_other_generations(self) -> None:
        for p in self.path.iterdir():
            m = _GENERATION_FILE.match(p.name)
            if m and int(m.group(1)) != self.generation:
                p.unlink()
        for tmp in self.path.glob("manifest.json*.tmp"):  # a killed writer's manifest, never renamed
            tmp.unlink()

    # --- the journal ----------------------------------------------------------------------------

    def _replay(self) -> None:
        """Reads the committed journal: live records, tombstones, and the ends of the data files.
        Videos after the last ``sync`` line are checked against their CRCs (a power loss may have
        kept their line but not their data); the first bad one and all after it are dropped."""
        lines, ends = committed_lines(self._read_all("journal"))  # a torn last line is not committed
        events = [self._parse_line(line, number) for number, line in enumerate(lines, 1)]
        last_sync = max((i for i, e in enumerate(events) if e["op"] == "sync"), default=-1)
        keep = len(events)
        for i in range(last_sync + 1, len(events)):
            if events[i]["op"] in ("add", "view") and not self._data_intact(events[i]):
                keep = i
                break
        for e in events[:keep]:
            self._apply(e)
        for kind, need in (("frames", self._frame_end * self._frame_bytes), ("desc", self._row_end * self._row_bytes)):
            if os.fstat(self._fds[kind]).st_size < need:
                raise CorruptFileError(f"index {self.path}: {self._file(kind).name} is shorter than its journal says "
                                       f"({os.fstat(self._fds[kind]).st_size} < {need} bytes); it was truncated: "
                                       "rebuild the index")
        self._journal_pos = ends[keep - 1] if keep else 0
        self._journal_lines = keep
        if self.writable:  # drop what a killed writer left past the committed part
            os.ftruncate(self._fds["journal"], self._journal_pos)
            os.ftruncate(self._fds["frames"], self._frame_end * self._frame_bytes)
            os.ftruncate(self._fds["desc"], self._row_end * self._row_bytes)

    def _parse_line(self, line: bytes, number: int) -> dict:
        def bad(why: str):
            return damaged(f"index {self.path}: {self._file('journal').name}", number, why,
                           "the journal is damaged: rebuild the index")

        event = parse_object(line)
        if event is None:
            raise bad("not a JSON record")
        if "lcrc" not in event:
            raise bad("not a journal record")
        crc = event.pop("lcrc")
        if crc != json_crc(event):
            raise bad("checksum mismatch")
        op = event.get("op")
        if op in ("add", "view"):
            fields = ("frame", "frames", "row", "rows", "crc", "dcrc") + (("view",) if op == "view" else ())
            if not (isinstance(event.get("id"), str) and all(isinstance(event.get(k), int) for k in fields)):
                raise bad(f"malformed {op} record")
            if op == "view" and (event["view"] < 1 or not isinstance(event.get("rect"), dict)):
                raise bad("malformed view record")
        elif op == "remove":
            if not isinstance(event.get("id"), str):
                raise bad("malformed remove record")
        elif op != "sync":
            raise bad(f"unknown operation {op!r}")
        return event

    def _apply(self, e: dict) -> None:
        if e["op"] == "view":
            rec = VideoRecord(view_key(e["id"], e["view"]), e["frame"], e["frames"], e["row"], e["rows"], e["crc"],
                              e["dcrc"], e["rect"])
            pending = self._pending.setdefault(e["id"], [])
            if e["view"] == 1:  # a new set of views: an earlier one whose add line never came is dead
                self._dead_frames += sum(r.frames for r in pending)
                pending.clear()
            pending.append(rec)
            self._frame_end = rec.frame + rec.frames
            self._row_end = rec.row + rec.rows
        elif e["op"] == "add":
            rec = VideoRecord(e["id"], e["frame"], e["frames"], e["row"], e["rows"], e["crc"], e["dcrc"])
            if rec.id in self._records:  # cannot happen through this class; tolerate a hand-edited journal
                self._drop(rec.id)
            self._records[rec.id] = rec
            views = self._pending.pop(rec.id, [])
            if views:
                self._views[rec.id] = views
                self._view_records.update((v.id, v) for v in views)
            self._frame_end = rec.frame + rec.frames
            self._row_end = rec.row + rec.rows
        elif e["op"] == "remove":
            self._drop(e["id"])

    def _drop(self, vid: str) -> None:
        """Forgets a video and its views (their bytes are dead until :meth:`compact`)."""
        rec = self._records.pop(vid, None)
        if rec is not None:
            self._dead_frames += rec.frames
        for view in self._views.pop(vid, []):
            del self._view_records[view.id]
            self._dead_frames += view.frames

    def _data_intact(self, e: dict) -> bool:
        frames = self._pread("frames", e["frame"] * self._frame_bytes, e["frames"] * self._frame_bytes)
        rows = self._pread("desc", e["row"] * self._row_bytes, e["rows"] * self._row_bytes)
        return (len(frames) == e["frames"] * self._frame_bytes and zlib.crc32(frames) == e["crc"]
                and len(rows) == e["rows"] * self._row_bytes and zlib.crc32(rows) == e["dcrc"])

    def _append_event(self, event: dict) -> None:
        line = (json.dumps({**event, "lcrc": json_crc(event)}) + "\n").encode()
        os.pwrite(self._fds["journal"], line, self._journal_pos)  # one write: a kill tears at most this line
        self._journal_pos += len(line)
        self._journal_lines += 1

    def refresh(self) -> None:
        """Picks up what a writer committed since this reader opened (or last refreshed)."""
        manifest = json.loads((self.path / "manifest.json").read_text())
        if manifest.get("generation") != self.generation:  # compacted meanwhile: start over
            for fd in self._fds.values():
                os.close(fd)
            self.__init__(self.path, manifest, self.writable, self.durable)
            self._open_files()
            self._replay()
            return
        for line in committed_lines(self._read_all("journal")[self._journal_pos:])[0]:
            event = self._parse_line(line, self._journal_lines + 1)
            if event["op"] in ("add", "view") and not self._data_intact(event):
                break  # its data is still on the way; the next refresh takes it
            self._apply(event)
            self._journal_pos += len(line) + 1
            self._journal_lines += 1

    # --- writing --------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"index {self.path} is open read-only; open it with writable=True to change it")
        if not self._fds:
            raise ValueError(f"index {self.path} is closed")

    def _prepare(self, vid: str, features) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(vid, str) or not vid or VIEW_SEP in vid:
            raise ValueError(f"a video id must be a non-empty string without NUL characters, got {vid!r}")
        if vid in self._records:
            raise ValueError(f"video {vid!r} is already in index {self.path}; remove it first to replace it")
        return self._encode(f"video {vid!r}", features)

    def _encode(self, what: str, features) -> tuple[bytes, int, np.ndarray]:
        """``(frame bytes as stored, frames, descriptor rows)`` of ``[T, R, D]`` features, checked;
        the descriptors are made from the features as stored (as a reader gets them back)."""
        x = _to_numpy(features)
        R, D = self.region_shape
        if x.ndim != 3 or x.shape[1:] != (R, D) or x.shape[0] < 1:
            raise ValueError(f"{what}: features must be [T >= 1, {R}, {D}], got {list(x.shape)}")
        if x.dtype.kind != "f":
            raise ValueError(f"{what}: features must be floating point, got {x.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):
            if self.storage == "int8":
                scale = (np.abs(x).max(axis=-1) / 127).astype(np.float16)  # [T, R]
                step = np.where(scale > 0, scale, 1).astype(np.float32)[..., None]
                codes = np.clip(np.round(x / step), -127, 127).astype(np.int8)
                payload, ok = codes.tobytes() + scale.tobytes(), np.isfinite(scale).all() and np.isfinite(x).all()
                stored = codes.astype(np.float32) * scale.astype(np.float32)[..., None]
            elif self.storage == "pq":
                ok = np.isfinite(x).all()
                codes = self.codebook.encode(torch.from_numpy(np.where(np.isfinite(x), x, 0).astype(np.float32)))
                payload, stored = codes.numpy().tobytes(), self.codebook.decode(codes).numpy()
            else:
                stored = np.ascontiguousarray(x, dtype=STORAGE_DTYPE)
                payload, ok = stored.tobytes(), np.isfinite(stored).all()
        if not ok:
            bad = "NaN or infinite values" if not np.isfinite(x).all() else "values beyond float16's range (65504)"
            raise ValueError(f"{what}: features hold {bad}; index only finite, normalised features")
        desc = np.ascontiguousarray(video_descriptors(stored.astype(np.float32), self.descriptor), DESCRIPTOR_DTYPE)
        if self.desc_codebook is not None:
            desc = self.desc_codebook.encode(torch.from_numpy(desc)).numpy()  # uint8 [rows, M]
        return payload, int(x.shape[0]), desc

    def add(self, vid: str, features, views=()) -> None:
        """Appends one video (``[T, R, D]`` float, torch or numpy) and its inset ``views``
        (``(rectangle, features)`` pairs: an :class:`~hapvr.data.insets.Inset` or a dict, and
        ``[T', R, D]``). With ``durable``, it is on disk when this returns; a kill during the call
        loses this video only."""
        self.add_many([(vid, features, views)])

    def add_many(self, items: Iterable[tuple]) -> int:
        """Appends videos, ``(id, features)`` or ``(id, features, views)`` each, one after another
        (each committed by its own journal line, so a kill loses only the one being written) and
        syncs once at the end when ``durable``. Returns how many were added."""
        self._check_writable()
        added = 0
        for vid, features, *rest in items:
            encoded_video = self._prepare(vid, features)
            views = [(_rect(rect), self._encode(f"video {vid!r} view {k}", x))
                     for k, (rect, x) in enumerate(rest[0] if rest else (), 1)]
            if views and not self.insets:
                raise ValueError(f"video {vid!r}: index {self.path} keeps no inset views (create it with "
                                 "insets=True, python -m hapvr.index build --insets)")
            for k, (rect, encoded) in enumerate(views, 1):  # views first: the add line commits all
                self._write_entry({"op": "view", "id": vid, "view": k, "rect": rect}, *encoded)
            self._write_entry({"op": "add", "id": vid}, *encoded_video)
            added += 1
        if self.durable and added:
            self.sync()
        return added

    def _write_entry(self, event: dict, frame_bytes: bytes, frames: int, desc: np.ndarray) -> None:
        row_bytes = desc.tobytes()
        os.pwrite(self._fds["frames"], frame_bytes, self._frame_end * self._frame_bytes)
        os.pwrite(self._fds["desc"], row_bytes, self._row_end * self._row_bytes)
        event = {**event, "frame": self._frame_end, "frames": frames, "row": self._row_end,
                 "rows": int(desc.shape[0]), "crc": zlib.crc32(frame_bytes), "dcrc": zlib.crc32(row_bytes)}
        self._append_event(event)
        self._apply(event)

    def remove(self, vid: str) -> None:
        """Removes a video and its views (a tombstone; their bytes stay until :meth:`compact`)."""
        self._check_writable()
        if vid not in self._records:
            raise KeyError(f"index {self.path} has no video {vid!r}")
        event = {"op": "remove", "id": vid}
        self._append_event(event)
        self._apply(event)
        if self.durable:
            self.sync()

    def sync(self) -> None:
        """Makes everything added so far durable: data first, then the journal saying so."""
        self._check_writable()
        os.fdatasync(self._fds["frames"])
        os.fdatasync(self._fds["desc"])
        self._append_event({"op": "sync"})
        os.fdatasync(self._fds["journal"])

    def compact(self) -> None:
        """Rewrites the live videos into a new generation, dropping removed ones' bytes; the switch is
        one atomic rename of the manifest, so a crash leaves either the old or the new index."""
        self._check_writable()
        new_gen = self.generation + 1
        paths = {kind: self._file(kind, new_gen) for kind in ("frames", "desc", "journal")}
        fds = {kind: os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) for kind, p in paths.items()}
        try:
            frame, row, lines = 0, 0, []
            for rec in [r for vid in self._records for r in self._views.get(vid, []) + [self._records[vid]]]:
                frames = self._pread("frames", rec.frame * self._frame_bytes, rec.frames * self._frame_bytes)
                rows = self._pread("desc", rec.row * self._row_bytes, rec.rows * self._row_bytes)
                if zlib.crc32(frames) != rec.crc or zlib.crc32(rows) != rec.desc_crc:
                    raise CorruptFileError(f"index {self.path}: {_describe(rec.id)} is damaged on disk; "
                                           f"remove {parent_of(rec.id)!r} before compacting")
                os.pwrite(fds["frames"], frames, frame * self._frame_bytes)
                os.pwrite(fds["desc"], rows, row * self._row_bytes)
                vid, _, view = rec.id.partition(VIEW_SEP)
                event = {"op": "add", "id": vid} if not view else {"op": "view", "id": vid, "view": int(view),
                                                                   "rect": rec.rect}
                event.update(frame=frame, frames=rec.frames, row=row, rows=rec.rows, crc=rec.crc, dcrc=rec.desc_crc)
                lines.append(json.dumps({**event, "lcrc": json_crc(event)}) + "\n")
                frame, row = frame + rec.frames, row + rec.rows
            lines.append(json.dumps({"op": "sync", "lcrc": json_crc({"op": "sync"})}) + "\n")
            os.pwrite(fds["journal"], "".join(lines).encode(), 0)
            for fd in fds.values():
                os.fsync(fd)
        finally:
            for fd in fds.values():
                os.close(fd)
        write_json(self.path / "manifest.json", {**self.manifest, "generation": new_gen}, indent=2, sort_keys=True)
        old = self.generation
        for fd in self._fds.values():
            os.close(fd)
        lock_fh = self._lock_fh
        self.__init__(self.path, {**self.manifest, "generation": new_gen}, True, self.durable)
        self._lock_fh = lock_fh
        self._open_files()
        self._replay()
        for kind in ("frames", "desc", "journal"):
            self._file(kind, old).unlink(missing_ok=True)

    # --- reading --------------------------------------------------------------------------------

    @property
    def space(self) -> dict:
        return self.manifest["space"]

    @property
    def built_with(self) -> dict:
        """How the index's model is loaded again (empty for indexes that did not record it)."""
        return self.manifest.get("built_with", {})

    @property
    def _frame_bytes(self) -> int:
        R, D = self.region_shape
        if self.storage == "pq":
            return R * self.codebook.m
        return R * (D + 2) if self.storage == "int8" else R * D * np.dtype(STORAGE_DTYPE).itemsize

    @property
    def _row_bytes(self) -> int:
        if self.desc_codebook is not None:
            return self.desc_codebook.m
        return self.region_shape[1] * np.dtype(DESCRIPTOR_DTYPE).itemsize

    def _pread(self, kind: str, offset: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(self._fds[kind], size - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def _read_all(self, kind: str) -> bytes:
        return self._pread(kind, 0, os.fstat(self._fds[kind]).st_size)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, vid: str) -> bool:
        return vid in self._records

    def ids(self) -> list[str]:
        """Live video ids, in the order they were added."""
        return list(self._records)

    @property
    def insets(self) -> bool:
        """Whether this index keeps the videos' inset views (created with ``insets=True``)."""
        return bool(self.manifest.get("insets", False))

    def views(self, vid: str) -> list[tuple[str, dict]]:
        """``(entry key, rectangle)`` of each inset view of ``vid`` (none for most videos)."""
        self._record(vid)
        return [(r.id, r.rect) for r in self._views.get(vid, [])]

    def entries(self) -> list[str]:
        """Keys of every live entry: each video (its id) followed by its views (:func:`view_key`)."""
        return [k for vid in self._records for k in [vid] + [r.id for r in self._views.get(vid, [])]]

    def rect(self, key: str) -> dict | None:
        """The rectangle of a view's entry key (None for a whole video)."""
        return self._record(key).rect

    def length(self, vid: str) -> int:
        """Frames of a video or of a view (an entry key)."""
        return self._record(vid).frames

    def _record(self, vid: str) -> VideoRecord:
        rec = self._records.get(vid) or self._view_records.get(vid)
        if rec is None:
            raise KeyError(f"index {self.path} has no {_describe(vid)}")
        return rec

    def load(self, vid: str) -> torch.Tensor:
        """Features of ``vid`` (a video id or a view's entry key) as float32 ``[T, R, D]``;
        CorruptFileError if its bytes fail their CRC."""
        return self.load_many([vid])[0]

    def load_many(self, vids: list[str]) -> list[torch.Tensor]:
        """Features of several videos, read in file order (one ``pread`` each, into the buffer)."""
        recs = [self._record(v) for v in vids]
        out: list[torch.Tensor | None] = [None] * len(recs)
        R, D = self.region_shape
        for i in sorted(range(len(recs)), key=lambda i: recs[i].frame):
            rec = recs[i]
            buf = np.empty(rec.frames * self._frame_bytes, dtype=np.uint8)
            view = memoryview(buf)
            got = self._pread_into("frames", rec.frame * self._frame_bytes, view)
            if got != len(view) or zlib.crc32(view) != rec.crc:
                raise CorruptFileError(f"index {self.path}: the frames of {_describe(rec.id)} are damaged on disk "
                                       "(CRC mismatch); remove and re-add it")
            if self.storage == "int8":
                codes = torch.from_numpy(buf[: rec.frames * R * D].view(np.int8)).view(rec.frames, R, D)
                scale = torch.from_numpy(buf[rec.frames * R * D:].view(np.float16)).view(rec.frames, R, 1)
                out[i] = codes.float() * scale.float()
            elif self.storage == "pq":
                out[i] = self.codebook.decode(torch.from_numpy(buf).view(rec.frames, R, self.codebook.m))
            else:  # torch converts float16 ~20x faster than numpy
                out[i] = torch.from_numpy(buf.view(np.float16)).view(rec.frames, R, D).float()
        return out

    def _pread_into(self, kind: str, offset: int, view: memoryview) -> int:
        done = 0
        while done < len(view):
            n = os.preadv(self._fds[kind], [view[done:]], offset + done)
            if n == 0:
                break
            done += n
        return done

    def row_layout(self, views: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(ids, first global descriptor row, row count)`` of the live videos, in ``ids()`` order
        (``views``: of every entry, in ``entries()`` order); no data is read."""
        recs = [self._record(k) for k in self.entries()] if views else list(self._records.values())
        return ([r.id for r in recs], np.array([r.row for r in recs], np.int64),
                np.array([r.rows for r in recs], np.int64))

    def descriptor_matrix(self, verify: bool = True) -> np.ndarray | DecodedRows:
        """Every stored descriptor row by global row number, ``[rows, D]`` float32, memory-mapped
        (rows of removed videos included: see :meth:`row_layout` for the live runs); coded rows
        come as :class:`~hapvr.retrieval.codecs.DecodedRows` over the mapped codes, decoded as read.
        ``verify``: check the live videos' rows against their CRCs first (one read of the file)."""
        D = self.region_shape[1]
        if self._row_end == 0:
            return np.zeros((0, D), DESCRIPTOR_DTYPE)
        # copy-on-write: writable as torch.from_numpy wants, though nothing writes it (the file is never changed)
        coded = self.desc_codebook is not None
        matrix = np.memmap(self._file("desc"), dtype=np.uint8 if coded else DESCRIPTOR_DTYPE, mode="c",
                           shape=(self._row_end, self._row_bytes if coded else D))
        if verify:
            flat = matrix.reshape(-1).view(np.uint8)
            for rec in [*self._records.values(), *self._view_records.values()]:
                if zlib.crc32(flat[rec.row * self._row_bytes: (rec.row + rec.rows) * self._row_bytes]) != rec.desc_crc:
                    raise CorruptFileError(f"index {self.path}: the descriptor of {_describe(rec.id)} is damaged on "
                                           "disk (CRC mismatch); remove and re-add it")
        return DecodedRows(matrix, self.desc_codebook) if coded else matrix

    def descriptors(self, since_row: int = 0) -> Descriptors:
        """Descriptor rows of the live videos added at or after global row ``since_row`` (all by
        default), read from disk and CRC-checked on each call."""
        D = self.region_shape[1]
        recs = [r for r in self._records.values() if r.row >= since_row]
        first = min((r.row for r in recs), default=0)
        data = memoryview(self._pread("desc", first * self._row_bytes, (self._row_end - first) * self._row_bytes))
        counts = np.array([r.rows for r in recs], dtype=np.int64)
        vectors = np.empty((int(counts.sum()), D), dtype=DESCRIPTOR_DTYPE)
        at = 0
        for rec in recs:
            chunk = data[(rec.row - first) * self._row_bytes: (rec.row - first + rec.rows) * self._row_bytes]
            if zlib.crc32(chunk) != rec.desc_crc:
                raise CorruptFileError(f"index {self.path}: the descriptor of video {rec.id!r} is damaged on disk "
                                       "(CRC mismatch); remove and re-add it")
            vectors[at: at + rec.rows] = self._rows_of(chunk, rec.rows)
            at += rec.rows
        owners = np.repeat(np.arange(len(recs), dtype=np.int64), counts)
        rows = np.concatenate([np.arange(r.row, r.row + r.rows, dtype=np.int64) for r in recs]) if recs \
            else np.zeros(0, np.int64)
        return Descriptors([r.id for r in recs], vectors, owners, rows)

    def _rows_of(self, chunk, rows: int) -> np.ndarray:
        """float32 ``[rows, D]`` of a run of stored descriptor bytes."""
        if self.desc_codebook is None:
            return np.frombuffer(chunk, dtype=DESCRIPTOR_DTYPE).reshape(rows, self.region_shape[1])
        codes = np.frombuffer(chunk, dtype=np.uint8).reshape(rows, self.desc_codebook.m)
        return self.desc_codebook.decode(torch.from_numpy(codes.copy())).numpy()

    def state(self) -> dict:
        """What identifies this index's content, for caches built on it (the coarse index file):
        a random id given at creation, the generation, and how many descriptor rows it has."""
        return {"uid": self.manifest["uid"], "generation": self.generation, "rows": self._row_end,
                "videos": len(self._records)}

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def dead_fraction(self) -> float:
        """Fraction of the stored frames that belong to removed videos (what compact() would free)."""
        dead = self._dead_frames + sum(r.frames for views in self._pending.values() for r in views)
        return dead / self._frame_end if self._frame_end else 0.0

    def close(self) -> None:
        if self.writable and self._fds and not self.durable:
            try:
                self.sync()
            except OSError:
                pass
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"IndexStore({str(self.path)!r}, videos={len(self)}, generation={self.generation})"
