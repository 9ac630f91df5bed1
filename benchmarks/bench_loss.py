"""Benchmark of the QuadLinear-AP operator and the frame-level loss (forward + backward).

Two tables:
  1. ``quadlinear_ap`` on ``Q = 64`` queries of ``M`` candidates, for the O(M^2) reference and
     every backend this machine can run, at M in {128, 1024, 4096, 16384};
  2. ``FrameQuadLinearAPLoss`` at N clips of T = 28 frames (two views per video) against the
     straightforward implementation that materialises ``[N, N, T, T', T']`` tensors
     (``frame_loss_materialised.py``), at N in {32, 64, 128}.

Every cell runs in its own subprocess, so its peak memory is its own: the peak is the growth of
the process's maximum resident set size over its level just before the first forward (inputs
already built), during one forward + backward. Time is the median of ``--repeats`` further runs.
A cell whose estimated peak exceeds ``--max-gb`` (default: 3/4 of the available memory) is not
run, and the table says so.

    python -m benchmarks.bench_loss                 # full run (several minutes on 2 cores)
    python -m benchmarks.bench_loss --quick         # small sizes only, one repeat
    python -m benchmarks.bench_loss --json out.json # also write the results as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

OP_SIZES = (128, 1024, 4096, 16384)
OP_QUERIES = 64
FRAME_SIZES = (32, 64, 128)
FRAMES = 28
# Peak-memory models, used only to decide whether a cell fits before running it (fitted to this
# machine's measurements). The reference keeps ~6.5 B per pair element of every query for
# autograd (its query chunks bound only the working set: ~40 B per element of one chunk); the
# materialising loss holds ~25 B per element of its [N, N, T, T', T'] tensors.
REFERENCE_SAVED_BYTES_PER_PAIR = 6.5
REFERENCE_CHUNK_BYTES_PER_PAIR = 40
MATERIALISED_BYTES_PER_ELEMENT = 25
# A first run slower than this is reported alone: repeating it would not change the picture.
SLOW_RUN_S = 20.0


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


# --- worker: one measurement in this process -----------------------------------------------


def _op_inputs(M: int):
    import torch

    g = torch.Generator().manual_seed(M)
    scores = torch.rand(OP_QUERIES, M, generator=g)
    u = torch.rand(OP_QUERIES, M, generator=g)
    # ~10% positives, like a retrieval list; 5% ignored.
    labels = torch.where(u < 0.05, -1, torch.where(u < 0.15, 1, 0)).to(torch.int8)
    return scores, labels


def _frame_inputs(N: int):
    import torch

    g = torch.Generator().manual_seed(N)
    frame_sims = torch.rand(N, N, FRAMES, FRAMES, generator=g)
    teacher = torch.rand(N, N, FRAMES, FRAMES, generator=g)
    video = torch.arange(N) // 2
    pair_labels = (video[:, None] == video[None, :]).to(torch.int64)
    return frame_sims, teacher, pair_labels


def _worker(spec: dict) -> dict:
    import torch

    if spec["kind"] == "op":
        from hapvr.ops import quadlinear_ap

        scores, labels = _op_inputs(spec["size"])
        backend = spec["impl"]

        def step():
            x = scores.detach().requires_grad_(True)
            quadlinear_ap(x, labels, 0.05, 0.10, backend=backend).risk.sum().backward()
            return x.grad
    else:
        from frame_loss_materialised import frame_quadlinear_ap_materialised
        from hapvr.losses import FrameQuadLinearAPLoss

        frame_sims, teacher, pair_labels = _frame_inputs(spec["size"])
        # like for like: the materialised form has no self pairs
        loss = FrameQuadLinearAPLoss(self_pairs=False) if spec["impl"] == "fused" else frame_quadlinear_ap_materialised

        def step():
            x = frame_sims.detach().requires_grad_(True)
            loss(x, teacher, pair_labels).backward()
            return x.grad

    base = _max_rss_bytes()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak = _max_rss_bytes() - base
    times = [first]
    if spec["repeats"] > 0 and first < SLOW_RUN_S:
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return {"time_s": statistics.median(times), "runs": len(times), "peak_bytes": peak,
            "threads": torch.get_num_threads()}


# --- driver ------------------------------------------------------------------------------


def _run_cell(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--worker", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return {"skipped": f"failed (exit {out.returncode}): {tail[0]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _op_backends() -> tuple[list[str], dict[str, str]]:
    from hapvr.ops._dispatch import install_reasons

    why = install_reasons()
    runnable, missing = ["reference"], {}
    for name in ("cpp", "cuda", "triton"):
        reason = why[name]
        if name == "triton" and reason is None:
            import torch

            if not torch.cuda.is_available():
                reason = "interpreter only on this machine (TRITON_INTERPRET=1): far too slow to time"
        if reason is None:
            runnable.append(name)
        else:
            missing[name] = reason
    return runnable, missing


def _fmt_time(cell):
    return f"{cell['time_s'] * 1e3:10.1f}" if "time_s" in cell else f"{'-':>10}"


def _fmt_mem(cell):
    return f"{cell['peak_bytes'] / 2**20:10.1f}" if "peak_bytes" in cell else f"{'-':>10}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="M in {128, 1024}, N = 32, one repeat")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement to PATH as JSON")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell after the first (default 3)")
    parser.add_argument("--max-gb", type=float, default=None,
                        help="skip cells whose estimated peak exceeds this (default: 3/4 of the available memory)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per cell (default 900)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    op_sizes = OP_SIZES[:2] if args.quick else OP_SIZES
    frame_sizes = FRAME_SIZES[:1] if args.quick else FRAME_SIZES
    repeats = 1 if args.quick else args.repeats
    budget = (args.max_gb * 2**30) if args.max_gb else 0.75 * _available_bytes()
    backends, missing = _op_backends()
    results = {"op": [], "frame": [], "missing_backends": missing, "budget_bytes": budget,
               "queries": OP_QUERIES, "frames": FRAMES}

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    for M in op_sizes:
        for impl in backends:
            if impl == "reference":
                chunk = min(OP_QUERIES, max(1, (1 << 24) // (M * M)))
                estimate = (REFERENCE_SAVED_BYTES_PER_PAIR * OP_QUERIES + REFERENCE_CHUNK_BYTES_PER_PAIR * chunk) * M * M
            else:
                estimate = 0
            if estimate > budget:
                cell = {"skipped": f"estimated peak {estimate / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"}
            else:
                progress(f"quadlinear_ap  M={M:<6} {impl} ...")
                cell = _run_cell({"kind": "op", "impl": impl, "size": M, "repeats": repeats}, args.timeout)
            results["op"].append({"M": M, "impl": impl, **cell})

    for N in frame_sizes:
        for impl in ("fused", "materialised"):
            estimate = MATERIALISED_BYTES_PER_ELEMENT * N * N * FRAMES ** 3 if impl == "materialised" else 0
            if estimate > budget:
                cell = {"skipped": f"estimated peak {estimate / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"}
            else:
                progress(f"frame loss     N={N:<6} {impl} ...")
                cell = _run_cell({"kind": "frame", "impl": impl, "size": N, "repeats": repeats}, args.timeout)
            results["frame"].append({"N": N, "impl": impl, **cell})

    import torch

    print(f"quadlinear_ap forward + backward, Q = {OP_QUERIES}, float32, CPU, "
          f"{torch.get_num_threads()} threads (time: median of {repeats} runs after the first, or the first "
          f"alone if it took > {SLOW_RUN_S:.0f} s; peak: growth of max RSS during the first run)")
    print(f"{'M':>6} {'backend':>10} {'time ms':>10} {'peak MiB':>10} {'vs ref':>8}  note")
    for M in op_sizes:
        ref = next(c for c in results["op"] if c["M"] == M and c["impl"] == "reference")
        for c in (c for c in results["op"] if c["M"] == M):
            speedup = f"{ref['time_s'] / c['time_s']:7.1f}x" if "time_s" in c and "time_s" in ref else f"{'-':>8}"
            print(f"{M:>6} {c['impl']:>10} {_fmt_time(c)} {_fmt_mem(c)} {speedup}  {c.get('skipped', '')}")
    for name, why in missing.items():
        print(f"{'':>6} {name:>10} not run: {why}")
    print()
    print(f"FrameQuadLinearAPLoss forward + backward, T = T' = {FRAMES}, two views per video, float32, CPU")
    print(f"{'N':>6} {'impl':>13} {'time ms':>10} {'peak MiB':>10} {'mem ratio':>10}  note")
    for N in frame_sizes:
        fused = next(c for c in results["frame"] if c["N"] == N and c["impl"] == "fused")
        for c in (c for c in results["frame"] if c["N"] == N):
            ratio = (f"{c['peak_bytes'] / max(fused['peak_bytes'], 1):9.1f}x"
                     if "peak_bytes" in c and "peak_bytes" in fused else f"{'-':>10}")
            print(f"{N:>6} {c['impl']:>13} {_fmt_time(c)} {_fmt_mem(c)} {ratio}  {c.get('skipped', '')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
