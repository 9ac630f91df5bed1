"""GPU check of hapvr: one run, one verdict, every figure held against docs/gpu.md.

    python -m benchmarks.gpu_check                  # every row this machine can run, then the verdict
    python -m benchmarks.gpu_check --list           # every row, its check and its docs/gpu.md figure
    python -m benchmarks.gpu_check --table          # docs/gpu.md's table of rows and figures
    python -m benchmarks.gpu_check --roofline       # the roofline tables of docs/gpu.md
    python -m benchmarks.gpu_check --only spatial/a --budget-s 120

Rows. Each row has a name (``gemm/a/bf16/ws512M``, ``train/paper-128x128/amp-bf16``, ...) that
docs/gpu.md uses for the figure it predicts, and prints one line when it finishes: ``PASS``,
``FAIL``, ``INFO`` (measured, nothing to hold it against), ``SKIP`` (cannot run here) or
``NOT RUN`` (the time budget was spent). GPU rows time the bare cuBLAS GEMMs the spatial op
issues, the op itself (op time / GEMM time against the predicted ratio, synchronising calls,
peak memory against the tiled workspace bound), one training step of the paper preset under
bf16 autocast, the evaluation engine and ``python -m hapvr.evaluate`` on a 200-video feature file,
and the CUDA cases of tests/test_backend_precision.py. CPU rows run anywhere: multi-tile
correctness of the tiled backend against the reference, the tile grids of the GPU rows, a
training step and the engine's host time per video.

Verdict. A measured figure passes when it is within ``TOLERANCE`` (1.25x) of the predicted one on
the bad side (slower, or more memory); sync counts must meet their budget exactly (0 per op
call, at most 1 per engine batch and per training step). Predictions
use the datasheet peaks of the device found by ``torch.cuda.get_device_name()`` (``PEAKS``);
on a device not in that table the model-based figures are reported with no verdict (``--peaks``
names a table entry to use instead), while the device-independent budgets (syncs, memory) are
still judged. The run ends with a summary (counts and the verdict, rows not run listed) even
when ``--budget-s`` (8 minutes) runs out. Exit status: 1 if a row failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from hapvr.ops._spatial_tiled import DEFAULT_WORKSPACE_BYTES, DEFAULT_WORKSPACE_BYTES_CUDA, tile_frames
from hapvr.precision import GEMM_VARIANTS, allow_tf32

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# Datasheet peaks
# ---------------------------------------------------------------------------------------------

# Dense peaks from NVIDIA's datasheets: the tensor-core figures are the datasheets' "with
# sparsity" numbers halved. SM counts and boost clocks reproduce each FP32 figure (SMs x FP32
# lanes per SM, 64 on the A100 and 128 on Hopper and Ada, x 2 x clock). l1/l2 cycles are
# latencies assumed from the microbenchmark literature (the QuadLinear-AP prefix model only);
# they are not datasheet values.
PEAKS: dict[str, dict] = {
    "H100 SXM": dict(fp32=67e12, tf32=494.5e12, bf16=989.5e12, bw=3.35e12, sms=132, clock=1.98e9, l2_mb=50,
                     l1_cycles=33, l2_cycles=260, source="NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column"),
    "H100 PCIe": dict(fp32=51e12, tf32=378e12, bf16=756.5e12, bw=2.0e12, sms=114, clock=1.755e9, l2_mb=50,
                      l1_cycles=33, l2_cycles=260, source="NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe column"),
    "H200": dict(fp32=67e12, tf32=494.5e12, bf16=989.5e12, bw=4.8e12, sms=132, clock=1.98e9, l2_mb=50,
                 l1_cycles=33, l2_cycles=260, source="NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column"),
    "A100 SXM": dict(fp32=19.5e12, tf32=156e12, bf16=312e12, bw=2.039e12, sms=108, clock=1.41e9, l2_mb=40,
                     l1_cycles=33, l2_cycles=200, source="NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column"),
    "L4": dict(fp32=30.3e12, tf32=60e12, bf16=121e12, bw=0.3e12, sms=58, clock=2.04e9, l2_mb=48,
               l1_cycles=33, l2_cycles=250, source="NVIDIA L4 Tensor Core GPU datasheet"),
}
DOC_GPU = "H100 SXM"  # the device whose figures --list shows when no GPU is present


def peaks_for(device_name: str) -> str | None:
    """The ``PEAKS`` entry of a ``torch.cuda.get_device_name()``, or None for a device whose
    figures differ from every entry (H100 NVL, H200 NVL, GH200, A100 40GB or PCIe, ...)."""
    name = device_name.upper()
    if re.search(r"\bH200\b", name):
        return None if "NVL" in name else "H200"
    if re.search(r"\bH100\b", name):
        if "PCIE" in name:
            return "H100 PCIe"
        if "NVL" in name:
            return None
        return "H100 SXM" if ("SXM" in name or "HBM3" in name) else None
    if re.search(r"\bA100\b", name):
        return "A100 SXM" if ("SXM" in name and "80GB" in name) else None
    if re.search(r"\bL4\b", name):
        return "L4"
    return None


# ---------------------------------------------------------------------------------------------
# The model: realistic efficiencies and host costs (docs/gpu.md, "Model")
# ---------------------------------------------------------------------------------------------

GEMM_EFFICIENCY = 0.65  # share of the dense peak a cuBLAS / tl.dot GEMM reaches (gemm/* rows check it)
HBM_EFFICIENCY = 0.75   # share of the HBM bandwidth an ATen elementwise / reduction pass reaches (hbm/copy-1GiB)
TOLERANCE = 1.25        # a measurement passes within 1.25x of its figure, on the bad side
INT_LANES_PER_SM = 64         # INT32 lanes per SM (Ampere, Hopper, Ada)
L1_SECTORS_PER_CLOCK = 4      # 128 B / clock / SM of L1 bandwidth (assumption), 32 B sectors
ATEN_CALL_S = 10e-6           # host cost of one eager ATen call from Python that launches a kernel
VIEW_CALL_S = 3e-6            # ... of one that only makes a view / slice (or is a no-op .to)
CPP_LAUNCH_S = 5e-6           # ... of a kernel launched from C++ (inside a compiled op)
CALL_FIXED_S = 10 * ATEN_CALL_S + 10 * VIEW_CALL_S  # tiled: once per forward / backward (zero fills, masks, casts)
KERNEL_S = 4e-6               # smallest time a dependent kernel launch takes on the device

# One training step of the paper preset outside the spatial op, counted by the cpu/train-step
# row (dispatcher calls of hapvr.training.trainer.train_step, CPU, 2026-12-07; the spatial op counts
# as 2 calls there, its tile loop is modelled apart): calls that launch a kernel, and views.
STEP_LAUNCH_CALLS = 599
STEP_VIEW_CALLS = 138
STEP_AUTOCAST_CASTS = 20  # casts autocast adds on CUDA (linear and conv inputs and weights, their grads): assumed
TEACHER_DIM = 384         # DINO ViT-S/16, the paper preset's teacher
# FrameComparator (visil head) per map cell, forward + backward under bf16 autocast: conv FLOPs
# (conv1 on every cell, conv2 on 1/4, conv3 on 1/16; backward = 2x forward) and HBM bytes (the
# forward writes ~360 B and reads as much: fp32 masked products, bf16 conv outputs and casts,
# padded copies; the backward moves twice that).
COMPARATOR_FLOPS_PER_CELL = 3 * (2 * 9 * 32 + 2 * 9 * 32 * 64 / 4 + 2 * 9 * 64 * 128 / 16 + 2 * 128 / 16)
COMPARATOR_BYTES_PER_CELL = 2200
MAPS_BYTES_PER_CELL = 16       # the maps' validity mask, its fp32 copy, the maps' gradient
ATTENTION_BYTES_PER_VALUE = 48  # ~12 fp32 passes over the [N T R, D] features (region attention, fwd + bwd)
# hapvr.evaluation.scorers.ChamferBaseline.pairwise outside the spatial op's tile loop: dispatcher
# calls per call that launch a kernel, and views (cpu/eval/host-200 counts them, 2026-12-07: the
# op's checks and the temporal TopK-Chamfer)
PAIRWISE_LAUNCH_CALLS = 64
PAIRWISE_VIEW_CALLS = 12

SHAPES = {
    "a": dict(label="(a) eval pair", Bq=1, T=1024, Bt=1, T2=1024, train=False),
    "b": dict(label="(b) train 64x64 clips", Bq=64, T=28, Bt=64, T2=28, train=True),
    "c": dict(label="(c) FIVR-200K", Bq=100, T=40, Bt=225_960, T2=40, train=False),
}
# The shapes the GPU rows run: (c) is one chunk of it, one query against 2,048 videos (the full
# shape is 11,033 such chunks of 100 queries' worth of work: 100 x 225,960 / 2,048).
ROW_SHAPES = {
    "a": SHAPES["a"],
    "b": SHAPES["b"],
    "c": dict(label="(c) FIVR-200K chunk", Bq=1, T=40, Bt=2048, T2=40, train=False),
}
R_, D_, K_ = 9, 512, 1

# (bytes per input element, peak key): the precisions a GEMM can run in
PRECISIONS = {"fp32-ieee": (4, "fp32"), "tf32": (4, "tf32"), "bf16": (2, "bf16")}


def scatter_bytes_per_cell(R: int, e: int) -> float:
    """HBM bytes one k = 1 ``scatter_`` write into a zero-filled ``[x, R_i, R_j, y]`` tile costs:
    a warp writes 32 consecutive ``y`` of one ``(x, i)``, each into one of the R rows ``j``; a row's
    32 entries span ``e`` 32-byte sectors of ``32 / e`` entries, and a sector is dirtied if any of its
    entries is selected, so (selections uniform at random) a warp dirties
    ``R e (1 - (1 - 1/R)^(32/e))`` sectors: 22 B per write in fp32, 15 B in bf16 (R = 9)."""
    return R * e * (1 - (1 - 1 / R) ** (32 / e))


def _phase(name, flops, nbytes, gpu, peak_key, extra_s=0.0):
    compute = flops / (gpu[peak_key] * GEMM_EFFICIENCY) if flops else 0.0
    memory = nbytes / (gpu["bw"] * HBM_EFFICIENCY)
    t = max(compute, memory) + extra_s
    bound = "compute" if compute > memory else "memory"
    if extra_s > max(compute, memory):
        bound = "latency"
    return dict(name=name, flops=flops, bytes=nbytes, time=t, bound=bound)


def spatial_roofline(shape: dict, backend: str, precision: str, gpu: dict,
                     workspace: int = DEFAULT_WORKSPACE_BYTES_CUDA) -> dict:
    """FLOPs, HBM bytes and predicted seconds of one backend on one shape (forward, and the
    backward too when ``shape['train']``). Every phase: max(FLOPs / (65% of the peak), bytes /
    (75% of the bandwidth)); phases are summed; the result is the larger of that and the host
    time to issue the calls. See docs/gpu.md for the derivation of each term."""
    X, Y = shape["Bq"] * shape["T"], shape["Bt"] * shape["T2"]
    R, D, k, train = R_, D_, K_, shape["train"]
    e, peak = PRECISIONS.get(precision, (4, "fp32"))
    gemm = 2.0 * X * R * Y * R * D                        # one [XR, D] x [D, YR] product
    n_sim, n_cell, n_out = float(X) * R * Y * R, float(X) * R * Y, float(X) * Y
    to32 = 0 if e == 4 else e + 4                          # an extra .to(float32) pass per cell
    phases, floor_s, notes = [], 0.0, []
    if backend == "tiled":  # k = 1 (the shapes' k): hapvr/ops/_spatial_tiled.py, region-major layout
        # Forward: tiles sized for the forward's phase (saving the selection when training), the
        # target tile copied region-major once per target tile and reused by every query tile.
        bx, by = tile_frames(workspace, R, X, Y, e, k, "forward_save" if train else "forward", D)
        nx, ny = math.ceil(X / bx), math.ceil(Y / by)
        tiles = nx * ny
        phases.append(_phase("t copy (region-major)", 0, 2 * e * R * D * Y, gpu, peak))
        operands = e * R * D * (X * ny + Y * nx)           # each operand tile read once per tile pair
        phases.append(_phase("GEMM (S tile write)", gemm, operands + e * n_sim, gpu, peak))
        if train:  # max(2): values (e) + int64 index in one pass; values .to(fp32); index .to(int8)
            cell = (e + 8) + to32 + (8 + 1) + 4 + (1 + 1)  # (read 8, write 1); sum over R_i; int8 store
        else:      # amax(2); .to(fp32) unless fp32; sum over R_i
            cell = e + to32 + 4
        phases.append(_phase("top-k epilogue (S read)", 0, e * n_sim + cell * n_cell, gpu, peak))
        # in the loop: *scale and the store into the fp32 grid (20 B); after it: zero fill, mask,
        # masked_fill_ (16 B); permute + .to(dtype) + contiguous (8 B in fp32, 4 + 3e otherwise)
        final = 2 * e if e == 4 else 4 + 3 * e
        phases.append(_phase("map: scale, store, mask, permute", 0, (36 + final) * n_out, gpu, peak))
        # Host calls per tile pair. Launching: matmul, amax | max, [.to(fp32)], [index .to(int8)],
        # sum, *scale, copy_ into the grid, [copy_ into the selection]. Metadata only: the q slice,
        # tb.T, .view, the grid slice, [the selection slice], [the no-op .to(fp32) of fp32].
        # Per target tile: t slice, .view, .transpose (views) and the region-major reshape (a copy).
        launches = 5 + (2 if train else 0) + (0 if e == 4 else 1)
        views = 4 + (1 if train else 0) + (1 if e == 4 else 0)
        floor_s = (tiles * (launches * ATEN_CALL_S + views * VIEW_CALL_S)
                   + ny * (ATEN_CALL_S + 3 * VIEW_CALL_S)
                   + CALL_FIXED_S)  # the grid's zero fill, masks, permute and casts, once
        notes.append(f"{tiles} tile{'s' if tiles > 1 else ''} of {bx}x{by} frames")
        if train:  # backward: its own tiling (the "backward" phase of the budget)
            cx, cy = tile_frames(workspace, R, X, Y, e, k, "backward", D)
            mx, my = math.ceil(X / cx), math.ceil(Y / cy)
            btiles = mx * my
            # g: gathered per tile from grad_out (index arithmetic, gather, *scale, mask,
            # masked_fill, cast: the same bytes per map entry as one whole pass); once: dq/dt zero
            # fill, final casts; per target tile: region-major t copy, dtb zero fill, dtb back to
            # frame-major + dt +=
            rd = R * D
            side = (6 * e + 4) * n_out + 4 * rd * (X + Y) + (2 * e + 24) * rd * Y
            if e != 4:
                side += (4 + e) * rd * (X + Y)
            phases.append(_phase("bwd: g, t copy, dtb fold, casts", 0, side, gpu, peak))
            # per tile: selection .long() (1 -> 8 B), zero-filled W (e N_sim), scatter_ reading the
            # int64 index and g and dirtying the sectors its writes land in
            expand = e * n_sim + (1 + 8 + 8 + e + scatter_bytes_per_cell(R, e)) * n_cell
            phases.append(_phase("bwd: zero W + scatter", 0, expand, gpu, peak))
            # two dense GEMMs reading W each; fp32: addmm_ reads + writes the fp32 accumulator
            # (e + 8 B per operand element); bf16/fp16: out-of-place GEMM (write e) + fp32 add
            # (read e, read + write 8): 3e + 8
            per = e + 8 if e == 4 else 3 * e + 8
            bw_operands = R * D * (X * my + Y * mx) * per
            phases.append(_phase("bwd: 2 GEMMs (W read x2)", 2 * gemm, 2 * e * n_sim + bw_operands, gpu, peak))
            # Host calls per tile: launching .long(), zeros, scatter_, 2 GEMMs [+ 2 fp32 adds], the
            # gradient gather (gather, mul_, & and ~ of the row/column validity, masked_fill_);
            # metadata: slices, indexings, expand, no-op .to, reshape, w.T. Per target tile:
            # region-major copy, dtb zeros, the fold back, dt += (4 launches) and 7 views.
            b_launches = 5 + 4 + (0 if e == 4 else 2)
            b_views = 10 + (0 if e == 4 else 1)
            bw_host = (btiles * (b_launches * ATEN_CALL_S + b_views * VIEW_CALL_S)
                       + my * (4 * ATEN_CALL_S + 7 * VIEW_CALL_S) + CALL_FIXED_S)
            floor_s += bw_host
            notes.append(f"bwd {btiles} tiles of {cx}x{cy}")
    elif backend == "triton":
        # hapvr/ops/_triton_topk_chamfer.py: query frames packed into power-of-two row blocks
        # (R = 9: 63 of 64 rows), targets unpadded (one tl.dot per target region), a running top-k.
        # The issued multiply-adds come from the module's own mma_work (tested there).
        from hapvr.ops._triton_topk_chamfer import mma_work

        kw = dict(Bq=shape["Bq"], Bt=shape["Bt"], k=k, dtype=torch.bfloat16 if e == 2 else torch.float32)
        issued, ideal = mma_work("forward", R, shape["T"], shape["T2"], D, **kw)
        alu = 3.0 * X * R * Y * R                           # k = 1: compare, select value, select index per product row
        compulsory = e * R * D * (X + Y) + e * n_out + (n_cell if train else 0)
        # the top-k ALU work runs beside the MMAs; counted on top (pessimistic) at 1 op / lane / clock
        phases.append(_phase("fused tl.dot + running top-k", 2.0 * issued, compulsory, gpu, peak,
                             extra_s=alu / (gpu["fp32"] / 2)))
        if train:
            dq, _ = mma_work("grad_query", R, shape["T"], shape["T2"], D, **kw)
            dt, _ = mma_work("grad_target", R, shape["T"], shape["T2"], D, **kw)
            bwd_bytes = e * n_out + n_cell + e * R * D * 2 * (X + Y)
            decode = 3.0 * X * R * Y * R                    # rebuilding W_j from the selection, per weight
            phases.append(_phase("bwd: d query + d target tl.dot", 2.0 * (dq + dt), bwd_bytes, gpu, peak,
                                 extra_s=decode / (gpu["fp32"] / 2)))
        notes.append(f"MMA work x{issued / ideal:.3f} (packed query rows, unpadded targets)")
    elif backend == "cuda":
        sectors = float(X) * Y * R * R * D * (1 + 1 / 32)    # uncoalesced t (1 sector / lane) + broadcast q
        l1 = sectors / (L1_SECTORS_PER_CLOCK * gpu["sms"] * gpu["clock"])
        ph = _phase("fwd: 1 thread / output", gemm, e * R * D * (X + Y) + e * n_out, gpu, "fp32")
        if l1 > ph["time"]:
            ph.update(time=l1, bound="L1 sectors")
        phases.append(ph)
        if train:  # 2 kernels, ~3 integer instructions per (x, i, y, j, d) (mask test + branch)
            instr = 2 * 3.0 * X * R * Y * R * D
            t = instr / (INT_LANES_PER_SM * gpu["sms"] * gpu["clock"])
            phases.append(dict(name="bwd: 2 kernels, mask scan", flops=2 * gemm * k / R,
                               bytes=(e + 1) * n_cell + e * R * D * (X + Y), time=t, bound="issue (int)"))
    elif backend == "reference":
        phases.append(_phase("GEMM (whole S write)", gemm, e * R * D * (X + Y) + e * n_sim, gpu, peak))
        phases.append(_phase("topk + 2 means", 0, e * n_sim + (e + 8 + 2 * e) * n_cell + 3 * e * n_out, gpu, peak))
        if train:
            phases.append(_phase("bwd: scatter into zero S", 0, e * n_sim + (8 + e) * n_cell, gpu, peak))
            phases.append(_phase("bwd: 2 dense GEMMs", 2 * gemm, 2 * e * n_sim + 2 * e * R * D * (X + Y), gpu, peak))
        notes.append(f"holds S: {e * n_sim / 2**30:.3g} GiB" + (" (+ its gradient)" if train else ""))
    else:
        raise ValueError(backend)
    device_s = sum(p["time"] for p in phases)
    total = max(device_s, floor_s)
    flops = sum(p["flops"] for p in phases)
    nbytes = sum(p["bytes"] for p in phases)
    return dict(phases=phases, flops=flops, bytes=nbytes, device_s=device_s, floor_s=floor_s, time=total,
                intensity=flops / nbytes if nbytes else float("inf"), notes=notes,
                bound="host" if floor_s > device_s else "+".join(sorted({p["bound"] for p in phases})))


def gemm_calls(shape: dict, precision: str, workspace: int) -> list[tuple[int, int, int]]:
    """The ``(m, n, k)`` of every GEMM the tiled backend issues on ``shape`` at ``workspace``:
    ``[x R, D] x [D, y R]`` per forward tile and, in training, ``[x R, y R] x [y R, D]`` and
    ``[y R, x R] x [x R, D]`` per backward tile."""
    X, Y = shape["Bq"] * shape["T"], shape["Bt"] * shape["T2"]
    e = PRECISIONS[precision][0]
    train = shape["train"]
    calls = []
    bx, by = tile_frames(workspace, R_, X, Y, e, K_, "forward_save" if train else "forward", D_)
    for y0 in range(0, Y, by):
        for x0 in range(0, X, bx):
            calls.append(((min(x0 + bx, X) - x0) * R_, (min(y0 + by, Y) - y0) * R_, D_))
    if train:
        cx, cy = tile_frames(workspace, R_, X, Y, e, K_, "backward", D_)
        for y0 in range(0, Y, cy):
            for x0 in range(0, X, cx):
                x, y = (min(x0 + cx, X) - x0) * R_, (min(y0 + cy, Y) - y0) * R_
                calls += [(x, D_, y), (y, D_, x)]
    return calls


def gemm_roofline(shape: dict, precision: str, gpu: dict, workspace: int) -> dict:
    """Predicted seconds of the bare GEMMs of :func:`gemm_calls`, issued one after another from
    Python (two slices and a matmul per call): each call max(FLOPs / (65% of the peak), its operand
    and output bytes / (75% of the bandwidth)), summed, against the host time to issue them."""
    e, peak = PRECISIONS[precision]
    calls = gemm_calls(shape, precision, workspace)
    flops = sum(2.0 * m * n * k for m, n, k in calls)
    nbytes = sum(e * (m * k + k * n + m * n) for m, n, k in calls)
    device_s = sum(max(2.0 * m * n * k / (gpu[peak] * GEMM_EFFICIENCY), e * (m * k + k * n + m * n)
                       / (gpu["bw"] * HBM_EFFICIENCY)) for m, n, k in calls)
    floor_s = len(calls) * (ATEN_CALL_S + 2 * VIEW_CALL_S)
    return dict(calls=len(calls), flops=flops, bytes=nbytes, device_s=device_s, floor_s=floor_s,
                time=max(device_s, floor_s))


def tiled_memory_bound(shape: dict, precision: str, workspace: int) -> int:
    """Bytes the tiled op may hold beyond its inputs (and the incoming gradient): the workspace,
    plus what outlives a tile: the fp32 map grid, its validity masks and the output map copies
    (``(6 + 3e) X Y``), and in training the int8 selection (``X R Y``) and the fp32 input
    gradients with their casts (``(4 + e) R D (X + Y)``)."""
    X, Y = shape["Bq"] * shape["T"], shape["Bt"] * shape["T2"]
    e = PRECISIONS[precision][0]
    extra = (6 + 3 * e) * X * Y
    if shape["train"]:
        extra += X * R_ * Y + (4 + e) * R_ * D_ * (X + Y)
    return workspace + extra


def quadlinear_roofline(Q: int, M: int, gpu: dict, scan: bool) -> dict:
    """Forward + backward of the CUDA quadlinear_ap path: the three prefix passes (moments in
    the forward, again in the backward's prepare, weights in the backward) with the serial
    (one thread per row) or block-scan kernel, and every other pass (casts, 2 x 2 row sorts,
    per-element kernels, reductions) as bytes / bandwidth plus a kernel-launch floor; the result
    is the larger of that and the host time (two calls from Python, ~30 launches from C++)."""
    clock, sms = gpu["clock"], gpu["sms"]
    bw = gpu["bw"] * HBM_EFFICIENCY
    per_elem = gpu["l1_cycles"] + gpu["l2_cycles"] / 4   # a 32 B sector holds 4 doubles
    resident_threads = sms * 2048
    if scan and M > 256:
        chunk = math.ceil(M / min(256, math.ceil(M / 16)))
        cycles = 2 * chunk * per_elem + 600               # partial + range passes, then the block scan
        waves = math.ceil(Q / (sms * 8))                   # 8 blocks of 256 threads per SM
    else:
        cycles = M * per_elem * (2 if scan else 1)         # scan=True short rows: the chunked CPU code
        waves = math.ceil(Q / resident_threads)
    prefix_latency = waves * cycles / clock
    prefix_bytes = Q * M * (8 + 16) + Q * M * 8 / 3        # read values (+ weights), write 2 prefixes
    prefix_one = max(prefix_latency, prefix_bytes / bw)
    prefix = 3 * prefix_one
    # Everything else, per fwd + bwd: score cast, 4 (mask, where, sort, count) x 2 per prepare x 2
    # prepares, positive kernel x 2, gather, negative kernel, reductions: ~ 150 bytes per entry.
    other_bytes = 150.0 * Q * M
    search = 3 * math.log2(max(M, 2)) * (gpu["l1_cycles"] + gpu["l2_cycles"]) / 2
    other_latency = 3 * math.ceil(Q * M / resident_threads) * search / clock
    kernels = 30
    other = max(other_bytes / bw, other_latency) + kernels * KERNEL_S
    host = 2 * ATEN_CALL_S + kernels * CPP_LAUNCH_S
    device = prefix + other
    return dict(prefix=prefix, prefix_one=prefix_one, other=other, device=device, host=host,
                total=max(device, host))


def train_step_roofline(videos: int, frames: int, gpu: dict) -> dict:
    """One ``train_step`` of the paper preset (visil head) on ``videos`` x 2 clips of ``frames``
    frames under bf16 autocast: the spatial op (tiled, bf16 forward and backward, 512 MiB), the
    region attention, the comparator on the N^2 maps, the maps' own passes and the frame- and
    video-level QuadLinear-AP, against the host time of the step's dispatcher calls (with at most
    one sync per step the two overlap, so the larger sets the time)."""
    N = 2 * videos
    cells = float(N) * N * frames * frames
    rows = N * frames * R_
    spatial = spatial_roofline(dict(Bq=N, T=frames, Bt=N, T2=frames, train=True), "tiled", "bf16", gpu)
    phases = [dict(name="spatial op (tiled bf16, fwd + bwd)", time=spatial["device_s"]),
              _phase("region attention (fwd + bwd)", 3 * 2.0 * rows * D_ * D_, ATTENTION_BYTES_PER_VALUE * rows * D_,
                     gpu, "bf16"),
              _phase("comparator (fwd + bwd)", COMPARATOR_FLOPS_PER_CELL * cells, COMPARATOR_BYTES_PER_CELL * cells,
                     gpu, "bf16"),
              _phase("maps: mask, casts, gradient", 0, MAPS_BYTES_PER_CELL * cells, gpu, "bf16"),
              dict(name="QuadLinear-AP (frame + video level)",
                   time=quadlinear_roofline(2 * N * frames, frames, gpu, True)["device"]
                   + quadlinear_roofline(N, N, gpu, True)["device"])]
    device_s = sum(p["time"] for p in phases)
    host_s = ((STEP_LAUNCH_CALLS + STEP_AUTOCAST_CASTS) * ATEN_CALL_S + STEP_VIEW_CALLS * VIEW_CALL_S
              + spatial["floor_s"])
    return dict(phases=phases, device_s=device_s, host_s=host_s, time=max(device_s, host_s),
                bound="host" if host_s > device_s else "device")


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------

WS_CUDA = DEFAULT_WORKSPACE_BYTES_CUDA   # 512 MiB: the tiled default on CUDA
WS_SMALL = DEFAULT_WORKSPACE_BYTES       # 64 MiB: the CPU default, many tiles on the GPU shapes


def _ws_label(workspace: int) -> str:
    return f"ws{workspace >> 20}M"


@dataclass(frozen=True)
class GemmCase:
    shape: str
    precision: str
    workspace: int

    @property
    def name(self) -> str:
        return f"gemm/{self.shape}/{self.precision}/{_ws_label(self.workspace)}"


@dataclass(frozen=True)
class SpatialCase:
    shape: str
    backend: str
    precision: str
    workspace: int = WS_CUDA  # the tiled backend's; the others are compared with the GEMMs at 512 MiB

    @property
    def name(self) -> str:
        tail = f"/{_ws_label(self.workspace)}" if self.backend == "tiled" else ""
        return f"spatial/{self.shape}/{self.backend}/{self.precision}{tail}"

    @property
    def gemm(self) -> GemmCase:
        return GemmCase(self.shape, self.precision, self.workspace)


GEMM_CASES = [GemmCase("a", "bf16", WS_CUDA), GemmCase("a", "tf32", WS_CUDA), GemmCase("a", "fp32-ieee", WS_CUDA),
              GemmCase("a", "bf16", WS_SMALL), GemmCase("b", "bf16", WS_CUDA), GemmCase("b", "tf32", WS_CUDA),
              GemmCase("b", "bf16", WS_SMALL), GemmCase("c", "bf16", WS_CUDA)]
SPATIAL_CASES = [SpatialCase("a", "tiled", "bf16"), SpatialCase("a", "tiled", "tf32"),
                 SpatialCase("a", "tiled", "fp32-ieee"), SpatialCase("a", "tiled", "bf16", WS_SMALL),
                 SpatialCase("b", "tiled", "bf16"), SpatialCase("b", "tiled", "tf32"),
                 SpatialCase("b", "tiled", "bf16", WS_SMALL), SpatialCase("c", "tiled", "bf16"),
                 SpatialCase("a", "triton", "bf16"), SpatialCase("b", "triton", "bf16"),
                 SpatialCase("a", "reference", "bf16"), SpatialCase("b", "reference", "bf16"),
                 SpatialCase("a", "cuda", "fp32-ieee")]
TRAIN_CASES = {"train/b-64x64/amp-bf16": (32, 28), "train/paper-128x128/amp-bf16": (64, 28)}  # videos, frames
QUADLINEAR_CASES = {"quadlinear/64x4096/cuda": (64, 4096), "quadlinear/3584x28/cuda": (128 * 28, 28)}
EVAL_VIDEOS, EVAL_QUERIES, EVAL_LENGTHS = 200, 10, (20, 60)  # synthetic feature file: frames uniform in 20..60
HBM_COPY_BYTES = 1 << 30


@dataclass
class Outcome:
    status: str  # PASS, FAIL, INFO (measured, no verdict), SKIP (cannot run here)
    detail: str


@dataclass(frozen=True)
class Row:
    name: str
    device: str                                   # "cuda" or "cpu"
    what: str                                     # what it measures, one line
    est_s: float                                  # expected seconds, for the budget
    check: str                                    # the rule its measurement is held to
    figure: Callable[[dict], str]                 # docs/gpu.md's predicted figure on a PEAKS entry ("-": none)
    run: Callable[["Context"], Outcome]


@dataclass
class Context:
    peaks: dict | None          # the PEAKS entry the model-based figures use (None: no verdict on them)
    repeats: int = 10
    deadline: float = math.inf
    gemm_s: dict = field(default_factory=dict)     # measured bare-GEMM seconds, by GemmCase
    tmp: tempfile.TemporaryDirectory | None = None

    def tmpdir(self) -> Path:
        if self.tmp is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="gpu_check.")
        return Path(self.tmp.name)


@dataclass(frozen=True)
class Check:
    label: str
    measured: float
    limit: float | None  # None: no figure for this device (reported, not judged)
    fmt: str = "{:.3g}"

    @property
    def ok(self) -> bool:
        return self.limit is None or self.measured <= self.limit

    def __str__(self) -> str:
        m = self.fmt.format(self.measured)
        if self.limit is None:
            return f"{self.label} {m} (no figure for this device)"
        return f"{self.label} {m} <= {self.fmt.format(self.limit)} {'ok' if self.ok else 'OVER'}"


def judge(checks: list[Check], notes: str = "") -> Outcome:
    """PASS when every judged check holds, FAIL when one does not, INFO when none is judged."""
    judged = [c for c in checks if c.limit is not None]
    status = "INFO" if not judged else ("PASS" if all(c.ok for c in judged) else "FAIL")
    detail = "; ".join([str(c) for c in checks] + ([notes] if notes else []))
    return Outcome(status, detail)


def within(predicted: float | None) -> float | None:
    """The limit a measurement is held to: the predicted figure times ``TOLERANCE``."""
    return None if predicted is None else predicted * TOLERANCE


def _calls(n: int) -> str:
    return f"{n} call{'s' if n != 1 else ''}"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms"


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


# --- figures (what docs/gpu.md predicts for each row, per device) ----------------------------

NO_FIGURE = "-"


def _gemm_figure(case: GemmCase, gpu: dict) -> str:
    return _ms(gemm_roofline(ROW_SHAPES[case.shape], case.precision, gpu, case.workspace)["time"])


def predicted_ratio(case: SpatialCase, gpu: dict) -> float:
    shape = ROW_SHAPES[case.shape]
    op = spatial_roofline(shape, case.backend, case.precision, gpu, case.workspace)["time"]
    return op / gemm_roofline(shape, case.precision, gpu, case.gemm.workspace)["time"]


def _train_figure(name: str, gpu: dict) -> str:
    step = train_step_roofline(*TRAIN_CASES[name], gpu)
    return f"{_ms(step['time'])} ({step['bound']})"


def _hbm_figure(gpu: dict) -> str:
    return f"{HBM_EFFICIENCY * gpu['bw'] / 1e12:.3g} TB/s"


# --- measuring on a GPU ----------------------------------------------------------------------

def cuda_median_s(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` between two CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def wall_median_s(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` followed by a device synchronisation (end to end)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SYNC_MESSAGE = "called a synchronizing CUDA operation"


@dataclass(frozen=True)
class Syncs:
    """Synchronising CUDA calls of one run of a function and the Python lines that made them."""
    count: int
    places: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = {p: self.places.count(p) for p in self.places}
        text = ", ".join(f"{p}{f' x{n}' if n > 1 else ''}" for p, n in sorted(where.items(), key=lambda i: -i[1])[:4])
        return f"{self.count} syncs" + (f" ({text})" if text else "")


def sync_warnings(caught) -> Syncs:
    """The synchronising-call warnings among recorded ``warnings``, with their places."""
    hits = [w for w in caught if SYNC_MESSAGE in str(w.message)]
    return Syncs(len(hits), tuple(f"{Path(w.filename).name}:{w.lineno}" for w in hits))


def count_syncs(fn) -> tuple[Syncs, object]:
    """(synchronising CUDA calls made by ``fn``, its result), counted with
    ``torch.cuda.set_sync_debug_mode("warn")``: each such call warns once (a read of device memory
    by the host, or a blocking copy, host-to-device from pageable memory included), warnings raised
    in the autograd engine's threads included (they are replayed on the caller's)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sync_warnings(caught), result


