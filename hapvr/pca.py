"""Learn the PCA whitening of region features from your own videos.

The paper's whitening was learned on about a million region vectors and its file is gone, so
hapvr learns its own. The input is an HDF5 file of per-video datasets ``[T, 9, D_in]`` holding
the backbone's region descriptors *before* PCA (L2-normalised, D_in = 1752 for
efficientnet_lite0, 3840 for resnet50), as ``python -m hapvr.extract --raw`` writes them; files
of whitened features (extract without --raw) are refused. A random sample of at most
--max-frames frames (all 9 regions of each) is drawn over the whole file; the mean and covariance
are accumulated video by video in float64, so the file never has to fit in memory. The output
holds the whitening (mean and projection) with its input size, output size and backbone
(hapvr/features/pca.py); ``python -m hapvr.train --pca FILE`` uses it instead of fitting on the
training pool.
"""

from __future__ import annotations

from hapvr.cli import ArgumentParser, input_file, int_at_least, output_file, run_main
from hapvr.features.pca import learn_pca
from hapvr.io.files import save_torch
from hapvr.progress import note

EXAMPLES = """\
  python -m hapvr.extract --videos DIR --output raw.hdf5 --raw
  python -m hapvr.pca --features raw.hdf5 --output pca.pt --dim 512 --max-frames 20000
  python -m hapvr.train --data DIR --pca pca.pt
"""


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m hapvr.pca", description=__doc__, examples=EXAMPLES)
    ap.add_argument("--features", required=True,
                    help="HDF5 file of [T, 9, D_in] region descriptors before PCA (python -m hapvr.extract --raw)")
    ap.add_argument("--output", required=True, help="where to write the PCA (a .pt file for hapvr.train --pca)")
    ap.add_argument("--dim", type=int_at_least(1), default=512,
                    help="output dimensions (the paper: 512; the model's --pca-dim)")
    ap.add_argument("--max-frames", type=int_at_least(1), default=20000,
                    help="at most this many frames, drawn at random over the file (9 region vectors each)")
    ap.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the random frame sample")
    ap.add_argument("--no-progress", action="store_true", help="no progress display")
    return ap


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    input_file(args.features, "--features")
    output_file(args.output, "--output")
    content = learn_pca(args.features, args.dim, args.max_frames, args.seed, progress=not args.no_progress, log=note)
    save_torch(content, args.output)
    note(f"PCA {content['in_dim']} -> {content['out_dim']} dims learned from {content['frames']} frames "
         f"({content['vectors']} region vectors) of {content['videos']} videos; saved to {args.output}")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
