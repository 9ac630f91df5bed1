"""Learn the PCA whitening of region features from your own videos.

The paper's whitening was learned on about a million region vectors and its file is gone, so
hapvr learns its own. The input is an HDF5 file of per-video datasets ``[T, 9, D_in]`` holding
the backbone's region descriptors *before* PCA (L2-normalised, D_in = 1752 for
efficientnet_lite0, 3840 for resnet50), as ``python -m hapvr.extract --raw`` writes them; files
of whitened features (extract without --raw) are refused. A random sample of at most
--max-frames frames (all 9 regions of each) is drawn over the whole file; the mean and covariance
are accumulated video by video in float64, so the file never has to fit in memory. The output
holds the whitening (mean and projection) with its input size, output size and backbone;
``python -m hapvr.train --pca FILE`` uses it instead of fitting on the training pool.
"""

from __future__ import annotations

import os
import sys

import torch

FORMAT = "hapvr-pca-1"
REGIONS = 9


class PCAFileError(Exception):
    """A PCA or feature file that cannot be used; the message names the file and what to do."""


EXAMPLES = """\
  python -m hapvr.extract --videos DIR --output raw.hdf5 --raw
  python -m hapvr.pca --features raw.hdf5 --output pca.pt --dim 512 --max-frames 20000
  python -m hapvr.train --data DIR --pca pca.pt
"""


def parse_args(argv=None):
    from hapvr.cli import ArgumentParser, int_at_least

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
    return ap.parse_args(argv)


def list_videos(f, path: str) -> tuple[list[tuple[str, int]], int]:
    """``(name, frames)`` of every dataset (nested ids included) and the descriptor size ``D_in``."""
    import h5py

    found: list[tuple[str, int]] = []
    dims: set[int] = set()

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.ndim != 3 or obj.shape[1] != REGIONS:
            raise PCAFileError(f"--features {path}: dataset {name!r} has shape {obj.shape}, expected "
                               f"[T, {REGIONS}, D_in] region descriptors (python -m hapvr.extract --raw)")
        dims.add(int(obj.shape[2]))
        found.append((name, int(obj.shape[0])))

    f.visititems(visit)
    if not found:
        raise PCAFileError(f"--features {path}: no [T, {REGIONS}, D_in] dataset inside")
    if len(dims) > 1:
        raise PCAFileError(f"--features {path}: datasets of different descriptor sizes {sorted(dims)}; "
                           f"one file must hold one backbone's descriptors")
    return found, dims.pop()


def sample_frames(lengths: list[int], max_frames: int, seed: int) -> list[torch.Tensor]:
    """Per video, the sorted frame indices of a uniform random sample of ``max_frames`` frames
    over all videos (every frame when there are fewer)."""
    total = sum(lengths)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=g)[:max_frames].sort().values if total > max_frames else torch.arange(total)
    starts = torch.tensor([0] + lengths).cumsum(0)
    video = torch.bucketize(chosen, starts[1:], right=True)  # video of each chosen frame (sorted)
    counts = torch.bincount(video, minlength=len(lengths)).tolist()
    return list(torch.split(chosen - starts[video], counts))


class Moments:
    """Running mean and covariance in float64, shifted by the first chunk's mean for accuracy.
    Rows are buffered into chunks of ``chunk`` vectors: a large file has many videos with a frame
    or two sampled each, and one ``D x D`` product per video would be slow."""

    def __init__(self, dim: int, chunk: int = 4096):
        self.n, self.chunk = 0, chunk
        self.shift: torch.Tensor | None = None
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0

    def add(self, x: torch.Tensor) -> None:
        self.pending.append(x)
        self.n_pending += x.shape[0]
        if self.n_pending >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        x = torch.cat(self.pending).double()
        self.pending, self.n_pending = [], 0
        if self.shift is None:
            self.shift = x.mean(0)
        x = x - self.shift
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.flush()
        d = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(d, d)) / (self.n - 1)
        return self.shift + d, cov


