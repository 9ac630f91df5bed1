"""``python -m benchmarks.gpu_check``: on this CPU-only machine it runs its CPU rows, lists every
GPU row as skipped with the docs/gpu.md figure it would be held against, and exits 0; its peaks
table follows the device name, its verdicts follow the figures, its budget always leaves a
summary, and every row it defines is the row docs/gpu.md names (and the other way round)."""

import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check as gc  # noqa: E402

DOC = ROOT / "docs" / "gpu.md"
# a row name in backticks (`spatial/...` and the like, which stand for a family, are not names)
ROW_NAME = re.compile(r"`((?:hbm|gemm|spatial|temporal|quadlinear|train|eval|numerics|cpu)/[A-Za-z0-9][^`\s]*)`")


def run(*args, timeout=180):
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "benchmarks.gpu_check", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    return proc, proc.stdout.splitlines()


@pytest.fixture(scope="module")
def plain():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test describes the CPU-only behaviour")
    return run()


def test_cpu_run_exits_zero_runs_cpu_rows_and_skips_gpu_rows_with_their_figures(plain):
    proc, lines = plain
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {}
    for line in lines:
        m = re.match(r"(PASS|FAIL|INFO|SKIP|NOT RUN)\s+(\S+): (.*)", line)
        if m:
            status[m.group(2)] = (m.group(1), m.group(3))
    rows = gc.build_rows()
    assert set(status) == {r.name for r in rows}
    for row in rows:
        state, detail = status[row.name]
        if row.device == "cpu":
            assert state == "PASS", (row.name, detail)
        else:
            assert state == "SKIP" and "no CUDA device" in detail, (row.name, detail)
            assert detail.endswith(f"figure ({gc.DOC_GPU}): {row.figure(gc.PEAKS[gc.DOC_GPU])}"), (row.name, detail)
    assert lines[-1].startswith("verdict: NO GPU VERDICT")
    assert any(line.startswith("PASS ") and "FAIL 0" in line for line in lines[-4:])


