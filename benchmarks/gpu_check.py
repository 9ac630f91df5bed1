"""GPU check, benchmark and paper roofline of hapvr's spatial TopK-Chamfer and QuadLinear-AP.

    python -m benchmarks.gpu_check              # checks (+ benchmark table on a CUDA machine)
    python -m benchmarks.gpu_check --quick      # smaller benchmark shapes
    python -m benchmarks.gpu_check --roofline   # the paper roofline tables of docs/gpu.md

Checks: the numerical check of every backend against a float64 reference, forward and backward
in every precision, is ``tests/test_backend_precision.py``; on a CUDA machine this script runs its
CUDA cases and reports their verdict. On a machine without CUDA every GPU row prints a ``SKIP``
line saying why (the CPU cases run in the test suite), and the exit status is 0 unless a check
that ran failed.

The roofline (``--roofline``) is computed from the formulas in ``spatial_roofline`` /
``quadlinear_roofline`` and the datasheet peaks in ``GPUS``; nothing in it is measured.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hapvr.ops import (
    explain_quadlinear_ap_backends,
    explain_spatial_backends,
    quadlinear_ap,
    quadlinear_ap_reference,
    spatial_topk_chamfer,
    spatial_topk_chamfer_reference,
)
from hapvr.ops._spatial_tiled import (
    DEFAULT_WORKSPACE_BYTES,
    DEFAULT_WORKSPACE_BYTES_CUDA,
    tile_frames,
)
from hapvr.precision import GEMM_VARIANTS, allow_tf32

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# Paper roofline (no device needed)
# ---------------------------------------------------------------------------------------------

# Datasheet peaks (dense, i.e. the "with sparsity" tensor-core figures halved):
#   H100 SXM5 80 GB: FP64 34, FP32 67, TF32 TC 494.5, BF16/FP16 TC 989.5 TFLOP/s, HBM3 3.35 TB/s.
#   A100 SXM4 80 GB: FP64 9.7, FP32 19.5, TF32 TC 156, BF16/FP16 TC 312 TFLOP/s, HBM2e 2.039 TB/s.
# SM counts and boost clocks from the architecture whitepapers (they reproduce the FP32 figure:
# SMs x FP32 lanes x 2 x clock). Cache latencies are assumptions (microbenchmark literature).
GPUS = {
    "H100 SXM": dict(fp64=34e12, fp32=67e12, tf32=494.5e12, bf16=989.5e12, bw=3.35e12, sms=132,
                     clock=1.98e9, l2_mb=50, l1_cycles=33, l2_cycles=260),
    "A100 SXM": dict(fp64=9.7e12, fp32=19.5e12, tf32=156e12, bf16=312e12, bw=2.039e12, sms=108,
                     clock=1.41e9, l2_mb=40, l1_cycles=33, l2_cycles=200),
}
INT_LANES_PER_SM = 64         # INT32 lanes per SM (Ampere and Hopper)
L1_SECTORS_PER_CLOCK = 4      # 128 B / clock / SM of L1 bandwidth (assumption), 32 B sectors
ATEN_CALL_S = 10e-6           # CPU-side cost of one eager ATen call that launches a kernel
VIEW_CALL_S = 3e-6            # ... of one that only makes a view / slice (or is a no-op .to)
CALL_FIXED_S = 10 * ATEN_CALL_S + 10 * VIEW_CALL_S  # tiled: once per forward / backward (zero fills, masks, casts)
KERNEL_S = 4e-6               # smallest time a dependent kernel launch takes on the device
RP = 16                       # Triton pads R to 16 (tl.dot needs dimensions >= 16)

SHAPES = {
    "a": dict(label="(a) eval pair", Bq=1, T=1024, Bt=1, T2=1024, train=False),
    "b": dict(label="(b) train 64x64 clips", Bq=64, T=28, Bt=64, T2=28, train=True),
    "c": dict(label="(c) FIVR-200K", Bq=100, T=40, Bt=225_960, T2=40, train=False),
}
R_, D_, K_ = 9, 512, 1

# (name, input bytes, peak key): the precisions a GEMM can run in
PRECISIONS = {"fp32-ieee": (4, "fp32"), "tf32": (4, "tf32"), "bf16": (2, "bf16")}


def scatter_bytes_per_cell(R: int, e: int) -> float:
    """HBM bytes one k = 1 ``scatter_`` write into a zero-filled ``[x, R_i, R_j, y]`` tile costs:
    a warp writes 32 consecutive ``y`` of one ``(x, i)``, each into one of the R rows ``j``; a row's
    32 entries span ``e`` 32-byte sectors of ``32 / e`` entries, and a sector is dirtied if any of its
    entries is selected, so (selections uniform at random) a warp dirties
    ``R e (1 - (1 - 1/R)^(32/e))`` sectors: 22 B per write in fp32, 15 B in bf16 (R = 9)."""
    return R * e * (1 - (1 - 1 / R) ** (32 / e))


def _phase(name, flops, nbytes, gpu, peak_key, extra_s=0.0):
    compute = flops / gpu[peak_key] if flops else 0.0
    memory = nbytes / gpu["bw"]
    t = max(compute, memory) + extra_s
    bound = "compute" if compute > memory else "memory"
    if extra_s > max(compute, memory):
        bound = "latency"
    return dict(name=name, flops=flops, bytes=nbytes, time=t, bound=bound)


def spatial_roofline(shape: dict, backend: str, precision: str, gpu: dict,
                     workspace: int = DEFAULT_WORKSPACE_BYTES_CUDA) -> dict:
    """FLOPs, HBM bytes and predicted seconds of one backend on one shape (forward, and the
    backward too when ``shape['train']``). Every phase: max(FLOPs / peak, bytes / bandwidth);
    phases are summed. See docs/gpu.md for the derivation of each term."""
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
        notes.append(f"{tiles} tiles of {bx}x{by} frames")
        if train:  # backward: its own tiling (the "backward" phase of the budget)
            cx, cy = tile_frames(workspace, R, X, Y, e, k, "backward", D)
            mx, my = math.ceil(X / cx), math.ceil(Y / cy)
            btiles = mx * my
            # g: gathered per tile from grad_out (index arithmetic, gather, *scale, mask,
            # masked_fill, cast: the same bytes per map entry as one whole pass); once: dq/dt zero
            # fill, final casts;
            # per target tile: region-major t copy, dtb zero fill, dtb back to frame-major + dt +=
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
            # Host calls per tile: launching .long(), zeros, scatter_, 2 GEMMs [+ 2 fp32 adds];
            # metadata g/selection slices, 2 indexings, expand, no-op .to, reshape, dq slice, w.T,
            # q slice [+ the setitem of dq[...] += ...]. Per target tile: region-major copy, dtb
            # zeros, the fold back, dt += (4 launches) and 7 views / slices. No device sync.
            # + 4 launches for the per-tile gradient gather (gather, mul_, & and ~ of the row/column
            # validity, masked_fill_; its cast is a no-op in fp32; indices are computed once)
            b_launches = 5 + 4 + (0 if e == 4 else 2)
            b_views = 10 + (0 if e == 4 else 1)
            bw_host = (btiles * (b_launches * ATEN_CALL_S + b_views * VIEW_CALL_S)
                       + my * (4 * ATEN_CALL_S + 7 * VIEW_CALL_S) + CALL_FIXED_S)
            floor_s += bw_host
            bw_gpu = sum(p["time"] for p in phases[-3:])
            notes.append(f"bwd {btiles} tiles of {cx}x{cy}; bwd host {bw_host * 1e3:.2f} ms vs device {bw_gpu * 1e3:.2f} ms")
    elif backend == "triton":
        padded = 2.0 * X * RP * Y * RP * D
        alu = 2.0 * X * Y * RP * RP                         # k = 1: max + index per padded element
        compulsory = e * R * D * (X + Y) + e * n_out + (n_cell if train else 0)
        # the top-k ALU work runs beside the MMAs; counted on top (pessimistic) at 1 op / lane / clock
        phases.append(_phase("fused tl.dot + top-k", padded, compulsory, gpu, peak,
                             extra_s=alu / (gpu["fp32"] / 2)))
        if train:
            bwd_bytes = e * n_out + n_cell + e * R * D * 2 * (X + Y)
            phases.append(_phase("bwd: 2 padded tl.dot passes", 2 * padded, bwd_bytes, gpu, peak))
        notes.append(f"MMA work x{RP * RP / (R * R):.2f} (R padded to {RP})")
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
                bound="host/launch" if floor_s > device_s else "+".join(sorted({p["bound"] for p in phases})))


GIB = 1 << 30
WS_CUDA, WS_CPU = DEFAULT_WORKSPACE_BYTES_CUDA, DEFAULT_WORKSPACE_BYTES  # the tiled defaults on CUDA / CPU
SPATIAL_ROWS = [("tiled", "fp32-ieee", WS_CUDA), ("tiled", "tf32", WS_CUDA), ("tiled", "bf16", WS_CUDA),
                ("tiled", "tf32", WS_CPU), ("tiled", "bf16", WS_CPU), ("tiled", "tf32", GIB), ("tiled", "bf16", GIB),
                ("triton", "fp32-ieee", 0), ("triton", "tf32", 0), ("triton", "bf16", 0), ("cuda", "fp32-ieee", 0),
                ("reference", "fp32-ieee", 0), ("reference", "bf16", 0)]


def _row_name(backend: str, workspace: int) -> str:
    return f"{backend} ({workspace >> 20} MiB ws)" if backend == "tiled" else backend


def quadlinear_roofline(Q: int, M: int, gpu: dict, scan: bool) -> dict:
    """Forward + backward of the CUDA quadlinear_ap path: the three prefix passes (moments in
    the forward, again in the backward's prepare, weights in the backward) with the serial
    (one thread per row) or block-scan kernel, and every other pass (casts, 2 x 2 row sorts,
    per-element kernels, reductions) as bytes / bandwidth plus a kernel-launch floor."""
    clock, sms = gpu["clock"], gpu["sms"]
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
    prefix_one = max(prefix_latency, prefix_bytes / gpu["bw"])
    prefix = 3 * prefix_one
    # Everything else, per fwd + bwd: score cast, 4 (mask, where, sort, count) x 2 per prepare x 2
    # prepares, positive kernel x 2, gather, negative kernel, reductions: ~ 150 bytes per entry.
    other_bytes = 150.0 * Q * M
    search = 3 * math.log2(max(M, 2)) * (gpu["l1_cycles"] + gpu["l2_cycles"]) / 2
    other_latency = 3 * math.ceil(Q * M / resident_threads) * search / clock
    kernels = 30
    other = max(other_bytes / gpu["bw"], other_latency) + kernels * KERNEL_S
    return dict(prefix=prefix, prefix_one=prefix_one, other=other, total=prefix + other)


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


def print_roofline() -> None:
    print("Paper roofline, computed from the formulas of benchmarks/gpu_check.py (not measured).")
    for key, shape in SHAPES.items():
        print(f"\n### {shape['label']}: Bq={shape['Bq']} x T={shape['T']}, Bt={shape['Bt']} x T'={shape['T2']}, "
              f"R={R_}, D={D_}, k={K_}, {'forward + backward' if shape['train'] else 'forward'}\n")
        print("| backend | precision | FLOPs | HBM bytes | FLOP/B | H100 SXM | bound | A100 SXM | bound | notes |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for backend, precision, ws in SPATIAL_ROWS:
            h = spatial_roofline(shape, backend, precision, GPUS["H100 SXM"], ws or WS_CUDA)
            a = spatial_roofline(shape, backend, precision, GPUS["A100 SXM"], ws or WS_CUDA)
            print(f"| {_row_name(backend, ws)} | {precision} | {_fmt_n(h['flops'])} | {_fmt_n(h['bytes'])}B | {h['intensity']:.0f} "
                  f"| {_fmt_s(h['time'])} | {h['bound']} | {_fmt_s(a['time'])} | {a['bound']} | "
                  f"{'; '.join(h['notes'])} |")
        print("\nPhases of the tiled backend on the H100:\n")
        for backend, precision, ws in SPATIAL_ROWS:
            if backend != "tiled":
                continue
            h = spatial_roofline(shape, backend, precision, GPUS["H100 SXM"], ws)
            parts = ", ".join(f"{p['name']} {_fmt_s(p['time'])} ({p['bound']})" for p in h["phases"])
            print(f"- {_row_name(backend, ws)} {precision}: {parts}; device sum {_fmt_s(h['device_s'])}, "
                  f"host floor {_fmt_s(h['floor_s'])}")
    print("\n### QuadLinear-AP, CUDA path, forward + backward\n")
    print("| Q x M | GPU | prefix passes, serial (old) | block scan (new) | all other passes | total old -> new |")
    print("|---|---|---|---|---|---|")
    for Q, M in ((64, 4096), (128 * 28, 28), (128 * 128 * 28, 28)):
        for name, gpu in GPUS.items():
            old = quadlinear_roofline(Q, M, gpu, scan=False)
            new = quadlinear_roofline(Q, M, gpu, scan=True)
            print(f"| {Q} x {M} | {name} | {_fmt_s(old['prefix'])} | {_fmt_s(new['prefix'])} | "
                  f"{_fmt_s(old['other'])} | {_fmt_s(old['total'])} -> {_fmt_s(new['total'])} |")


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.failed = 0
        self.passed = 0
        self.skipped = 0

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        print(f"SKIP  {what}: {why}", flush=True)

    def result(self, what: str, ok: bool, detail: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"CHECK {what}: {detail} -> {'PASS' if ok else 'FAIL'}", flush=True)


# ---------------------------------------------------------------------------------------------
# Benchmarks (CUDA only)
# ---------------------------------------------------------------------------------------------

def cuda_median_ms(fn, repeats: int, warmup: int = 2) -> float:
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
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_shapes(quick: bool) -> dict:
    """The three shapes, or scaled versions that fit; (c) is one chunk of the database, with the
    factor that extrapolates it to 100 queries x 225,960 videos."""
    if quick:
        return {"a": dict(SHAPES["a"], T=256, T2=256, factor=1),
                "b": dict(SHAPES["b"], Bq=16, Bt=16, factor=1),
                "c": dict(SHAPES["c"], Bq=1, Bt=256, factor=100 * 225_960 / 256)}
    return {"a": dict(SHAPES["a"], factor=1), "b": dict(SHAPES["b"], factor=1),
            "c": dict(SHAPES["c"], Bq=1, Bt=2048, factor=100 * 225_960 / 2048)}


BENCH_SPATIAL = [("tiled", "fp32-ieee"), ("tiled", "tf32"), ("tiled", "bf16"), ("triton", "tf32"),
                 ("triton", "bf16"), ("cuda", "fp32-ieee"), ("reference", "fp32-ieee"), ("reference", "bf16")]


def _gpu_model_name() -> str | None:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return "H100 SXM" if "H100" in name else "A100 SXM" if "A100" in name else None


def run_benchmarks(tally: Tally, quick: bool, repeats: int, available: bool, why_not: str) -> None:
    rows = []
    for key, shape in bench_shapes(quick).items():
        for backend, precision in BENCH_SPATIAL:
            rows.append(("spatial", key, shape, backend, precision))
    for Q, M in ((64, 4096), (128 * 28, 28)):
        for backend in ("cuda", "triton", "reference"):
            rows.append(("quadlinear_ap", f"{Q}x{M}", dict(Q=Q, M=M), backend, "fp32-ieee"))
    if not available:
        for op, key, shape, backend, precision in rows:
            tally.skip(f"bench {op} {key} {backend} {precision}", why_not)
        return
    model = _gpu_model_name()
    print(f"\nbenchmark: median of {repeats} (torch.cuda.Event), device {torch.cuda.get_device_name()}")
    print(f"{'op':14s} {'shape':24s} {'backend':9s} {'precision':9s} {'median ms':>10s} "
          f"{'full-size est.':>15s} {'paper ' + (model or 'H100 SXM'):>18s}")
    for op, key, shape, backend, precision in rows:
        dtype, tf32 = GEMM_VARIANTS[precision]
        try:
            with allow_tf32(tf32):
                if op == "spatial":
                    fn = _spatial_bench_fn(shape, backend, dtype)
                    label = f"{shape['label'][:4]} {shape['Bq']}x{shape['T']}/{shape['Bt']}x{shape['T2']}"
                    paper = spatial_roofline(shape, backend, precision, GPUS[model or "H100 SXM"])["time"] * 1e3
                    factor = shape["factor"]
                else:
                    fn = _quadlinear_bench_fn(shape["Q"], shape["M"], backend)
                    label = key
                    paper = quadlinear_roofline(shape["Q"], shape["M"], GPUS[model or "H100 SXM"], True)["total"] * 1e3
                    factor = 1
                if fn is None:
                    tally.skip(f"bench {op} {key} {backend} {precision}", "backend cannot run this input here")
                    continue
                ms = cuda_median_ms(fn, repeats)
            print(f"{op:14s} {label:24s} {backend:9s} {precision:9s} {ms:10.3f} {ms * factor:15.1f} {paper:18.3f}",
                  flush=True)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            tally.skip(f"bench {op} {key} {backend} {precision}", "out of GPU memory")
        except Exception as exc:  # report and go on: one broken backend must not hide the others
            tally.result(f"bench {op} {key} {backend} {precision}", False, f"{type(exc).__name__}: {exc}")


def _spatial_bench_fn(shape, backend, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(shape["Bq"], shape["T"], R_, D_, device="cuda", generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(shape["Bt"], shape["T2"], R_, D_, device="cuda", generator=g), dim=-1)
    q, t = q.to(dtype), t.to(dtype)
    if explain_spatial_backends(q, t, K_)[backend]:
        return None
    train = shape["train"]
    q.requires_grad_(train)
    t.requires_grad_(train)

    def fn():
        if backend == "reference":
            out = spatial_topk_chamfer_reference(q, t, K_)
        else:
            out = spatial_topk_chamfer(q, t, K_, backend=backend)
        if train:
            out.sum().backward()
            q.grad = t.grad = None

    def timed():
        with torch.set_grad_enabled(train):
            fn()

    return timed


def _quadlinear_bench_fn(Q, M, backend):
    g = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.rand(Q, M, device="cuda", generator=g).requires_grad_(True)
    u = torch.rand(Q, M, device="cuda", generator=g)
    labels = torch.where(u < 0.3, 1, 0).to(torch.int8)
    if explain_quadlinear_ap_backends(scores, labels)[backend]:
        return None

    def fn():
        if backend == "reference":
            risk = quadlinear_ap_reference(scores, labels, 0.05, 0.1).risk
        else:
            risk = quadlinear_ap(scores, labels, 0.05, 0.1, backend=backend).risk
        risk.sum().backward()
        scores.grad = None

    return fn


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roofline", action="store_true", help="print the paper roofline tables and exit")
    parser.add_argument("--quick", action="store_true", help="smaller benchmark shapes")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-bench", action="store_true", help="checks only")
    args = parser.parse_args(argv)
    if args.roofline:
        print_roofline()
        return 0
    start = time.perf_counter()
    tally = Tally()
    cuda = torch.cuda.is_available()
    no_gpu = "no CUDA device (torch.cuda.is_available() is False)"
    print(f"gpu_check: torch {torch.__version__}, CUDA {'available: ' + torch.cuda.get_device_name() if cuda else 'not available'}")

    if cuda:  # the numerical checks of every backend live in the test suite
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                               "tests/test_backend_precision.py"], cwd=ROOT)
        tally.result("gpu numerics (tests/test_backend_precision.py -k cuda)", proc.returncode == 0,
                     f"pytest exit code {proc.returncode}")
    else:
        tally.skip("gpu numerics (tests/test_backend_precision.py -k cuda)", no_gpu)
    if not args.no_bench:
        run_benchmarks(tally, args.quick, args.repeats, cuda, no_gpu)
    print(f"gpu_check: {tally.passed} passed, {tally.failed} failed, {tally.skipped} skipped "
          f"in {time.perf_counter() - start:.1f} s")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
