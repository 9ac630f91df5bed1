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
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hapvr.io.files import atomic_path

CENTROIDS = 256  # per sub-quantiser: one byte a code
PQ_BYTES = (8, 16, 32, 64, 128)  # M of the storages "pqM" / "opqM" a build can be asked for


def parse_storage(text: str) -> tuple[str, int | None, bool]:
    """``(IndexStore storage, M, rotate)`` of the frames of a storage as the commands name it:
    ``float16``, ``int8``, ``pqM`` (a product quantiser of M bytes a region vector) or ``opqM``
    (the same after OPQ's rotation), M in :data:`PQ_BYTES`; optionally followed by ``:rowsM``,
    the coarse descriptor rows as PQ codes of M bytes (:func:`coded_rows`). ValueError naming the
    choices otherwise."""
    frames, colon, rows = text.partition(":")
    sizes = "|".join(map(str, PQ_BYTES))
    if colon and not re.fullmatch(f"rows({sizes})", rows):
        raise ValueError(f"the descriptor rows' part of a storage is rowsM with M in {', '.join(map(str, PQ_BYTES))}, "
                         f"got {text!r}")
    if frames in ("float16", "int8"):
        return frames, None, False
    found = re.fullmatch(f"(o?)pq({sizes})", frames)
    if not found:
        raise ValueError(f"expected float16, int8, pqM or opqM with M in {', '.join(map(str, PQ_BYTES))} (then "
                         f"optionally :rowsM), got {text!r}")
    return "pq", int(found[2]), bool(found[1])


def coded_rows(text: str) -> int | None:
    """M of a storage's ``:rowsM`` (descriptor rows stored as M-byte PQ codes), None without it."""
    parse_storage(text)
    _, _, rows = text.partition(":")
    return int(rows[4:]) if rows else None


def needs_training(text: str) -> bool:
    """Whether a new index of this storage trains a codebook on its first videos (pq frames or
    coded rows)."""
    return parse_storage(text)[0] == "pq" or coded_rows(text) is not None


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
        self._pq = None  # faiss encoder, made on first use

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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 codes ``[..., M]`` of float vectors ``[..., D]``: the nearest centroid (L2) per
        sub-vector (faiss's encoder; the tests hold it to the distances written out)."""
        flat = x.reshape(-1, x.shape[-1]).float()
        if self._r is not None:
            flat = flat @ self._r
        codes = self._faiss().compute_codes(np.ascontiguousarray(flat.numpy(), dtype=np.float32))
        return torch.from_numpy(codes).reshape(*x.shape[:-1], self.m)

    def _faiss(self):
        """A faiss ProductQuantizer with these centroids, made once."""
        if self._pq is None:
            import faiss

            self._pq = faiss.ProductQuantizer(self.rotated_dim, self.m, 8)
            faiss.copy_array_to_vector(self.centroids.ravel(), self._pq.centroids)
        return self._pq

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
            inner = faiss.ProductQuantizer(d_out, m, 8)  # its own PQ, as quiet about few vectors (kept
            inner.cp.min_points_per_centroid = 1  # referenced here while opq points at it)
            opq.pq = inner
            opq.train(x)
            rotation = faiss.vector_to_array(opq.A).reshape(d_out, x.shape[1]).T  # y = x @ A.T
            x = x @ rotation
        elif d_out != x.shape[1]:
            raise ValueError("fewer dimensions need the rotation (rotate=True)")
        pq = faiss.ProductQuantizer(d_out, m, 8)
        pq.cp.seed, pq.cp.min_points_per_centroid = seed, 1  # few vectors: the caller says so, not faiss
        pq.cp.max_points_per_centroid = 256  # faiss's default: at most 65,536 vectors a sub-quantiser
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


class DecodedRows:
    """Float32 rows ``[N, D]`` read through ``codebook`` from their codes ``[N, M]`` (a memory map
    of an index's coded descriptor file): indexing (a slice, or an array of row numbers) decodes
    the rows it selects and nothing else, so a caller of a ``[N, D]`` array (the coarse stage's
    GEMM blocks, an IVF's training sample and additions) needs no other path."""

    def __init__(self, codes: np.ndarray, codebook: ProductQuantizer):
        if codes.ndim != 2 or codes.shape[1] != codebook.m or codes.dtype != np.uint8:
            raise ValueError(f"codes must be uint8 [N, {codebook.m}], got {codes.dtype} {list(codes.shape)}")
        self.codes, self.codebook = codes, codebook

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), self.codebook.dim

    dtype = np.dtype(np.float32)
    ndim = 2

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, tuple):  # rows only: a column of codes is not a column of the vectors
            raise IndexError("DecodedRows selects rows (a slice or row numbers), not columns")
        codes = np.ascontiguousarray(self.codes[rows])
        return self.codebook.decode(torch.from_numpy(codes)).numpy()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("DecodedRows decodes into a new array: it cannot be viewed without a copy")
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)
