"""Annotation files of the public benchmarks, read as they are published, and hapvr's own layouts.

Every file is data: JSON, text, or a pickle of plain containers only (never code). Each dataset
accepts the layouts listed in :data:`LAYOUTS`; a file of another layout is refused with one
line naming them. docs/formats.md shows each layout with a minimal example, and the protocol
each benchmark is scored with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hapvr.evaluation.benchmarks import Benchmark, Protocol
from hapvr.errors import InputError
from hapvr.io.serialization import load_plain_pickle

# What each --dataset reads (the refusal of another layout names these).
LAYOUTS = {
    "fivr-5k": "the FIVR pickle of the releases (fivr.pickle, fivr_audio.pickle: 'annotation', '5k', '200k')",
    "fivr-200k": "the FIVR pickle of the releases (fivr.pickle, fivr_audio.pickle: 'annotation', '5k', '200k')",
    "evve": "the releases' evve.pickle ('annotation': {event: (queries, positives, null)}, 'queries', "
            "'database'), or hapvr's JSON ('database', 'events': {name: {'queries', 'positives'}})",
    "svd": "SVD's folder holding test_groundtruth (and unlabeled-data-id), those one or two files, or hapvr's "
           "JSON ('queries': {qid: {'positives', 'negatives'}}, 'unlabelled')",
    "vcdb": "the releases' vcdb.pickle ('queries', 'positives', 'dataset'), VCDB's annotation folder (one "
            "<topic>.txt per topic), or hapvr's JSON ('videos', 'pairs', 'distractors')",
    "vcdb-distractors": "the releases' vcdb.pickle ('queries', 'positives', 'dataset': the distractors), or "
                        "hapvr's JSON ('videos', 'pairs', 'distractors')",
    "cc_web_video": "the releases' cc_web_video.pickle ('index', 'queries', 'ground_truth', 'excluded')",
    "custom": "hapvr's JSON ('queries', 'database', 'positives' or 'levels')",
}

FIVR_LABELS = {"DSVR": ("ND", "DS"), "CSVR": ("ND", "DS", "CS"), "ISVR": ("ND", "DS", "CS", "IS")}
FIVR = Protocol(exclude_query=True, gt_scope="database", gt_drops_query=True, empty_gt="skip")
EVVE = Protocol(exclude_query=False, gt_scope="present", gt_drops_query=False, empty_gt="zero", ap_style="trapezoid")
SVD = Protocol(exclude_query=False, gt_scope="database", gt_drops_query=False, empty_gt="skip", ap_style="sklearn")
VCDB = Protocol(exclude_query=True, gt_scope="database", gt_drops_query=False, empty_gt="skip")
CC_WEB = Protocol(exclude_query=False, gt_scope="all", gt_drops_query=False, empty_gt="skip")
CC_WEB_POSITIVE = "ESLMV"  # exact, similar, long version, major change, different version (X, -1: not)
VIDEO_SUFFIX = re.compile(r"\.(mp4|flv|webm|mkv|avi|mov|m4v|wmv|mpg|mpeg|3gp|ts)$", re.IGNORECASE)


class LayoutError(ValueError):
    """A file that is not one of the layouts a dataset accepts."""


def _read(path: Path):
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return load_plain_pickle(path, "--annotations")


def _need(data, key: str, what: str):
    if not isinstance(data, dict) or key not in data:
        raise LayoutError(f"{what} must contain the key {key!r}")
    return data[key]


def _ids(values) -> list[str]:
    return [str(v) for v in values]


def load_fivr(path: Path | str, version: str = "5k") -> Benchmark:
    """FIVR's pickle: DSVR/CSVR/ISVR (ND+DS, +CS, +IS), uAP as DSVD/CSVD/ISVD; with audio labels
    ('DA', fivr_audio.pickle) also DAVR/DAVD over the queries that have them."""
    data = _read(Path(path))
    split = _need(data, version, f"FIVR ({version})")
    annotation = _need(data, "annotation", "FIVR")
    queries = sorted(_ids(_need(split, "queries", f"FIVR {version}")))
    database = sorted(_ids(_need(split, "database", f"FIVR {version}")))
    labels = {q: annotation.get(q, {}) for q in queries}
    positives = {task: {q: {str(v) for k in keys for v in labels[q].get(k, [])} for q in queries}
                 for task, keys in FIVR_LABELS.items()}
    detection = {"DSVD": "DSVR", "CSVD": "CSVR", "ISVD": "ISVR"}
    task_queries = {}
    audio = [q for q in queries if "DA" in labels[q]]
    if audio:
        positives["DAVR"] = {q: {str(v) for v in labels[q]["DA"]} for q in audio}
        task_queries["DAVR"] = audio
        detection["DAVD"] = "DAVR"
    return Benchmark(f"fivr-{version}", queries, database, positives, detection=detection, protocol=FIVR,
                     task_queries=task_queries)


def load_evve(path: Path) -> Benchmark:
    """EVVE: trapezoidal AP per query over the database, mean over queries (and over events)."""
    data = _read(path)
    if isinstance(data, dict) and "annotation" in data:  # the releases' evve.pickle
        events = {str(name): (_ids(ev[0]), _ids(ev[1])) for name, ev in data["annotation"].items()}
        database = sorted(_ids(_need(data, "database", "EVVE")))
    else:
        events = {str(name): (_ids(_need(ev, "queries", f"EVVE event {name!r}")),
                              _ids(_need(ev, "positives", f"EVVE event {name!r}")))
                  for name, ev in _need(data, "events", "EVVE").items()}
        database = _ids(_need(data, "database", "EVVE"))
    queries, pos, groups = [], {}, {}
    for name, (qs, members) in events.items():
        for q in qs:
            queries.append(q)
            pos[q] = set(members)
            groups[q] = name
    return Benchmark("evve", sorted(queries), database, {"EVVE": pos}, detection={"EVVE-uAP": "EVVE"},
                     protocol=EVVE, groups=groups)


def _svd_files(paths: list[Path]) -> tuple[Path, Path | None]:
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        truth = folder / "test_groundtruth"
        if not truth.is_file():
            raise LayoutError(f"{folder}: no test_groundtruth in this folder")
        unlabelled = folder / "unlabeled-data-id"
        return truth, unlabelled if unlabelled.is_file() else None
    truth = [p for p in paths if p.name != "unlabeled-data-id"]
    unlabelled = [p for p in paths if p.name == "unlabeled-data-id"]
    if len(truth) != 1:
        raise LayoutError("give SVD's test_groundtruth, optionally with unlabeled-data-id")
    return truth[0], unlabelled[0] if unlabelled else None


def load_svd(paths: list[Path]) -> Benchmark:
    """SVD: each query ranks its labelled candidates plus the unlabelled videos (negatives),
    scikit-learn's AP (equal scores one step); hapvr adds a uAP (the releases report none)."""
    if len(paths) == 1 and paths[0].suffix in (".json", ".pickle", ".pkl", ".pk"):
        return _svd_hapvr(_read(paths[0]))
    truth, unlabelled_file = _svd_files(paths)
    labelled: dict[str, dict[str, bool]] = {}
    for n, line in enumerate(truth.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise LayoutError(f"{truth} line {n}: expected 'QUERY CANDIDATE LABEL' with LABEL 0 or 1, got {line!r}")
        labelled.setdefault(parts[0], {})[parts[1]] = parts[2] == "1"
    unlabelled = [x.strip() for x in unlabelled_file.read_text().splitlines() if x.strip()] if unlabelled_file else []
    return _svd_benchmark({q: ([v for v, y in c.items() if y], [v for v, y in c.items() if not y])
                           for q, c in labelled.items()}, unlabelled)


def _svd_hapvr(data) -> Benchmark:
    per_query = _need(data, "queries", "SVD")
    return _svd_benchmark({str(q): (_ids(_need(lab, "positives", f"SVD query {q!r}")), _ids(lab.get("negatives", [])))
                           for q, lab in per_query.items()}, _ids(data.get("unlabelled", [])))


def _svd_benchmark(labels: dict[str, tuple[list[str], list[str]]], unlabelled: list[str]) -> Benchmark:
    candidates = {q: sorted(set(p) | set(n) | set(unlabelled)) for q, (p, n) in labels.items()}
    database = sorted({v for c in candidates.values() for v in c})
    return Benchmark("svd", list(labels), database, {"SVD": {q: set(p) for q, (p, _) in labels.items()}},
                     detection={"SVD-uAP": "SVD"}, candidates=candidates, protocol=SVD)


def load_vcdb(path: Path, distractors: bool) -> Benchmark:
    """VCDB: each core video ranks the others (and the distractors, for vcdb-distractors)."""
    if path.is_dir():
        if distractors:
            raise LayoutError(f"{path}: VCDB's annotation folder lists no distractors; vcdb-distractors needs "
                              f"the releases' vcdb.pickle (its 'dataset') or hapvr's JSON ('distractors')")
        return _vcdb_folder(path)
    data = _read(path)
    name = "vcdb-distractors" if distractors else "vcdb"
    if isinstance(data, dict) and "positives" in data:  # the releases' vcdb.pickle
        queries = _ids(data["queries"])
        pos = {str(q): {str(v) for v in vs} for q, vs in data["positives"].items()}
        database = queries + (_ids(_need(data, "dataset", "VCDB")) if distractors else [])
        return Benchmark(name, queries, database, {"VCDB": {q: pos.get(q, set()) for q in queries}},
                         detection={"VCDB-uAP": "VCDB"}, protocol=VCDB)
    core = _ids(_need(data, "videos", "VCDB"))
    pos: dict[str, set[str]] = {v: set() for v in core}
    for a, b in _need(data, "pairs", "VCDB"):
        if str(a) != str(b):
            pos.setdefault(str(a), set()).add(str(b))
            pos.setdefault(str(b), set()).add(str(a))
    database = core + (_ids(data.get("distractors", [])) if distractors else [])
    return Benchmark(name, core, database, {"VCDB": pos}, detection={"VCDB-uAP": "VCDB"},
                     protocol=Protocol(gt_drops_query=True))


def _seconds(text: str, where: str) -> float:
    parts = text.strip().split(":")
    try:
        values = [float(x) for x in parts]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3:
        raise LayoutError(f"{where}: expected a time HH:MM:SS, got {text!r}")
    total = 0.0
    for v in values:
        total = 60 * total + v
    return total


def _vcdb_folder(folder: Path) -> Benchmark:
    """VCDB's own annotation folder: ``<topic>.txt`` files of ``a,b,a_start,a_end,b_start,b_end``
    lines (times HH:MM:SS); every video named is a query, its partners the positives; the
    segment pairs are kept for localisation."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise LayoutError(f"{folder}: no <topic>.txt annotation file in this folder")
    videos: list[str] = []
    pos: dict[str, set[str]] = {}
    segments: dict[tuple[str, str], list] = {}
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = [x.strip() for x in line.split(",")]
            if len(parts) != 6:
                raise LayoutError(f"{f} line {n}: expected 'a,b,a_start,a_end,b_start,b_end', got {line!r}")
            a, b = parts[:2]
            times = tuple(_seconds(t, f"{f} line {n}") for t in parts[2:])
            for v in (a, b):
                if v not in pos:
                    pos[v] = set()
                    videos.append(v)
            if a != b:
                pos[a].add(b)
                pos[b].add(a)
                segments.setdefault((a, b), []).append(times)
    return Benchmark("vcdb", videos, list(videos), {"VCDB": pos}, detection={"VCDB-uAP": "VCDB"},
                     protocol=VCDB, segments=segments)


def load_cc_web(path: Path) -> Benchmark:
    """CC_WEB_VIDEO: 24 queries; four variants as the releases report them: CC_WEB (the query
    ranks the labelled videos of its topic), CC_WEB* (every video), and both ``_c`` (clean:
    the topic's excluded videos removed); positives are labels E, S, L, M, V; |GT| counts every
    labelled positive, with features or not."""
    data = _read(path)
    index = {str(k): v for k, v in _need(data, "index", "CC_WEB_VIDEO").items()}
    queries = _ids(_need(data, "queries", "CC_WEB_VIDEO"))
    truth = _need(data, "ground_truth", "CC_WEB_VIDEO")
    excluded = _need(data, "excluded", "CC_WEB_VIDEO")
    if len(truth) != len(queries) or len(excluded) != len(queries):
        raise LayoutError("CC_WEB_VIDEO: 'queries', 'ground_truth' and 'excluded' must have one entry per topic")
    database = sorted(index)
    external = {}
    for ext_id, internal in index.items():
        external.setdefault(internal, []).append(ext_id)
    positives, task_candidates = {}, {}
    for star in (False, True):
        for clean in (False, True):
            task = "CC_WEB" + ("*" if star else "") + ("_c" if clean else "")
            positives[task], task_candidates[task] = {}, {}
            for q, labels, gone in zip(queries, truth, excluded):
                keep = [v for v in database if (star or index[v] in labels) and not (clean and index[v] in gone)]
                task_candidates[task][q] = keep
                positives[task][q] = {ext for internal, label in labels.items()
                                      if str(label) in CC_WEB_POSITIVE and str(label) and not (clean and internal in gone)
                                      for ext in external.get(internal, [f"<unindexed {internal}>"])}
    return Benchmark("cc_web_video", queries, database, positives, protocol=CC_WEB, task_candidates=task_candidates)


def load_custom(path: Path) -> Benchmark:
    data = _read(path)
    queries = _ids(_need(data, "queries", "custom"))
    database = _ids(_need(data, "database", "custom"))
    if "levels" in data:
        levels = {str(name): {str(q): {str(v) for v in vs} for q, vs in per.items()}
                  for name, per in data["levels"].items()}
    else:
        levels = {"retrieval": {str(q): {str(v) for v in vs}
                                for q, vs in _need(data, "positives", "custom").items()}}
    detection = {f"{name}-uAP": name for name in levels} if data.get("detection") else {}
    return Benchmark(str(data.get("name", "custom")), queries, database, levels, detection=detection)


def load_benchmark(dataset: str, paths) -> Benchmark:
    """The benchmark of ``dataset`` read from ``paths`` (one path, or a list: SVD takes its two
    files). A file of another layout raises ``ValueError`` naming the layouts accepted."""
    if dataset not in LAYOUTS:
        raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}")
    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"annotation file not found: {p}")
    if len(paths) > 1 and dataset != "svd":
        raise ValueError(f"{dataset} takes one annotation file or folder, got {len(paths)}")
    name = " ".join(str(p) for p in paths)
    try:
        return _load(dataset, paths)
    except InputError:  # an unsafe or damaged file: its own message names it
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        why = str(exc) if isinstance(exc, LayoutError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{name}: --dataset {dataset} does not read this layout ({why}); it reads "
                         f"{LAYOUTS[dataset]} (docs/formats.md)") from None


def _load(dataset: str, paths: list[Path]) -> Benchmark:
    path = paths[0]
    if dataset == "svd":
        return load_svd(paths)
    if path.is_dir() and not dataset.startswith("vcdb"):
        raise LayoutError(f"{path} is a folder")
    return {"fivr-5k": lambda: load_fivr(path, "5k"), "fivr-200k": lambda: load_fivr(path, "200k"),
            "evve": lambda: load_evve(path), "vcdb": lambda: load_vcdb(path, False),
            "vcdb-distractors": lambda: load_vcdb(path, True), "cc_web_video": lambda: load_cc_web(path),
            "custom": lambda: load_custom(path)}[dataset]()


def match_ids(bench: Benchmark, available: set[str]) -> tuple[Benchmark, int]:
    """``bench`` with each id spelt as in ``available`` (the feature file's, or the scores') where
    the two differ only by a video file extension (SVD and VCDB name files, ``x.mp4``; hapvr's
    extractor names videos without it); and how many ids were renamed."""
    stem_of = {}
    for v in available:
        stem_of.setdefault(VIDEO_SUFFIX.sub("", v), []).append(v)
    new = {}
    for v in bench.all_videos():
        if v in available:
            continue
        options = stem_of.get(VIDEO_SUFFIX.sub("", v), [])
        if len(options) == 1:
            new[v] = options[0]
    return (bench.renamed(new) if new else bench), len(new)
