"""Extract region features of videos into an HDF5 file (one [T, 9, 512] dataset per video id).

--videos is a folder (searched recursively; a folder of images counts as one video), a text
list file, or a single video file. Formats (ids, list files, the HDF5 layout) are described in
docs/formats.md. Ids default to the file name without its extension (the FIVR / EVVE
convention); a video in a sub-folder gets its relative path with "__" for "/" as its id
(DIR/2019/beach.avi -> 2019__beach), so every id is flat. Two videos with the same id are
refused before anything is written: name them in a list file (ID<TAB>PATH lines).

Frames are sampled at --fps, the shorter side resized to 256 and centre-cropped to 224. The
backbone and the PCA whitening are the default model's (those of compare, index and search with
no --checkpoint), or come from a training checkpoint, or the PCA is learned here from the first
--fit-pca videos and saved beside the output. With --raw the features are the
backbone's L2-normalised region descriptors before PCA, [T, 9, D_in] (D_in = 1752 for
efficientnet_lite0, 3840 for resnet50): the input of python -m hapvr.pca. The file records which
(attribute hapvr_space: raw or whitened, and backbone); one file never mixes the two.

Nothing is lost: each finished video is kept in OUTPUT.parts/ (written atomically) until the
run ends, then the HDF5 file is written (a new file atomically, an existing one extended), so a
run that is killed resumes where it stopped. Videos that fail to decode, are truncated or are
skipped are named in warnings, in the summary and in OUTPUT.failures.txt.

With --insets, each video's inset views (the rectangles found inside its frames: a picture-in-
picture inset, the picture inside static borders, the halves of a two-up stack, each cropped and
resized to 224 x 224) are kept too, for python -m hapvr.compare --features --insets (docs/scores.md).
"""

from __future__ import annotations

from hapvr.cli import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    ArgumentParser,
    add_precision,
    check_device,
    fail,
    input_file,
    int_at_least,
    output_file,
    positive_float,
    run_main,
)
from hapvr.data.inputs import check_unique, list_inputs
from hapvr.features.backbones import BACKBONES
from hapvr.features.extraction import extract_to_hdf5
from hapvr.features.extractor import RegionFeatureExtractor
from hapvr.features.pca import PCAFileError
from hapvr.io.checkpoint import load_default_model, read_model_file
from hapvr.precision import resolve_precision
from hapvr.progress import note
from hapvr.runtime import default_threads, set_threads

EXAMPLES = """\
  python -m hapvr.extract --videos DIR --output features.hdf5      # the default model's features
  python -m hapvr.extract --videos DIR --output features.hdf5 --checkpoint runs/hapvr/checkpoint.pt
  python -m hapvr.extract --videos list.txt --output features.hdf5 --fit-pca 200
  python -m hapvr.extract --videos DIR --output raw.hdf5 --raw      # then: python -m hapvr.pca
  python -m hapvr.extract --videos DIR --output features.hdf5 --insets   # and views, for compare --insets
"""


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.extract", description=__doc__, examples=EXAMPLES)
    ap.add_argument("--videos", required=True,
                    help="a folder of videos (recursive), a list file of PATH or ID<TAB>PATH lines, or one video file")
    ap.add_argument("--output", required=True, help="HDF5 file to create or extend (its folder is created if missing)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="training checkpoint: its backbone and PCA whitening are used "
                                          "(none of these three: the default model's, as compare and search use)")
    src.add_argument("--fit-pca", type=int_at_least(1), metavar="N",
                     help="learn the PCA whitening from the first N videos (saved as OUTPUT with suffix .pca.pt)")
    src.add_argument("--raw", action="store_true",
                     help="write the descriptors before PCA [T, 9, D_in], for python -m hapvr.pca")
    ap.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES,
                    help="with --fit-pca or --raw: the frozen CNN")
    ap.add_argument("--backbone-weights", help="state_dict file of the backbone (needed for resnet50)")
    ap.add_argument("--fps", type=positive_float(), default=1.0, help="frames decoded per second of video")
    ap.add_argument("--insets", action="store_true",
                    help="also the features of the rectangles found inside each video's frames (picture-in-picture, "
                         "borders, two-up stacks), in group hapvr_views of the output, for compare --insets "
                         "--features (docs/formats.md); not with --raw")
    ap.add_argument("--max-frames", type=int_at_least(1), help="at most this many frames per video (default: all)")
    # fp32 by default: features are data that index build (backbone in fp32) and other runs must match
    add_precision(ap, "the backbone's autocast (features are stored as float32)", default="fp32")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    ap.add_argument("--no-progress", action="store_true", help="no progress display")
    return ap


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(default_threads())
    for arg, path in (("--checkpoint", args.checkpoint), ("--backbone-weights", args.backbone_weights)):
        if path:
            input_file(path, arg)
    if args.backbone != "efficientnet_lite0" and not (args.fit_pca or args.raw):
        fail(f"--backbone {args.backbone}: only with --fit-pca or --raw (a checkpoint or the default model brings "
             "its own backbone)")
    if args.insets and args.raw:
        fail("--insets: inset views are compared, not used to learn a PCA: not with --raw")
    out = output_file(args.output, "--output")
    inputs = list_inputs(args.videos, log=note)
    if not inputs:
        fail(f"--videos {args.videos}: no video found")
    check_unique(inputs, args.videos)
    device = check_device(args)
    if args.checkpoint:
        extractor = RegionFeatureExtractor.from_spec(read_model_file(args.checkpoint))
    elif not (args.fit_pca or args.raw):
        extractor = RegionFeatureExtractor.from_spec(load_default_model())
    else:
        extractor = RegionFeatureExtractor(args.backbone, args.backbone_weights, 512)
    try:
        report = extract_to_hdf5(extractor.to(device), inputs, out, args.fps, args.max_frames, raw=args.raw,
                                 precision=resolve_precision(args.precision, device), fit_pca_videos=args.fit_pca,
                                 progress=not args.no_progress, log=note, insets=args.insets)
    except PCAFileError as exc:
        fail(f"{exc} (delete {out.with_suffix('.pca.pt')} to fit it again)")
    listed = f" (listed in {report.failures_file})" if report.failures_file else ""
    note(f"extracted {report.extracted}, already present {report.already}, failed {len(report.failures)}, "
         f"with warnings {len(report.warnings)}{listed}")
    for vid, why in report.failures[:10]:
        note(f"  failed: {vid}: {why}")
    for vid, why in report.warnings[:10]:
        note(f"  warning: {vid}: {why}")
    if report.failures and not (report.extracted or report.already):
        fail(f"--videos {args.videos}: none of the {len(inputs)} videos could be used (listed in "
             f"{report.failures_file})")
    return EXIT_SOME_FAILED if report.failures else EXIT_OK


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
