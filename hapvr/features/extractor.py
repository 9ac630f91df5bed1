"""Frames -> ``[T, 9, 512]`` region features: frozen backbone, 3x3 region pooling, PCA whitening."""

from __future__ import annotations

import torch
from torch import nn

from hapvr.features.backbones import build_backbone
from hapvr.features.pca import PCAWhitening
from hapvr.features.regions import region_descriptors


class RegionFeatureExtractor(nn.Module):
    """Frozen feature extractor of SPEC section 1.

    ``descriptors(frames)`` gives the L2-normalised multi-stage descriptors before PCA (what
    :meth:`fit_pca` learns from); ``forward(frames)`` the final ``[B, 9, out_dim]`` features.
    Frames are ``[B, 3, 224, 224]`` float RGB in 0..255.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str | None = None, out_dim: int = 512,
                 batch_size: int = 16):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, weights).to(memory_format=torch.channels_last)
        self.in_dim = sum(self.backbone.channels)
        self.pca = PCAWhitening(self.in_dim, out_dim)
        self.batch_size = batch_size

    @torch.inference_mode()
    def descriptors(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, frames.shape[0], self.batch_size):
            chunk = frames[start:start + self.batch_size].float().contiguous(memory_format=torch.channels_last)
            out.append(region_descriptors(self.backbone(chunk)))
        return torch.cat(out) if out else frames.new_zeros((0, 9, self.in_dim))

    def fit_pca(self, descriptors: torch.Tensor) -> None:
        self.pca.fit(descriptors.reshape(-1, self.in_dim))

    def whiten(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.pca(descriptors)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.whiten(self.descriptors(frames))
