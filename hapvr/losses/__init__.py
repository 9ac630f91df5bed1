"""Training losses of HAP-VR (paper eqs. 9-16) and the competitors of its Table 2, by name.

``build_loss(name, **kwargs)`` constructs any of them; ``loss_names()`` lists the names.
Ranking losses take ``(sim [Q, M], labels [Q, M])`` with 1 = positive, 0 = negative,
-1 = ignored (see :mod:`hapvr.losses.base`).
"""

from hapvr.losses.adaptive_margin import AdaptiveMarginLoss
from hapvr.losses.base import RankingLoss, labels_from_ids
from hapvr.losses.blackbox_ap import BlackBoxAPLoss, BlackBoxRank
from hapvr.losses.circle import CircleLoss
from hapvr.losses.contrastive import ContrastiveLoss
from hapvr.losses.dir_ap import DIRAPLoss
from hapvr.losses.fastap import FastAPLoss
from hapvr.losses.frame_quadlinear_ap import (
    FrameQuadLinearAPLoss,
    frame_pseudo_labels,
    teacher_frame_similarities,
)
from hapvr.losses.infonce import InfoNCELoss
from hapvr.losses.mae import MAELoss
from hapvr.losses.mse import MSELoss
from hapvr.losses.objective import HAPVRObjective, HAPVRObjectiveConfig
from hapvr.losses.quadlinear_ap import QuadLinearAPLoss
from hapvr.losses.registry import LOSSES, build_loss, loss_names, register_loss
from hapvr.losses.similarity_regularizer import SimilarityRegularizer
from hapvr.losses.smooth_ap import SmoothAPLoss
from hapvr.losses.sshn import SSHNLoss
from hapvr.losses.triplet import TripletLoss

__all__ = [
    "LOSSES",
    "AdaptiveMarginLoss",
    "BlackBoxAPLoss",
    "BlackBoxRank",
    "CircleLoss",
    "ContrastiveLoss",
    "DIRAPLoss",
    "FastAPLoss",
    "FrameQuadLinearAPLoss",
    "HAPVRObjective",
    "HAPVRObjectiveConfig",
    "InfoNCELoss",
    "MAELoss",
    "MSELoss",
    "QuadLinearAPLoss",
    "RankingLoss",
    "SSHNLoss",
    "SimilarityRegularizer",
    "SmoothAPLoss",
    "TripletLoss",
    "build_loss",
    "frame_pseudo_labels",
    "labels_from_ids",
    "loss_names",
    "register_loss",
    "teacher_frame_similarities",
]
