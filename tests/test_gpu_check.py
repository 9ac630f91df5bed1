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
    for name in ("tiled (512 MiB ws)", "tiled (64 MiB ws)", "triton", "| cuda |", "| reference |", "QuadLinear-AP"):
        assert name in text
    # docs/gpu.md quotes these tables: they must be the script's current output
    with open(os.path.join(ROOT, "docs", "gpu.md")) as f:
        doc = f.read()
    spatial = text[text.index("### (a)"):text.index("### QuadLinear-AP")]
    assert spatial.strip() in doc, "docs/gpu.md is stale: paste `gpu_check.py --roofline` into it"
    quad = text[text.index("| Q x M"):].strip()
    assert quad in doc


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiled_roofline_follows_the_backend():
    """The model tiles with the backend's own budget (per phase, with D) and its CUDA default, has
    no per-tile sync, and says why 64 MiB is not the CUDA default."""
    from hapvr.ops._spatial_tiled import DEFAULT_WORKSPACE_BYTES, DEFAULT_WORKSPACE_BYTES_CUDA, tile_frames

    gc = _gpu_check_module()
    h100 = gc.GPUS["H100 SXM"]
    a, b, c = gc.SHAPES["a"], gc.SHAPES["b"], gc.SHAPES["c"]
    X, Y = c["Bq"] * c["T"], c["Bt"] * c["T2"]
    bx, by = tile_frames(DEFAULT_WORKSPACE_BYTES_CUDA, gc.R_, X, Y, 2, 1, "forward", gc.D_)
    got = gc.spatial_roofline(c, "tiled", "bf16", h100)  # default workspace: the CUDA one
    assert f"{-(-X // bx) * -(-Y // by)} tiles of {bx}x{by} frames" in got["notes"][0]
    bx, by = tile_frames(DEFAULT_WORKSPACE_BYTES_CUDA, gc.R_, 1792, 1792, 4, 1, "backward", gc.D_)
    train = gc.spatial_roofline(b, "tiled", "tf32", h100)
    assert f"bwd {-(-1792 // bx) * -(-1792 // by)} tiles of {bx}x{by}" in train["notes"][1]
    assert not hasattr(gc, "SYNC_S")
    # at the CUDA default the tile loop is not host-bound at (b) and (c); at 64 MiB it is
    for shape in (b, c):
        for precision in ("tf32", "bf16"):
            big = gc.spatial_roofline(shape, "tiled", precision, h100, DEFAULT_WORKSPACE_BYTES_CUDA)
            small = gc.spatial_roofline(shape, "tiled", precision, h100, DEFAULT_WORKSPACE_BYTES)
            assert big["floor_s"] < big["device_s"] and small["floor_s"] > small["device_s"]
    assert gc.spatial_roofline(a, "tiled", "bf16", h100)["notes"][0].startswith("1 tiles")
    # the k = 1 scatter dirties 22 B (fp32) / 15 B (bf16) per written cell
    assert abs(gc.scatter_bytes_per_cell(9, 4) - 22.0) < 0.1 and abs(gc.scatter_bytes_per_cell(9, 2) - 15.3) < 0.1