def test_list_names_every_row_with_its_figure():
    proc, lines = run("--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = "\n".join(lines)
    for row in gc.build_rows():
        assert f"  {row.name}  [{row.device}" in text
        assert f"check: {row.check}; figure: {row.figure(gc.PEAKS[gc.DOC_GPU])}" in text


@pytest.mark.parametrize("name, entry", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 SXM5 80GB", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", None),
    ("NVIDIA GH200 480GB", None),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM"),
    ("NVIDIA A100-SXM4-40GB", None),
    ("NVIDIA A100 80GB PCIe", None),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_peaks_follow_the_device_name(name, entry):
    assert gc.peaks_for(name) == entry


def test_peaks_are_the_datasheets_dense_figures():
    h100, pcie, h200, a100, l4 = (gc.PEAKS[k] for k in ("H100 SXM", "H100 PCIe", "H200", "A100 SXM", "L4"))
    assert (h100["bf16"], h100["tf32"], h100["bw"]) == (989.5e12, 494.5e12, 3.35e12)
    assert (pcie["bf16"], pcie["bw"]) == (756.5e12, 2.0e12)
    assert (h200["bf16"], h200["bw"]) == (h100["bf16"], 4.8e12)  # same chip, faster memory
    assert (a100["bf16"], a100["tf32"], a100["bw"]) == (312e12, 156e12, 2.039e12)
    assert (l4["bf16"], l4["tf32"], l4["bw"]) == (121e12, 60e12, 0.3e12)
    for name, gpu in gc.PEAKS.items():  # SMs x FP32 lanes x 2 x clock gives the FP32 figure
        lanes = 64 if name.startswith("A100") else 128
        assert gpu["sms"] * lanes * 2 * gpu["clock"] == pytest.approx(gpu["fp32"], rel=0.01), name


H100 = gc.PEAKS["H100 SXM"]


def test_within_and_judge():
    assert gc.within(2.0) == 2.5 and gc.within(None) is None
    assert gc.judge([gc.Check("t", 2.4, 2.5)]).status == "PASS"
    assert gc.judge([gc.Check("t", 2.6, 2.5), gc.Check("s", 0, 0)]).status == "FAIL"
    assert gc.judge([gc.Check("t", 9.0, None)]).status == "INFO"  # nothing to hold it against
    assert gc.judge([gc.Check("t", 9.0, None), gc.Check("s", 1, 0)]).status == "FAIL"


def test_spatial_verdict_on_synthetic_timings():
    case = gc.SpatialCase("b", "tiled", "bf16")
    ratio = gc.predicted_ratio(case, H100)
    gemm_s = 1e-3
    none = gc.Syncs(0)
    ok = gc.spatial_verdict(case, H100, 0.99 * gc.TOLERANCE * ratio * gemm_s, gemm_s, none, 100 << 20)
    assert ok.status == "PASS", ok.detail
    slow = gc.spatial_verdict(case, H100, 1.01 * gc.TOLERANCE * ratio * gemm_s, gemm_s, none, 100 << 20)
    assert slow.status == "FAIL" and "OVER" in slow.detail
    synced = gc.spatial_verdict(case, H100, ratio * gemm_s, gemm_s, gc.Syncs(1, ("spatial.py:10",)), 100 << 20)
    assert synced.status == "FAIL" and "spatial.py:10" in synced.detail
    bound = gc.tiled_memory_bound(gc.ROW_SHAPES["b"], "bf16", case.workspace)
    assert gc.spatial_verdict(case, H100, ratio * gemm_s, gemm_s, none, int(1.3 * bound)).status == "FAIL"
    # an unknown device: the ratio is reported without a verdict, the sync and memory budgets still hold
    unknown = gc.spatial_verdict(case, None, 100 * ratio * gemm_s, gemm_s, none, 100 << 20)
    assert unknown.status == "PASS" and "no figure for this device" in unknown.detail
    assert gc.spatial_verdict(case, None, ratio * gemm_s, gemm_s, gc.Syncs(2), 100 << 20).status == "FAIL"


def test_the_multi_tile_rows_predict_more_than_the_single_tile_ones():
    one = gc.predicted_ratio(gc.SpatialCase("a", "tiled", "bf16"), H100)
    many = gc.predicted_ratio(gc.SpatialCase("a", "tiled", "bf16", gc.WS_SMALL), H100)
    assert many > 2 * one  # 9 tiles: the Python loop's issue time dominates (docs/gpu.md)
    assert 1 < one < 3


def test_train_engine_and_gemm_verdicts_on_synthetic_timings():
    name = "train/paper-128x128/amp-bf16"
    step = gc.train_step_roofline(*gc.TRAIN_CASES[name], H100)["time"]
    assert gc.train_verdict(name, H100, 1.2 * step, gc.Syncs(1), 0).status == "PASS"
    assert gc.train_verdict(name, H100, 1.3 * step, gc.Syncs(1), 0).status == "FAIL"
    assert gc.train_verdict(name, H100, step, gc.Syncs(2), 0).status == "FAIL"
    assert gc.engine_verdict(True, 1.2, 0.9, 0.1, 4, gc.Syncs(4), 200).status == "PASS"
    assert gc.engine_verdict(True, 1.3, 0.9, 0.1, 4, gc.Syncs(4), 200).status == "FAIL"
    assert gc.engine_verdict(True, 1.0, 0.9, 0.1, 4, gc.Syncs(5), 200).status == "FAIL"  # > 1 per batch
    case = gc.GemmCase("a", "bf16", gc.WS_CUDA)
    predicted = gc.gemm_roofline(gc.ROW_SHAPES["a"], "bf16", H100, case.workspace)["time"]
    fast = gc.gemm_verdict(case, H100, 0.8 * predicted)
    assert fast.status == "PASS" and "TFLOP/s" in fast.detail and "GB/s" in fast.detail
    assert gc.gemm_verdict(case, H100, 1.3 * predicted).status == "FAIL"
    assert gc.gemm_verdict(case, None, 1.3 * predicted).status == "INFO"


def test_sync_warnings_are_counted_with_their_places():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            warnings.warn(gc.SYNC_MESSAGE)
        warnings.warn("something else")
    syncs = gc.sync_warnings(caught)
    assert syncs.count == 2 and "test_gpu_check.py" in str(syncs) and "x2" in str(syncs)


def _row(name, seconds, est=0.0):
    def run(ctx):
        time.sleep(seconds)
        return gc.Outcome("PASS", "done")

    return gc.Row(name, "cpu", "test row", est, "-", lambda gpu: "-", run)


def test_a_row_still_running_at_the_end_of_the_budget_is_not_run_and_the_summary_lists_it():
    rows = [_row("cpu/a", 0.0), _row("cpu/slow", 5.0), _row("cpu/after", 0.0), _row("cpu/big", 0.0, est=100)]
    out = []
    start = time.monotonic()
    results = gc.run_rows(rows, gc.Context(None), 0.5, cuda=False, out=out.append)
    assert time.monotonic() - start < 3
    assert [r.status for r in results] == ["PASS", "NOT RUN", "NOT RUN", "NOT RUN"]
    assert "ran out while it ran" in results[1].detail and len(out) == 4
    lines, status = gc.summarize(results, 0.5, 0.6, "test")
    assert status == 0
    assert "not run (budget): cpu/slow, cpu/after, cpu/big" in lines
    assert lines[-1].startswith("verdict: INCOMPLETE")


def test_a_tiny_budget_still_prints_the_summary_with_the_rows_not_run():
    proc, lines = run("--budget-s", "0.001")
    assert proc.returncode == 0, proc.stderr[-2000:]
    not_run = next(line for line in lines if line.startswith("not run (budget): "))
    for row in gc.build_rows():
        if row.device == "cpu":
            assert row.name in not_run
    assert lines[-1].startswith("verdict: INCOMPLETE")


def test_every_row_is_named_in_docs_gpu_md_and_every_name_there_is_a_row():
    named = set(ROW_NAME.findall(DOC.read_text()))
    rows = {r.name for r in gc.build_rows()}
    assert rows - named == set(), "rows gpu_check defines that docs/gpu.md does not name"
    assert named - rows == set(), "names in docs/gpu.md that are no gpu_check row"


def test_docs_hold_the_figures_gpu_check_computes():
    text = DOC.read_text()
    for line in gc.row_table(gc.build_rows()):
        assert line in text, f"docs/gpu.md lacks (python -m benchmarks.gpu_check --table): {line}"
    assert "PLACEHOLDER" not in text and "ms per video" in text  # the engine's host time is measured, not a blank
    assert "no sync anywhere" not in text


def test_roofline_tables_print():
    proc, lines = run("--roofline")
    assert proc.returncode == 0 and any(line.startswith("| tiled (512 MiB) | bf16 |") for line in lines), \
        proc.stderr[-2000:]
