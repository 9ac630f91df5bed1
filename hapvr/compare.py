"""Compare two videos: their similarity, the frame-similarity map and the copied segments.

A and B are video files (decoded at --fps), or ids in --features (an HDF5 feature file of
python -m hapvr.extract). Prints the similarity, whether it is above the model's "copy"
threshold (docs/scores.md), and the copied segments (query and target spans in seconds, best
first); --json writes them in a fixed layout (docs/formats.md), --plot draws the frame map with
the segments. Without --checkpoint the default model is used (python -m hapvr.default_model).
"""

from __future__ import annotations

import os
import sys

from hapvr.api import compare_videos, load_model
from hapvr.cli import (
    ArgumentParser,
    add_precision,
    check_device,
    fail,
    finite_float,
    input_file,
    output_file,
    positive_float,
    run_main,
)
from hapvr.data.video import VideoDecodeError
from hapvr.evaluation.feature_store import FeatureStore
from hapvr.io.files import write_json
from hapvr.runtime import default_threads, set_threads

EXAMPLES = """\
  python -m hapvr.compare original.mp4 suspect.mp4
  python -m hapvr.compare original.mp4 suspect.mp4 --json result.json --plot result.png
  python -m hapvr.compare clip_a clip_b --features features.hdf5 --checkpoint runs/hapvr/checkpoint.pt
"""


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.compare", description=__doc__, examples=EXAMPLES)
    ap.add_argument("query", help="query video file (or id with --features)")
    ap.add_argument("target", help="target video file (or id with --features)")
    ap.add_argument("--checkpoint", help="training checkpoint of python -m hapvr.train (default: the default model)")
    ap.add_argument("--baseline", action="store_true",
                    help="the features-only Chamfer baseline over the checkpoint's features")
    ap.add_argument("--features", help="HDF5 feature file: QUERY and TARGET are ids in it")
    ap.add_argument("--json", help="write the result here (fixed layout, docs/formats.md)")
    ap.add_argument("--plot", help="write the frame map with the copied segments here (PNG)")
    ap.add_argument("--symmetric", action="store_true", help="similarity as the mean of both directions")
    ap.add_argument("--threshold", type=finite_float(), help="similarity above which the pair is called a copy "
                                                    "(default: the model's calibrated threshold, docs/scores.md)")
    ap.add_argument("--fps", type=positive_float(), default=1.0, help="frames per second decoded from video files")
    ap.add_argument("--insets", action="store_true",
                    help="also compare the rectangles found inside the frames (picture-in-picture, borders, two-up "
                         "stacks; with --features, those python -m hapvr.extract --insets stored): the best pair is "
                         "reported with its rectangles (docs/scores.md)")
    ap.add_argument("--mirror", action="store_true",
                    help="also compare QUERY mirrored left-right (video files only; reported as its view \"mirrored\")")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    add_precision(ap)
    return ap


def _inputs(args, model):
    if args.features:
        store = FeatureStore(args.features)
        for arg, vid in (("QUERY", args.query), ("TARGET", args.target)):
            if vid not in store:
                fail(f"{arg} {vid!r}: no such id in --features {args.features}")
        if not args.insets:
            return store.load(args.query), store.load(args.target)
        out = []
        for arg, vid in (("QUERY", args.query), ("TARGET", args.target)):
            views = store.views(vid)
            if views is None:
                fail(f"--insets: {arg} {vid!r} has no inset views in --features {args.features} (extract it with "
                     "python -m hapvr.extract --insets)")
            out.append([(None, store.load(vid))] + views)
        return out
    out = []
    for arg, path in (("QUERY", args.query), ("TARGET", args.target)):
        try:
            out.append(model.features(path))
        except VideoDecodeError as exc:
            fail(f"{arg} {exc}")
    return out


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_device(args)
    set_threads(default_threads())
    if args.checkpoint:
        input_file(args.checkpoint, "--checkpoint")
    if args.features:
        input_file(args.features, "--features")
    if args.mirror and args.features:
        fail("--mirror needs the videos' frames (video files or folders of frames), not --features")
    for arg, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            output_file(path, arg)
    if not args.features:  # video files (or folders of frames), checked before the model loads
        for arg, path in (("QUERY", args.query), ("TARGET", args.target)):
            if not os.path.isdir(path):
                input_file(path, arg)
    try:
        model = load_model(args.checkpoint, baseline=args.baseline, device=args.device, fps=args.fps,
                           precision=args.precision)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    fa, fb = _inputs(args, model)
    try:
        if (args.insets or args.mirror) and not args.features:  # the views come from the files' frames
            result = compare_videos(args.query, args.target, model, symmetric=args.symmetric,
                                    names=(args.query, args.target), insets=args.insets, mirror=args.mirror)
        elif args.insets:  # ... or from --features (extract --insets)
            result = compare_videos(fa, fb, model, symmetric=args.symmetric, names=(args.query, args.target),
                                    insets=True)
        else:
            result = compare_videos(fa, fb, model, symmetric=args.symmetric, names=(args.query, args.target))
    except (ValueError, VideoDecodeError) as exc:
        fail(str(exc))
    threshold = args.threshold if args.threshold is not None else \
        model.scale.symmetric_threshold if args.symmetric else model.scale.threshold
    verdict = "copy" if result.similarity >= threshold else "not a copy"
    print(f"model: {model.name}")
    print(f"similarity {result.similarity:.4f} ({'symmetric' if args.symmetric else 'query -> target'}; "
          f"range [{model.scale.low:g}, {model.scale.high:g}], copy threshold {threshold:g}): {verdict}")
    for name, view in (("query", result.query_view), ("target", result.target_view)):
        if view is not None and view.kind == "mirrored":
            print(f"compared the {name} mirrored left-right")
        elif view is not None:
            print(f"compared inside the {name}'s {view.kind} rectangle: top {view.top}, left {view.left}, "
                  f"{view.height} x {view.width} pixels (of the frames as decoded, shorter side 256)")
    if result.segments:
        print(f"{len(result.segments)} copied segment(s), seconds:")
        print(f"  {'query start':>11} {'query end':>9} {'target start':>12} {'target end':>10} {'score':>6}")
        for s in result.segments:
            print(f"  {s.query_start:>11.1f} {s.query_end:>9.1f} {s.target_start:>12.1f} {s.target_end:>10.1f} "
                  f"{s.score:>6.3f}" + ("  (played backwards)" if s.reversed else ""))
    else:
        print(f"no copied segment: {result.reason}")
    if args.json:
        write_json(args.json, result.to_dict())
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        result.plot(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
