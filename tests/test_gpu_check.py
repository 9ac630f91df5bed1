"""benchmarks/gpu_check.py on this CPU-only machine: it exits 0, says why it skips each GPU row,
runs the cheap CPU checks with real numbers, and fails when its inputs are perturbed."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
CHECK = re.compile(r"^CHECK (cpu \S+ \S+ +\S+ .*?): (.*) -> (PASS|FAIL)$")


def run(*args):
    proc = subprocess.run([sys.executable, "-W", "ignore", SCRIPT, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    return proc, proc.stdout.splitlines()


@pytest.fixture(scope="module")
def plain():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test describes the CPU-only behaviour")
    return run()


def test_exits_zero_and_skips_every_gpu_row(plain):
    proc, lines = plain
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    skips = [line for line in lines if line.startswith("SKIP  gpu ")]
    for backend in ("tiled", "triton", "cuda", "reference"):
        assert any(f"spatial {backend} " in line for line in skips), backend
    assert any("quadlinear_ap cuda" in line for line in skips)
    assert all("no CUDA device" in line for line in skips)


def test_cpu_rows_compare_real_numbers(plain):
    _, lines = plain
    rows = [CHECK.match(line) for line in lines if line.startswith("CHECK cpu ")]
    names = [m.group(1) for m in rows if m]
    assert len(rows) == len(names) >= 10
    assert any(n.startswith("cpu spatial tiled") and "bf16" in n for n in names)
    assert any(n.startswith("cpu spatial cpp") for n in names)
    assert any(n.startswith("cpu quadlinear_ap cpp") for n in names)
    for m in rows:
        assert m.group(3) == "PASS", m.group(0)
        # every compared quantity: a finite error no larger than its bound
        found = re.findall(r"err ([0-9.e+-]+) \(torch ([0-9.e+-]+), bound ([0-9.e+-]+)\)", m.group(2))
        assert found, m.group(0)
        for err, _, bound in found:
            assert float(err) <= float(bound)


def test_perturbed_outputs_fail():
    proc, lines = run("--no-bench", "--perturb", "0.05")
    assert proc.returncode == 1
    fails = [line for line in lines if line.startswith("CHECK cpu ") and line.endswith("FAIL")]
    passes = [line for line in lines if line.startswith("CHECK cpu ") and line.endswith("PASS")]
    assert fails and not passes


def test_benchmark_rows_are_skipped_without_cuda(plain):
    _, lines = plain
    bench = [line for line in lines if line.startswith("SKIP  bench ")]
    assert len(bench) >= 20 and all("no CUDA device" in line for line in bench)


def test_roofline_prints_every_backend():
    proc, lines = run("--roofline")
    assert proc.returncode == 0
    text = "\n".join(lines)
    for name in ("tiled (64 MiB ws)", "triton", "| cuda |", "| reference |", "QuadLinear-AP"):
        assert name in text

