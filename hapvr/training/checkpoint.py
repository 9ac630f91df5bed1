"""Atomic checkpoints holding everything a resumed run needs to continue exactly."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from hapvr.serialization import CorruptFileError, check_content_digest, load_torch_file, with_content_digest
from hapvr.training.pool import atomic_save


FORMAT = "hapvr-checkpoint-2"  # 2: numpy's RNG state stored as a tensor (loads with weights_only=True)


def rng_state(sampler: random.Random) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    return dict(sampler=sampler.getstate(), python=random.getstate(), numpy=numpy_state, torch=torch.get_rng_state())


def set_rng_state(state: dict, sampler: random.Random) -> None:
    sampler.setstate(state["sampler"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: str, *, step: int, model, pca, optimizer, scheduler, sampler: random.Random, config: dict,
                    extra: dict | None = None) -> None:
    """Write ``path`` atomically (temporary file + fsync + rename): a crash never leaves half a file.

    The content's SHA-256 is saved in it (checked by :func:`load_checkpoint`), and temporaries
    left by runs killed while saving are removed."""
    state = dict(step=step, model=model.state_dict(), pca=pca.state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), rng=rng_state(sampler), config=config, extra=extra or {},
                 format=FORMAT)
    atomic_save(with_content_digest(state), path)
    remove_stale_temporaries(path)


def remove_stale_temporaries(path: str) -> list[str]:
    """Deletes ``PATH.PID.tmp`` files (what :func:`atomic_save` writes before its rename) of
    processes that no longer run: a run killed while saving leaves one, as large as a checkpoint."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = []
    for entry in os.listdir(folder):
        pid = entry[len(name) + 1:-len(".tmp")]
        if not (entry.startswith(name + ".") and entry.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(folder, entry))
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def load_checkpoint(path: str, what: str = "--resume") -> dict:
    """A hapvr training checkpoint, read as data (``weights_only=True``; format-1 files held a numpy
    RNG array, which is allowed as plain numbers) and checked against the checksum saved in it.
    Raises FileNotFoundError or ValueError (:class:`CorruptFileError` for a truncated or damaged
    file) naming ``path``."""
    if not os.path.isfile(path):
        hint = " (start without --resume, or point --out at the run)" if what == "--resume" else ""
        raise FileNotFoundError(f"{what}: no checkpoint at {path}{hint}")
    state = load_torch_file(path, what, allow_numpy=True)
    if not (isinstance(state, dict) and str(state.get("format", "")).startswith("hapvr-checkpoint")):
        raise CorruptFileError(f"{what} {path}: not a hapvr training checkpoint")
    missing = [k for k in ("step", "model", "pca", "optimizer", "scheduler", "rng", "config") if k not in state]
    if missing:
        raise CorruptFileError(f"{what} {path}: hapvr checkpoint without {', '.join(missing)}")
    check_content_digest(state, path, what)
    return state
