"""Atomic checkpoints holding everything a resumed run needs to continue exactly."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from hapvr.training.pool import atomic_save


def rng_state(sampler: random.Random) -> dict:
    return dict(sampler=sampler.getstate(), python=random.getstate(), numpy=np.random.get_state(),
                torch=torch.get_rng_state())


def set_rng_state(state: dict, sampler: random.Random) -> None:
    sampler.setstate(state["sampler"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: str, *, step: int, model, pca, optimizer, scheduler, sampler: random.Random, config: dict,
                    extra: dict | None = None) -> None:
    """Write ``path`` atomically (temporary file + fsync + rename): a crash never leaves half a file."""
    atomic_save(dict(step=step, model=model.state_dict(), pca=pca.state_dict(), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), rng=rng_state(sampler), config=config, extra=extra or {},
                     format="hapvr-checkpoint-1"), path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path} (start without --resume, or point --out at the run)")
    # our own file: it holds RNG states (tuples, numpy arrays), so full unpickling is needed
    return torch.load(path, map_location="cpu", weights_only=False)
