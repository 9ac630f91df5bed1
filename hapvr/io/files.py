"""Writing files so that a crash never leaves half of one, and one writer at a time.

Every file hapvr replaces as a whole (checkpoints, caches, results, manifests, the HDF5 outputs
of extract, a trained coarse index) goes through :func:`atomic_path`: the content is written to
``NAME.PID.tmp`` beside the file, fsynced, renamed over it and the folder fsynced. A kill at any
moment leaves the old file or the new one, never a mix; the temporary of a killed writer is
named after its process, so it can be told apart from a running writer's and removed.
Append-only files (the index journal, the score cache) are not replaced; they are locked with
:func:`try_lock` and commit line by line (:mod:`hapvr.io.records`).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


def fsync_dir(path: str | Path) -> None:
    """Makes a rename or a new file in folder ``path`` durable; a no-op where the file system
    does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: str | Path) -> Path:
    """Where :func:`atomic_path` writes ``path`` before the rename: ``NAME.PID.tmp``."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for the caller to write (with any library:
    ``open``, ``torch.save``, h5py, faiss); when the block ends without an error the file is
    fsynced and renamed over ``path``, and the folder fsynced. On an error the temporary is
    removed and ``path`` is untouched. The folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, payload, indent: int | None = 1, sort_keys: bool = False,
               announce: bool = False) -> None:
    """``payload`` as JSON (a trailing newline), written atomically; ``announce``: say so on stderr."""
    write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n")
    if announce:
        print(f"wrote {path}", file=sys.stderr)


def save_torch(obj, path: str | Path) -> None:
    """``torch.save(obj)`` written atomically (read back with :func:`hapvr.io.serialization.load_torch_file`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def remove_stale_temporaries(path: str | Path) -> list[str]:
    """Deletes the ``NAME.PID.tmp`` files of ``path`` left by processes that no longer run (a
    run killed while saving leaves one, as large as the file); a running writer's is kept."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = []
    for entry in os.listdir(folder):
        pid = entry[len(name) + 1:-len(".tmp")]
        if not (entry.startswith(name + ".") and entry.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(folder, entry))
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def try_lock(fh) -> bool:
    """Takes an exclusive lock (flock) on the open file ``fh`` without waiting. False when another
    process holds it; True when taken, and also where locks do not exist (no ``fcntl``, or a
    file system without locks, as some network mounts): there the caller proceeds unlocked.
    The kernel releases the lock when the file is closed or its process dies."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True
