"""What the engine asks of a video-similarity model.

A scorer turns stored region features into its own index form (``index``), and scores every
query of a padded batch against every target of another (``pairwise``), honouring lengths.
``min_frames`` is the shortest video it accepts; shorter chunks are repeated up to it (the
predecessor's rule), so a tail chunk of a long video never crashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import torch

from hapvr.models.loading import load_similarity_model
from hapvr.ops import spatial_topk_chamfer, temporal_topk_chamfer
from hapvr.precision import gemm_precision, precision_dtype, resolve_precision


class Scorer(Protocol):
    min_frames: int

    def index(self, features: torch.Tensor) -> torch.Tensor:
        """``[T, R, D]`` stored features -> ``[T, R', D']`` indexed features."""

    def pairwise(self, queries: torch.Tensor, query_lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor) -> torch.Tensor:
        """Padded ``[Q, T, R, D]`` against padded ``[B, T', R, D]`` -> ``[Q, B]`` similarities."""

    def fingerprint(self) -> dict:
        """What the scores depend on besides the features, for the on-disk cache:
        ``{"scorer": name, "weights": digest of the learned tensors or None, "settings": {...}}``.
        Settings are what changes the function computed (precision, top-k rates), not how it is
        computed (backend, device: those agree to rounding)."""


class ChamferBaseline:
    """The features-only baseline: region Chamfer similarity (eq. 3 with K = 1) gives the frame
    map, frame Chamfer similarity (eq. 5 with K = 1) the video score. No learned weights."""

    min_frames = 1

    def __init__(self, backend: str = "auto", precision: str = "auto", device: str | torch.device = "cpu"):
        self.backend = backend
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)  # "auto" made concrete for the fingerprint
        self.dtype = precision_dtype(self.precision)

    def index(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features.to(self.device).float(), dim=-1).to(self.dtype)

    @torch.no_grad()
    def pairwise(self, queries, query_lengths, targets, target_lengths):
        maps = spatial_topk_chamfer(queries, targets, 1, query_lengths, target_lengths, backend=self.backend).float()
        return temporal_topk_chamfer(maps, 1, query_lengths=query_lengths[:, None],
                                     target_lengths=target_lengths[None, :])

    def fingerprint(self) -> dict:
        return {"scorer": "chamfer-baseline-v1", "weights": None,
                "settings": {"precision": gemm_precision(self.precision, self.device)}}


class ModelScorer:
    """A trained :class:`~hapvr.models.VideoSimilarityModel` as a scorer."""

    def __init__(self, model, name: str = "model", precision: str = "auto", device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.precision = resolve_precision(precision, self.device)  # "auto" made concrete for the fingerprint
        self.min_frames = int(model.min_frames)
        self.name = name  # for messages; the cache keys on the weights themselves, not on where they came from

    @torch.no_grad()
    def index(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.index_video(features.to(self.device))

    @torch.no_grad()
    def pairwise(self, queries, query_lengths, targets, target_lengths):
        shared, self.model.precision = self.model.precision, self.precision  # the model may be shared (VideoModel)
        try:
            return self.model(queries, targets, query_lengths, target_lengths, indexed=True).video
        finally:
            self.model.precision = shared

    def fingerprint(self) -> dict:
        """Digest of the current weights (computed on each call: cheap next to scoring, and never stale)."""
        return {"scorer": "hapvr-similarity-model", "weights": state_dict_digest(self.model),
                "settings": {"precision": gemm_precision(self.precision, self.device), "k_s": float(self.model.k_s),
                             "k_t": float(self.model.k_t)}}


def load_scorer(path: str | Path, backend: str = "auto", precision: str = "auto",
                device: str | torch.device = "cpu") -> ModelScorer:
    """The scorer of a hapvr checkpoint or a published S2VS / HAP-VR state dict."""
    model = load_similarity_model(path, backend)
    return ModelScorer(model, name=str(path), precision=precision, device=device)


def state_dict_digest(module: torch.nn.Module) -> str:
    """128-bit SHA-256 prefix of a module's parameters and buffers: names, dtypes, shapes and
    bytes, so equal weights give equal digests wherever the checkpoint file lies."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        value = value.detach().cpu().contiguous()
        h.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:32]
