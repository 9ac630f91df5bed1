"""hapvr's fused operators, each with compiled (C++/CUDA), Triton and pure-PyTorch backends."""

from hapvr.ops._dispatch import (
    BACKEND_NAMES,
    NoBackendError,
    available_backends,
    install_reasons,
)
from hapvr.ops._topk import topk_count
from hapvr.ops.quadlinear_ap import (
    QuadLinearAPResult,
    explain_quadlinear_ap_backends,
    heaviside,
    quadlinear_ap,
    quadlinear_ap_reference,
    quadlinear_r_minus,
)
from hapvr.ops.spatial import (
    AUTO_POLICY,
    SpatialTopKChamfer,
    auto_order,
    choose_spatial_backend,
    explain_spatial_backends,
    spatial_topk_chamfer,
    spatial_topk_chamfer_reference,
)
from hapvr.ops.temporal import TemporalTopKChamfer, temporal_topk_chamfer

__all__ = [
    "AUTO_POLICY",
    "BACKEND_NAMES",
    "NoBackendError",
    "QuadLinearAPResult",
    "SpatialTopKChamfer",
    "TemporalTopKChamfer",
    "auto_order",
    "available_backends",
    "choose_spatial_backend",
    "explain_quadlinear_ap_backends",
    "explain_spatial_backends",
    "heaviside",
    "install_reasons",
    "quadlinear_ap",
    "quadlinear_ap_reference",
    "quadlinear_r_minus",
    "spatial_topk_chamfer",
    "spatial_topk_chamfer_reference",
    "temporal_topk_chamfer",
    "topk_count",
]
