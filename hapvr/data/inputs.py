"""Which videos a run processes and under which ids: a folder (searched recursively), a list file
of ``ID<TAB>PATH`` (or ``PATH``) lines, or one video file (docs/formats.md).

Ids default to the file name without its extension (the FIVR / EVVE convention); a video in a
sub-folder gets its relative path with ``__`` for ``/`` (``DIR/2019/beach.avi`` ->
``2019__beach``), so every id is flat, as HDF5 datasets and index entries need. Two videos with
one id would overwrite each other: :func:`check_unique` refuses them before anything is written.
Errors are :class:`~hapvr.errors.InputError` naming the path given, with ``argument="videos"``
(the commands print ``--videos DIR: no such folder, ...``).
"""

from __future__ import annotations

import os
from pathlib import Path

from hapvr.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_videos
from hapvr.errors import InputError

ID_SEPARATOR = "__"  # replaces "/" in the ids of videos in sub-folders (HDF5 would make groups of them)


def flat_id(rel: Path, is_file: bool) -> str:
    """The id of a video at ``rel`` (relative to the folder): its stem, with its sub-folders
    joined by ``__``."""
    parts = list(rel.parts)
    if is_file:
        parts[-1] = Path(parts[-1]).stem
    return ID_SEPARATOR.join(parts)


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a multi-byte character cut at the end of the sample
    return True


def _list_line(text: str, base: Path, where: str) -> tuple[str, str]:
    """``(id, path)`` of one list-file line without a tab: ``PATH`` alone (spaces allowed) or the
    older ``ID PATH`` with no space in either."""
    words = text.split()
    if Path(text).exists() or (base / text).exists() or len(words) == 1:
        return Path(text).stem, text
    if len(words) == 2:
        return words[0], words[1]
    raise InputError(f"{where}: {text!r} is not an existing path; write ID<TAB>PATH (a tab between the id and a "
                     f"path with spaces)", "videos")


def parse_list_file(path: Path) -> list[tuple[str, str]]:
    """``(id, path)`` pairs of a list file: ``ID<TAB>PATH`` lines, ``PATH`` alone (the id is its
    stem) or ``ID PATH``. Blank lines and lines starting with ``#`` are ignored; relative paths
    are taken from the list file's folder when they do not exist from the current one."""
    out = []
    base = path.parent
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {n}"
        if "\t" in line:
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise InputError(f"{where}: expected ID<TAB>PATH, got {line!r}", "videos")
            vid, video = fields[0].strip(), fields[1].strip()
        else:
            vid, video = _list_line(line.strip(), base, where)
        if "/" in vid:
            raise InputError(f"{where}: id {vid!r} contains '/', which HDF5 would turn into groups", "videos")
        if not Path(video).exists() and (base / video).exists():
            video = str(base / video)
        out.append((vid, video))
    return out


def _list_folder(p: Path, log) -> list[tuple[str, str]]:
    out, nested = [], []
    for path in list_videos(str(p)):
        rel = Path(os.path.relpath(path, p))
        vid = flat_id(rel, Path(path).is_file())
        if len(rel.parts) > 1:
            nested.append((str(rel), vid))
        out.append((vid, path))
    ignored = [str(Path(dp, f).relative_to(p)) for dp, _, files in os.walk(p) for f in files
               if not f.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS) and not f.startswith(".")]
    if ignored:
        log(f"note: {len(ignored)} files under {p} are not videos (extensions {' '.join(VIDEO_EXTENSIONS)}) "
            f"and are ignored: {', '.join(sorted(ignored)[:10])}{' ...' if len(ignored) > 10 else ''}")
    if nested:
        log(f"note: {len(nested)} videos in sub-folders get flat ids: "
            + ", ".join(f"{r} -> {v}" for r, v in nested[:10]) + (" ..." if len(nested) > 10 else ""))
    return out


def list_inputs(spec: str, log=print) -> list[tuple[str, str]]:
    """``(id, path)`` pairs from a folder, a list file or one video file. Files in a folder that
    are not videos are named in a note (``log``); nested ids are listed."""
    p = Path(spec)
    if not p.exists():
        raise InputError(f"{spec}: no such folder, list file or video", "videos")
    if not os.access(p, os.R_OK):
        raise InputError(f"{spec}: not readable (permission denied)", "videos")
    if p.is_dir():
        return _list_folder(p, log)
    if p.suffix.lower() in VIDEO_EXTENSIONS or not _looks_like_text(p):
        if p.suffix.lower() not in VIDEO_EXTENSIONS:
            raise InputError(f"{spec}: neither a folder, a text list file nor a video ({' '.join(VIDEO_EXTENSIONS)})", "videos")
        return [(p.stem, str(p))]
    return parse_list_file(p)


def check_unique(inputs: list[tuple[str, str]], spec: str) -> None:
    """Refuses (before anything is written) two videos with one id: they would overwrite each other."""
    by_id: dict[str, list[str]] = {}
    for vid, path in inputs:
        by_id.setdefault(vid, []).append(path)
    dups = {vid: paths for vid, paths in by_id.items() if len(paths) > 1}
    if dups:
        listing = "; ".join(f"{vid}: {', '.join(paths)}" for vid, paths in sorted(dups.items())[:10])
        raise InputError(f"{spec}: {len(dups)} ids name more than one video ({listing}); nothing was written. "
                         f"Give each video its own id in a list file of ID<TAB>PATH lines (docs/formats.md)", "videos")
