"""hapvr's fused operators, each with compiled (C++/CUDA), Triton and pure-PyTorch backends."""

from hapvr.ops._dispatch import BACKEND_NAMES, NoBackendError, available_backends, install_reasons
from hapvr.ops.topk_chamfer import (
    SpatialTopKChamfer,
    TemporalTopKChamfer,
    explain_spatial_backends,
    spatial_topk_chamfer,
    spatial_topk_chamfer_reference,
    temporal_topk_chamfer,
    topk_count,
)

__all__ = [
    "BACKEND_NAMES",
    "NoBackendError",
    "SpatialTopKChamfer",
    "TemporalTopKChamfer",
    "available_backends",
    "explain_spatial_backends",
    "install_reasons",
    "spatial_topk_chamfer",
    "spatial_topk_chamfer_reference",
    "temporal_topk_chamfer",
    "topk_count",
]
from hapvr.ops.quadlinear_ap import (  # noqa: E402
    QuadLinearAPResult,
    explain_quadlinear_ap_backends,
    heaviside,
    quadlinear_ap,
    quadlinear_ap_reference,
    quadlinear_r_minus,
)

__all__ += [
    "QuadLinearAPResult",
    "explain_quadlinear_ap_backends",
    "heaviside",
    "quadlinear_ap",
    "quadlinear_ap_reference",
    "quadlinear_r_minus",
]
