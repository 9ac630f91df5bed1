"""Similarity files: ``{query: {video: score}}`` as the releases store them (a pickle of plain
dicts and floats, their store-similarities option) or as JSON; read by ``python -m
hapvr.evaluate --scores`` and written by ``--save-scores``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hapvr.errors import InputError
from hapvr.io.files import write_json
from hapvr.io.serialization import load_plain_pickle


def read_scores(path: str | Path) -> dict[str, dict[str, float]]:
    """The similarities in ``path`` (JSON, or a pickle read as plain data), checked: a dict of
    query id -> dict of video id -> finite number."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"--scores {path}: not a JSON file ({exc})", "scores") from None
    else:
        data = load_plain_pickle(path, "--scores")
    if not isinstance(data, dict):
        raise InputError(f"--scores {path}: expected {{query: {{video: score}}}}, got a {type(data).__name__}",
                         "scores")
    out: dict[str, dict[str, float]] = {}
    for q, row in data.items():
        if not isinstance(row, dict):
            raise InputError(f"--scores {path}: the scores of query {q!r} must be a {{video: score}} dict, got a "
                             f"{type(row).__name__} (store one dict per query)", "scores")
        clean = {}
        for v, s in row.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise InputError(f"--scores {path}: query {q!r}, video {v!r}: expected a finite number, got {s!r}",
                                 "scores")
            clean[str(v)] = float(s)
        out[str(q)] = clean
    return out


def scores_present(scores: dict[str, dict[str, float]]) -> set[str]:
    """The ids a similarity file covers: its queries and every video scored."""
    ids = set(scores)
    for row in scores.values():
        ids.update(row)
    return ids


def write_scores(path: str | Path, scores: dict[str, dict[str, float]]) -> None:
    """``scores`` as JSON (atomically), the layout :func:`read_scores` reads."""
    write_json(path, {q: dict(sorted(row.items())) for q, row in sorted(scores.items())})
