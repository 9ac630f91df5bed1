"""Append-only files of JSON lines, each with a checksum of its content (the score cache of
:mod:`hapvr.evaluation.score_cache` and the journal of :mod:`hapvr.retrieval.index_store`).

A line counts once its newline is on disk: a kill can only tear the last line, which
:func:`committed_lines` leaves out (a writer then truncates the file back to the committed
part). A complete line that does not parse or fails its checksum is damage, and each file's
reader names it with the file and line number.
"""

from __future__ import annotations

import json
import zlib

from hapvr.io.serialization import CorruptFileError


def json_crc(value) -> str:
    """CRC-32 (8 hex digits) of ``value`` as compact JSON with sorted keys."""
    return f"{zlib.crc32(json.dumps(value, sort_keys=True, separators=(',', ':')).encode()):08x}"


def committed_lines(data: bytes) -> tuple[list[bytes], list[int]]:
    """The complete lines of ``data`` (without their newlines) and the byte offset just past
    each; a torn last line is not among them."""
    lines, ends, pos = [], [], 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return lines, ends
        lines.append(data[pos:nl])
        pos = nl + 1
        ends.append(pos)


def damaged(where: str, number: int, why: str, advice: str) -> CorruptFileError:
    """The error of a complete line that cannot be used: ``WHERE line N: why; advice``."""
    return CorruptFileError(f"{where} line {number}: {why}; {advice}")


def parse_object(line: bytes) -> dict | None:
    """The JSON object on ``line``, or None when it is not one."""
    try:
        value = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None
