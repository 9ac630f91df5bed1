"""Model files: the training checkpoint, the default-model file, and what both say about the
model they hold (:class:`ModelSpec`).

- A **training checkpoint** (``OUT/checkpoint.pt`` of ``python -m hapvr.train``) holds
  everything a resumed run needs to continue exactly: weights, PCA whitening, optimiser,
  schedule, step, every random generator, the run's settings; its content's SHA-256 is saved
  inside and checked on every read. It is written atomically.
- The **default-model file** (``hapvr/weights/default_model.pt``, what compare, index and search
  use without ``--checkpoint``) holds a model's settings, PCA and weights; the file's SHA-256 is
  fixed in :data:`DEFAULT_MODEL_SHA256` and checked on every load.
- :class:`ModelSpec` is what either says about its model: backbone, sizes, head, PCA, weights.
  ``RegionFeatureExtractor.from_spec`` and ``VideoSimilarityModel.from_spec`` build from it.

Files written before a setting was recorded read as :data:`UNRECORDED_DEFAULTS` (the
compatibility table in docs/compatibility.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hapvr.errors import InputError
from hapvr.io.files import remove_stale_temporaries, save_torch
from hapvr.io.serialization import CorruptFileError, check_content_digest, load_torch_file, with_content_digest

FORMAT = "hapvr-checkpoint-2"  # 2: numpy's RNG state stored as a tensor (loads with weights_only=True)
CHECKPOINT_KEYS = ("step", "model", "pca", "optimizer", "scheduler", "rng", "config")

# What a checkpoint's settings read as when the file predates them (docs/compatibility.md).
UNRECORDED_DEFAULTS = {"backbone": "efficientnet_lite0", "pca_dim": 512, "k_s": 0.1, "k_t": 0.03, "head": "visil"}

DEFAULT_MODEL_FORMAT = "hapvr-default-model-1"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "weights" / "default_model.pt"
DEFAULT_MODEL_SHA256 = "97ccd25a32a58cc2867c0515a3222ef143d60a879e58f0b1c9b8f5cadd28132d"
DEFAULT_MODEL_KIND = "trained"  # what the tools use: "baseline" (the Chamfer baseline over its features) or "trained"


# --- the training checkpoint -------------------------------------------------------------------

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
    """Writes ``path`` atomically with its content's SHA-256 inside, and removes the temporaries
    of runs killed while saving."""
    state = dict(step=step, model=model.state_dict(), pca=pca.state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), rng=rng_state(sampler), config=config, extra=extra or {},
                 format=FORMAT)
    save_torch(with_content_digest(state), path)
    remove_stale_temporaries(path)


def load_checkpoint(path: str, what: str = "--resume") -> dict:
    """A training checkpoint, read as data (``weights_only=True``; format-1 files held a numpy RNG
    array, allowed as plain numbers) and checked against the checksum saved in it. Raises
    FileNotFoundError or :class:`CorruptFileError` naming ``path``."""
    if not os.path.isfile(path):
        hint = " (start without --resume, or point --out at the run)" if what == "--resume" else ""
        raise FileNotFoundError(f"{what}: no checkpoint at {path}{hint}")
    state = load_torch_file(path, what, allow_numpy=True)
    if not is_checkpoint(state):
        raise CorruptFileError(f"{what} {path}: not a hapvr training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CorruptFileError(f"{what} {path}: hapvr checkpoint without {', '.join(missing)}")
    check_content_digest(state, path, what)
    return state


def is_checkpoint(state) -> bool:
    return isinstance(state, dict) and str(state.get("format", "")).startswith("hapvr-checkpoint")


def selected_step(state: dict) -> int:
    """The step whose weights a checkpoint holds as its model: the selected one when the run
    selected on validation, else the last one."""
    selection = (state.get("extra") or {}).get("selection") or {}
    return int(selection.get("best_step", state.get("step", 0)))


# --- what a model file says about its model ----------------------------------------------------

@dataclass
class ModelSpec:
    """A model as a file describes it: enough to rebuild its feature extractor (backbone and PCA
    whitening) and its similarity model (head, sizes, weights). ``kind`` is ``trained`` or
    ``baseline`` (the features-only Chamfer over the same features)."""

    pca: dict
    model: dict | None = None
    backbone: str = UNRECORDED_DEFAULTS["backbone"]
    backbone_weights: str | None = None
    pca_dim: int = UNRECORDED_DEFAULTS["pca_dim"]
    k_s: float = UNRECORDED_DEFAULTS["k_s"]
    k_t: float = UNRECORDED_DEFAULTS["k_t"]
    head: str = UNRECORDED_DEFAULTS["head"]
    kind: str = "trained"

    @classmethod
    def from_settings(cls, settings: dict, **fields) -> "ModelSpec":
        """From a run's settings (a checkpoint's ``config`` or the default-model file), the
        settings it lacks read as :data:`UNRECORDED_DEFAULTS`."""
        names = ("backbone", "backbone_weights", "pca_dim", "k_s", "k_t", "head")
        got = {k: settings[k] for k in names if settings.get(k) is not None}
        return cls(**{**got, **fields})

    def settings(self) -> dict:
        """The model's settings without its tensors (what ``VideoSimilarityModel`` is built from)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("pca", "model")}


