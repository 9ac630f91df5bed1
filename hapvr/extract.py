"""Extract region features of videos into an HDF5 file (one [T, 9, 512] dataset per video id).

--videos is a folder (searched recursively; a folder of images counts as one video), a text
list file, or a single video file. Formats (ids, list files, the HDF5 layout) are described in
docs/formats.md. Ids default to the file name without its extension (the FIVR / EVVE
convention); a video in a sub-folder gets its relative path with "__" for "/" as its id
(DIR/2019/beach.avi -> 2019__beach), so every id is flat. Two videos with the same id are
refused before anything is written: name them in a list file (ID<TAB>PATH lines).

Frames are sampled at --fps, the shorter side resized to 256 and centre-cropped to 224. The
backbone and the PCA whitening come from a training checkpoint, or the PCA is learned here from
the first --fit-pca videos and saved beside the output. With --raw the features are the
backbone's L2-normalised region descriptors before PCA, [T, 9, D_in] (D_in = 1752 for
efficientnet_lite0, 3840 for resnet50): the input of python -m hapvr.pca. The file records which
(attribute hapvr_space: raw or whitened, and backbone); one file never mixes the two.

Nothing is lost: each finished video is kept in OUTPUT.parts/ (written atomically) until the
run ends, then the HDF5 file is written (a new file atomically, an existing one extended), so a
run that is killed resumes where it stopped. Videos that fail to decode, are truncated or are
skipped are named in warnings, in the summary and in OUTPUT.failures.txt.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from hapvr.cli import ArgumentParser, UserError, fail, input_file, int_at_least, output_file, positive_float, run_main

EXAMPLES = """\
  python -m hapvr.extract --videos DIR --output features.hdf5 --checkpoint runs/hapvr/checkpoint.pt
  python -m hapvr.extract --videos list.txt --output features.hdf5 --fit-pca 200
  python -m hapvr.extract --videos DIR --output raw.hdf5 --raw      # then: python -m hapvr.pca
