"""Region features stored in HDF5, one dataset ``[T, R, D]`` per video id (the layout of the
public FIVR / EVVE / SVD feature files), read lazily so a database of any size streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class FeatureStore:
    """Read-only access to an HDF5 feature file: ids, lengths (from shapes, no data read) and
    features of a frame range."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file not found: {self.path}")
        self._file = h5py.File(self.path, "r")
        self._lengths: dict[str, int] = {}
        self._shape_tail: tuple[int, ...] | None = None
        for key, ds in self._file.items():
            if not hasattr(ds, "shape"):
                continue
            if ds.ndim != 3:
                raise ValueError(f"{self.path}: dataset {key!r} has shape {ds.shape}, expected [T, R, D]")
            self._lengths[str(key)] = int(ds.shape[0])
            self._shape_tail = self._shape_tail or tuple(ds.shape[1:])

    def __contains__(self, vid: str) -> bool:
        return vid in self._lengths

    def __len__(self) -> int:
        return len(self._lengths)

    def ids(self) -> set[str]:
        return set(self._lengths)

    def length(self, vid: str) -> int:
        return self._lengths[vid]

    def load(self, vid: str, start: int = 0, end: int | None = None) -> torch.Tensor:
        ds = self._file[vid]
        arr = ds[start:end] if (start or end is not None) else ds[()]
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