def peak_extra_bytes(fn) -> int:
    """``torch.cuda.max_memory_allocated`` during ``fn`` above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _unit_features(shape, dtype, device, generator):
    x = torch.randn(*shape, device=device, generator=generator)
    return torch.nn.functional.normalize(x, dim=-1).to(dtype)


def measure_gemm(case: GemmCase, repeats: int) -> float:
    """Median seconds of the bare ``torch.matmul`` calls of :func:`gemm_calls` (random operands)."""
    dtype, tf32 = GEMM_VARIANTS[case.precision]
    shape = ROW_SHAPES[case.shape]
    calls = gemm_calls(shape, case.precision, case.workspace)
    big_m = max(m for m, _, _ in calls)
    big_n = max(n for _, n, _ in calls)
    big_k = max(k for _, _, k in calls)
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(big_m, big_k, device="cuda", generator=g).to(dtype)
    b = torch.randn(big_k, big_n, device="cuda", generator=g).to(dtype)

    def run():
        for m, n, k in calls:
            torch.matmul(a[:m, :k], b[:k, :n])

    with allow_tf32(tf32):
        return cuda_median_s(run, repeats)


def gemm_verdict(case: GemmCase, gpu: dict | None, seconds: float) -> Outcome:
    """The bare GEMMs' time against the model; achieved TFLOP/s, GB/s and share of the peak."""
    shape = ROW_SHAPES[case.shape]
    g = gemm_roofline(shape, case.precision, gpu or PEAKS[DOC_GPU], case.workspace)
    peak_key = PRECISIONS[case.precision][1]
    rates = (f"{g['flops'] / seconds / 1e12:.3g} TFLOP/s, {g['bytes'] / seconds / 1e9:.3g} GB/s, "
             f"{_calls(g['calls'])}")
    if gpu is not None:
        rates += f", {100 * g['flops'] / seconds / gpu[peak_key]:.0f}% of the dense {peak_key} peak"
    limit = None if gpu is None else within(g["time"]) * 1e3
    return judge([Check("time", seconds * 1e3, limit, "{:.3g} ms")], rates)