"""
ID_SEPARATOR = "__"  # replaces "/" in the ids of videos in sub-folders (HDF5 would make groups of them)


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.extract", description=__doc__, examples=EXAMPLES)
    ap.add_argument("--videos", required=True,
                    help="a folder of videos (recursive), a list file of PATH or ID<TAB>PATH lines, or one video file")
    ap.add_argument("--output", required=True, help="HDF5 file to create or extend (its folder is created if missing)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training checkpoint: its backbone and PCA whitening are used")
    src.add_argument("--fit-pca", type=int_at_least(1), metavar="N",
                     help="learn the PCA whitening from the first N videos (saved as OUTPUT with suffix .pca.pt)")
    src.add_argument("--raw", action="store_true",
                     help="write the descriptors before PCA [T, 9, D_in], for python -m hapvr.pca")
    ap.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet50"],
                    help="with --fit-pca or --raw: the frozen CNN")
    ap.add_argument("--backbone-weights", help="state_dict file of the backbone (needed for resnet50)")
    ap.add_argument("--fps", type=positive_float(), default=1.0, help="frames decoded per second of video")
    ap.add_argument("--max-frames", type=int_at_least(1), help="at most this many frames per video (default: all)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="autocast dtype of the backbone (features are stored as float32)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    ap.add_argument("--no-progress", action="store_true", help="no progress display")
    return ap


def parse_args(argv=None):
    return build_parser().parse_args(argv)


# --- inputs -----------------------------------------------------------------------------------

def flat_id(rel: Path, is_file: bool) -> str:
    """The id of a video at ``rel`` (relative to the folder): its stem, with its sub-folders
    joined by ``__`` (HDF5 would turn "/" into groups)."""
    parts = list(rel.parts)
    if is_file:
        parts[-1] = Path(parts[-1]).stem
    return ID_SEPARATOR.join(parts)


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a multi-byte character cut at the end of the sample
    return True


def parse_list_file(path: Path) -> list[tuple[str, str]]:
    """``(id, path)`` pairs of a list file: ``ID<TAB>PATH`` lines, or ``PATH`` alone (the id is
    its stem; spaces allowed), or the older ``ID PATH`` with no space in either. Blank lines and
    lines starting with ``#`` are ignored; relative paths are taken from the list file's folder
    when they do not exist from the current one."""
    out = []
    base = path.parent
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" in line:
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                fail(f"--videos {path}, line {n}: expected ID<TAB>PATH, got {line!r}")
            vid, video = fields[0].strip(), fields[1].strip()
        else:
            text = line.strip()
            words = text.split()
            if Path(text).exists() or (base / text).exists() or len(words) == 1:
                vid, video = Path(text).stem, text
            elif len(words) == 2:
                vid, video = words
            else:
                fail(f"--videos {path}, line {n}: {text!r} is not an existing path; write ID<TAB>PATH "
                     f"(a tab between the id and a path with spaces)")
        if "/" in vid:
            fail(f"--videos {path}, line {n}: id {vid!r} contains '/', which HDF5 would turn into groups")
        if not Path(video).exists() and (base / video).exists():
            video = str(base / video)
        out.append((vid, video))
    return out


def list_inputs(spec: str, log=print) -> list[tuple[str, str]]:
    """``(id, path)`` pairs from a folder, a list file or one video file. Files in a folder that
    are not videos are named in a note; nested ids are listed."""
    from hapvr.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_videos

    p = Path(spec)
    if not p.exists():
        fail(f"--videos {spec}: no such folder, list file or video")
    if not os.access(p, os.R_OK):
        fail(f"--videos {spec}: not readable (permission denied)")
    if p.is_dir():
        out, nested = [], []
        for path in list_videos(str(p)):
            rel = Path(os.path.relpath(path, p))
            vid = flat_id(rel, Path(path).is_file())
            if len(rel.parts) > 1:
                nested.append((str(rel), vid))
            out.append((vid, path))
        ignored = [str(Path(dp, f).relative_to(p)) for dp, _, files in os.walk(p) for f in files
                   if not f.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS) and not f.startswith(".")]
        if ignored:
            log(f"note: {len(ignored)} files under {spec} are not videos (extensions {' '.join(VIDEO_EXTENSIONS)}) "
                f"and are ignored: {', '.join(sorted(ignored)[:10])}{' ...' if len(ignored) > 10 else ''}")
        if nested:
            log(f"note: {len(nested)} videos in sub-folders get flat ids: "
                + ", ".join(f"{r} -> {v}" for r, v in nested[:10]) + (" ..." if len(nested) > 10 else ""))
        return out
    if p.suffix.lower() in VIDEO_EXTENSIONS or not _looks_like_text(p):
        if p.suffix.lower() not in VIDEO_EXTENSIONS:
            fail(f"--videos {spec}: neither a folder, a text list file nor a video ({' '.join(VIDEO_EXTENSIONS)})")
        return [(p.stem, str(p))]
    return parse_list_file(p)


def check_unique(inputs: list[tuple[str, str]], spec: str) -> None:
    """Two videos with one id would overwrite each other: refused before anything is written."""
    by_id: dict[str, list[str]] = {}
    for vid, path in inputs:
        by_id.setdefault(vid, []).append(path)
    dups = {vid: paths for vid, paths in by_id.items() if len(paths) > 1}
    if dups:
        listing = "; ".join(f"{vid}: {', '.join(paths)}" for vid, paths in sorted(dups.items())[:10])
        fail(f"--videos {spec}: {len(dups)} ids name more than one video ({listing}); nothing was written. "
             f"Give each video its own id in a list file of ID<TAB>PATH lines (docs/formats.md)")


def load_frames(path: str, fps: float, max_frames: int | None, warnings: list[str] | None = None) -> torch.Tensor:
    from hapvr.data.video import center_crop, decode_video, load_frame_folder

    frames = load_frame_folder(path) if os.path.isdir(path) else decode_video(path, fps, max_frames, warnings=warnings)
    return center_crop(frames)


def build_extractor(args):
    from hapvr.features.extractor import RegionFeatureExtractor

    if args.checkpoint:
        from hapvr.serialization import load_torch_file

        state = load_torch_file(args.checkpoint, "--checkpoint", allow_numpy=True)
        if not isinstance(state, dict) or "pca" not in state or "config" not in state:
            fail(f"--checkpoint {args.checkpoint}: not a hapvr training checkpoint (no PCA inside)")
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
        fail(f"--output {path} holds {have} features; this run would add {space} ones "
             f"({'drop --raw' if have == 'whitened' else 'add --raw'} or choose another --output)")
    if "backbone" in f.attrs and f.attrs["backbone"] != backbone:
        fail(f"--output {path} holds features of backbone {f.attrs['backbone']}, not {backbone}")


# --- crash-safe output ------------------------------------------------------------------------

class Parts:
    """Finished videos kept as one small HDF5 file each in a folder (``OUTPUT.parts/`` of
    extract, ``INDEX/staging/`` of a sharded index build), written to a temporary name, then
    renamed: a file there is always whole, until the run moves them into its output."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)

    def _name(self, vid: str) -> Path:
        return self.dir / (hashlib.sha1(vid.encode()).hexdigest()[:20] + ".h5")

    def done(self) -> dict[str, Path]:
        import h5py

        found = {}
        if not self.dir.is_dir():
            return found
        for p in sorted(self.dir.glob("*.h5")):
            try:
                with h5py.File(p, "r") as f:
                    found[str(f.attrs["id"])] = p
            except (OSError, KeyError):  # cannot happen through rename; a foreign file: not used
                print(f"warning: ignoring unreadable part {p}", file=sys.stderr)
        return found

    def write(self, vid: str, feats) -> None:
        import h5py

        self.dir.mkdir(parents=True, exist_ok=True)
        final = self._name(vid)
        tmp = final.with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["id"] = vid
            f.create_dataset("features", data=feats)
        os.replace(tmp, final)

    @staticmethod
    def read(path: Path):
        """The features of one part, as written."""
        import h5py

        with h5py.File(path, "r") as part:
            return part["features"][()]

    def merge_into(self, output: Path, attrs: dict, parts: dict[str, Path]) -> None:
        """All parts into ``output``: a new output is written whole and renamed into place; an
        existing one is extended (each dataset written, then the file flushed)."""
        import h5py

        if output.exists():
            with h5py.File(output, "a") as f:
                for key, value in attrs.items():
                    f.attrs[key] = value
                for vid, p in sorted(parts.items()):
                    if vid not in f:
                        f.create_dataset(vid, data=self.read(p))
                f.flush()
        else:
            tmp = output.with_name(output.name + ".tmp")
            with h5py.File(tmp, "w") as f:
                for key, value in attrs.items():
                    f.attrs[key] = value
                for vid, p in sorted(parts.items()):
                    f.create_dataset(vid, data=self.read(p))
            os.replace(tmp, output)
        self.clear(parts)

    def clear(self, parts: dict[str, Path]) -> None:
        """Deletes ``parts`` (moved into the output), the temporary files of killed writers, and the
        folder once nothing else is in it."""
        for p in parts.values():
            p.unlink()
        for leftover in self.dir.glob("*.tmp"):
            leftover.unlink()
        try:
            self.dir.rmdir()
        except OSError:
            pass