def read_model_file(path: str | Path, what: str = "--checkpoint") -> ModelSpec:
    """The model of a training checkpoint (its backbone, PCA and weights: the selected step's when
    the run selected on validation). Raises FileNotFoundError, :class:`InputError` for a file
    that is not a hapvr training checkpoint, :class:`CorruptFileError` for a damaged one."""
    state = load_torch_file(path, what, allow_numpy=True)  # numpy: the RNG state of format-1 checkpoints
    if not (isinstance(state, dict) and "pca" in state and "config" in state):
        raise InputError(f"{what} {path}: not a hapvr training checkpoint (it must hold the PCA whitening of its "
                         f"features; published state dicts need features extracted by their own pipeline: use "
                         f"them with python -m hapvr.evaluate)")
    check_content_digest(state, path, what)
    return ModelSpec.from_settings(state["config"], pca=state["pca"], model=state.get("model"))


# --- the default-model file --------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_default_model(path: str | Path | None = None, expected_sha256: str | None = None) -> ModelSpec:
    """The default model (``path`` and its SHA-256 default to the shipped file's), after checking
    the file's SHA-256."""
    path = Path(path or DEFAULT_MODEL_PATH)
    expected_sha256 = expected_sha256 or (DEFAULT_MODEL_SHA256 if path == DEFAULT_MODEL_PATH else None)
    if not path.is_file():
        raise FileNotFoundError(f"the default model {path} is missing from this install; reinstall hapvr, "
                                f"or pass a checkpoint")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise CorruptFileError(f"the default model {path} does not match its SHA-256 (damaged or replaced); "
                               f"reinstall hapvr or rebuild it with python -m hapvr.default_model")
    content = load_torch_file(path, "default model")
    if not isinstance(content, dict) or content.get("format") != DEFAULT_MODEL_FORMAT:
        raise CorruptFileError(f"{path}: not a {DEFAULT_MODEL_FORMAT} file")
    return ModelSpec.from_settings(content, pca=content["pca"], model=content["model"],
                                   kind=content.get("kind", "trained"))


def export_default_model(checkpoint: str | Path, output: str | Path, kind: str = DEFAULT_MODEL_KIND) -> str:
    """Writes a default-model file from a training checkpoint (its backbone name, PCA, model
    settings and weights: those of the selected step); returns the file's SHA-256."""
    state = load_torch_file(checkpoint, "--from", allow_numpy=True)
    if not (isinstance(state, dict) and "pca" in state and "config" in state):
        raise InputError(f"--from {checkpoint}: not a hapvr training checkpoint")
    check_content_digest(state, checkpoint, "--from")
    spec = ModelSpec.from_settings(state["config"], pca=state["pca"], model=state["model"])
    content = dict(format=DEFAULT_MODEL_FORMAT, kind=kind, backbone=spec.backbone, pca_dim=int(spec.pca_dim),
                   k_s=float(spec.k_s), k_t=float(spec.k_t), head=spec.head,
                   pca={k: v.clone() for k, v in spec.pca.items()},
                   model={k: v.clone() for k, v in spec.model.items()},
                   source=dict(step=int(state.get("step", 0)), command="python -m hapvr.train (default settings)",
                               selected_step=selected_step(state)))
    save_torch(content, output)
    return file_sha256(output)
