"""Finished videos kept one small HDF5 file each (``OUTPUT.parts/`` of extract, ``INDEX/staging/``
of a sharded index build) until the run moves them into its output.

Each file is written atomically (:func:`hapvr.io.files.atomic_path`), so a file there is always
whole: a killed run resumes from what it finished, and the ranks of a sharded build write their
own files without a lock.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from hapvr.io.files import atomic_path

VIEWS_GROUP = "hapvr_views"  # extract --insets: the views of video ID in group hapvr_views/ID of the output


class StagedVideos:
    """The folder of staged videos: ``done()`` lists them, ``write`` adds one, ``read`` gives its
    features back, ``merge_into`` moves them into an HDF5 feature file, ``clear`` deletes them."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)

    def _name(self, vid: str) -> Path:
        return self.dir / (hashlib.sha1(vid.encode()).hexdigest()[:20] + ".h5")

    def done(self) -> dict[str, Path]:
        import h5py

        found = {}
        if not self.dir.is_dir():
            return found
        for p in sorted(self.dir.glob("*.h5")):
            try:
                with h5py.File(p, "r") as f:
                    found[str(f.attrs["id"])] = p
            except (OSError, KeyError):  # cannot happen through rename; a foreign file: not used
                print(f"warning: ignoring unreadable part {p}", file=sys.stderr)
        return found

    def write(self, vid: str, feats, views=(), insets: bool = False) -> None:
        """Stages one video's features and its inset views (``(rectangle dict, features)``);
        ``insets``: the video was looked at for views (so none found is recorded as such)."""
        import h5py

        with atomic_path(self._name(vid)) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["id"] = vid
                if insets:
                    f.attrs["insets"] = True
                f.create_dataset("features", data=feats)
                for k, (rect, x) in enumerate(views, 1):
                    f.create_dataset(f"view{k}", data=x).attrs["rect"] = json.dumps(rect)

    @staticmethod
    def read(path: Path):
        """The features of one staged video, as written."""
        import h5py

        with h5py.File(path, "r") as part:
            return part["features"][()]

    @staticmethod
    def read_views(path: Path) -> list[tuple[dict, object]]:
        """The inset views staged with a video (none for most), in their order."""
        import h5py

        with h5py.File(path, "r") as part:
            names = sorted((n for n in part if n.startswith("view")), key=lambda n: int(n[4:]))
            return [(json.loads(part[n].attrs["rect"]), part[n][()]) for n in names]

    def merge_into(self, output: Path, attrs: dict, parts: dict[str, Path]) -> None:
        """All ``parts`` into the HDF5 file ``output``: a new output is written whole and renamed
        into place; an existing one is extended (each dataset written, then the file flushed)."""
        import h5py

        def fill(f):
            for key, value in attrs.items():
                f.attrs[key] = value
            for vid, p in sorted(parts.items()):
                if vid not in f:
                    self._views_into(f, vid, p)  # before the video: a file holding the video holds its views
                    f.create_dataset(vid, data=self.read(p))

        if output.exists():
            with h5py.File(output, "a") as f:
                fill(f)
                f.flush()
        else:
            with atomic_path(output) as tmp:
                with h5py.File(tmp, "w") as f:
                    fill(f)
        self.clear(parts)

    def _views_into(self, f, vid: str, path: Path) -> None:
        """A part staged with ``insets``: its views into group ``hapvr_views/<vid>`` of ``f``."""
        import h5py

        with h5py.File(path, "r") as part:
            if not part.attrs.get("insets", False):
                return
        group = f.require_group(VIEWS_GROUP)
        if vid in group:
            del group[vid]  # left by a merge killed before the video was written
        views = group.create_group(vid)
        for k, (rect, x) in enumerate(self.read_views(path), 1):
            views.create_dataset(str(k), data=x).attrs["rect"] = json.dumps(rect)

    def clear(self, parts: dict[str, Path]) -> None:
        """Deletes ``parts`` (moved into the output), the temporary files of killed writers, and the
        folder once nothing else is in it."""
        for p in parts.values():
            p.unlink()
        for leftover in self.dir.glob("*.tmp"):
            leftover.unlink()
        try:
            self.dir.rmdir()
        except OSError:
            pass
