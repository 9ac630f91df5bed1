"""The learning-rate schedule, and the rounds of ``--restarts``."""

from __future__ import annotations

import math

from hapvr.training.config import TrainConfig, restarts


def round_length(cfg: TrainConfig) -> int:
    """Steps per round of ``--restarts`` (the last round may be shorter); --iterations without restarts."""
    return -(-cfg.iterations // restarts(cfg))


def lr_lambda(cfg: TrainConfig):
    """Learning-rate factor of step ``step``, as the HAP-VR release's scheduler (timm cosine):
    linear warm-up from ``warmup_from`` x lr to lr over ``warmup`` steps, then a cosine from lr
    down to ``lr_floor`` x lr at the last step. With ``--restarts`` every round has its own."""
    rounds = round_length(cfg)

    def f(step: int) -> float:
        start = min(step, cfg.iterations - 1) // rounds * rounds  # past the end: the last round's floor
        step, length = step - start, min(rounds, cfg.iterations - start)
        if step < cfg.warmup:
            return cfg.warmup_from + (1 - cfg.warmup_from) * step / cfg.warmup
        progress = (step - cfg.warmup) / max(length - cfg.warmup, 1)
        return cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f
