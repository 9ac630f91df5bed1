"""Frames -> ``[T, 9, 512]`` region features: frozen backbone, 3x3 region pooling, PCA whitening."""

from __future__ import annotations

import hashlib
import os
import warnings

import torch
from torch import nn

from hapvr.errors import InputError
from hapvr.features.backbones import build_backbone
from hapvr.features.pca import PCAWhitening
from hapvr.features.regions import region_descriptors
from hapvr.features.teacher import cnn_frame_vectors
from hapvr.io.checkpoint import ModelSpec
from hapvr.io.files import atomic_path
from hapvr.runtime import default_cache_dir


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
        self.weights = weights
        self.runtime = backbone_runtime()
        self.backbone = build_backbone(backbone, weights).to(memory_format=torch.channels_last)
        self.in_dim = sum(self.backbone.channels)
        self.pca = PCAWhitening(self.in_dim, out_dim)
        self.batch_size = batch_size

    @classmethod
    def from_spec(cls, spec: ModelSpec, backbone_weights: str | None = None) -> "RegionFeatureExtractor":
        """The extractor of a model file (:func:`hapvr.io.checkpoint.read_model_file`): its backbone
        and PCA whitening. ``backbone_weights`` replaces the recorded weights path (a resnet50
        checkpoint moved to another machine)."""
        ext = cls(spec.backbone, backbone_weights or spec.backbone_weights, spec.pca_dim)
        ext.pca.load_state_dict(spec.pca)
        return ext

    @torch.inference_mode()
    def descriptors(self, frames: torch.Tensor) -> torch.Tensor:
        step = self._step(frames)
        out = [region_descriptors(self.stages(frames[start:start + step]))
               for start in range(0, frames.shape[0], step)]
        return torch.cat(out) if out else frames.new_zeros((0, 9, self.in_dim))

    @torch.inference_mode()
    def descriptors_and_frame_vectors(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`descriptors` and, from the same backbone pass, the ``cnn`` teacher's frame vectors
        (:func:`hapvr.features.teacher.cnn_frame_vectors` of the last stage)."""
        descs, vecs = [], []
        step = self._step(frames)
        for start in range(0, frames.shape[0], step):
            maps = self.stages(frames[start:start + step])
            descs.append(region_descriptors(maps))
            vecs.append(cnn_frame_vectors(maps[-1]))
        if not descs:
            return frames.new_zeros((0, 9, self.in_dim)), frames.new_zeros((0, self.backbone.channels[-1]))
        return torch.cat(descs), torch.cat(vecs)

    def _step(self, frames: torch.Tensor) -> int:
        # ONNX Runtime: twice the batch (a 24-frame view in one call: 11 % more frames a second here)
        on_ort = frames.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and self._onnx_session() is not None
        return 2 * self.batch_size if on_ort else self.batch_size

    @torch.inference_mode()
    def stages(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's stage maps of one batch of frames (ONNX Runtime or PyTorch, see :attr:`runtime`)."""
        # ONNX Runtime runs fp32 only: under autocast (extract --precision bf16) PyTorch runs it
        session = None if frames.device.type != "cpu" or torch.is_autocast_enabled("cpu") else self._onnx_session()
        if session is not None:
            return [torch.from_numpy(x) for x in session.run(None, {"frames": frames.float().contiguous().numpy()})]
        return self.backbone(frames.float().contiguous(memory_format=torch.channels_last))

    #: ``auto``: the packaged EfficientNet-Lite0 runs in ONNX Runtime on the CPU (3.9x the frames a
    #: second of eager PyTorch on a 2-core machine, same features to 1e-5, benchmarks/bench_backbone.py),
    #: everything else in PyTorch; ``torch``: always PyTorch. Set per extractor from the environment
    #: variable ``HAPVR_BACKBONE_RUNTIME`` (default ``auto``).
    runtime = "auto"
    _session = None

    def _onnx_session(self):
        """The backbone as an ONNX Runtime session (exported once into the cache folder), or None
        where PyTorch runs it: another runtime asked for, a backbone with user weights, weights
        on a GPU, or no onnxruntime."""
        if self._session is not None:
            return self._session or None
        self._session = False
        if self.runtime != "auto" or self.backbone_name != "efficientnet_lite0" or self.weights is not None \
                or any(p.device.type != "cpu" for p in self.backbone.parameters()):
            return None
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        try:
            path = export_backbone_onnx(self.backbone, self.backbone_name)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # no busy-waiting between calls: PyTorch shares these cores (streaming training)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # export or load trouble is never fatal: PyTorch gives the same features
            warnings.warn(f"ONNX Runtime cannot run the backbone ({exc}); running it in PyTorch")
            return None
        return self._session

    def fit_pca(self, descriptors: torch.Tensor) -> None:
        self.pca.fit(descriptors.reshape(-1, self.in_dim))

    def whiten(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.pca(descriptors)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.whiten(self.descriptors(frames))


RUNTIMES = ("auto", "torch")


def backbone_runtime() -> str:
    """``HAPVR_BACKBONE_RUNTIME`` (``auto`` when unset); another value is one clear error."""
    value = os.environ.get("HAPVR_BACKBONE_RUNTIME", "") or "auto"
    if value not in RUNTIMES:
        raise InputError(f"HAPVR_BACKBONE_RUNTIME must be one of {', '.join(RUNTIMES)}, got {value!r}")
    return value


def export_backbone_onnx(backbone: nn.Module, name: str) -> str:
    """Path of ``backbone`` exported to ONNX (frames ``[B, 3, H, W]`` 0..255 -> its stage maps),
    written once into the cache folder (``$HAPVR_CACHE`` or ``~/.cache/hapvr``) under a name keyed
    by the weights and the torch version, atomically."""
    digest = hashlib.sha256(torch.__version__.encode())
    for k, v in backbone.state_dict().items():
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    folder = default_cache_dir()
    path = os.path.join(folder, f"{name}-{digest.hexdigest()[:12]}.onnx")
    if os.path.isfile(path):
        return path
    example = torch.zeros(2, 3, 224, 224)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(backbone, (example,), str(tmp), dynamo=False, input_names=["frames"],
                          dynamic_axes={"frames": {0: "batch", 2: "height", 3: "width"}}, opset_version=17)
    return path
