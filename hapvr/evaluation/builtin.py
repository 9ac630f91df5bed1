"""The built-in held-out benchmark (DS/CS/IS levels from packaged media and rendered worlds,
:func:`hapvr.data.corpus.build_benchmark`): built once per split and backbone, its frozen
descriptors cached under the cache folder, and read back by training, calibration and the
benchmarks alike.

Cache files are named by :func:`cache_key` of what they depend on; a truncated or foreign
cache file is refused (delete it to rebuild), never silently rebuilt over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hapvr.data import corpus
from hapvr.data.media import MediaError
from hapvr.data.video import center_crop
from hapvr.errors import InputError
from hapvr.io.files import save_torch
from hapvr.io.serialization import load_torch_file
from hapvr.progress import progress as progress_bar
from hapvr.runtime import DistInfo, barrier

CACHE_VERSION = 3  # 3: the benchmark holds partial copies


@dataclass
class BenchmarkFeatures:
    """Descriptors (pre-PCA, fp16) per benchmark video, queries, labels and small thumbnails;
    the partial-copy targets' descriptors and their spans (``partial``: dicts of
    :class:`hapvr.data.corpus.PartialCopy`'s fields), apart from the retrieval database."""

    desc: dict[str, torch.Tensor]
    queries: list[str]
    labels: dict[str, dict[str, list[str]]]
    thumbs: dict[str, torch.Tensor]
    partial_desc: dict[str, torch.Tensor]
    partial: list[dict]
    copies: list[dict]  # the truth of every DS copy (:class:`hapvr.data.corpus.CopyTruth`'s fields)

    def state(self) -> dict:
        return dict(desc=self.desc, queries=self.queries, labels=self.labels, thumbs=self.thumbs,
                    partial_desc=self.partial_desc, partial=self.partial, copies=self.copies)


def cache_key(**parts) -> str:
    """Short digest of what a cache file depends on (its name)."""
    blob = json.dumps(dict(parts, version=CACHE_VERSION), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def load_cache(path: str) -> dict:
    """A cache file's content; a truncated or foreign one is an error naming it."""
    try:
        return load_torch_file(path, "cache file")
    except ValueError as exc:  # truncated or foreign: never used, never silently rebuilt over
        raise InputError(f"{exc}; delete it to rebuild") from None


def build_benchmark_features(bench, extractor, progress=None) -> BenchmarkFeatures:
    """Descriptors (and thumbnails) of every video of a built-in benchmark split."""
    desc, thumbs, partial_desc = {}, {}, {}
    for vid, frames in bench.videos.items():
        x = center_crop(frames)
        desc[vid] = extractor.descriptors(x).half()
        mid = x[x.shape[0] // 2: x.shape[0] // 2 + 1].float()
        thumbs[vid] = F.interpolate(mid, size=(64, 64), mode="bilinear", antialias=True)[0].round().to(torch.uint8)
        if progress is not None:
            progress(x.shape[0])
    for vid, frames in bench.partial_videos.items():
        partial_desc[vid] = extractor.descriptors(center_crop(frames)).half()
        if progress is not None:
            progress(frames.shape[0])
    partial = [dataclasses.asdict(p) for p in bench.partial]
    copies = [dataclasses.asdict(c) for c in bench.copies]
    return BenchmarkFeatures(desc, bench.queries, bench.labels, thumbs, partial_desc, partial, copies)


def benchmark_path(split: str, cache_dir: str, backbone: str, backbone_weights: str | None) -> str:
    """Where the cached features of benchmark ``split`` for this backbone live."""
    parts = dict(bench=dataclasses.asdict(corpus.CorpusConfig()), backbone=backbone, weights=backbone_weights,
                 truth=1)  # 1: the truth of every DS copy is kept
    if split != "builtin":  # the first split's key has no split name (docs/compatibility.md)
        parts.update(split=split, renders=corpus.RENDER_FRAMES)
    if split == "validation":
        parts.update(photos=corpus.VALIDATION_PHOTOS)
    return os.path.join(cache_dir, f"benchmark-{cache_key(**parts)}.pt")


def load_or_build_benchmark(split: str, extractor, cache_dir: str, info: DistInfo = DistInfo(),
                            optional: bool = False, log=print) -> BenchmarkFeatures | None:
    """The held-out benchmark ``split`` (``builtin``, ``test`` or ``validation``), built and cached
    once by the main process. ``optional``: missing media packages give None (training on
    ``--data`` needs no benchmark) instead of :class:`~hapvr.data.media.MediaError`."""
    path = benchmark_path(split, cache_dir, extractor.backbone_name, extractor.weights)
    if info.main and not os.path.isfile(path):
        t0 = time.time()
        log(f"building the held-out benchmark ({split}: "
            + ("rendered worlds + other photos" if split == "validation" else "real clips + other photos")
            + (" + rendered worlds" if split == "test" else "") + ", DS/CS/IS levels) ...")
        try:
            bench = corpus.build_benchmark(corpus.CorpusConfig(), split)
        except MediaError as exc:
            if not optional:
                raise
            log(f"no benchmark: {exc}")
            bench = None
        if bench is not None:
            frames = sum(v.shape[0] for v in [*bench.videos.values(), *bench.partial_videos.values()])
            with progress_bar(total=frames, desc="benchmark", unit="frame", disable=not info.main) as bar:
                feats = build_benchmark_features(bench, extractor, progress=bar.update)
            save_torch(feats.state(), path)
            log(f"cached {path} ({time.time() - t0:.0f} s)")
    barrier(info)  # every rank, on every path: the next collective must pair with the same one
    if not os.path.isfile(path):
        return None
    return BenchmarkFeatures(**load_cache(path))
