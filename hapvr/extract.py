"""Extract region features of videos into an HDF5 file (one [T, 9, 512] dataset per video id).

    python -m hapvr.extract --videos DIR --output features.hdf5 --checkpoint runs/hapvr/checkpoint.pt
    python -m hapvr.extract --videos list.txt --output features.hdf5 --fit-pca 200
    python -m hapvr.extract --videos DIR --output raw.hdf5 --raw      # then: python -m hapvr.pca

--videos is a folder (searched recursively; a folder of images counts as one video) or a text
file with one video per line, either ``PATH`` or ``ID PATH``. Ids default to the file name
without its extension (the FIVR / EVVE convention). Frames are sampled at 1 fps, resized to 256
and centre-cropped to 224 (SPEC section 1). The backbone and the PCA whitening come from a
training checkpoint, or the PCA is learned here from the first --fit-pca videos and saved beside
the output. With --raw the features are the backbone's L2-normalised region descriptors before
PCA, ``[T, 9, D_in]`` (D_in = 1752 for efficientnet_lite0, 3840 for resnet50): the input of
``python -m hapvr.pca``, which learns the whitening from them for ``python -m hapvr.train --pca``.
The file records which (attribute ``hapvr_space``: ``raw`` or ``whitened``, and ``backbone``), and
one file never mixes the two. Resumable: ids already in the output are skipped. Failures are
listed in OUTPUT.failures.txt and in the summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hapvr.extract", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", required=True, help="folder of videos, or a text file of [ID] PATH lines")
    ap.add_argument("--output", required=True, help="HDF5 file to create or extend")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training checkpoint: its backbone and PCA are used")
    src.add_argument("--fit-pca", type=int, metavar="N", help="learn the PCA whitening from the first N videos")
    src.add_argument("--raw", action="store_true",
                     help="write the descriptors before PCA [T, 9, D_in], for python -m hapvr.pca")
    ap.add_argument("--backbone", default="efficientnet_lite0",
                    help="with --fit-pca or --raw: efficientnet_lite0 or resnet50")
    ap.add_argument("--backbone-weights", help="weights file (needed for resnet50)")
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--max-frames", type=int, help="at most this many frames per video")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="autocast dtype of the backbone (features are stored as float32; default fp32)")
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def list_inputs(spec: str) -> list[tuple[str, str]]:
    """(id, path) pairs from a folder or a list file."""
    from hapvr.data.video import list_videos

    p = Path(spec)
    if p.is_dir():
        out = []
        for path in list_videos(str(p)):
            rel = Path(os.path.relpath(path, p))
            vid = str(rel.with_suffix("")) if Path(path).is_file() else str(rel)
            out.append((vid, path))
        return out
    if p.is_file():
        out = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 1:
                out.append((Path(parts[0]).stem, parts[0]))
            elif len(parts) == 2:
                out.append((parts[0], parts[1]))
            else:
                _fail(f"{spec}:{n}: expected 'PATH' or 'ID PATH', got {line!r}")
        return out
    _fail(f"--videos {spec}: no such folder or list file")


def load_frames(path: str, fps: float, max_frames: int | None) -> torch.Tensor:
    from hapvr.data.video import center_crop, decode_video, load_frame_folder

    frames = load_frame_folder(path) if os.path.isdir(path) else decode_video(path, fps, max_frames)
    return center_crop(frames)


def build_extractor(args):
    from hapvr.features.extractor import RegionFeatureExtractor

    if args.checkpoint:
        from hapvr.serialization import load_torch_file

        state = load_torch_file(args.checkpoint, "--checkpoint", allow_numpy=True)
        if not isinstance(state, dict) or "pca" not in state or "config" not in state:
            _fail(f"--checkpoint {args.checkpoint}: not a hapvr training checkpoint (no PCA inside)")
        cfg = state["config"]
        ext = RegionFeatureExtractor(cfg.get("backbone", "efficientnet_lite0"), cfg.get("backbone_weights"),
                                     cfg.get("pca_dim", 512))
        ext.pca.load_state_dict(state["pca"])
        return ext
    return RegionFeatureExtractor(args.backbone, args.backbone_weights, 512)


def check_space(f, space: str, backbone: str, path) -> None:
    """An existing output must hold the same kind of features (raw or whitened) of the same backbone."""
    have = f.attrs.get("hapvr_space", "whitened" if len(f) else None)  # files from before the attribute: whitened
    if have is not None and have != space:
        _fail(f"--output {path} holds {have} features; this run would add {space} ones "
              f"({'drop --raw' if have == 'whitened' else 'add --raw'} or choose another --output)")
    if "backbone" in f.attrs and f.attrs["backbone"] != backbone:
        _fail(f"--output {path} holds features of backbone {f.attrs['backbone']}, not {backbone}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import h5py
    from tqdm import tqdm

    from hapvr.data.video import VideoDecodeError

    inputs = list_inputs(args.videos)
    if not inputs:
        _fail(f"--videos {args.videos}: no video found")
    from hapvr.precision import precision_dtype, resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        _fail(f"--device: {exc}")
    try:
        extractor = build_extractor(args).to(device)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    out = Path(args.output)
    space = "raw" if args.raw else "whitened"
    done = set()
    if out.exists():
        with h5py.File(out, "r") as f:
            check_space(f, space, extractor.backbone_name, out)
            done = set(f.keys())
    todo = [(vid, path) for vid, path in inputs if vid not in done]
    print(f"{len(inputs)} videos, {len(inputs) - len(todo)} already in {out}, {len(todo)} to extract", file=sys.stderr)
    failures: list[tuple[str, str]] = []

    if args.fit_pca:
        pca_file = out.with_suffix(".pca.pt")
        if pca_file.exists():
            from hapvr.serialization import load_torch_file

            try:
                extractor.pca.load_state_dict(load_torch_file(pca_file, "PCA file"))
            except (ValueError, RuntimeError) as exc:
                _fail(f"{exc} (delete {pca_file} to fit it again)")
        else:
            sample = []
            for vid, path in tqdm(inputs[: args.fit_pca], desc="PCA sample", disable=args.no_progress):
                try:
                    sample.append(extractor.descriptors(load_frames(path, args.fps, args.max_frames).to(device)).cpu())
                except VideoDecodeError as exc:
                    failures.append((vid, str(exc)))
            if not sample:
                _fail("no readable video to learn the PCA from")
            extractor.fit_pca(torch.cat(sample).to(device))
            torch.save({k: v.cpu() for k, v in extractor.pca.state_dict().items()}, pca_file)
            print(f"PCA learned from {len(sample)} videos, saved to {pca_file}", file=sys.stderr)

    extracted = 0
    base = extractor.descriptors if args.raw else extractor
    low = precision_dtype(args.precision)

    def encode(frames):
        with torch.autocast(device.type, dtype=low, enabled=args.precision != "fp32"):
            return base(frames.to(device)).float().cpu()

    with h5py.File(out, "a") as f:
        f.attrs["hapvr_space"], f.attrs["backbone"] = space, extractor.backbone_name
        for vid, path in tqdm(todo, desc="extracting", unit="video", disable=args.no_progress):
            try:
                feats = encode(load_frames(path, args.fps, args.max_frames))
            except VideoDecodeError as exc:
                failures.append((vid, str(exc)))
                continue
            f.create_dataset(vid, data=feats.float().numpy())
            f.flush()  # each finished video survives an interruption
            extracted += 1
    if failures:
        fail_file = Path(str(out) + ".failures.txt")
        with open(fail_file, "w") as fh:  # this run's failures
            for vid, why in failures:
                fh.write(f"{vid}\t{why}\n")
    print(f"extracted {extracted}, skipped (already present) {len(inputs) - len(todo)}, failed {len(failures)}"
          + (f" (listed in {args.output}.failures.txt)" if failures else ""), file=sys.stderr)
    for vid, why in failures[:10]:
        print(f"  failed: {vid}: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