def existing_ids(out: Path, space: str, backbone: str) -> set[str]:
    import h5py

    if not out.exists():
        return set()
    try:
        with h5py.File(out, "r") as f:
            check_space(f, space, backbone, out)
            return set(f.keys())
    except OSError as exc:
        fail(f"--output {out}: exists but is not a readable HDF5 file ({exc}); move it away or choose another --output")


# --- main -------------------------------------------------------------------------------------

def _main(argv=None) -> int:
    args = parse_args(argv)
    from hapvr.data.video import VideoDecodeError
    from hapvr.precision import precision_dtype, resolve_device
    from hapvr.progress import progress

    def note(msg):
        print(msg, file=sys.stderr, flush=True)

    # every argument and path is checked before any work
    for arg, path in (("--checkpoint", args.checkpoint), ("--backbone-weights", args.backbone_weights)):
        if path:
            input_file(path, arg)
    out = output_file(args.output, "--output")
    inputs = list_inputs(args.videos, log=note)
    if not inputs:
        fail(f"--videos {args.videos}: no video found")
    check_unique(inputs, args.videos)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        fail(f"--device: {exc}")
    try:
        extractor = build_extractor(args).to(device)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    space = "raw" if args.raw else "whitened"
    in_output = existing_ids(out, space, extractor.backbone_name)
    parts = Parts(Path(str(out) + ".parts"))
    in_parts = parts.done()
    done = in_output | set(in_parts)
    todo = [(vid, path) for vid, path in inputs if vid not in done]
    note(f"{len(inputs)} videos, {len(inputs) - len(todo)} already extracted "
         f"({len(in_output & {v for v, _ in inputs})} in {out}, {len(set(in_parts) - in_output)} in {parts.dir} "
         f"from an interrupted run), {len(todo)} to extract")
    failures: list[tuple[str, str]] = []
    warned: list[tuple[str, str]] = []

    if args.fit_pca:
        pca_file = out.with_suffix(".pca.pt")
        if pca_file.exists():
            from hapvr.serialization import load_torch_file

            try:
                extractor.pca.load_state_dict(load_torch_file(pca_file, "PCA file"))
            except (ValueError, RuntimeError) as exc:
                fail(f"{exc} (delete {pca_file} to fit it again)")
        else:
            sample = []
            for vid, path in progress(inputs[: args.fit_pca], desc="PCA sample", unit="video", disable=args.no_progress):
                try:
                    sample.append(extractor.descriptors(load_frames(path, args.fps, args.max_frames).to(device)).cpu())
                except VideoDecodeError as exc:
                    failures.append((vid, str(exc)))
            if not sample:
                fail("no readable video to learn the PCA from")
            extractor.fit_pca(torch.cat(sample).to(device))
            tmp = pca_file.with_name(pca_file.name + ".tmp")
            torch.save({k: v.cpu() for k, v in extractor.pca.state_dict().items()}, tmp)
            os.replace(tmp, pca_file)
            note(f"PCA learned from {len(sample)} videos, saved to {pca_file}")

    base = extractor.descriptors if args.raw else extractor
    low = precision_dtype(args.precision)

    def encode(frames):
        with torch.autocast(device.type, dtype=low, enabled=args.precision != "fp32"):
            return base(frames.to(device)).float().cpu()

    failed_ids = {vid for vid, _ in failures}
    for vid, path in progress(todo, desc="extracting", unit="video", disable=args.no_progress):
        if vid in failed_ids:
            continue
        warnings: list[str] = []
        try:
            feats = encode(load_frames(path, args.fps, args.max_frames, warnings))
        except VideoDecodeError as exc:
            note(f"warning: skipping {vid}: {exc}")
            failures.append((vid, str(exc)))
            continue
        for w in warnings:
            note(f"warning: {vid}: {w}")
            warned.append((vid, w))
        parts.write(vid, feats.numpy())
    finished = parts.done()
    parts.merge_into(out, {"hapvr_space": space, "backbone": extractor.backbone_name}, finished)

    fail_file = Path(str(out) + ".failures.txt")
    if failures or warned:
        with open(fail_file, "w") as fh:  # this run's failures and warnings
            for vid, why in failures:
                fh.write(f"{vid}\tfailed\t{why}\n")
            for vid, why in warned:
                fh.write(f"{vid}\twarning\t{why}\n")
    elif fail_file.exists():
        fail_file.unlink()  # from an earlier run whose failures are now resolved or retried
    extracted = len(set(finished) - in_output)
    note(f"extracted {extracted}, already present {len(inputs) - len(todo)}, failed {len(failures)}, "
         f"with warnings {len(warned)}" + (f" (listed in {fail_file})" if failures or warned else ""))
    for vid, why in failures[:10]:
        note(f"  failed: {vid}: {why}")
    for vid, why in warned[:10]:
        note(f"  warning: {vid}: {why}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
