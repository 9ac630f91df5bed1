"""Frames per second of the frozen backbone: PyTorch eager against ONNX Runtime, side by side.

    python -m benchmarks.bench_backbone                      # 64 frames at 224 px, batches of 16, all cores
    python -m benchmarks.bench_backbone --frames 128 --threads 1

Both runtimes run :meth:`hapvr.features.RegionFeatureExtractor.descriptors` (backbone + 3x3
region pooling) on the same random frames, alternately, ``--repeats`` times each; the medians
and their ratio are printed and appended with the date, machine, load and command to ``--json``
(``benchmarks/results/backbone.json``), with the largest descriptor difference.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _main(argv=None) -> int:
    import torch

    from hapvr import cli
    from hapvr.features import RegionFeatureExtractor

    ap = cli.ArgumentParser(prog="python -m benchmarks.bench_backbone", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=cli.int_at_least(1), default=64, help="random frames per measurement")
    ap.add_argument("--size", type=cli.int_at_least(32), default=224, help="frame side in pixels")
    ap.add_argument("--threads", type=cli.int_at_least(0), default=0, help="torch and ONNX Runtime threads (0 = all cores)")
    ap.add_argument("--repeats", type=cli.int_at_least(1), default=5, help="timed runs of each runtime")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "backbone.json"),
                    help="results history (a JSON list) the record is appended to")
    args = ap.parse_args(argv)
    cli.output_file(args.json, "--json")
    history = []
    if os.path.isfile(args.json):
        try:
            history = json.load(open(args.json))
        except (OSError, ValueError) as exc:
            raise cli.UserError(f"--json {args.json}: not a readable JSON file ({exc})") from None
        if not isinstance(history, list):
            raise cli.UserError(f"--json {args.json}: expected a JSON list of earlier records")
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = torch.rand(args.frames, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 255
    runs = {}
    for runtime in ("torch", "onnxruntime"):
        ext = RegionFeatureExtractor("efficientnet_lite0")
        ext.runtime = "torch" if runtime == "torch" else "auto"
        if runtime == "onnxruntime" and ext._onnx_session() is None:
            print("onnxruntime is not available here", file=sys.stderr)
            return 1
        runs[runtime] = ext
    out = {k: ext.descriptors(frames) for k, ext in runs.items()}  # warm-up (and the one-off export)
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, ext in runs.items():
            t0 = time.perf_counter()
            ext.descriptors(frames)
            times[k].append(time.perf_counter() - t0)
    fps = {k: args.frames / statistics.median(v) for k, v in times.items()}
    diff = float((out["torch"] - out["onnxruntime"]).abs().max())
    print(f"{'runtime':<14}{'frames/s':>10}")
    for k, v in fps.items():
        print(f"{k:<14}{v:>10.1f}")
    print(f"ONNX Runtime / PyTorch: {fps['onnxruntime'] / fps['torch']:.2f}x; largest descriptor difference {diff:.1e}")
    record = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), machine=platform.processor() or platform.machine(),
                  cores=os.cpu_count(), threads=torch.get_num_threads(), load=os.getloadavg(),
                  command="python -m benchmarks.bench_backbone " + " ".join(argv if argv is not None else sys.argv[1:]),
                  frames=args.frames, size=args.size, fps={k: round(v, 1) for k, v in fps.items()},
                  ratio=round(fps["onnxruntime"] / fps["torch"], 2), max_difference=diff)
    history.append(record)
    with open(args.json, "w") as f:
        json.dump(history, f, indent=1)
    return 0


def main(argv=None) -> int:
    from hapvr.cli import run_main

    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
