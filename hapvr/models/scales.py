"""What a model's scores mean: their range and the thresholds above which a pair is called a copy.

Thresholds: the lowest score whose pooled precision, copies against unrelated videos, reaches
0.95 on the built-in held-out benchmark (``python -m benchmarks.calibrate_scores``,
docs/scores.md), for the query -> target score and for the mean of both directions (the
symmetric score of whole-video de-duplication). The baseline's and the residual head's were
measured 2026-11-30 over the default model's PCA, the paper head's 2026-11-29 over the PCA of
the checkpoint it was calibrated with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreScale:
    """A model's score ``low``..``high`` and its copy thresholds: ``threshold`` for the query ->
    target score, ``symmetric_threshold`` for the mean of both directions."""

    low: float
    high: float
    threshold: float
    symmetric_threshold: float


BASELINE_SCALE = ScoreScale(0.0, 1.0, threshold=0.41, symmetric_threshold=0.38)
RESIDUAL_SCALE = ScoreScale(-1.0, 1.0, threshold=0.37, symmetric_threshold=0.34)  # the default model's head
TRAINED_SCALE = ScoreScale(-1.0, 1.0, threshold=0.41, symmetric_threshold=0.39)  # the paper's head (visil)


def scale_of(model) -> ScoreScale:
    """The scale of a :class:`~hapvr.models.VideoSimilarityModel`: the baseline's for the baseline
    and the attention head (which starts as the baseline and keeps its [0, 1] scale), the
    residual head's (psi's correction and Hardtanh give [-1, 1]) and the paper head's."""
    if model.is_baseline or model.head == "attention":
        return BASELINE_SCALE
    return RESIDUAL_SCALE if model.head == "residual" else TRAINED_SCALE
