"""What every hapvr command line shares: one ``error:`` line and exit code 2 for bad input,
argument types with ranges, up-front checks of input and output paths, and help that shows
defaults and ends with examples.

A command's ``main`` raises :class:`UserError` (or calls :func:`fail`) for anything the user can
fix; the library raises :class:`hapvr.errors.InputError`, naming the parameter at fault.
:func:`run_main` turns both into ``error: ...`` on stderr and exit code 2, with no traceback,
the library's parameter shown as the option the user typed. Argument errors from argparse take
the same form (:class:`ArgumentParser`). Only the command modules import this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from hapvr.errors import InputError
from hapvr.retrieval.codecs import parse_storage
from hapvr.settings import FINITE, POSITIVE, Bound, at_least, between
from hapvr.io.paths import input_file, input_folder, output_file, output_folder  # noqa: F401  (the commands' checks)
from hapvr.precision import PRECISION_CHOICES, configure_tf32
from hapvr.runtime import resolve_device


class UserError(Exception):
    """A problem the user can fix; reported as one ``error:`` line, exit code 2, no traceback."""


def fail(msg: str):
    """Raise :class:`UserError` (for code that reads better with a call)."""
    raise UserError(msg)


def describe(exc: BaseException) -> str:
    """The message of a user-fixable error, led by the option it concerns: an
    :class:`~hapvr.errors.InputError` names its parameter (``videos`` -> ``--videos``; an
    upper-case name is a positional argument, ``QUERY``), unless the message already starts with it."""
    text, arg = str(exc), getattr(exc, "argument", None)
    if not arg:
        return text
    flag = arg if arg.isupper() else "--" + arg.replace("_", "-")
    return text if text.startswith(flag) else f"{flag} {text}"


# Exit codes of every command (README, "Exit codes"): all done; a usage or input error
# (nothing could be used); finished, but some inputs failed (listed); Ctrl-C; the output pipe closed.
EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_INTERRUPTED, EXIT_PIPE = 0, 2, 3, 130, 141


def run_main(main, argv=None) -> int:
    """Runs ``main(argv)`` and returns its exit code: :class:`UserError` and the library's
    :class:`~hapvr.errors.InputError` (damaged and unsafe files among them) become one ``error:``
    line and 2; Ctrl-C one ``interrupted`` line (what was kept and how to continue) and 130; a
    closed output pipe (``| head``) ends quietly with 141. A command that finished with some inputs
    failed returns 3 itself."""
    try:
        return main(argv) or EXIT_OK
    except (UserError, InputError) as exc:
        print(f"error: {describe(exc)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, its line already printed)
        return exc.code if isinstance(exc.code, int) else 1


def _silence_stdout() -> None:
    """After the reader of stdout went away: point stdout at /dev/null, so flushing it at exit
    raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


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


def bounded(bound: Bound):
    """argparse type of a :class:`~hapvr.settings.Bound`: parses and checks one value."""
    def parse(text: str):
        try:
            return bound.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = bound.name  # argparse names the type in its messages
    return parse


def int_at_least(low: int):
    """argparse type: an integer ``>= low``."""
    return bounded(at_least(low))


def positive_float():
    """argparse type: a finite number ``> 0``."""
    return bounded(POSITIVE)


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite number in the interval (ends open as asked)."""
    return bounded(between(low, high, low_open, high_open))


def shard_spec(text: str) -> tuple[int, int]:
    """argparse type: ``I/N``, shard ``I`` (from 0) of ``N``."""
    i, sep, n = text.partition("/")
    if not (sep and i.strip().isdigit() and n.strip().isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (shard I of N, from 0), got {text!r}")
    return int(i), int(n)


shard_spec.__name__ = "shard"


def storage_spec(text: str) -> str:
    """argparse type: how an index stores its frames, ``float16``, ``int8``, ``pqM`` or ``opqM``."""
    try:
        parse_storage(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


storage_spec.__name__ = "storage"


def finite_float():
    """argparse type: any finite number (NaN and infinity refused)."""
    return bounded(FINITE)


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


def add_settings(parser: argparse.ArgumentParser, defaults) -> None:
    """One option per field of the dataclass instance ``defaults`` made with
    :func:`hapvr.settings.setting` (``--batch-videos`` for ``batch_videos``), with its help, its
    bound or choices, and the instance's value as default; booleans take ``--x``, ``--x false``
    and ``--no-x``."""
    for f in dataclasses.fields(defaults):
        flag = "--" + f.name.replace("_", "-")
        default, help_text = getattr(defaults, f.name), f.metadata["help"]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            add_bool(parser, flag, default, help_text)
        elif f.metadata.get("choices"):
            parser.add_argument(flag, choices=f.metadata["choices"], default=default, help=help_text)
        elif f.metadata.get("bound") is not None:
            parser.add_argument(flag, type=bounded(f.metadata["bound"]), default=default, help=help_text)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(kind.split(" ")[0], str), default=default,
                                help=help_text)


def add_threads(parser: argparse.ArgumentParser, default_text: str = "one per core this process may use (affinity "
                                                                    "mask, container quota) and that other "
                                                                    "processes are not running on") -> None:
    """``--threads N`` (CPU threads of torch and faiss); None when not given."""
    parser.add_argument("--threads", type=int_at_least(1),
                        help=f"CPU threads of torch and of faiss (default: {default_text})")


def add_precision(parser: argparse.ArgumentParser, what: str = "the similarity GEMMs (fp32 accumulation)",
                  default: str = "auto") -> None:
    """``--precision`` (default ``auto``: bf16 on CUDA, fp32 on the CPU; :mod:`hapvr.precision`)."""
    parser.add_argument("--precision", default=default, choices=PRECISION_CHOICES,
                        help=f"dtype of {what} (default {default}); auto: bf16 on CUDA, fp32 on the CPU "
                             "(TF32 allowed for fp32 on CUDA unless HAPVR_TF32=0)")


def check_device(args):
    """The ``--device`` of a command that has the option (None otherwise), refused in one error line
    before any work when this machine lacks it; on CUDA the command's fp32 matmuls may use TF32
    (``HAPVR_TF32``)."""
    device = getattr(args, "device", None)
    if device is None:
        return None
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        fail(f"--device: {exc}")
    try:
        configure_tf32(dev)
    except ValueError as exc:
        fail(str(exc))
    return dev
