"""Checks of the paths a run is handed, before any work: inputs exist and are readable, outputs
can be written. Each failure is one :class:`~hapvr.errors.InputError` whose message starts with
``what`` (the option, e.g. ``--checkpoint``) and the path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hapvr.errors import InputError


def input_file(path: str, arg: str) -> Path:
    """An existing, readable file, or :class:`~hapvr.errors.InputError` naming ``arg``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{arg} {path}: no such file")
    if p.is_dir():
        raise InputError(f"{arg} {path}: is a folder, expected a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{arg} {path}: not readable (permission denied)")
    return p


def input_folder(path: str, arg: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{arg} {path}: no such folder")
    if not p.is_dir():
        raise InputError(f"{arg} {path}: is a file, expected a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise InputError(f"{arg} {path}: not readable (permission denied)")
    return p


def output_file(path: str, arg: str) -> Path:
    """Checks, before any work, that ``path`` can be written: its folder exists (it is created if
    missing) and accepts a new file, and ``path`` itself is not a folder."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{arg} {path}: is a folder, expected a file name")
    output_folder(str(p.parent) if str(p.parent) else ".", arg, what=path)
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{arg} {path}: not writable (permission denied)")
    return p


def output_folder(path: str, arg: str, what: str | None = None, create: bool = True) -> Path:
    """A folder that exists (created if missing) and accepts new files. With ``create=False``
    nothing is made yet: a missing folder must be creatable (its nearest existing ancestor is a
    writable folder)."""
    p = Path(path)
    what = what or path
    if p.exists() and not p.is_dir():
        raise InputError(f"{arg} {what}: {p} is a file, expected a folder")
    if not create and not p.exists():
        ancestor = p.absolute()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"{arg} {what}: {ancestor} is a file, expected a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{arg} {what}: cannot create {p} ({ancestor} is not writable)")
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".hapvr-write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{arg} {what}: cannot write in {p} ({exc.strerror or exc})")
    return p
