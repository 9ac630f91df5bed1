"""``python -m hapvr.train``: self-supervised HAP-VR training (paper section 3, appendix B.3).

With no arguments it builds (once, cached under ``~/.cache/hapvr``) a small corpus from real
media shipped in PyPI packages and a held-out benchmark, trains on cached features, and prints
mAP / uAP per relevance level for the untrained Chamfer baseline and the trained model. See
``--help``; ``--preset paper --help`` shows the paper's settings. The run itself is
:func:`hapvr.training.trainer.run`; its settings are :class:`hapvr.training.config.TrainConfig`.
"""

from __future__ import annotations

import sys

from hapvr.cli import EXIT_OK, EXIT_SOME_FAILED, ArgumentParser, add_settings, run_main
from hapvr.training.config import PRESETS, TrainConfig, preset
from hapvr.training.trainer import run

EXAMPLES = """\
  python -m hapvr.train                                   # built-in corpus and benchmark, CPU preset
  python -m hapvr.train --data DIR --out runs/mine --iterations 2000 --batch-videos 16
  torchrun --nproc-per-node 2 -m hapvr.train --preset paper --data DIR --backbone-weights r50.pth --teacher-weights dino.pth
"""


def build_parser(preset_name: str = "cpu") -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m hapvr.train",
        description="Train a HAP-VR video similarity model, self-supervised. With no arguments: build "
                    "(once, cached) a small corpus from real media shipped in PyPI packages, train on it, "
                    "and report mAP/uAP on a held-out near-duplicate benchmark (DS/CS/IS levels) for the "
                    "untrained Chamfer baseline and the trained model. Defaults shown are those of the "
                    f"{preset_name!r} preset.", examples=EXAMPLES)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=preset_name,
                        help="cpu: sized for a small CPU; paper: the paper's Table 6 (shown by --preset paper --help)")
    add_settings(parser, preset(preset_name))
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of a command line: the preset's settings, then the flags given."""
    pre = ArgumentParser(add_help=False, prog="python -m hapvr.train")
    pre.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    known, _ = pre.parse_known_args(argv)
    args = build_parser(known.preset).parse_args(argv)
    return TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__})


def _main(argv: list[str] | None = None) -> int:
    outcome = run(parse_config(argv))
    # unreadable training videos were skipped (named in warnings and results.json): exit 3, as every
    # command that finished without some of its inputs; under torchrun a non-zero code reads as a crash
    return EXIT_SOME_FAILED if outcome.skipped and outcome.world == 1 else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