def _gemm_row(case: GemmCase) -> Row:
    def run(ctx: Context) -> Outcome:
        ctx.gemm_s[case] = measure_gemm(case, ctx.repeats)
        return gemm_verdict(case, ctx.peaks, ctx.gemm_s[case])

    shape = ROW_SHAPES[case.shape]
    return Row(case.name, "cuda", f"bare torch.matmul calls of the tiled op on {shape['label']}, {case.precision}, "
               f"{case.workspace >> 20} MiB tiles{' (forward + backward GEMMs)' if shape['train'] else ''}",
               3, f"time <= figure x {TOLERANCE}",
               lambda gpu: _gemm_figure(case, gpu), run)


def spatial_verdict(case: SpatialCase, gpu: dict | None, op_s: float, gemm_s: float, syncs: Syncs,
                    peak_bytes: int) -> Outcome:
    """op time / bare GEMM time against the predicted ratio, the sync budget (0) and, for the tiled
    backend, the peak memory against its workspace bound."""
    ratio = predicted_ratio(case, gpu) if gpu else None
    checks = [Check("op/GEMM", op_s / gemm_s, within(ratio)), Check("syncs", syncs.count, 0, "{:.0f}")]
    if case.backend == "tiled":
        bound = tiled_memory_bound(ROW_SHAPES[case.shape], case.precision, case.workspace)
        checks.append(Check("peak GiB", peak_bytes / 2**30, within(bound) / 2**30))
    notes = f"op {_ms(op_s)}, GEMM {_ms(gemm_s)} ({case.gemm.name}), {syncs}"
    if case.backend != "tiled":
        notes += f", peak {_gib(peak_bytes)}"
    return judge(checks, notes)


