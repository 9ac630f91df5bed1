"""Time of the tiled backend's forward and backward alone at the training shape (64 x 64 clips of
28 frames, R = 9, D = 512, k = 1) for several workspace bounds, side by side in one process:
the measurement behind the CPU backward's 16 MiB default (hapvr/ops/_spatial_tiled.py).

    python -m benchmarks.bench_tiled_backward --sizes 64,32,16,8 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

from hapvr.ops._spatial_tiled import tiled_backward, tiled_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,32,16,8", help="workspace bounds in MiB")
    ap.add_argument("--repeats", type=int, default=3, help="runs per size (the minimum is reported)")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    B, T, R, D = 64, 28, 9, 512
    q = torch.nn.functional.normalize(torch.randn(B, T, R, D, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(B, T, R, D, generator=g), dim=-1)
    lengths = torch.full((B,), T)
    maps, selection = tiled_forward(q, t, 1, lengths, lengths, True, 64 << 20)
    grad = torch.ones_like(maps)
    print(f"tiled, training shape, {torch.get_num_threads()} threads; minimum of {args.repeats} runs")
    print(f"{'workspace MiB':>13} {'forward s':>10} {'backward s':>11}")
    for mb in (int(s) for s in args.sizes.split(",")):
        fwd, bwd = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tiled_forward(q, t, 1, lengths, lengths, True, mb << 20)
            fwd.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tiled_backward(grad, q, t, selection, 1, lengths, lengths, mb << 20)
            bwd.append(time.perf_counter() - t0)
        print(f"{mb:>13} {min(fwd):>10.2f} {min(bwd):>11.2f}")


if __name__ == "__main__":
    main()
