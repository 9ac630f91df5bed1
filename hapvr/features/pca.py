"""PCA whitening of region descriptors (SPEC section 1): the module, its file, and learning it
from a file of descriptors too large to hold.

The predecessors' PCA file is gone, so hapvr fits ``mean`` and the whitening projection on a
sample of region vectors and stores them as buffers with the model. A **PCA file** holds
``{"format": "hapvr-pca-1", "pca": state, "in_dim", "out_dim", "backbone", ...}``; both
``python -m hapvr.pca`` and ``python -m hapvr.extract --fit-pca`` write it, and
:func:`read_pca_file` also reads the bare state dict that ``extract --fit-pca`` wrote before
(docs/compatibility.md). :func:`learn_pca` accumulates the mean and covariance video by video in
float64 over a random sample of frames of an HDF5 file of raw descriptors.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hapvr.errors import InputError
from hapvr.io.serialization import load_torch_file
from hapvr.progress import progress as progress_bar

PCA_FORMAT = "hapvr-pca-1"
REGIONS = 9


def _forget_fitted(module, incompatible_keys) -> None:
    """After a state is loaded, ``fitted`` is read again on the next call (module level: picklable)."""
    module._seen_fitted = False


class PCAWhitening(nn.Module):
    """``x -> normalize(((x - mean) @ V[:, :d]) / sqrt(eig[:d] + eps))``.

    Args:
        in_dim: descriptor size before PCA; out_dim: size after (512 in the paper).
        eps: regulariser of small eigenvalues, relative to the largest one.
    """

    def __init__(self, in_dim: int, out_dim: int = 512, eps: float = 1e-5):
        super().__init__()
        if out_dim > in_dim:
            raise ValueError(f"PCA cannot map {in_dim} dims to {out_dim}")
        self.in_dim, self.out_dim, self.eps = in_dim, out_dim, eps
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("projection", torch.eye(in_dim)[:, :out_dim].clone())
        self.register_buffer("fitted", torch.tensor(False))
        # ``fitted`` as last read on the host: it is read once (a device wait on a GPU), not per call;
        # loading a state forgets it.
        self._seen_fitted = False
        self.register_load_state_dict_post_hook(_forget_fitted)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "PCAWhitening":
        """Fit on region vectors ``[N, in_dim]`` (N should be well above ``out_dim``)."""
        x = x.reshape(-1, self.in_dim).double()
        if x.shape[0] < 2:
            raise ValueError("PCA needs at least 2 region vectors")
        mean = x.mean(0)
        xc = x - mean
        return self.fit_moments(mean, xc.T @ xc / (x.shape[0] - 1))

    @torch.no_grad()
    def fit_moments(self, mean: torch.Tensor, cov: torch.Tensor) -> "PCAWhitening":
        """Fit from the mean ``[in_dim]`` and covariance ``[in_dim, in_dim]`` of the region vectors."""
        if tuple(mean.shape) != (self.in_dim,) or tuple(cov.shape) != (self.in_dim, self.in_dim):
            raise ValueError(f"mean must be [{self.in_dim}] and cov [{self.in_dim}, {self.in_dim}], "
                             f"got {tuple(mean.shape)} and {tuple(cov.shape)}")
        mean, cov = mean.double(), cov.double()
        eig, vec = torch.linalg.eigh(cov)  # ascending
        eig, vec = eig.flip(0)[: self.out_dim], vec.flip(1)[:, : self.out_dim]
        eig = eig.clamp(min=0) + self.eps * float(eig[0])
        self.mean.copy_(mean.float())
        self.projection.copy_((vec / eig.sqrt()).float())
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self, "_seen_fitted", False):  # (a module pickled by an older version has none)
            self._seen_fitted = bool(self.fitted)
        if not self._seen_fitted:
            raise RuntimeError("PCAWhitening is not fitted: call fit() on a sample of region vectors first")
        return F.normalize((x - self.mean) @ self.projection, dim=-1)


# --- the PCA file ------------------------------------------------------------------------------

class PCAFileError(InputError):
    """A PCA or raw-feature file that cannot be used; the message names the file and what to do."""


def pca_file_content(pca: PCAWhitening, backbone: str | None, **provenance) -> dict:
    """What a PCA file holds: the whitening, its sizes and backbone, and where it was learned."""
    return dict(format=PCA_FORMAT, pca={k: v.detach().cpu() for k, v in pca.state_dict().items()},
                in_dim=pca.in_dim, out_dim=pca.out_dim, backbone=None if backbone is None else str(backbone),
                **provenance)


def read_pca_file(path: str, in_dim: int, out_dim: int, backbone: str | None = None) -> dict:
    """The whitening state of a PCA file, checked against the extractor's sizes and backbone.
    Reads the bare state dicts of files written before the format (docs/compatibility.md)."""
    if not os.path.isfile(path):
        raise PCAFileError(f"{path}: no such file (make one with python -m hapvr.pca)", "pca")
    try:
        content = load_torch_file(path, "PCA file")
    except ValueError:  # not a torch file at all, or one holding code
        raise PCAFileError(f"{path}: not a PCA file; make one with python -m hapvr.pca", "pca") from None
    if isinstance(content, dict) and content.get("format") == PCA_FORMAT:
        state, file_backbone = content["pca"], content.get("backbone")
    elif isinstance(content, dict) and {"mean", "projection"} <= set(content):
        state, file_backbone = content, None
    else:
        raise PCAFileError(f"{path}: not a PCA file; make one with python -m hapvr.pca", "pca")
    shape = tuple(state["projection"].shape)
    if shape != (in_dim, out_dim):
        raise PCAFileError(f"{path} maps {shape[0]} to {shape[1]} dims; this run needs {in_dim} to {out_dim} "
                           f"(--backbone and --pca-dim must match the file)", "pca")
    if backbone is not None and file_backbone is not None and file_backbone != backbone:
        raise PCAFileError(f"{path} was learned on {file_backbone} descriptors, this run uses --backbone {backbone}",
                           "pca")
    return state


# --- learning it from an HDF5 file of raw descriptors --------------------------------------------

def raw_datasets(f, path: str) -> tuple[list[tuple[str, int]], int]:
    """``(name, frames)`` of every dataset of an open HDF5 file (nested ids included) and the
    descriptor size ``D_in``."""
    import h5py

    found: list[tuple[str, int]] = []
    dims: set[int] = set()

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.ndim != 3 or obj.shape[1] != REGIONS:
            raise PCAFileError(f"{path}: dataset {name!r} has shape {obj.shape}, expected "
                               f"[T, {REGIONS}, D_in] region descriptors (python -m hapvr.extract --raw)", "features")
        dims.add(int(obj.shape[2]))
        found.append((name, int(obj.shape[0])))

    f.visititems(visit)
    if not found:
        raise PCAFileError(f"{path}: no [T, {REGIONS}, D_in] dataset inside", "features")
    if len(dims) > 1:
        raise PCAFileError(f"{path}: datasets of different descriptor sizes {sorted(dims)}; "
                           f"one file must hold one backbone's descriptors", "features")
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


def _open_raw(path: str):
    import h5py

    if not os.path.isfile(path):
        raise PCAFileError(f"{path}: no such file", "features")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise PCAFileError(f"{path}: not a readable HDF5 file ({exc})", "features") from None
    if f.attrs.get("hapvr_space") == "whitened":
        f.close()
        raise PCAFileError(f"{path} holds whitened features; the PCA is learned from the "
                           f"descriptors before it: python -m hapvr.extract --raw ...", "features")
    return f


def _accumulate(f, path: str, videos, picks, in_dim: int, progress: bool) -> Moments:
    moments = Moments(in_dim)
    with progress_bar(total=sum(len(p) for p in picks), desc="PCA sample", unit="frame", disable=not progress) as bar:
        for (name, _), idx in zip(videos, picks):
            if len(idx):
                ds = f[name]
                x = ds[()] if len(idx) == ds.shape[0] else ds[idx.numpy()]
                x = torch.from_numpy(np.asarray(x, dtype=np.float32))
                if not torch.isfinite(x).all():
                    raise PCAFileError(f"{path}: dataset {name!r} holds NaN or infinite values", "features")
                moments.add(x.reshape(-1, in_dim))
                bar.update(len(idx))
    return moments


def learn_pca(path: str, dim: int = 512, max_frames: int = 20000, seed: int = 0, progress: bool = True,
              log=print) -> dict:
    """The PCA file's content learned from the HDF5 file of raw descriptors at ``path``: a random
    sample of at most ``max_frames`` frames (all 9 regions of each) over the whole file."""
    with _open_raw(path) as f:
        backbone = f.attrs.get("backbone")
        videos, in_dim = raw_datasets(f, path)
        if dim > in_dim:
            raise PCAFileError(f"{dim} is larger than the descriptors of {path} ({in_dim} dims)", "dim")
        picks = sample_frames([n for _, n in videos], max_frames, seed)
        n_frames = sum(len(p) for p in picks)
        if n_frames * REGIONS < 2:
            raise PCAFileError(f"{path}: {n_frames} frames in all, too few for a PCA", "features")
        moments = _accumulate(f, path, videos, picks, in_dim, progress)
    mean, cov = moments.mean_cov()
    if moments.n < 10 * dim:
        log(f"note: {moments.n} region vectors for {dim} output dimensions; the smallest eigenvalues are "
            f"poorly estimated (raise --max-frames or add videos)")
    pca = PCAWhitening(in_dim, dim).fit_moments(mean, cov)
    return pca_file_content(pca, backbone, frames=n_frames, vectors=moments.n,
                            videos=sum(1 for p in picks if len(p)), source=os.path.abspath(path))
