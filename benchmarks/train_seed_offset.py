"""Run ``python -m hapvr.train`` with the batch sampler and the model initialisation reseeded.

``--seed`` would also redraw the cached augmented views (it is part of the cache key); this
script keeps the cached features and moves only the training randomness, which is how the
seed tables of docs/train.md were made::

    python benchmarks/train_seed_offset.py --offset 17 -- --out runs/s17 --lambda-f 10

Offset 0 is exactly ``python -m hapvr.train``.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offset", type=int, required=True, help="added to the sampler and init seeds")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then hapvr.train's options")
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    import hapvr.train as train

    if args.offset:
        offset = args.offset

        class OffsetRandom(random.Random):
            def __init__(self, seed=None):
                super().__init__(seed + offset)

        class RandomModule:  # what hapvr.train sees as ``random``
            Random = OffsetRandom

        train.random = RandomModule
        manual_seed = torch.manual_seed
        torch.manual_seed = lambda seed: manual_seed(seed + offset)
    return train.main(train_args)


if __name__ == "__main__":
    sys.exit(main())
