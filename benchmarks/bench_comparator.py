"""Benchmark of the comparator psi: :class:`hapvr.models.FrameComparator` against the layer-wise
reference :func:`hapvr.models.comparator.comparator_reference`, side by side in one process.

    python -m benchmarks.bench_comparator [--quick] [--json PATH]

Cases: evaluation (no gradient; 64 maps of 150 x 150, the engine's batch of one query bucket)
and training (forward + backward; 256 maps of 16 x 16, all pairs of 16 clips), half of the maps
padded. Median wall time after warm-up, and the largest output difference.
"""

from __future__ import annotations

import argparse


import torch

from benchmarks import _harness as H
from hapvr.models.comparator import FrameComparator, comparator_reference

CASES = {"eval": dict(B=64, T=150, grad=False, repeats=5), "train": dict(B=256, T=16, grad=True, repeats=20)}
QUICK = {"eval": dict(B=8, T=64, grad=False, repeats=3), "train": dict(B=64, T=16, grad=True, repeats=5)}


def inputs(B: int, T: int):
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(B, T, T, generator=g) * 2 - 1
    lengths = torch.randint(T * 3 // 4, T + 1, (B, 2), generator=g)
    lengths[: B // 2] = T  # half unpadded
    mask = (torch.arange(T)[None, :, None] < lengths[:, 0, None, None]) & \
        (torch.arange(T)[None, None, :] < lengths[:, 1, None, None])
    return sim, mask


def run_case(psi, case: dict) -> list:
    sim, mask = inputs(case["B"], case["T"])
    if case["grad"]:
        sim.requires_grad_(True)

        def step(fn):
            def go():
                out, _ = fn(sim, mask)
                out.sum().backward()
            return go
        calls = {"FrameComparator": step(psi), "reference": step(lambda s, m: comparator_reference(psi, s, m))}
    else:
        def nograd(fn):
            def go():
                with torch.no_grad():
                    fn(sim, mask)
            return go
        calls = {"FrameComparator": nograd(psi), "reference": nograd(lambda s, m: comparator_reference(psi, s, m))}
    with torch.no_grad():
        diff = float((psi(sim, mask)[0] - comparator_reference(psi, sim, mask)[0]).abs().max())
    # interleave the two so that machine noise hits both alike
    times = {k: [] for k in calls}
    for _ in range(case["repeats"]):
        for name, fn in calls.items():
            times[name].append(H.median_seconds(fn, repeats=1, warmup=0))
    for name, fn in calls.items():
        fn()
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return [med["FrameComparator"], med["reference"], diff]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    torch.manual_seed(0)
    psi = FrameComparator()
    rows, results = [], {}
    for name, case in (QUICK if args.quick else CASES).items():
        ours, ref, diff = run_case(psi, case)
        results[name] = dict(case, seconds=ours, reference_seconds=ref, max_abs_diff=diff)
        mode = "fwd+bwd" if case["grad"] else "fwd (no grad)"
        rows.append([name, f"{case['B']} x {case['T']} x {case['T']}", mode, f"{1e3 * ours:.1f}", f"{1e3 * ref:.1f}",
                     f"{ref / ours:.2f}", f"{diff:.1e}"])
    print(f"\n{torch.get_num_threads()} threads\n")
    H.print_table(["case", "maps", "mode", "FrameComparator ms", "reference ms", "speed-up", "max |diff|"], rows)
    if args.json:
        H.write_json(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