def learn_pca(path: str, dim: int = 512, max_frames: int = 20000, seed: int = 0, progress: bool = True) -> dict:
    """The PCA file's content (see the module docstring) learned from ``path``."""
    import h5py
    import numpy as np

    from hapvr.features.pca import PCAWhitening
    from hapvr.progress import progress as progress_bar

    if not os.path.isfile(path):
        raise PCAFileError(f"--features {path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise PCAFileError(f"--features {path}: not a readable HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("hapvr_space") == "whitened":
            raise PCAFileError(f"--features {path} holds whitened features; the PCA is learned from the "
                               f"descriptors before it: python -m hapvr.extract --raw ...")
        backbone = f.attrs.get("backbone")
        videos, in_dim = list_videos(f, path)
        if dim > in_dim:
            raise PCAFileError(f"--dim {dim} is larger than the descriptors of {path} ({in_dim} dims)")
        picks = sample_frames([n for _, n in videos], max_frames, seed)
        n_frames = sum(len(p) for p in picks)
        if n_frames * REGIONS < 2:
            raise PCAFileError(f"--features {path}: {n_frames} frames in all, too few for a PCA")
        moments = Moments(in_dim)
        with progress_bar(total=n_frames, desc="PCA sample", unit="frame", disable=not progress) as bar:
            for (name, _), idx in zip(videos, picks):
                if len(idx):
                    ds = f[name]
                    x = ds[()] if len(idx) == ds.shape[0] else ds[idx.numpy()]
                    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
                    if not torch.isfinite(x).all():
                        raise PCAFileError(f"--features {path}: dataset {name!r} holds NaN or infinite values")
                    moments.add(x.reshape(-1, in_dim))
                    bar.update(len(idx))
    mean, cov = moments.mean_cov()
    if moments.n < 10 * dim:
        print(f"note: {moments.n} region vectors for {dim} output dimensions; the smallest eigenvalues are "
              f"poorly estimated (raise --max-frames or add videos)", file=sys.stderr)
    pca = PCAWhitening(in_dim, dim).fit_moments(mean, cov)
    return dict(format=FORMAT, pca=pca.state_dict(), in_dim=in_dim, out_dim=dim,
                backbone=None if backbone is None else str(backbone), frames=n_frames, vectors=moments.n,
                videos=sum(1 for p in picks if len(p)), source=os.path.abspath(path))


def load_pca(path: str, in_dim: int, out_dim: int, backbone: str | None = None) -> dict:
    """The whitening state of a PCA file (``hapvr.pca``'s, or the ``.pca.pt`` of ``hapvr.extract
    --fit-pca``), checked against the extractor's sizes and backbone."""
    if not os.path.isfile(path):
        raise PCAFileError(f"{path}: no such file (make one with python -m hapvr.pca)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file at all
        raise PCAFileError(f"{path}: not a PCA file ({type(exc).__name__}); make one with python -m hapvr.pca") from None
    if isinstance(content, dict) and content.get("format") == FORMAT:
        state, file_backbone = content["pca"], content.get("backbone")
    elif isinstance(content, dict) and {"mean", "projection"} <= set(content):
        state, file_backbone = content, None
    else:
        raise PCAFileError(f"{path}: not a PCA file; make one with python -m hapvr.pca")
    shape = tuple(state["projection"].shape)
    if shape != (in_dim, out_dim):
        raise PCAFileError(f"{path} maps {shape[0]} to {shape[1]} dims; this run needs {in_dim} to {out_dim} "
                           f"(--backbone and --pca-dim must match the file)")
    if backbone is not None and file_backbone is not None and file_backbone != backbone:
        raise PCAFileError(f"{path} was learned on {file_backbone} descriptors, this run uses --backbone {backbone}")
    return state


def _main(argv=None) -> int:
    from hapvr.cli import UserError, input_file, output_file

    args = parse_args(argv)
    input_file(args.features, "--features")
    output_file(args.output, "--output")
    try:
        content = learn_pca(args.features, args.dim, args.max_frames, args.seed, progress=not args.no_progress)
    except PCAFileError as exc:
        raise UserError(str(exc)) from None
    from hapvr.training.pool import atomic_save

    atomic_save(content, args.output)
    print(f"PCA {content['in_dim']} -> {content['out_dim']} dims learned from {content['frames']} frames "
          f"({content['vectors']} region vectors) of {content['videos']} videos; saved to {args.output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    from hapvr.cli import run_main

    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
