"""The product quantiser behind an index's storage ``pq`` (:class:`~hapvr.retrieval.index_store.IndexStore`;
``float16`` and ``int8`` are coded there directly).

- ``pq``: a product quantiser with an optional rotation (OPQ): the vector rotated to ``D'``
  dimensions, cut into ``M`` sub-vectors of ``D' / M`` dimensions, each stored as the byte of its
  nearest of 256 centroids (``M`` bytes a region vector; a video's codes ``[T, R, M]``). The
  codebook (:class:`ProductQuantizer`) is trained on a sample of the collection's region vectors
  and kept in the index folder (``codebook.npz``, CRC in the manifest).

Reading decodes to float32 ``[T, R, D]``: the scorer then compares the query's exact features
with the stored ones reconstructed (asymmetric scoring: for an inner product it is the sum over
sub-vectors of a query-to-centroid lookup, computed here as one GEMM on the reconstruction).
What each costs in retrieval quality is measured by ``benchmarks/bench_compression.py``
(docs/scale.md).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hapvr.io.files import atomic_path

CENTROIDS = 256  # per sub-quantiser: one byte a code


@dataclass
class ProductQuantizer:
    """``rotation [D, D']`` (orthonormal columns; None: the identity, plain PQ) and ``centroids
    [M, 256, D' / M]``: a vector ``x`` is coded from ``x @ rotation``, decoded as the centroids'
    concatenation ``@ rotation.T``."""

    centroids: np.ndarray
    rotation: np.ndarray | None = None

    def __post_init__(self):
        c = np.ascontiguousarray(self.centroids, dtype=np.float32)
        if c.ndim != 3 or c.shape[1] != CENTROIDS or c.shape[0] < 1 or c.shape[2] < 1:
            raise ValueError(f"a product quantiser's centroids must be [M, {CENTROIDS}, d], got {list(c.shape)}")
        if not np.isfinite(c).all():
            raise ValueError("a product quantiser's centroids hold NaN or infinite values")
        self.centroids = c
        if self.rotation is not None:
            r = np.ascontiguousarray(self.rotation, dtype=np.float32)
            if r.ndim != 2 or r.shape[1] != self.rotated_dim or r.shape[0] < r.shape[1]:
                raise ValueError(f"a product quantiser's rotation must be [D >= {self.rotated_dim}, "
                                 f"{self.rotated_dim}], got {list(r.shape)}")
            if not np.isfinite(r).all():
                raise ValueError("a product quantiser's rotation holds NaN or infinite values")
            self.rotation = r
        self._c = torch.from_numpy(self.centroids)
        self._r = None if self.rotation is None else torch.from_numpy(self.rotation)

    @property
    def m(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def rotated_dim(self) -> int:
        return int(self.centroids.shape[0] * self.centroids.shape[2])

    @property
    def dim(self) -> int:
        """D: the dimension of the vectors it codes."""
        return self.rotated_dim if self.rotation is None else int(self.rotation.shape[0])

    @property
    def name(self) -> str:
        return ("opq" if self.rotation is not None else "pq") + f"{self.m}" + \
            (f"x{self.rotated_dim}" if self.rotation is not None and self.rotated_dim != self.dim else "")

    def encode(self, x: torch.Tensor, block: int = 65536) -> torch.Tensor:
        """uint8 codes ``[..., M]`` of float vectors ``[..., D]``: the nearest centroid (L2) per sub-vector."""
        flat = x.reshape(-1, x.shape[-1]).float()
        out = torch.empty(flat.shape[0], self.m, dtype=torch.uint8)
        sq = (self._c * self._c).sum(-1)  # [M, 256]
        for a in range(0, flat.shape[0], block):
            y = flat[a: a + block]
            y = (y @ self._r if self._r is not None else y).reshape(-1, self.m, self.centroids.shape[2])
            # ||y - c||^2 = ||y||^2 - 2 y.c + ||c||^2; the first term does not change the argmin
            dots = torch.bmm(y.transpose(0, 1), self._c.transpose(1, 2))  # [M, n, 256]
            out[a: a + block] = (sq[:, None, :] - 2 * dots).argmin(-1).T.to(torch.uint8)
        return out.reshape(*x.shape[:-1], self.m)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """float32 vectors ``[..., D]`` of codes ``[..., M]``."""
        flat = codes.reshape(-1, self.m).long()
        y = self._c[torch.arange(self.m)[None, :], flat].reshape(flat.shape[0], self.rotated_dim)
        if self._r is not None:
            y = y @ self._r.T
        return y.reshape(*codes.shape[:-1], self.dim)

    # --- training and files ---------------------------------------------------------------------

    @classmethod
    def train(cls, vectors: np.ndarray, m: int, rotate: bool = True, dims: int | None = None,
              seed: int = 0, iterations: int = 50) -> "ProductQuantizer":
        """Trained with faiss on ``vectors [N, D]`` (N >= 256; tens of thousands for a good
        codebook): OPQ's rotation to ``dims`` (default D; ``iterations`` alternations of rotation
        and codebook, faiss's default 50) when ``rotate``, then the PQ."""
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] < CENTROIDS:
            raise ValueError(f"training a product quantiser needs [N >= {CENTROIDS}, D] vectors, got {list(x.shape)}")
        d_out = dims or x.shape[1]
        if d_out % m or d_out > x.shape[1]:
            raise ValueError(f"{m} sub-vectors must divide the {d_out} dimensions coded (at most D = {x.shape[1]})")
        rotation = None
        if rotate:
            opq = faiss.OPQMatrix(x.shape[1], m, d_out)
            opq.verbose, opq.niter = False, iterations
            opq.train(x)
            rotation = faiss.vector_to_array(opq.A).reshape(d_out, x.shape[1]).T  # y = x @ A.T
            x = x @ rotation
        elif d_out != x.shape[1]:
            raise ValueError("fewer dimensions need the rotation (rotate=True)")
        pq = faiss.ProductQuantizer(d_out, m, 8)
        pq.cp.seed = seed
        pq.train(np.ascontiguousarray(x))
        return cls(faiss.vector_to_array(pq.centroids).reshape(m, CENTROIDS, d_out // m), rotation)

    def save(self, path: str | Path) -> int:
        """Writes ``.npz`` atomically; returns the CRC-32 of its bytes (for a manifest)."""
        arrays = {"centroids": self.centroids}
        if self.rotation is not None:
            arrays["rotation"] = self.rotation
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return zlib.crc32(Path(path).read_bytes())

    @classmethod
    def load(cls, path: str | Path, crc: int | None = None) -> "ProductQuantizer":
        """Reads a codebook written by :meth:`save` (data only: no pickles); ValueError when its
        CRC differs from ``crc`` or its arrays are not a codebook."""
        raw = Path(path).read_bytes()
        if crc is not None and zlib.crc32(raw) != crc:
            raise ValueError(f"{path}: the codebook is damaged (CRC mismatch)")
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            names = set(z.files)
            if not names <= {"centroids", "rotation"} or "centroids" not in names:
                raise ValueError(f"{path}: not a codebook (arrays {sorted(names)}; expected centroids[, rotation])")
            return cls(z["centroids"], z["rotation"] if "rotation" in names else None)
