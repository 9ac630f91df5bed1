"""Region features stored in HDF5, one dataset ``[T, R, D]`` per video id (the layout of the
public FIVR / EVVE / SVD feature files), read lazily so a database of any size streams."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from hapvr.data.insets import KINDS, Inset
from hapvr.io.serialization import CorruptFileError
from hapvr.io.staging import VIEWS_GROUP


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FeatureStore:
    """Read-only access to an HDF5 feature file: ids, lengths (from shapes, no data read) and
    features of a frame range.

    What is checked when, and why:

    - On opening (metadata only, no frame is read, so it stays cheap for FIVR-200k's 200k
      videos): the file is a readable HDF5 file (a truncated or foreign file raises
      :class:`~hapvr.io.serialization.CorruptFileError`); every top-level dataset is ``[T, R, D]``
      of a float dtype with ``T >= 1`` and one ``(R, D)`` shared by all, and holds stored data
      (a dataset created but never written reads as zeros). Layout errors raise ``ValueError``.
      Groups are skipped (the public files hold none; `extract --insets` keeps views in one, :meth:`views`).
    - On every :meth:`load` (lazily, because checking all values up front would read the whole
      file once more): the bytes read back without an HDF5 error and hold no NaN or infinity.
      Both raise ``CorruptFileError`` naming the file, the video id and the frame range, so a
      damaged video stops an evaluation with one clear message instead of scoring garbage.

    Every message names the file."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file not found: {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise CorruptFileError(f"feature file {self.path}: truncated or not an HDF5 file "
                                   f"({_first_line(exc)})") from None
        self._lengths: dict[str, int] = {}
        self.region_shape: tuple[int, int] | None = None  # (R, D), shared by every video
        try:
            for key in self._file.keys():
                self._check_dataset(str(key), self._file.get(key))
        except (OSError, KeyError, RuntimeError) as exc:  # damaged object headers
            self._file.close()
            raise CorruptFileError(f"feature file {self.path}: unreadable metadata ({_first_line(exc)})") from None
        except ValueError:
            self._file.close()
            raise

    def _check_dataset(self, key: str, ds) -> None:
        import h5py

        if not isinstance(ds, h5py.Dataset):
            return
        where = f"feature file {self.path}: dataset {key!r}"
        shape, dtype = ds.shape, ds.dtype  # each attribute is a query to HDF5: read once (200k videos)
        if len(shape) != 3:
            raise ValueError(f"{where} has shape {shape}, expected [T, R, D]")
        if dtype.kind != "f":
            raise ValueError(f"{where} has dtype {dtype}, expected float")
        if 0 in shape:
            raise ValueError(f"{where} is empty (shape {shape}); re-extract it or delete it")
        tail = (int(shape[1]), int(shape[2]))
        if self.region_shape is None:
            self.region_shape = tail
        elif tail != self.region_shape:
            raise ValueError(f"{where} has {tail[0]} regions of size {tail[1]}, but earlier datasets have "
                             f"{self.region_shape[0]} of size {self.region_shape[1]}")
        if ds.id.get_storage_size() == 0:
            raise CorruptFileError(f"{where} was created but its frames were never written; "
                                   "re-extract it or delete it")
        self._lengths[key] = int(shape[0])

    def __contains__(self, vid: str) -> bool:
        return vid in self._lengths

    def __len__(self) -> int:
        return len(self._lengths)

    def ids(self) -> set[str]:
        return set(self._lengths)

    def length(self, vid: str) -> int:
        return self._lengths[vid]

    def load(self, vid: str, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Frames ``start:end`` of ``vid`` as float32 ``[T, R, D]``; raises CorruptFileError if
        they cannot be read or are not finite."""
        if vid not in self._lengths:
            raise KeyError(f"feature file {self.path} has no video {vid!r}")
        stop = self._lengths[vid] if end is None else end
        try:
            arr = self._file[vid][start:stop]
        except (OSError, RuntimeError) as exc:
            raise CorruptFileError(f"feature file {self.path}: dataset {vid!r} frames {start}:{stop} cannot be "
                                   f"read ({_first_line(exc)}); re-extract it or delete it") from None
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if not bool(torch.isfinite(x).all()):
            self.not_finite(vid, start, stop)
        return x

    def views(self, vid: str) -> list[tuple[Inset, torch.Tensor]] | None:
        """The inset views ``python -m hapvr.extract --insets`` stored for ``vid`` (group
        ``hapvr_views/<vid>``): ``(rectangle, float32 [T', R, D])`` each, in their order, ``[]`` when
        none was found; None when the video was not extracted with ``--insets``. Each view is
        checked as :meth:`load` checks a video (layout, finite values)."""
        if vid not in self._lengths:
            raise KeyError(f"feature file {self.path} has no video {vid!r}")
        group = self._file.get(VIEWS_GROUP)
        if group is None or vid not in group:
            return None
        out = []
        for name in sorted(group[vid], key=lambda n: int(n) if n.isdigit() else -1):
            where = f"feature file {self.path}: view {name!r} of {vid!r}"
            ds = group[vid][name]
            try:
                rect = json.loads(ds.attrs["rect"])
                inset = Inset(**rect)
                arr = ds[()]
            except (KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
                raise CorruptFileError(f"{where} cannot be read ({_first_line(exc)}); re-extract it") from None
            if not name.isdigit() or inset.kind not in KINDS or arr.ndim != 3 or tuple(arr.shape[1:]) != self.region_shape \
                    or arr.shape[0] < 1:
                raise ValueError(f"{where}: expected a view numbered from 1 holding [T, {self.region_shape[0]}, "
                                 f"{self.region_shape[1]}] features of a rectangle of a kind in {KINDS}, got "
                                 f"{inset.kind!r} {tuple(arr.shape)}")
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            if not bool(torch.isfinite(x).all()):
                raise CorruptFileError(f"{where} holds NaN or infinite values; re-extract it")
            out.append((inset, x))
        return out

    def read_into(self, out: np.ndarray, vid: str, start: int, end: int) -> None:
        """Frames ``start:end`` of ``vid`` read straight into ``out`` (a C-contiguous float32
        ``[end - start, R, D]`` array, e.g. a view of a padded batch): no intermediate copy. Values
        are not checked here: the caller checks a whole batch at once (:meth:`not_finite` then
        names the video)."""
        if vid not in self._lengths:
            raise KeyError(f"feature file {self.path} has no video {vid!r}")
        try:
            self._file[vid].read_direct(out, np.s_[start:end])
        except (OSError, RuntimeError, TypeError) as exc:
            raise CorruptFileError(f"feature file {self.path}: dataset {vid!r} frames {start}:{end} cannot be "
                                   f"read ({_first_line(exc)}); re-extract it or delete it") from None

    def not_finite(self, vid: str, start: int, end: int):
        """Raises the error of frames holding NaN or infinity."""
        raise CorruptFileError(f"feature file {self.path}: dataset {vid!r} frames {start}:{end} hold NaN or "
                               "infinite values; re-extract it or delete it")

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def frames_digest(frames: torch.Tensor) -> str:
    """128-bit SHA-256 prefix of exactly what the scorer is given: dtype, shape and bytes of
    ``frames``. Keys the score cache on the feature data, not just on video ids."""
    x = frames.detach().cpu().contiguous()
    h = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:32]


def write_features(path: str | Path, features: dict[str, np.ndarray | torch.Tensor]) -> None:
    """Writes (or adds to) an HDF5 feature file, one float32 dataset per video id."""
    import h5py

    with h5py.File(path, "a") as f:
        for vid, x in features.items():
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            if vid in f:
                del f[vid]
            f.create_dataset(vid, data=np.asarray(x, dtype=np.float32))
