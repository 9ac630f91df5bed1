"""Benchmark of copy localisation, :func:`hapvr.localization.localize`, with its default
parameters on synthetic float32 maps.

    python -m benchmarks.bench_localization [--sizes 1000 3000] [--json PATH]

Maps per size T (T x T): "negative" (noise in [0.1, 0.3], no node passes the threshold), "copy"
(the same noise plus one copy of T/2 frames), "dense" (uniform in [0, 1]: every row has top-k
nodes above the threshold, the slowest case, ten segments found). Median wall time after warm-up.
"""

from __future__ import annotations

import argparse


import numpy as np
import torch

from benchmarks import _harness as H
from hapvr.localization import localize


def maps(T: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    negative = rng.uniform(0.1, 0.3, (T, T)).astype(np.float32)
    copy = negative.copy()
    i = np.arange(T // 2)
    copy[T // 4 + i, 10 + i] = 0.9
    dense = rng.uniform(0.0, 1.0, (T, T)).astype(np.float32)
    return {name: torch.from_numpy(m) for name, m in (("negative", negative), ("copy", copy), ("dense", dense))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000], help="map sizes T (T x T)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    rows, results = [], {}
    for T in args.sizes:
        for name, sim in maps(T).items():
            seconds = H.median_seconds(lambda: localize(sim, 1.0), repeats=args.repeats)
            found = len(localize(sim, 1.0))
            results[f"{T}/{name}"] = dict(T=T, map=name, seconds=seconds, segments=found)
            rows.append([f"{T} x {T}", name, f"{1e3 * seconds:.1f}", str(found)])
    print(f"\n{torch.get_num_threads()} threads\n")
    H.print_table(["map", "kind", "localize ms", "segments"], rows)
    if args.json:
        H.write_json(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
