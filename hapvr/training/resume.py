"""``--resume``: the checkpoint a run continues from, and what it must agree on with this run.

A resumed run continues the model the checkpoint holds, with the batches an uninterrupted run
would draw; settings that change either must be the checkpoint's. Both heads have the same
parameter names, so a mismatch would load without an error: it is refused, naming the option.
"""

from __future__ import annotations

import os

from hapvr.errors import InputError
from hapvr.io.checkpoint import load_checkpoint
from hapvr.training.config import TrainConfig, restarts

# Settings a resumed run must share with its checkpoint, with the value a checkpoint written
# before the setting existed was trained with (docs/compatibility.md).
MUST_MATCH = {"head": "visil", "pca_dim": 512, "k_s": 0.1, "k_t": 0.03, "restarts": 1, "pip_guests": False,
              "seed_offset": 0}


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_resumed_model(cfg: TrainConfig, saved: dict, path: str) -> None:
    """Refuses a checkpoint trained with another head, size, round layout, guest sampling or seed
    offset than ``cfg`` asks for (``saved``: the checkpoint's ``config``)."""
    fields = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    saved = {**saved, "restarts": restarts(TrainConfig(**fields)) if "restarts" in saved else 1}
    must = dict(MUST_MATCH)
    if restarts(cfg) > 1 or saved["restarts"] > 1:  # the rounds' boundaries depend on --iterations
        must["iterations"] = cfg.iterations
    for name, default in must.items():
        mine = restarts(cfg) if name == "restarts" else getattr(cfg, name)
        was = saved.get(name, default)
        if was != mine:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"--resume: {path} was trained with {flag} {_shown(was)}, this run asks for "
                             f"{_shown(mine)}; pass {flag} {_shown(was)} to continue it, or start a new run in "
                             f"another --out")


def read_resume_checkpoint(cfg: TrainConfig) -> dict | None:
    """OUT/checkpoint.pt with ``--resume`` (read as data, checked against this run), else None."""
    if not cfg.resume:
        return None
    path = os.path.join(cfg.out, "checkpoint.pt")
    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    check_resumed_model(cfg, ckpt.get("config") or {}, path)
    return ckpt
