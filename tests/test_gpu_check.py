"""``python -m benchmarks.gpu_check`` on this CPU-only machine: it exits 0, says why it skips each
GPU row, and prints the roofline tables. (The numerical checks of every backend are
tests/test_backend_precision.py, whose CUDA cases gpu_check runs on a GPU machine.)"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "benchmarks.gpu_check", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
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
    skips = [line for line in lines if line.startswith("SKIP  ")]
    for backend in ("tiled", "triton", "cuda", "reference"):
        assert any(f"bench spatial " in line and f" {backend} " in line for line in skips), backend
    assert any("bench quadlinear_ap" in line and " cuda " in line for line in skips)
    assert any("gpu numerics (tests/test_backend_precision.py -k cuda)" in line for line in skips)
    assert all("no CUDA device" in line for line in skips)
    assert lines[-1].startswith("gpu_check: 0 passed, 0 failed")


def test_roofline_tables_print():
    proc, lines = run("--roofline")
    assert proc.returncode == 0 and any(line.startswith("| ") for line in lines), proc.stderr[-2000:]
