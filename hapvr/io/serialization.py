"""Files users hand in are data, never code.

Every ``.pt`` file hapvr reads (checkpoints, published state dicts, PCA files, its own caches)
goes through :func:`load_torch_file`, which uses ``torch.load(weights_only=True)``: tensors,
numbers, strings and plain containers come back; anything that would import or call code is
refused before it runs. Annotation pickles (FIVR's ground truth) go through
:func:`load_plain_pickle`, an unpickler that builds only built-in containers and scalars.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from hapvr.errors import InputError


class UnsafeFileError(InputError):
    """The file asks to import or run code (or is not a torch/pickle file at all)."""


class CorruptFileError(InputError):
    """The file is truncated or not in the expected serialisation format."""


def _numpy_rng_globals() -> list:
    """Globals that a numpy ``RandomState`` tuple needs (hapvr checkpoints of format 1 held one).

    They rebuild plain arrays of numbers; an object-dtype array's elements would still go
    through the same restricted unpickler."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    names += [type(np.dtype(t)) for t in ("uint32", "int64", "float64")]
    return names


# argparse.Namespace: the S2VS training script stores its arguments beside the weights.
_SAFE_EXTRA = [argparse.Namespace]


def load_torch_file(path: str | Path, what: str, *, allow_numpy: bool = False):
    """``torch.load(path, weights_only=True)`` on the CPU with one clear error per failure.

    ``what`` names the argument or role of the file (``--checkpoint``, ``cache``) for messages.
    Raises FileNotFoundError, :class:`UnsafeFileError` (code inside: refused, never run) or
    :class:`CorruptFileError` (truncated, not a torch file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    allowed = _SAFE_EXTRA + (_numpy_rng_globals() if allow_numpy else [])
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in detail or "Unsupported global" in str(exc):
            globals_ = _unsupported_globals(str(exc))
            raise UnsafeFileError(
                f"{what} {path}: refused: the file asks to load code ({globals_ or 'a non-tensor object'}); "
                f"hapvr only reads tensors and plain data from files (weights_only=True)") from None
        raise CorruptFileError(f"{what} {path}: not a readable torch file ({detail})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError, struct.error) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"{what} {path}: truncated or not a torch file ({detail})") from None


DIGEST_KEY = "content_sha256"


def content_digest(obj) -> str:
    """SHA-256 of the tensors and plain values of a nested checkpoint (dicts, lists, tuples, numbers,
    strings), independent of how it was serialised. ``torch.load`` does not check its zip records'
    CRCs, so a flipped byte in a tensor loads silently; this digest, saved beside the content, is
    how a damaged file is caught instead of used."""
    h = hashlib.sha256()

    def visit(x) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous()
            h.update(f"T{x.dtype}{tuple(x.shape)}:".encode())
            h.update(x.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(b"{")
            for key in sorted(x, key=repr):
                visit(key)
                visit(x[key])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for item in x:
                visit(item)
            h.update(b"]")
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    visit(obj)
    return h.hexdigest()


def with_content_digest(state: dict) -> dict:
    """``state`` plus its :func:`content_digest` under :data:`DIGEST_KEY`, for saving."""
    return dict(state, **{DIGEST_KEY: content_digest(state)})


def check_content_digest(state: dict, path: str | Path, what: str) -> None:
    """Raises :class:`CorruptFileError` naming ``path`` if ``state`` (as loaded) no longer matches the
    digest saved in it. Files saved without one (older hapvr, published weights) pass unchecked."""
    saved = state.get(DIGEST_KEY) if isinstance(state, dict) else None
    if saved is None:
        return
    if saved != content_digest({k: v for k, v in state.items() if k != DIGEST_KEY}):
        raise CorruptFileError(f"{what} {path}: damaged: its content does not match the checksum saved in it "
                               "(a disk or copy error); use another copy or an earlier checkpoint")


def _unsupported_globals(message: str) -> str:
    found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", message)
    if found:
        return found.group(1)
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:"):
            return line.split(":", 1)[1].strip().rstrip(".")
    return ""


_PLAIN = {
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "str"): str,
    ("builtins", "int"): int, ("builtins", "float"): float, ("builtins", "bool"): bool,
    ("builtins", "bytes"): bytes, ("collections", "OrderedDict"): OrderedDict,
}
# Python 2 pickles (the predecessors' annotation files) name the same types under __builtin__.
_PLAIN.update({("__builtin__", name): cls for (mod, name), cls in list(_PLAIN.items()) if mod == "builtins"})
_PLAIN[("__builtin__", "unicode")] = str
_PLAIN[("__builtin__", "long")] = int


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        cls = _PLAIN.get((module, name))
        if cls is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return cls


def load_plain_pickle(path: str | Path, what: str):
    """Unpickle ``path`` building only built-in containers and scalars (dict, list, str, ...).

    Annotation pickles of FIVR and the predecessors hold nothing else. Any other global (a
    function, a class) is refused with :class:`UnsafeFileError` before anything is called."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if str(exc) and "." in str(exc) and " " not in str(exc):
            raise UnsafeFileError(f"{what} {path}: refused: the pickle asks to load {exc}; annotation files may "
                                  f"only hold dicts, lists and strings") from None
        raise CorruptFileError(f"{what} {path}: not a readable pickle ({exc})") from None
    # random bytes can read as a huge length (OverflowError, MemoryError on the allocation)
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, MemoryError) as exc:
        raise CorruptFileError(f"{what} {path}: truncated or not a pickle ({type(exc).__name__}: {exc})") from None