def _spatial_inputs(shape: dict, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = _unit_features((shape["Bq"], shape["T"], R_, D_), dtype, "cuda", g)
    t = _unit_features((shape["Bt"], shape["T2"], R_, D_), dtype, "cuda", g)
    grad = torch.randn(shape["Bq"], shape["Bt"], shape["T"], shape["T2"], device="cuda", generator=g).to(dtype)
    return q, t, grad


def _spatial_row(case: SpatialCase) -> Row:
    from hapvr.ops import explain_spatial_backends, spatial_topk_chamfer, spatial_topk_chamfer_reference

    shape = ROW_SHAPES[case.shape]
    train = shape["train"]

    def run(ctx: Context) -> Outcome:
        dtype, tf32 = GEMM_VARIANTS[case.precision]
        with allow_tf32(tf32):
            q, t, grad = _spatial_inputs(shape, dtype)
            why = explain_spatial_backends(q, t, K_)[case.backend]
            if why:
                return Outcome("SKIP", f"{case.backend} cannot run here: {'; '.join(why)}")
            q.requires_grad_(train)
            t.requires_grad_(train)

            def op():
                with torch.set_grad_enabled(train):
                    if case.backend == "reference":
                        out = spatial_topk_chamfer_reference(q, t, K_)
                    else:
                        out = spatial_topk_chamfer(q, t, K_, backend=case.backend,
                                                   workspace_bytes=case.workspace if case.backend == "tiled" else None)
                    if train:
                        out.backward(grad)
                        q.grad = t.grad = None

            op_s = cuda_median_s(op, ctx.repeats)
            syncs, _ = count_syncs(op)
            peak = peak_extra_bytes(op)
        if case.gemm not in ctx.gemm_s:
            ctx.gemm_s[case.gemm] = measure_gemm(case.gemm, ctx.repeats)
        return spatial_verdict(case, ctx.peaks, op_s, ctx.gemm_s[case.gemm], syncs, peak)

    what = (f"spatial_topk_chamfer {case.backend} {case.precision} on {shape['label']}"
            f"{' (forward + backward)' if train else ''}"
            f"{f', {case.workspace >> 20} MiB workspace' if case.backend == 'tiled' else ''}")
    est = 40 if case.backend == "triton" else 5
    check = f"op/GEMM ({case.gemm.name}) <= figure x {TOLERANCE}; 0 syncs"
    if case.backend == "tiled":
        check += f"; peak <= {_gib(tiled_memory_bound(shape, case.precision, case.workspace))} x {TOLERANCE}"
    return Row(case.name, "cuda", what, est, check, lambda gpu: f"{predicted_ratio(case, gpu):.3g}", run)


def _hbm_row() -> Row:
    def run(ctx: Context) -> Outcome:
        src = torch.empty(HBM_COPY_BYTES // 4, device="cuda")
        dst = torch.empty_like(src)
        seconds = cuda_median_s(lambda: dst.copy_(src), ctx.repeats)
        rate = 2 * HBM_COPY_BYTES / seconds  # read + write
        floor = None if ctx.peaks is None else HBM_EFFICIENCY * ctx.peaks["bw"] / TOLERANCE
        # judged as time: at most the time the floor rate would take
        limit = None if floor is None else 2 * HBM_COPY_BYTES / floor * 1e3
        return judge([Check("time", seconds * 1e3, limit, "{:.3g} ms")], f"{rate / 1e12:.3g} TB/s (read + write)")

    return Row("hbm/copy-1GiB", "cuda", "device-to-device copy of 1 GiB: achieved HBM bandwidth (read + write)", 2,
               f"bandwidth >= figure / {TOLERANCE} (75% of the datasheet's)", _hbm_figure, run)


def _temporal_row() -> Row:
    from hapvr.ops import temporal_topk_chamfer

    def run(ctx: Context) -> Outcome:
        N, T = 64, 28
        g = torch.Generator(device="cuda").manual_seed(0)
        sim = torch.rand(N, N, T, T, device="cuda", generator=g).requires_grad_(True)
        lengths = torch.full((N,), T, device="cuda")

        def op():
            out = temporal_topk_chamfer(sim, rate=0.03, query_lengths=lengths[:, None], target_lengths=lengths[None, :])
            out.sum().backward()
            sim.grad = None

        seconds = cuda_median_s(op, ctx.repeats)
        syncs, _ = count_syncs(op)
        return judge([Check("syncs", syncs.count, 0, "{:.0f}")], f"fwd + bwd {_ms(seconds)}, {syncs}")

    return Row("temporal/b", "cuda", "temporal_topk_chamfer on the 64 x 64 clip maps of 28 frames, fwd + bwd", 3,
               "0 syncs (time reported)", lambda gpu: NO_FIGURE, run)


def _quadlinear_row(name: str) -> Row:
    from hapvr.ops import explain_quadlinear_ap_backends, quadlinear_ap

    Q, M = QUADLINEAR_CASES[name]

    def run(ctx: Context) -> Outcome:
        g = torch.Generator(device="cuda").manual_seed(0)
        scores = torch.rand(Q, M, device="cuda", generator=g).requires_grad_(True)
        labels = (torch.rand(Q, M, device="cuda", generator=g) < 0.3).to(torch.int8)
        why = explain_quadlinear_ap_backends(scores, labels)["cuda"]
        if why:
            return Outcome("SKIP", f"cuda cannot run here: {'; '.join(why)}")

        def op():
            quadlinear_ap(scores, labels, 0.05, 0.1, backend="cuda").risk.sum().backward()
            scores.grad = None

        seconds = cuda_median_s(op, ctx.repeats)
        syncs, _ = count_syncs(op)
        predicted = quadlinear_roofline(Q, M, ctx.peaks, True)["total"] if ctx.peaks else None
        return judge([Check("time", seconds * 1e3, None if predicted is None else within(predicted) * 1e3, "{:.3g} ms"),
                      Check("syncs", syncs.count, 0, "{:.0f}")], str(syncs))

    return Row(name, "cuda", f"quadlinear_ap cuda backend, {Q} x {M}, fwd + bwd", 5,
               f"time <= figure x {TOLERANCE}; 0 syncs", lambda gpu: _ms(quadlinear_roofline(Q, M, gpu, True)["total"]),
               run)


def synthetic_batch(videos: int, frames: int, dim: int, device, seed: int = 0):
    """A training batch as the streaming pipeline (the paper preset's) hands it to ``train_step``:
    region features and teacher vectors on ``device``, the labels on the CPU; every video gives
    two clips of ``frames`` frames, a positive pair."""
    from hapvr.training.batches import Batch

    g = torch.Generator().manual_seed(seed)
    n = 2 * videos
    features = torch.nn.functional.normalize(torch.randn(n, frames, R_, dim, generator=g), dim=-1).to(device)
    teacher = torch.nn.functional.normalize(torch.randn(n, frames, TEACHER_DIM, generator=g), dim=-1).to(device)
    video = torch.arange(n) // 2
    return Batch(features, teacher, torch.full((n,), frames), video[:, None] == video[None, :], video,
                 torch.full((n,), -1))


def trainer_for(cfg, device):
    """A :class:`hapvr.training.trainer.Trainer` holding what ``train_step`` uses (model, AdamW,
    schedule, objective) as ``setup`` builds them, without data, benchmarks or checkpoints."""
    from hapvr.runtime import DistInfo
    from hapvr.training.batch_loss import BatchLoss
    from hapvr.training.schedule import lr_lambda
    from hapvr.training.trainer import Trainer, new_model

    torch.manual_seed(0)
    model = new_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    return Trainer(cfg=cfg, info=DistInfo(device=torch.device(device)), extractor=None, model=model,
                   train_model=model, eval_model=model, ema=None, baseline=None, optimizer=optimizer,
                   scheduler=scheduler, sampler=None, batches=None, loss=BatchLoss(cfg), gather=False, start_step=0,
                   ckpt_path="", pipeline="streaming", bench=None, bench_feats=None, skipped=[], t_start=0.0,
                   t_data=0.0)


def train_verdict(name: str, gpu: dict | None, step_s: float, syncs: Syncs, peak_bytes: int) -> Outcome:
    """The step's wall time against the model, and the sync budget (at most one per step)."""
    videos, frames = TRAIN_CASES[name]
    predicted = train_step_roofline(videos, frames, gpu)["time"] if gpu else None
    return judge([Check("step", step_s * 1e3, None if predicted is None else within(predicted) * 1e3, "{:.3g} ms"),
                  Check("syncs", syncs.count, 1, "{:.0f}")],
                 f"{syncs}, peak {_gib(peak_bytes)} above the batch and weights")


def _train_row(name: str) -> Row:
    videos, frames = TRAIN_CASES[name]

    def run(ctx: Context) -> Outcome:
        from hapvr.precision import tf32_wanted
        from hapvr.training.config import preset
        from hapvr.training.trainer import train_step

        cfg = preset("paper", batch_videos=videos, clip_frames=frames)
        with allow_tf32(tf32_wanted()):  # as every hapvr command on CUDA sets it (HAPVR_TF32)
            trainer = trainer_for(cfg, "cuda")
            batch = synthetic_batch(videos, frames, cfg.pca_dim, "cuda")
            step_s = wall_median_s(lambda: train_step(trainer, batch), max(3, ctx.repeats // 2), warmup=2)
            syncs, _ = count_syncs(lambda: train_step(trainer, batch))
            peak = peak_extra_bytes(lambda: train_step(trainer, batch))
        return train_verdict(name, ctx.peaks, step_s, syncs, peak)

    return Row(name, "cuda", f"hapvr.training.trainer.train_step, paper preset, {2 * videos} x {2 * videos} clips of "
               f"{frames} frames, bf16 autocast (--amp bf16): forward, backward, AdamW", 30 if videos <= 32 else 45,
               f"step <= figure x {TOLERANCE}; <= 1 sync", lambda gpu: _train_figure(name, gpu), run)


def write_eval_fixture(folder: Path, videos: int = EVAL_VIDEOS, queries: int = EVAL_QUERIES,
                       lengths: tuple[int, int] = EVAL_LENGTHS, dim: int = D_, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic benchmark: an HDF5 feature file of ``videos`` unit region features ``[T, 9, dim]``
    (T uniform in ``lengths``) and a custom JSON annotation whose first ``queries`` videos are the
    queries, each with three positives. Written once per folder."""
    from hapvr.evaluation.feature_store import write_features

    features, annotations = folder / f"synthetic-{videos}.hdf5", folder / f"synthetic-{videos}.json"
    if features.exists() and annotations.exists():
        return features, annotations
    g = torch.Generator().manual_seed(seed)
    ids = [f"v{i:04d}" for i in range(videos)]
    frames = torch.randint(lengths[0], lengths[1] + 1, (videos,), generator=g).tolist()
    write_features(features, {v: torch.nn.functional.normalize(torch.randn(n, R_, dim, generator=g), dim=-1)
                              for v, n in zip(ids, frames)})
    positives = {q: [ids[(i * 7 + j * 13 + queries) % videos] for j in range(3)] for i, q in enumerate(ids[:queries])}
    annotations.write_text(json.dumps({"name": f"synthetic-{videos}", "queries": ids[:queries], "database": ids,
                                       "positives": positives}))
    return features, annotations


class HostOnlyScorer:
    """A scorer's indexing (the host's work per video: read, digest, index, pad) with no
    similarity work: ``pairwise`` returns zeros."""

    def __init__(self, scorer):
        self.scorer, self.min_frames = scorer, scorer.min_frames

    def index(self, features):
        return self.scorer.index(features)

    def pairwise(self, queries, query_lengths, targets, target_lengths):
        return torch.zeros(queries.shape[0], targets.shape[0], device=targets.device)

    def fingerprint(self):
        return self.scorer.fingerprint()


class BatchCounter:
    """A scorer that counts the engine's batches (a new padded target tensor starts one) and adds
    up the model's device seconds of its ``pairwise`` calls."""

    def __init__(self, scorer, gpu: dict | None):
        self.scorer, self.min_frames, self.gpu = scorer, scorer.min_frames, gpu
        self.batches, self.calls, self.model_s, self._last = 0, 0, 0.0, None

    def index(self, features):
        return self.scorer.index(features)

    def pairwise(self, queries, query_lengths, targets, target_lengths):
        if targets is not self._last:
            self.batches, self._last = self.batches + 1, targets
        self.calls += 1
        if self.gpu is not None:
            precision = "bf16" if queries.dtype == torch.bfloat16 else (
                "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32-ieee")
            shape = dict(Bq=queries.shape[0], T=queries.shape[1], Bt=targets.shape[0], T2=targets.shape[1], train=False)
            spatial = spatial_roofline(shape, "tiled", precision, self.gpu)
            host = spatial["floor_s"] + PAIRWISE_LAUNCH_CALLS * ATEN_CALL_S + PAIRWISE_VIEW_CALLS * VIEW_CALL_S
            self.model_s += max(spatial["device_s"], host)
        return self.scorer.pairwise(queries, query_lengths, targets, target_lengths)

    def fingerprint(self):
        return self.scorer.fingerprint()


def engine_verdict(judged: bool, engine_s: float, host_s: float, model_s: float, batches: int, syncs: Syncs,
                   videos: int) -> Outcome:
    """The engine's time against its host-only time plus the modelled similarity work of its
    batches (the batch's closing read serialises the two), and the sync budget per batch."""
    limit = within(host_s + model_s) * 1e3 if judged else None
    return judge([Check("engine", engine_s * 1e3, limit, "{:.4g} ms"),
                  Check("syncs per batch", syncs.count / max(batches, 1), 1, "{:.2f}")],
                 f"host-only {_ms(host_s)} ({host_s / videos * 1e3:.3g} ms per video), {batches} batches, {syncs}")


def _evaluate_args(features: Path, annotations: Path, device: str) -> list[str]:
    return ["--dataset", "custom", "--features", str(features), "--annotations", str(annotations), "--features-only",
            "--device", device, "--no-progress"]


def _engine_inputs(ctx: Context, device: str):
    """The CLI's scorer (its default precision and backend) and the synthetic benchmark's ids."""
    from hapvr.evaluate import build_parser, make_scorer
    from hapvr.evaluation.feature_store import FeatureStore

    features, annotations = write_eval_fixture(ctx.tmpdir())
    scorer = make_scorer(build_parser().parse_args(_evaluate_args(features, annotations, device)))
    store = FeatureStore(features)
    ids = sorted(store.ids())
    return scorer, store, ids[:EVAL_QUERIES], ids


def _eval_engine_row() -> Row:
    def run(ctx: Context) -> Outcome:
        from hapvr.evaluation.engine import compute_scores

        with allow_tf32(torch.backends.cuda.matmul.allow_tf32):  # the CLI's scorer sets TF32: restored after
            scorer, store, queries, targets = _engine_inputs(ctx, "cuda")
            compute_scores(scorer, store, queries, targets[:20], progress=False)  # CUDA, cuBLAS, allocator warm-up
            host_s = wall_median_s(lambda: compute_scores(HostOnlyScorer(scorer), store, queries, targets,
                                                          progress=False), 1, warmup=0)
            counter = BatchCounter(scorer, ctx.peaks)
            engine_s = wall_median_s(lambda: compute_scores(counter, store, queries, targets, progress=False), 1,
                                     warmup=0)
            syncs, _ = count_syncs(lambda: compute_scores(scorer, store, queries, targets, progress=False))
        return engine_verdict(ctx.peaks is not None, engine_s, host_s, counter.model_s, counter.batches, syncs,
                              len(targets))

    return Row("eval/engine-200", "cuda", f"hapvr.evaluation.engine.compute_scores, features-only scorer of the CLI, "
               f"{EVAL_QUERIES} queries x {EVAL_VIDEOS} videos of {EVAL_LENGTHS[0]}-{EVAL_LENGTHS[1]} frames", 40,
               f"time <= (its host-only time + the model's per-batch time) x {TOLERANCE}; <= 1 sync per batch",
               lambda gpu: NO_FIGURE, run)


def _eval_cli_row() -> Row:
    def run(ctx: Context) -> Outcome:
        features, annotations = write_eval_fixture(ctx.tmpdir())
        left = max(1.0, ctx.deadline - time.monotonic())
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hapvr.evaluate", *_evaluate_args(features, annotations, "cuda")],
                              capture_output=True, text=True, cwd=ROOT, timeout=left)
        seconds = time.perf_counter() - start
        if proc.returncode:
            return Outcome("FAIL", f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        return Outcome("PASS", f"exit 0 in {seconds:.3g} s end to end (interpreter, imports, CUDA start, scoring)")

    return Row("eval/cli-200", "cuda", f"python -m hapvr.evaluate --features-only --device cuda on the same "
               f"{EVAL_VIDEOS}-video file, wall time", 40, "exits 0 (time reported)", lambda gpu: NO_FIGURE, run)


def _numerics_row() -> Row:
    def run(ctx: Context) -> Outcome:
        left = max(1.0, ctx.deadline - time.monotonic())
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                               "tests/test_backend_precision.py"], capture_output=True, text=True, cwd=ROOT,
                              timeout=left)
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        return Outcome("PASS" if proc.returncode == 0 else "FAIL", f"pytest exit {proc.returncode}: {last}")

    return Row("numerics/backends", "cuda", "tests/test_backend_precision.py -k cuda: every CUDA backend and "
               "precision against a float64 reference, forward and backward", 150,
               "every case passes (error <= 2x PyTorch's own in that precision + 2 eps)", lambda gpu: NO_FIGURE, run)


# --- CPU rows ---------------------------------------------------------------------------------

CPU_TILE_WORKSPACE = 48 << 10  # 48 KiB: tiles of a few frames on the CPU rows' small batch


def _small_batch():
    """A padded batch in float64: 2 queries (12 and 7 valid of 12 frames) against 3 targets (10, 4
    and 9 of 10), D = 32, and an upstream gradient."""
    g = torch.Generator().manual_seed(0)
    q = _unit_features((2, 12, R_, 32), torch.float64, "cpu", g)
    t = _unit_features((3, 10, R_, 32), torch.float64, "cpu", g)
    grad = torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64)
    return q, t, grad, torch.tensor([12, 7]), torch.tensor([10, 4, 9])


def _forward_backward(q, t, grad, k, ql, tl, backend, workspace=None):
    from hapvr.ops import spatial_topk_chamfer, spatial_topk_chamfer_reference

    q = q.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    if backend == "reference":
        out = spatial_topk_chamfer_reference(q, t, k, ql, tl)
    else:
        out = spatial_topk_chamfer(q, t, k, ql, tl, backend=backend, workspace_bytes=workspace)
    out.backward(grad.to(out.dtype))
    return out.detach().double(), q.grad.double(), t.grad.double()


def _cpu_tile_grid(dtype) -> str:
    e = torch.empty((), dtype=dtype).element_size()
    fwd = tile_frames(CPU_TILE_WORKSPACE, R_, 24, 30, e, 1, "forward_save", 32)
    bwd = tile_frames(CPU_TILE_WORKSPACE, R_, 24, 30, e, 1, "backward", 32)
    return (f"{math.ceil(24 / fwd[0])}x{math.ceil(30 / fwd[1])} forward tiles, "
            f"{math.ceil(24 / bwd[0])}x{math.ceil(30 / bwd[1])} backward tiles")


def _cpu_multitile_fp32(ctx: Context) -> Outcome:
    q64, t64, grad, ql, tl = _small_batch()
    checks = []
    start = time.perf_counter()
    for k in (1, 3):
        want = _forward_backward(q64, t64, grad, k, ql, tl, "reference")
        got = _forward_backward(q64.float(), t64.float(), grad, k, ql, tl, "tiled", CPU_TILE_WORKSPACE)
        for label, w, g in zip(("map", "dq", "dt"), want, got):
            checks.append(Check(f"k={k} {label} err", float((w - g).abs().max()), 1e-5, "{:.1e}"))
    return judge(checks, f"{_cpu_tile_grid(torch.float32)}; {time.perf_counter() - start:.2f} s")


def _cpu_multitile_bf16(ctx: Context) -> Outcome:
    """bf16 on many tiles against float64, allowed twice the error of PyTorch's own bf16 path
    (the reference backend in bf16) plus 2 eps of the output scale."""
    q64, t64, grad, ql, tl = _small_batch()
    eps = torch.finfo(torch.bfloat16).eps
    checks = []
    start = time.perf_counter()
    want = _forward_backward(q64, t64, grad, 1, ql, tl, "reference")
    ref = _forward_backward(q64.bfloat16(), t64.bfloat16(), grad, 1, ql, tl, "reference")
    got = _forward_backward(q64.bfloat16(), t64.bfloat16(), grad, 1, ql, tl, "tiled", CPU_TILE_WORKSPACE)
    for label, w, r, g in zip(("map", "dq", "dt"), want, ref, got):
        scale = float(w.abs().max())
        checks.append(Check(f"{label} err", float((w - g).abs().max()),
                            2 * float((w - r).abs().max()) + 2 * eps * scale, "{:.1e}"))
    return judge(checks, f"{_cpu_tile_grid(torch.bfloat16)}; {time.perf_counter() - start:.2f} s")


def _cpu_tiles(ctx: Context) -> Outcome:
    """The tile grids of the GPU rows: the 64 MiB rows must run many tiles (the multi-tile code on
    the GPU), the 512 MiB ones as docs/gpu.md says."""
    grids, single = [], []
    for case in SPATIAL_CASES:
        if case.backend != "tiled":
            continue
        shape = ROW_SHAPES[case.shape]
        X, Y = shape["Bq"] * shape["T"], shape["Bt"] * shape["T2"]
        e = PRECISIONS[case.precision][0]
        phases = ["forward_save", "backward"] if shape["train"] else ["forward"]
        counts = []
        for phase in phases:
            bx, by = tile_frames(case.workspace, R_, X, Y, e, K_, phase, D_)
            counts.append(math.ceil(X / bx) * math.ceil(Y / by))
        grids.append(f"{case.name} {'/'.join(map(str, counts))}")
        if case.workspace == WS_SMALL and min(counts) == 1:
            single.append(case.name)
    detail = "tiles per phase: " + ", ".join(grids)
    return Outcome("FAIL", f"one tile only: {', '.join(single)}; {detail}") if single else Outcome("PASS", detail)


def count_calls(fn) -> tuple[dict[str, int], object]:
    """Dispatcher calls made by ``fn`` (a compiled or custom op counts once), by ATen name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict[str, int] = {}

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket.__name__)
            counts[name] = counts.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    with Counter():
        result = fn()
    return counts, result


# calls that only make a view or read metadata (no kernel on a GPU)
VIEW_OPS = {"view", "_unsafe_view", "unsqueeze", "squeeze", "detach", "expand", "slice", "select", "permute",
            "transpose", "t", "alias", "as_strided", "diagonal", "unbind", "split", "split_with_sizes", "narrow",
            "_reshape_alias", "lift_fresh", "unfold", "view_as_real", "numpy_T", "sym_size", "sym_stride"}
HOST_READ_OPS = {"_local_scalar_dense", "item", "equal", "is_nonzero"}


def _split_calls(counts: dict[str, int]) -> tuple[int, int, int]:
    views = sum(n for name, n in counts.items() if name in VIEW_OPS)
    reads = sum(n for name, n in counts.items() if name in HOST_READ_OPS)
    return sum(counts.values()) - views, views, reads


def _cpu_train_step(ctx: Context) -> Outcome:
    """``train_step`` of the paper preset on the CPU at a tiny shape: it runs and its loss is
    finite; its dispatcher calls are the host-call count of the GPU step model."""
    from hapvr.training.config import preset
    from hapvr.training.trainer import train_step

    cfg = preset("paper", batch_videos=2, clip_frames=8)
    trainer = trainer_for(cfg, "cpu")
    batch = synthetic_batch(2, 8, cfg.pca_dim, "cpu")
    train_step(trainer, batch)
    start = time.perf_counter()
    counts, parts = count_calls(lambda: train_step(trainer, batch))
    seconds = time.perf_counter() - start
    loss = float(parts["loss"])
    launches, views, reads = _split_calls(counts)
    model = f"2 + {STEP_LAUNCH_CALLS} + {STEP_VIEW_CALLS}"
    return Outcome("PASS" if math.isfinite(loss) else "FAIL",
                   f"loss {loss:.4g}; {launches} launching + {views} view calls per step (model: {model}), "
                   f"{reads} host reads (a CPU proxy of the GPU sync count), {seconds:.2f} s")


def _cpu_eval_host(ctx: Context) -> Outcome:
    """The engine's host time per video on this CPU: the synthetic 200-video file through
    ``compute_scores`` with the scorer's indexing but no similarity work."""
    from hapvr.evaluation.engine import compute_scores

    scorer, store, queries, targets = _engine_inputs(ctx, "cpu")
    start = time.perf_counter()
    compute_scores(HostOnlyScorer(scorer), store, queries, targets, progress=False)
    host_s = time.perf_counter() - start
    batch = [store.load(v) for v in targets[:4]]
    q = torch.stack([scorer.index(store.load(queries[0]))[:20]])
    t = torch.stack([scorer.index(x)[:20] for x in batch])
    lengths_q, lengths_t = torch.tensor([20]), torch.full((len(batch),), 20)
    counts, scores = count_calls(lambda: scorer.pairwise(q, lengths_q, t, lengths_t))
    launches, views, _ = _split_calls(counts)
    ok = bool(torch.isfinite(scores).all())
    return Outcome("PASS" if ok else "FAIL",
                   f"host-only {host_s:.3g} s, {host_s / len(targets) * 1e3:.3g} ms per video ({len(targets)} videos); "
                   f"pairwise: {launches} launching + {views} view calls (model: 1 + {PAIRWISE_LAUNCH_CALLS} + "
                   f"{PAIRWISE_VIEW_CALLS})"
                   + ("" if ok else "; non-finite scores"))


def _cpu_row(name: str, what: str, est_s: float, check: str, run) -> Row:
    return Row(name, "cpu", what, est_s, check, lambda gpu: NO_FIGURE, run)


def build_rows() -> list[Row]:
    """Every row, in the order a run takes them."""
    rows = [
        _cpu_row("cpu/multitile/fp32", "tiled backend, fp32, k = 1 and 3, on many small tiles (48 KiB workspace) "
                 "against the float64 reference, forward and both gradients", 5, "max error <= 1e-5",
                 _cpu_multitile_fp32),
        _cpu_row("cpu/multitile/bf16", "tiled backend, bf16 on many small tiles against float64", 5,
                 "error <= 2x the reference's own in bf16 + 2 eps", _cpu_multitile_bf16),
        _cpu_row("cpu/tiles", "tile grids of the GPU rows (tile_frames)", 1,
                 "every 64 MiB row runs more than one tile per phase", _cpu_tiles),
        _cpu_row("cpu/train-step", "train_step of the paper preset on the CPU, 4 x 4 clips of 8 frames: dispatcher "
                 "calls per step", 10, "runs, finite loss; calls reported against the step model's",
                 _cpu_train_step),
        _cpu_row("cpu/eval/host-200", f"evaluation engine's host time per video on the CPU ({EVAL_VIDEOS}-video file, "
                 "no similarity work)", 20, "runs; host time per video reported (docs/gpu.md, evaluation engine)",
                 _cpu_eval_host),
        _hbm_row(),
    ]
    for case in GEMM_CASES:
        rows.append(_gemm_row(case))
    rows += [_spatial_row(case) for case in SPATIAL_CASES]
    rows.append(_temporal_row())
    rows += [_quadlinear_row(name) for name in QUADLINEAR_CASES]
    rows += [_train_row(name) for name in TRAIN_CASES]
    rows += [_eval_engine_row(), _eval_cli_row(), _numerics_row()]
    return rows


# ---------------------------------------------------------------------------------------------
# Running rows within a budget
# ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    row: Row
    status: str  # PASS FAIL INFO SKIP NOT-RUN
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:7s} {self.row.name}: {self.detail}" + (f" [{self.seconds:.1f} s]" if self.seconds else "")


