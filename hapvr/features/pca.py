"""PCA whitening of region descriptors (SPEC section 1), learned from the user's own frames.

The predecessors' PCA file is gone, so hapvr fits ``mean``, eigenvalues and eigenvectors on a
sample of region vectors and stores them as buffers with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        """Fit from the mean ``[in_dim]`` and covariance ``[in_dim, in_dim]`` of the region vectors
        (what ``python -m hapvr.pca`` accumulates over a file too large to hold)."""
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
        if not bool(self.fitted):
            raise RuntimeError("PCAWhitening is not fitted: call fit() on a sample of region vectors first")
        return F.normalize((x - self.mean) @ self.projection, dim=-1)
