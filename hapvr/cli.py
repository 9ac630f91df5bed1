"""What every hapvr command line shares: one ``error:`` line and exit code 2 for bad input,
argument types with ranges, up-front checks of input and output paths, and help that shows
defaults and ends with examples.

A command's ``main`` raises :class:`UserError` (or calls :func:`fail`) for anything the user can
fix; :func:`run_main` turns it into ``error: ...`` on stderr and exit code 2, with no traceback.
Argument errors from argparse take the same form (:class:`ArgumentParser`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; reported as one ``error:`` line, exit code 2, no traceback."""


def fail(msg: str):
    """Raise :class:`UserError` (for code that reads better with a call)."""
    raise UserError(msg)


def run_main(main, argv=None) -> int:
    """Runs ``main(argv)``: :class:`UserError` and the package's file errors become one
    ``error:`` line and exit code 2."""
    from hapvr.serialization import CorruptFileError, UnsafeFileError

    try:
        return main(argv) or 0
    except (UserError, CorruptFileError, UnsafeFileError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, its line already printed)
        return exc.code if isinstance(exc.code, int) else 1


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description and epilog as written (they hold examples), and every option's default
    (options without one, and on/off switches, say so in their own text)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with hapvr's error form: ``error: argument --x: ...`` on one line, exit code 2
    (argparse would print the whole usage first)."""

    def __init__(self, *args, examples: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if examples:
            kwargs["epilog"] = "examples:\n" + examples.rstrip()
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401  (argparse's hook)
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _number(kind, name: str, low=None, high=None, low_open=False, high_open=False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def int_at_least(low: int):
    """argparse type: an integer ``>= low``."""
    return _number(int, f"int>={low}", low=low)


def positive_float():
    """argparse type: a finite number ``> 0``."""
    return _number(float, "float>0", low=0, low_open=True)


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite number in the interval (ends open as asked)."""
    return _number(float, "float", low=low, high=high, low_open=low_open, high_open=high_open)


def finite_float():
    """argparse type: any finite number (NaN and infinity refused)."""
    return _number(float, "float")


def nonnegative_float():
    return _number(float, "float>=0", low=0)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool(parser: argparse.ArgumentParser, flag: str, default: bool, help: str) -> None:
    """``--flag`` (or ``--flag true|false``) and ``--no-flag``."""
    dest = flag.lstrip("-").replace("-", "_")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(flag, dest=dest, type=parse_bool, nargs="?", const=True, default=default,
                       metavar="true|false", help=f"{help} (turn off with --no-{flag.lstrip('-')})")
    group.add_argument("--no-" + flag.lstrip("-"), dest=dest, action="store_false", help=argparse.SUPPRESS)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform
        return os.cpu_count() or 1


def add_threads(parser: argparse.ArgumentParser, default_text: str = "one per core") -> None:
    """``--threads N`` (CPU threads of torch and faiss); None when not given."""
    parser.add_argument("--threads", type=int_at_least(1),
                        help=f"CPU threads of torch and of faiss (default: {default_text})")


def set_threads(threads: int) -> None:
    """Sets torch's intra-op threads and faiss's OpenMP threads: a command's arithmetic runs in
    both (the scorer and the flat coarse GEMMs in torch, an IVF search in faiss)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def input_file(path: str, arg: str) -> Path:
    """An existing, readable file, or :class:`UserError` naming ``arg``."""
    p = Path(path)
    if not p.exists():
        fail(f"{arg} {path}: no such file")
    if p.is_dir():
        fail(f"{arg} {path}: is a folder, expected a file")
    if not os.access(p, os.R_OK):
        fail(f"{arg} {path}: not readable (permission denied)")
    return p


def input_folder(path: str, arg: str) -> Path:
    p = Path(path)
    if not p.exists():
        fail(f"{arg} {path}: no such folder")
    if not p.is_dir():
        fail(f"{arg} {path}: is a file, expected a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        fail(f"{arg} {path}: not readable (permission denied)")
    return p


def output_file(path: str, arg: str) -> Path:
    """Checks, before any work, that ``path`` can be written: its folder exists (it is created if
    missing) and accepts a new file, and ``path`` itself is not a folder."""
    p = Path(path)
    if p.is_dir():
        fail(f"{arg} {path}: is a folder, expected a file name")
    output_folder(str(p.parent) if str(p.parent) else ".", arg, what=path)
    if p.exists() and not os.access(p, os.W_OK):
        fail(f"{arg} {path}: not writable (permission denied)")
    return p


def output_folder(path: str, arg: str, what: str | None = None, create: bool = True) -> Path:
    """A folder that exists (created if missing) and accepts new files. With ``create=False``
    nothing is made yet: a missing folder must be creatable (its nearest existing ancestor is a
    writable folder)."""
    p = Path(path)
    what = what or path
    if p.exists() and not p.is_dir():
        fail(f"{arg} {what}: {p} is a file, expected a folder")
    if not create and not p.exists():
        ancestor = p.absolute()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            fail(f"{arg} {what}: {ancestor} is a file, expected a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            fail(f"{arg} {what}: cannot create {p} ({ancestor} is not writable)")
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".hapvr-write-test-"):
            pass
    except OSError as exc:
        fail(f"{arg} {what}: cannot write in {p} ({exc.strerror or exc})")
    return p
