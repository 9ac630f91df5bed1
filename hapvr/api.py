"""The Python API for your own videos: load a model, extract features, compare two videos.

    import hapvr
    model = hapvr.load_model()                              # the default model (see below)
    result = hapvr.compare_videos("a.mp4", "b.mp4", model)  # similarity, frame map, copied segments
    print(result.similarity, result.segments)
    result.plot("a_vs_b.png")

A :class:`VideoModel` is a frozen feature extractor (backbone + PCA whitening) and a similarity
model over its features. ``load_model(checkpoint)`` takes a checkpoint of ``python -m hapvr.train``
(its backbone, PCA and trained weights); ``load_model()`` takes the default model shipped with the
package (:func:`hapvr.io.checkpoint.load_default_model`). Videos are paths (decoded at ``model.fps`` frames per second,
the shorter side resized to 256 and centre-cropped to 224) or already extracted features
``[T, 9, 512]``.

Scores are asymmetric (the query's frames look for their best matches in the target); pass
``symmetric=True`` for the mean of both directions (de-duplication). Their range and the
suggested "copy" threshold of each model are documented in docs/scores.md.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hapvr.data.insets import Inset
from hapvr.data.video import center_crop, decode_frames, load_frames
from hapvr.errors import InputError
from hapvr.evaluation.scorers import ChamferBaseline, ModelScorer, state_dict_digest
from hapvr.features.extraction import inset_views
from hapvr.features.extractor import RegionFeatureExtractor
from hapvr.io.checkpoint import load_default_model, read_model_file
from hapvr.localization import Segment, chamfer_frame_map, localize_explained
from hapvr.models import VideoSimilarityModel
from hapvr.models.scales import (BASELINE_SCALE, RESIDUAL_SCALE, TRAINED_SCALE,  # noqa: F401  (documented here)
                                 ScoreScale, scale_of)
from hapvr.precision import check_precision, resolve_precision
from hapvr.retrieval.index_store import read_manifest
from hapvr.runtime import resolve_device


FEATURE_CACHE_BYTES = 1 << 30  # decoded features a VideoModel keeps (about 15 hours of video at 1 fps)


def _file_key(video, fps: float) -> tuple:
    """What a video file's features depend on besides the model: its path, size, modification
    time (a folder of frames: of the folder and its newest frame) and the sampling rate."""
    path = os.path.realpath(str(video))
    try:
        st = os.stat(path)
    except OSError:  # missing: load_frames says so
        return (path, None, None, fps)
    mtime = st.st_mtime_ns
    if os.path.isdir(path):
        with os.scandir(path) as entries:
            mtime = max([mtime] + [e.stat().st_mtime_ns for e in entries if e.is_file()])
    return (path, st.st_size, mtime, fps)


class VideoModel:
    """A feature extractor and a similarity model: what compare, index and search use.

    Args:
        extractor: :class:`hapvr.features.RegionFeatureExtractor` with its PCA loaded.
        similarity: :class:`hapvr.models.VideoSimilarityModel` (``attention=False,
            comparator=False`` is the features-only Chamfer baseline).
        name: how the model is reported (``default``, a checkpoint path, ...).
        fps: frames per second decoded from video files.
        scale: what the scores mean (:class:`ScoreScale`).
        precision: of the similarity GEMMs: ``auto`` (bf16 on CUDA, fp32 on most CPUs,
            :func:`hapvr.precision.resolve_precision`), ``fp32``, ``bf16`` or ``fp16``; it applies to
            :meth:`similarity`, :meth:`compare` and the scorer of index and search.
    """

    def __init__(self, extractor, similarity, name: str, fps: float = 1.0, scale: ScoreScale | None = None,
                 device: str | torch.device = "cpu", identity: dict | None = None, source: dict | None = None,
                 precision: str = "auto"):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.extractor = extractor.eval().to(self.device)
        self.model = similarity.eval().to(self.device)
        self.model.precision = self.precision
        self.name = name
        self.fps = fps
        self.is_baseline = similarity.is_baseline
        self.scale = scale or scale_of(similarity)
        self.identity = identity or {}
        # how to load this model again: {"checkpoint": path or None (the default model), "baseline": bool}
        self.source = source or {"checkpoint": None, "baseline": self.is_baseline}
        # features of the video files seen last, by path, size, modification time and fps
        self.cache_bytes = FEATURE_CACHE_BYTES
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_bytes = 0
        self._views: OrderedDict[tuple, list] = OrderedDict()

    @property
    def min_frames(self) -> int:
        return int(self.model.min_frames)

    # --- features --------------------------------------------------------------------------

    @torch.no_grad()
    def features(self, video) -> torch.Tensor:
        """``[T, 9, D]`` features of a video file path (or a folder of frames), or the given
        features tensor itself (checked)."""
        if isinstance(video, torch.Tensor):
            if video.dim() != 3 or video.shape[-1] != self.model.dim:
                raise ValueError(f"features must be [T, R, {self.model.dim}], got {tuple(video.shape)}")
            if video.shape[0] == 0:
                raise ValueError("features of a video with no frames")
            return video.float()
        key = _file_key(video, self.fps)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        frames = load_frames(str(video), self.fps, None)
        feats = self.extractor(frames.to(self.device)).float().cpu()
        self._remember(key, feats)
        return feats

    def views(self, video, insets: bool = True, mirror: bool = False) -> list[tuple["Inset | None", torch.Tensor]]:
        """The views of a video file or a folder of frames: ``(None, features of the whole frame)``
        first; with ``mirror``, the whole frame mirrored left-right (an ``Inset`` of kind
        ``mirrored`` covering the frame: re-uploads are often mirrored, and the features are not
        mirror-invariant); with ``insets``, one ``(inset, features)`` per rectangle
        :func:`hapvr.data.insets.detect_insets` finds inside its frames (picture-in-picture, the
        picture inside borders, the halves of a stack), the rectangle cropped from the decoded
        frames and resized to the backbone's 224 x 224. Rectangles are in pixels of the frames as
        decoded (shorter side 256). The video is decoded once for all its views."""
        if isinstance(video, torch.Tensor):
            raise ValueError("views need a video's frames (a video file or a folder of frames), not features")
        key = _file_key(video, self.fps)
        cached = self._views.get(key + ("views", insets, mirror))
        if cached is not None:
            return cached
        frames = decode_frames(str(video), self.fps)
        whole = self._cache.get(key)
        if whole is None:
            with torch.no_grad():
                whole = self.extractor(center_crop(frames).to(self.device)).float().cpu()
            self._remember(key, whole)
        out = [(None, whole)]
        if mirror:
            with torch.no_grad():
                flipped = self.extractor(center_crop(frames).flip(-1).to(self.device)).float().cpu()
            out.append((Inset("mirrored", 0, 0, frames.shape[-2], frames.shape[-1], 1.0), flipped))
        if insets:
            out += self.inset_views(frames)
        self._views[key + ("views", insets, mirror)] = out
        while len(self._views) > 8:  # the views of the last few files (compare and its callers reuse them)
            self._views.popitem(last=False)
        return out

    def inset_views(self, frames: torch.Tensor) -> list[tuple["Inset", torch.Tensor]]:
        """``(inset, features)`` per rectangle :func:`hapvr.data.insets.detect_insets` finds in
        decoded ``uint8 [T, 3, H, W]`` frames: the rectangle cropped and resized to 224 x 224
        (:func:`hapvr.features.extraction.inset_views`, as ``python -m hapvr.extract --insets``)."""
        return inset_views(self.extractor, frames)

    def _remember(self, key: tuple, feats: torch.Tensor) -> None:
        """Keeps ``feats`` in the cache, dropping the least recently used beyond its byte bound."""
        self._cache[key] = feats
        self._cache_bytes += feats.numel() * feats.element_size()
        while self._cache_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.numel() * old.element_size()

    # --- similarity ------------------------------------------------------------------------

    @torch.no_grad()
    def similarity(self, a, b, symmetric: bool = False) -> float:
        """Video-level similarity of ``a`` (query) to ``b`` (target); with ``symmetric`` the
        mean of both directions."""
        fa, fb = self.features(a), self.features(b)
        s = self.model.similarity(fa.to(self.device), fb.to(self.device))
        if symmetric:
            s = 0.5 * (s + self.model.similarity(fb.to(self.device), fa.to(self.device)))
        return s

    @torch.no_grad()
    def frame_map(self, a, b) -> torch.Tensor:
        """``[T, T']`` frame-to-frame similarity of the query's frames to the target's: the
        region Chamfer map (eq. 3) of the L2-normalised features, before any learned attention,
        so that its values read the same for every model (about 1 for the same frame, docs/scores.md;
        a trained model's attention scales its own map down). It is what :func:`compare` localises
        copies on."""
        fa, fb = self.features(a).to(self.device), self.features(b).to(self.device)
        return chamfer_frame_map(fa, fb, self.model.k_s).float().cpu()

    def locate_copies(self, a, b, **localize_options) -> tuple[list[Segment], str | None]:
        """The copied segments of ``a`` (query) in ``b`` (target), best first, and when there are
        none, why (:func:`hapvr.localization.localize_explained`, whose options can be passed)."""
        return localize_explained(self.frame_map(a, b), self.fps, **localize_options)

    def compare(self, a, b, **options) -> "Comparison":
        """:func:`compare_videos` with this model."""
        return compare_videos(a, b, self, **options)

    def scorer(self, precision: str | None = None):
        """The evaluation engine's scorer of this model (batched scoring, index and search), at
        ``precision`` (default: the model's)."""
        precision = self.precision if precision is None else precision
        if self.is_baseline:
            return ChamferBaseline(precision=precision, device=self.device)
        return ModelScorer(self.model, name=self.name, precision=precision, device=self.device)

    def fingerprint(self) -> dict:
        """What the features and scores depend on: backbone, PCA and similarity weights, fps."""
        return {"backbone": self.extractor.backbone_name, "pca": state_dict_digest(self.extractor.pca),
                "model": "chamfer-baseline" if self.is_baseline else state_dict_digest(self.model),
                "dim": int(self.model.dim), "fps": float(self.fps)}


def load_model(checkpoint: str | Path | None = None, *, baseline: bool = False, device: str = "auto",
               fps: float = 1.0, backbone_weights: str | None = None, precision: str = "auto") -> VideoModel:
    """A :class:`VideoModel`.

    Args:
        checkpoint: a training checkpoint of ``python -m hapvr.train`` (backbone, PCA, trained
            weights); None: the default model shipped with the package.
        baseline: use the model's backbone and PCA with the features-only Chamfer baseline
            instead of its trained weights.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        fps: frames per second decoded from video files.
        backbone_weights: weights file of the backbone when the checkpoint's backbone needs one
            (resnet50) and its recorded path is not valid here.
        precision: of the similarity GEMMs (:class:`VideoModel`). TF32 for fp32 matmuls is
            PyTorch's process-wide setting, left as it is here; the commands allow it on CUDA
            (:func:`hapvr.precision.configure_tf32`, ``HAPVR_TF32=0`` refuses it).
    """
    dev = resolve_device(device)
    check_precision(precision)
    spec = load_default_model() if checkpoint is None else read_model_file(checkpoint)
    baseline = baseline or spec.kind == "baseline"
    ext = RegionFeatureExtractor.from_spec(spec, backbone_weights)
    sim = VideoSimilarityModel.baseline(spec.pca_dim, spec.k_s, spec.k_t) if baseline else VideoSimilarityModel.from_spec(spec)
    name = "default" if checkpoint is None else str(checkpoint)
    source = {"checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()), "baseline": baseline}
    return VideoModel(ext, sim, name + (" (Chamfer baseline)" if baseline else ""), fps, device=dev, source=source,
                      precision=precision)


@dataclass
class Comparison:
    """The result of :func:`compare_videos`. ``to_dict()`` is the fixed JSON layout other tools
    read (docs/formats.md). ``reason``: why no segment was found (None when there are segments)."""

    query: str
    target: str
    similarity: float
    fps: float
    frame_map: torch.Tensor = field(repr=False)
    segments: list[Segment]
    reason: str | None = None
    query_view: "Inset | None" = None  # the rectangle of the query compared (None: the whole frame)
    target_view: "Inset | None" = None

    def to_dict(self) -> dict:
        return {"query": self.query, "target": self.target, "similarity": float(self.similarity),
                "fps": float(self.fps), "segments": [s.to_dict() for s in self.segments], "reason": self.reason,
                "query_view": None if self.query_view is None else self.query_view.to_dict(),
                "target_view": None if self.target_view is None else self.target_view.to_dict()}

    def plot(self, path: str | Path, title: str | None = None) -> None:
        """The frame map as a heatmap (query frames down, target frames across, in seconds) with
        the copied segments drawn on it (matplotlib's ``Figure`` alone: no pyplot state, no
        backend switched)."""
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        m = self.frame_map.numpy()
        T, T2 = m.shape
        fig = Figure(figsize=(6.4, max(3.0, min(9.0, 6.4 * T / max(T2, 1)))))
        ax = fig.subplots()
        im = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest",
                       extent=(0, T2 / self.fps, T / self.fps, 0))
        for s in self.segments:
            ax.add_patch(Rectangle((s.target_start, s.query_start), s.target_end - s.target_start,
                                   s.query_end - s.query_start, fill=False, edgecolor="red", linewidth=1.5))
            ax.text(s.target_start, s.query_start, f"{s.score:.2f}", color="red", fontsize=8, va="bottom")
        ax.set_xlabel(f"target: {Path(self.target).name} (s)")
        ax.set_ylabel(f"query: {Path(self.query).name} (s)")
        ax.set_title(title or f"similarity {self.similarity:.3f}, {len(self.segments)} copied segment(s)")
        fig.colorbar(im, ax=ax, label="frame similarity")
        fig.tight_layout()
        fig.savefig(path, dpi=120)


def model_of_index(index: str | Path, checkpoint: str | Path | None = None, *, baseline: bool = False,
                   fps: float | None = None, device: str = "auto", precision: str = "auto") -> VideoModel:
    """The model an index (``python -m hapvr.index``) was built with: its recorded checkpoint (the
    default model when it recorded none), baseline or not, and frames per second, unless given.
    InputError (argument ``checkpoint``) when the recorded checkpoint is not there any more."""
    manifest = read_manifest(index)
    built = manifest.get("built_with", {})
    fps = fps if fps is not None else float(manifest["space"].get("model", {}).get("fps", 1.0))
    recorded = built.get("checkpoint")
    if recorded and not checkpoint and not os.path.isfile(recorded):
        raise InputError(f"--index {index} was built with the checkpoint {recorded}, which is not there any more; "
                         "pass --checkpoint FILE", "checkpoint")
    same = not checkpoint or (recorded and os.path.realpath(checkpoint) == recorded)
    return load_model(checkpoint or recorded, baseline=baseline or bool(same and built.get("baseline")),
                      device=device, fps=fps, precision=precision)


def compare_videos(a, b, model: VideoModel | None = None, *, symmetric: bool = False,
                   names: tuple[str, str] | None = None, insets: bool = False, mirror: bool = False,
                   **localize_options) -> Comparison:
    """Compare video ``a`` (query) with video ``b`` (target): the video-level similarity, the
    ``[T, T']`` frame map and the copied segments (:func:`hapvr.localization.localize`, whose
    options can be passed here), times in seconds from each video's start.

    ``a`` and ``b`` are video paths or features ``[T, 9, D]``; ``model`` defaults to
    :func:`load_model` ``()``. (``model.compare(a, b)`` is the same call.)

    ``insets=True`` also compares the rectangles found inside the frames
    (:meth:`VideoModel.views`: a picture-in-picture inset, the picture inside borders, the halves
    of a stack), ``mirror=True`` the query mirrored left-right: the pair of views with the highest
    similarity is reported, its views in ``query_view`` / ``target_view``, its segments on its own
    frame map. Views come from the videos' frames, or are given: ``a`` / ``b`` as a list of
    ``(view, features)``, whole frame first (:meth:`VideoModel.views`, or
    :meth:`hapvr.evaluation.feature_store.FeatureStore.views` of ``extract --insets`` after
    ``(None, features)``). Measured on the built-in test benchmark (docs/scores.md):
    with both, picture-in-picture copies found at the copy threshold 17 of 22 instead of 5,
    re-edits 36 of 45 instead of 30, 2 false copies instead of 1."""
    model = model or load_model()
    given = [x if isinstance(x, list) else None for x in (a, b)]
    for name, views in zip(("a", "b"), given):
        if views is not None and (not views or views[0][0] is not None):
            raise ValueError(f"{name}: views start with the whole frame's (None, features)")
    fa, fb = (model.features(x) if v is None else v[0][1] for x, v in zip((a, b), given))
    query_view = target_view = None
    if insets or mirror:
        # the mirror is the query's only
        targets = (given[1] or model.views(b)) if insets else [(None, fb)]
        queries = given[0] or model.views(a, insets, mirror)
        pairs = [(model.similarity(x, y, symmetric=symmetric), i, j, x, y) for i, x in queries for j, y in targets]
        sim, query_view, target_view, fa, fb = max(pairs, key=lambda p: p[0])
    else:
        sim = model.similarity(fa, fb, symmetric=symmetric)
    fmap = model.frame_map(fa, fb)
    segments, reason = localize_explained(fmap, model.fps, **localize_options)
    qa, qb = names or (str(a) if not isinstance(a, (torch.Tensor, list)) else "query",
                       str(b) if not isinstance(b, (torch.Tensor, list)) else "target")
    return Comparison(qa, qb, float(sim), float(model.fps), fmap, segments, reason, query_view, target_view)
