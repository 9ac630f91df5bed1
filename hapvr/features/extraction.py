"""Region features of many videos into an HDF5 file (``python -m hapvr.extract``), crash-safe.

One dataset ``[T, 9, D]`` per video id; the file's attributes say which features it holds
(``hapvr_space``: ``whitened`` or ``raw``, the descriptors before PCA; ``backbone``), and one file
never mixes two kinds. With ``insets``, each video's inset views (:func:`inset_views`) go into the
group ``hapvr_views/<id>`` (datasets ``1``, ``2``... with the rectangle as JSON in attribute
``rect``; an empty group for a video in which none was found), which readers of the public layout
skip (docs/formats.md). Each finished video is kept in ``OUTPUT.parts/``
(:class:`~hapvr.io.staging.StagedVideos`) until the run ends, then the HDF5 file is written (a
new one atomically, an existing one extended), so a killed run resumes where it stopped. Videos
that fail to decode or are truncated are reported (:class:`ExtractionReport`) and listed in
``OUTPUT.failures.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hapvr.data.insets import Inset, detect_insets
from hapvr.data.video import (
    CROP,
    VideoDecodeError,
    center_crop,
    decode_frames,
    load_frames,
)
from hapvr.errors import InputError, Interrupted
from hapvr.features.extractor import RegionFeatureExtractor
from hapvr.features.pca import pca_file_content, read_pca_file
from hapvr.io.files import save_torch, write_text
from hapvr.io.staging import VIEWS_GROUP, StagedVideos
from hapvr.precision import precision_dtype
from hapvr.progress import progress as progress_bar


@dataclass
class ExtractionReport:
    """What a run did: videos given, found already extracted, extracted now, failed, warned."""

    inputs: int
    already: int = 0  # of the inputs, in the output or staged by an interrupted run
    in_output: int = 0
    staged: int = 0
    extracted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    failures_file: Path | None = None


def inset_crops(frames: torch.Tensor) -> list[tuple[Inset, torch.Tensor]]:
    """``(inset, uint8 [T, 3, 224, 224])`` per rectangle :func:`hapvr.data.insets.detect_insets`
    finds in decoded ``uint8 [T, 3, H, W]`` frames (shorter side 256, before the centre crop): the
    rectangle cropped and resized to 224 x 224."""
    out = []
    for inset in detect_insets(frames):
        crop = frames[:, :, inset.top:inset.top + inset.height, inset.left:inset.left + inset.width].float()
        crop = torch.nn.functional.interpolate(crop, size=(CROP, CROP), mode="bilinear", antialias=True)
        out.append((inset, crop.round().clamp(0, 255).to(torch.uint8)))
    return out


def inset_views(extractor, frames: torch.Tensor) -> list[tuple[Inset, torch.Tensor]]:
    """``(inset, features)`` per rectangle of :func:`inset_crops`, through ``extractor`` on its
    device (float32 on the CPU)."""
    device = next(extractor.parameters()).device
    with torch.no_grad():
        return [(inset, extractor(crop.to(device)).float().cpu()) for inset, crop in inset_crops(frames)]


def check_space(f, space: str, backbone: str, path) -> None:
    """An existing output must hold the same kind of features (raw or whitened) of the same backbone."""
    have = f.attrs.get("hapvr_space", "whitened" if len(f) else None)  # no attribute: whitened (docs/compatibility.md)
    if have is not None and have != space:
        raise InputError(f"{path} holds {have} features; this run would add {space} ones "
                         f"({'drop --raw' if have == 'whitened' else 'add --raw'} or choose another --output)", "output")
    if "backbone" in f.attrs and f.attrs["backbone"] != backbone:
        raise InputError(f"{path} holds features of backbone {f.attrs['backbone']}, not {backbone}", "output")


def existing_ids(out: Path, space: str, backbone: str) -> set[str]:
    import h5py

    if not out.exists():
        return set()
    try:
        with h5py.File(out, "r") as f:
            check_space(f, space, backbone, out)
            return set(f.keys()) - {VIEWS_GROUP}
    except OSError as exc:
        raise InputError(f"{out}: exists but is not a readable HDF5 file ({exc}); move it away or choose another "
                         f"--output", "output") from None


def fit_pca(extractor: RegionFeatureExtractor, inputs, pca_file: Path, fps: float, max_frames: int | None,
            report: ExtractionReport, progress: bool = True, log=print) -> None:
    """The extractor's PCA whitening: read from ``pca_file`` when an earlier run saved it there,
    else learned from the descriptors of ``inputs`` and saved there (a PCA file)."""
    if pca_file.exists():
        extractor.pca.load_state_dict(read_pca_file(str(pca_file), extractor.in_dim, extractor.pca.out_dim,
                                                    extractor.backbone_name))
        return
    device = next(extractor.parameters()).device
    sample = []
    for vid, path in progress_bar(inputs, desc="PCA sample", unit="video", disable=not progress):
        try:
            sample.append(extractor.descriptors(load_frames(path, fps, max_frames).to(device)).cpu())
        except VideoDecodeError as exc:
            report.failures.append((vid, str(exc)))
    if not sample:
        raise InputError("no readable video to learn the PCA from", "videos")
    extractor.fit_pca(torch.cat(sample).to(device))
    save_torch(pca_file_content(extractor.pca, extractor.backbone_name, videos=len(sample)), pca_file)
    log(f"PCA learned from {len(sample)} videos, saved to {pca_file}")


def extract_to_hdf5(extractor: RegionFeatureExtractor, inputs: list[tuple[str, str]], output: Path, fps: float = 1.0,
                    max_frames: int | None = None, raw: bool = False, precision: str = "fp32",
                    fit_pca_videos: int | None = None, progress: bool = True, log=print,
                    insets: bool = False) -> ExtractionReport:
    """Extracts every ``(id, path)`` of ``inputs`` not yet in ``output`` (or staged by a killed
    run) and writes the file; see the module docstring. ``raw``: the descriptors before PCA.
    ``fit_pca_videos``: learn the whitening from the first N inputs first (``OUTPUT.pca.pt``).
    ``insets``: each video's inset views too (one decode; not with ``raw``); videos already in
    ``output`` keep what they have."""
    if insets and raw:
        raise InputError("inset views are compared, not used to learn a PCA: not with raw descriptors", "insets")
    if any(vid == VIEWS_GROUP for vid, _ in inputs):
        raise InputError(f"the id {VIEWS_GROUP!r} names the group of inset views in a feature file; give that "
                         "video another id (ID<TAB>PATH in a list file)", "videos")
    device = next(extractor.parameters()).device
    space = "raw" if raw else "whitened"
    in_output = existing_ids(output, space, extractor.backbone_name)
    parts = StagedVideos(Path(str(output) + ".parts"))
    in_parts = parts.done()
    done = in_output | set(in_parts)
    todo = [(vid, path) for vid, path in inputs if vid not in done]
    report = ExtractionReport(len(inputs), len(inputs) - len(todo), len(in_output & {v for v, _ in inputs}),
                              len(set(in_parts) - in_output))
    log(f"{len(inputs)} videos, {len(inputs) - len(todo)} already extracted ({report.in_output} in {output}, "
        f"{report.staged} in {parts.dir} from an interrupted run), {len(todo)} to extract")
    if fit_pca_videos:
        fit_pca(extractor, inputs[:fit_pca_videos], output.with_suffix(".pca.pt"), fps, max_frames, report,
                progress, log)
    encode = extractor.descriptors if raw else extractor
    low = precision_dtype(precision)
    failed = {vid for vid, _ in report.failures}
    try:
        for vid, path in progress_bar(todo, desc="extracting", unit="video", disable=not progress):
            if vid in failed:
                continue
            warnings: list[str] = []
            try:
                frames = decode_frames(path, fps, max_frames, warnings)
                with torch.autocast(device.type, dtype=low, enabled=precision != "fp32"):
                    feats = encode(center_crop(frames).to(device)).float().cpu()
                    views = inset_views(extractor, frames) if insets else None
            except VideoDecodeError as exc:
                log(f"warning: skipping {vid}: {exc}")
                report.failures.append((vid, str(exc)))
                continue
            for w in warnings:
                log(f"warning: {vid}: {w}")
                report.warnings.append((vid, w))
            parts.write(vid, feats.numpy(), [(r.to_dict(), x.numpy()) for r, x in views or ()],
                        insets=views is not None)
    except KeyboardInterrupt:
        raise Interrupted(f"{len(parts.done())} videos saved in {parts.dir}; run the same command to continue "
                          f"(they go into {output} when it finishes)") from None
    finished = parts.done()
    parts.merge_into(output, {"hapvr_space": space, "backbone": extractor.backbone_name}, finished)
    report.extracted = len(set(finished) - in_output)
    report.failures_file = _write_failures(Path(str(output) + ".failures.txt"), report)
    return report


def _write_failures(path: Path, report: ExtractionReport) -> Path | None:
    """This run's failures and warnings as ``ID<TAB>failed|warning<TAB>why`` lines; an earlier
    run's file is removed when nothing failed this time."""
    if not (report.failures or report.warnings):
        path.unlink(missing_ok=True)
        return None
    write_text(path, "".join(f"{vid}\tfailed\t{why}\n" for vid, why in report.failures)
               + "".join(f"{vid}\twarning\t{why}\n" for vid, why in report.warnings))
    return path
