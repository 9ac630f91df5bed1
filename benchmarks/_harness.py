"""Shared measuring tools of the benchmarks: wall time (median after warm-up) and peak memory
in a fresh subprocess (Linux: the peak resident set is reset through /proc/self/clear_refs
after the inputs exist, so the figure is the extra memory the measured call needs)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from hapvr.evaluation.builtin import load_or_build_benchmark
from hapvr.features import RegionFeatureExtractor
from hapvr.io.files import write_json as _write_json
from hapvr.runtime import default_cache_dir

ROOT = Path(__file__).resolve().parent.parent  # the repository: benchmarks run as ``python -m benchmarks.x`` from it


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def measure_peak(call: Callable[[], object]) -> int:
    """Extra bytes ``call`` needs at its peak, measured on its second run: the first loads code
    pages, BLAS buffers and thread stacks, which are not the op's memory."""
    import gc

    call()
    gc.collect()
    baseline = reset_peak()
    call()
    return peak_since_reset(baseline)


def reset_peak() -> int:
    """Resets the peak RSS counter; returns the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS:") * 1024


def peak_since_reset(baseline: int) -> int:
    """Extra bytes the process held at its peak since ``reset_peak`` returned ``baseline``."""
    return _status_kib("VmHWM:") * 1024 - baseline


def peak_in_subprocess(module: str, case: dict, timeout: float = 1800) -> int | None:
    """Runs ``python -m module --peak-child JSON`` from the repository root and returns the peak
    bytes it prints last."""
    # A fixed mmap threshold stops glibc from keeping freed large blocks in its heap, so each
    # large tensor is really returned to the system when freed and the peak is not hidden by reuse.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run(
        [sys.executable, "-m", module, "--peak-child", json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return int(proc.stdout.strip().splitlines()[-1])


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "failed"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def write_json(path: str, payload: dict) -> None:
    _write_json(path, payload, indent=2)


def heldout_benchmark(benchmark_set: str, cache_dir: str | None = None):
    """The held-out benchmark's cached features (``builtin``, ``test`` or ``validation``), built
    and cached on first use with the default backbone, as python -m hapvr.train does."""
    return load_or_build_benchmark(benchmark_set, RegionFeatureExtractor(), cache_dir or default_cache_dir())