class BudgetExceeded(Exception):
    pass


class _Alarm:
    """Raises :class:`BudgetExceeded` in the main thread after ``seconds`` (where SIGALRM exists)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.armed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def _fire(self, signum, frame):
        raise BudgetExceeded()

    def __enter__(self):
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def run_rows(rows: list[Row], ctx: Context, budget_s: float, cuda: bool, skip_why: str = "",
             out: Callable[[str], None] = print, results: list[Result] | None = None) -> list[Result]:
    """Runs ``rows`` in order and prints each as it finishes, appending to ``results`` (so an
    interrupted run keeps what finished). A GPU row without CUDA is skipped with the figure it
    would be held against; a row whose expected time no longer fits the budget, or that is still
    running when it ends, is not run."""
    start = time.monotonic()
    ctx.deadline = start + budget_s
    results = [] if results is None else results
    for row in rows:
        if row.device == "cuda" and not cuda:
            result = Result(row, "SKIP", f"{skip_why}; checks {row.check}; figure ({DOC_GPU}): "
                                         f"{row.figure(PEAKS[DOC_GPU])}")
        elif ctx.deadline - time.monotonic() < row.est_s:
            left = max(0.0, ctx.deadline - time.monotonic())
            result = Result(row, "NOT RUN", f"needs ~{row.est_s:.0f} s, {left:.0f} s of the budget left")
        else:
            t0 = time.monotonic()
            try:
                with _Alarm(ctx.deadline - t0):
                    outcome = row.run(ctx)
                result = Result(row, outcome.status, outcome.detail, time.monotonic() - t0)
            except (BudgetExceeded, subprocess.TimeoutExpired):
                result = Result(row, "NOT RUN", "the budget ran out while it ran", time.monotonic() - t0)
            except Exception as exc:  # one broken row must not hide the others
                result = Result(row, "FAIL", f"{type(exc).__name__}: {str(exc).strip()[:300]}", time.monotonic() - t0)
            finally:
                if row.device == "cuda" and cuda:
                    torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.empty_cache()
        results.append(result)
        out(result.line())
    return results


def summarize(results: list[Result], budget_s: float, seconds: float, device: str) -> tuple[list[str], int]:
    """The summary lines (counts, rows not run, the verdict) and the exit status."""
    count = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "INFO", "SKIP", "NOT RUN")}
    lines = [f"== gpu_check summary: {device}; {seconds:.1f} s of a {budget_s:.0f} s budget ==",
             f"PASS {count['PASS']}, FAIL {count['FAIL']}, NO VERDICT {count['INFO']}, SKIPPED {count['SKIP']}, "
             f"NOT RUN {count['NOT RUN']}"]
    if count["FAIL"]:
        lines.append("failed: " + ", ".join(r.row.name for r in results if r.status == "FAIL"))
    if count["NOT RUN"]:
        lines.append("not run (budget): " + ", ".join(r.row.name for r in results if r.status == "NOT RUN"))
    gpu_ran = any(r.row.device == "cuda" and r.status in ("PASS", "FAIL", "INFO") for r in results)
    if count["FAIL"]:
        verdict = "FAIL"
    elif count["NOT RUN"]:
        verdict = f"INCOMPLETE ({count['NOT RUN']} rows not run; rerun them with --only or a larger --budget-s)"
    elif not gpu_ran:
        verdict = "NO GPU VERDICT (the CPU rows passed; the GPU rows need a CUDA device)"
    else:
        verdict = "PASS" + (f" ({count['INFO']} rows without a figure for this device)" if count["INFO"] else "")
    lines.append(f"verdict: {verdict}")
    return lines, 1 if count["FAIL"] else 0


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _fmt_n(x: float) -> str:
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g}"


def row_table(rows: list[Row]) -> list[str]:
    """The markdown table of docs/gpu.md: every GPU row with its figure on each device of ``PEAKS``."""
    lines = ["| row | check | " + " | ".join(PEAKS) + " |", "|---|---|" + "---|" * len(PEAKS)]
    for row in rows:
        if row.device == "cuda":
            lines.append(f"| `{row.name}` | {row.check} | " + " | ".join(row.figure(gpu) for gpu in PEAKS.values())
                         + " |")
    return lines


def list_rows(rows: list[Row], gpu_name: str) -> list[str]:
    gpu = PEAKS[gpu_name]
    lines = [f"Rows of benchmarks/gpu_check.py, the check each makes and its docs/gpu.md figure on the {gpu_name} "
             f"(a figure passes within {TOLERANCE}x on the bad side; sync budgets exactly):"]
    for row in rows:
        lines.append(f"  {row.name}  [{row.device}, ~{row.est_s:.0f} s]")
        lines.append(f"      {row.what}")
        lines.append(f"      check: {row.check}; figure: {row.figure(gpu)}")
    return lines


SPATIAL_TABLE_ROWS = [("tiled", "fp32-ieee", WS_CUDA), ("tiled", "tf32", WS_CUDA), ("tiled", "bf16", WS_CUDA),
                      ("tiled", "bf16", WS_SMALL), ("triton", "tf32", 0), ("triton", "bf16", 0),
                      ("cuda", "fp32-ieee", 0), ("reference", "bf16", 0)]


def _table_name(backend: str, workspace: int) -> str:
    return f"{backend} ({workspace >> 20} MiB)" if backend == "tiled" else backend


def roofline_tables() -> list[str]:
    out = [f"Roofline at {100 * GEMM_EFFICIENCY:.0f}% of the dense peaks and {100 * HBM_EFFICIENCY:.0f}% of the HBM "
           "bandwidth, computed by benchmarks/gpu_check.py (not measured)."]
    for shape in SHAPES.values():
        out += ["", f"### {shape['label']}: Bq={shape['Bq']} x T={shape['T']}, Bt={shape['Bt']} x T'={shape['T2']}, "
                f"R={R_}, D={D_}, k={K_}, {'forward + backward' if shape['train'] else 'forward'}", "",
                "| backend | precision | FLOPs | HBM bytes | " + " | ".join(PEAKS) + f" | bound ({DOC_GPU}) | notes |",
                "|---|---|---|---|" + "---|" * len(PEAKS) + "---|---|"]
        for backend, precision, ws in SPATIAL_TABLE_ROWS:
            res = {name: spatial_roofline(shape, backend, precision, gpu, ws or WS_CUDA) for name, gpu in PEAKS.items()}
            h = res[DOC_GPU]
            out.append(f"| {_table_name(backend, ws)} | {precision} | {_fmt_n(h['flops'])} | {_fmt_n(h['bytes'])}B | "
                       + " | ".join(_fmt_s(r["time"]) for r in res.values())
                       + f" | {h['bound']} | {'; '.join(h['notes'])} |")
        out += ["", f"Phases of the tiled backend on the {DOC_GPU}:", ""]
        for backend, precision, ws in SPATIAL_TABLE_ROWS:
            if backend == "tiled":
                h = spatial_roofline(shape, backend, precision, PEAKS[DOC_GPU], ws)
                parts = ", ".join(f"{p['name']} {_fmt_s(p['time'])}" for p in h["phases"])
                out.append(f"- {_table_name(backend, ws)} {precision}: {parts}; device {_fmt_s(h['device_s'])}, "
                           f"host {_fmt_s(h['floor_s'])}")
    out += ["", "### One training step, paper preset (visil head), bf16 autocast", "",
            "| clips | " + " | ".join(PEAKS) + f" | bound ({DOC_GPU}) |", "|---|" + "---|" * (len(PEAKS) + 1)]
    for videos, frames in TRAIN_CASES.values():
        res = {name: train_step_roofline(videos, frames, gpu) for name, gpu in PEAKS.items()}
        out.append(f"| {2 * videos} x {2 * videos} of {frames} frames | "
                   + " | ".join(_fmt_s(r["time"]) for r in res.values()) + f" | {res[DOC_GPU]['bound']} |")
    for videos, frames in TRAIN_CASES.values():
        step = train_step_roofline(videos, frames, PEAKS[DOC_GPU])
        parts = ", ".join(f"{p['name']} {_fmt_s(p['time'])}" for p in step["phases"])
        out.append(f"\n- {2 * videos} x {2 * videos} clips on the {DOC_GPU}: {parts}; "
                   f"device {_fmt_s(step['device_s'])}, host {_fmt_s(step['host_s'])}")
    out += ["", "### QuadLinear-AP, CUDA path, forward + backward", "",
            "| Q x M | " + " | ".join(PEAKS) + " |", "|---|" + "---|" * len(PEAKS)]
    for Q, M in ((64, 4096), (128 * 28, 28), (128 * 128 * 28, 28)):
        out.append(f"| {Q} x {M} | " + " | ".join(_fmt_s(quadlinear_roofline(Q, M, gpu, True)["total"])
                                                  for gpu in PEAKS.values()) + " |")
    return out


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                     epilog="docs/gpu.md holds every figure; rows print as they finish, the summary "
                                            "last.")
    parser.add_argument("--list", action="store_true", help="print every row with the docs/gpu.md figure it checks")
    parser.add_argument("--table", action="store_true", help="print docs/gpu.md's table of rows and figures")
    parser.add_argument("--roofline", action="store_true", help="print the roofline tables of docs/gpu.md")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="stop starting rows once this many seconds are spent (default 480); the summary "
                             "always prints")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only the rows whose name starts with PREFIX (repeatable)")
    parser.add_argument("--peaks", choices=sorted(PEAKS),
                        help="the datasheet peaks to judge against (default: from torch.cuda.get_device_name(); "
                             f"--list uses {DOC_GPU} without a GPU)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions per row (median)")
    args = parser.parse_args(argv)
    rows = build_rows()
    if args.only:
        rows = [r for r in rows if any(r.name.startswith(p) for p in args.only)]
        if not rows:
            parser.error(f"--only {' '.join(args.only)}: no row has such a name (see --list)")
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else ""
    gpu_name = args.peaks or (peaks_for(device_name) if cuda else None)
    if args.list or args.table or args.roofline:
        text = (list_rows(rows, gpu_name or DOC_GPU) if args.list else row_table(rows) if args.table
                else roofline_tables())
        print("\n".join(text))
        return 0
    if cuda:
        unknown = "unknown (no verdict on the modelled figures; --peaks NAME chooses a table entry)"
        device = f"{device_name}, peaks " + (f"of {gpu_name}" if gpu_name else unknown)
    else:
        device = "no CUDA device (CPU rows only)"
    print(f"gpu_check: torch {torch.__version__}, {device}", flush=True)
    ctx = Context(PEAKS.get(gpu_name) if gpu_name else None, repeats=args.repeats)
    start = time.monotonic()
    results: list[Result] = []
    try:
        run_rows(rows, ctx, args.budget_s, cuda, "no CUDA device (torch.cuda.is_available() is False)",
                 out=lambda line: print(line, flush=True), results=results)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        if ctx.tmp is not None:
            ctx.tmp.cleanup()
    done = {r.row.name for r in results}
    results += [Result(r, "NOT RUN", "interrupted") for r in rows if r.name not in done]
    lines, status = summarize(results, args.budget_s, time.monotonic() - start, device)
    print("\n".join(lines), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
