"""Benchmark of spatial_topk_chamfer: every runnable backend and the reference, side by side.

    python -m benchmarks.bench_similarity [--quick] [--precision fp32,bf16] [--json results.json]

Shapes: training ``Bq = Bt = 64, T = T' = 28, R = 9, D = 512`` all pairs, forward and
forward+backward; evaluation ``Bq = Bt = 1, T = T' = 1024`` forward. For each: the median wall
time after warm-up, the peak extra memory measured in a fresh process, and the time of the
bare GEMM of all query regions against all target regions (the cost floor). Backends: ``cpp``,
``tiled`` (at its default 64 MiB workspace), ``reference``; with ``--precision bf16`` the
``tiled`` backend and the bare GEMM also run on bf16 inputs at the evaluation shape (the
``bf16`` rows; the precision option is an inference setting).
"""

from __future__ import annotations

import argparse
import json
import sys


import torch

from benchmarks import _harness as H

SHAPES = {
    "train": dict(Bq=64, T=28, Bt=64, T2=28, R=9, D=512, k=1, modes=("fwd", "fwd+bwd")),
    "eval": dict(Bq=1, T=1024, Bt=1, T2=1024, R=9, D=512, k=1, modes=("fwd",)),
}
QUICK = {
    "train": dict(Bq=16, T=28, Bt=16, T2=28, R=9, D=512, k=1, modes=("fwd", "fwd+bwd")),
    "eval": dict(Bq=1, T=256, Bt=1, T2=256, R=9, D=512, k=1, modes=("fwd",)),
}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(s: dict, grad: bool, precision: str = "fp32"):
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(s["Bq"], s["T"], s["R"], s["D"], generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(s["Bt"], s["T2"], s["R"], s["D"], generator=g), dim=-1)
    dtype = DTYPES[precision]
    return q.to(dtype).requires_grad_(grad), t.to(dtype).requires_grad_(grad)


def make_call(backend: str, s: dict, mode: str, precision: str = "fp32"):
    import hapvr

    backend, _, device = backend.partition("@")
    q, t = make_inputs(s, mode == "fwd+bwd", precision)
    if device:
        q, t = (x.detach().to(device).requires_grad_(mode == "fwd+bwd") for x in (q, t))
    if backend == "gemm":
        q2, t2 = q.detach().reshape(-1, s["D"]), t.detach().reshape(-1, s["D"])
        return lambda: q2 @ t2.T
    if backend == "reference":
        op = lambda: hapvr.ops.spatial_topk_chamfer_reference(q, t, s["k"])  # noqa: E731
    else:
        op = lambda: hapvr.ops.spatial_topk_chamfer(q, t, s["k"], backend=backend)  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            out = op()
        sync()
        return out

    def fwd_bwd():
        out = op()
        grads = torch.autograd.grad(out.float().sum(), (q, t))
        sync()
        return grads

    return fwd if mode == "fwd" else fwd_bwd


def peak_child(case: dict) -> None:
    print(H.measure_peak(make_call(case["backend"], case["shape"], case["mode"], case.get("precision", "fp32"))))


def backends_to_run():
    import hapvr

    names = [b for b in hapvr.ops.available_backends() if b not in ("reference",)]
    skipped = {}
    for b in ("cpp", "cuda", "triton"):
        why = hapvr.ops.install_reasons()[b]
        if why is not None:
            skipped[b] = why
    # The benchmark is about this CPU: GPU backends are listed as not measured.
    runnable = [b for b in names if b in ("cpp", "tiled")]
    for b in names:
        if b not in runnable:
            skipped[b] = "runs on CUDA tensors; this benchmark measures CPU tensors"
    if torch.cuda.is_available():  # the device-agnostic backend on the GPU too
        runnable.append("tiled@cuda")
    return runnable + ["reference"], skipped


def memory_only(shapes: dict, json_path: str | None) -> None:
    """Peak extra memory (fresh processes) of the cases the memory targets name; no timing."""
    from hapvr.ops._spatial_tiled import default_workspace_bytes

    workspace = default_workspace_bytes()
    cases = [("train", "fwd+bwd", b) for b in ("cpp", "tiled", "reference")] + [("eval", "fwd", "tiled")]
    peaks = {}
    for shape, mode, backend in cases:
        desc = {k: v for k, v in shapes[shape].items() if k != "modes"}
        print(f"  measuring peak {shape} {mode} {backend} ...", file=sys.stderr, flush=True)
        peaks[(shape, mode, backend)] = H.peak_in_subprocess(__spec__.name, dict(backend=backend, shape=desc, mode=mode))
    rows = [[s, m, b, H.fmt_bytes(p)] for (s, m, b), p in peaks.items()]
    H.print_table(["shape", "mode", "backend", "peak extra memory"], rows)
    ref = peaks[("train", "fwd+bwd", "reference")]
    checks = {f"train fwd+bwd memory {b}/ref <= 0.1": peaks[("train", "fwd+bwd", b)] / ref for b in ("cpp", "tiled")}
    d = shapes["eval"]
    output = d["Bq"] * d["Bt"] * d["T"] * d["T2"] * 4 * 2
    checks["eval fwd tiled (peak - output) / workspace <= 1"] = (peaks[("eval", "fwd", "tiled")] - output) / workspace
    print()
    for name, value in checks.items():
        print(f"{'PASS' if value <= float(name.rsplit(' ', 1)[-1]) else 'FAIL'}  {name}: {value:.3f}")
    if json_path:
        H.write_json(json_path, dict(torch=torch.__version__, workspace_bytes=workspace, checks=checks,
                                     peaks={" ".join(k): v for k, v in peaks.items()}))
        print(f"\nwrote {json_path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, fewer repeats (a smoke run)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case (median reported)")
    ap.add_argument("--precision", default="fp32,bf16",
                    help="comma-separated input precisions; non-fp32 ones run the tiled backend and the GEMM")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak-memory checks: train fwd+bwd (cpp, tiled, reference) and eval fwd (tiled)")
    ap.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_child:
        peak_child(json.loads(args.peak_child))
        return
    if args.memory_only:
        memory_only(QUICK if args.quick else SHAPES, args.json)
        return
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in DTYPES]
    if bad or "fp32" not in precisions:
        ap.error(f"--precision must list fp32 and any of {sorted(DTYPES)}, got {args.precision!r}")

    from hapvr.ops._spatial_tiled import default_workspace_bytes

    shapes = QUICK if args.quick else SHAPES
    repeats = args.repeats or (2 if args.quick else 3)
    backends, skipped = backends_to_run()
    workspace = default_workspace_bytes()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; backends measured: {backends}; "
          f"precisions {precisions}; tiled workspace {H.fmt_bytes(workspace)}")
    for b, why in skipped.items():
        print(f"  not measured: {b}: {why}")
    results = []
    for shape_name, s in shapes.items():
        desc = {k: v for k, v in s.items() if k != "modes"}
        for mode in s["modes"]:
            cases = [(b, "fp32") for b in backends + ["gemm"]]
            if shape_name == "eval":  # the precision option is an inference (evaluation) setting
                cases += [(b, p) for p in precisions if p != "fp32" for b in ("tiled", "gemm")]
            for backend, precision in cases:
                if backend == "gemm" and mode != "fwd":
                    continue
                print(f"  measuring {shape_name} {mode} {backend} {precision} ...", file=sys.stderr, flush=True)
                call = make_call(backend, s, mode, precision)
                seconds = H.median_seconds(call, repeats)
                del call
                peak = None if "@" in backend else H.peak_in_subprocess(
                    __spec__.name, dict(backend=backend, shape=desc, mode=mode, precision=precision))
                results.append(dict(shape=shape_name, dims=desc, mode=mode, backend=backend, precision=precision,
                                    seconds=seconds, peak_bytes=peak))

    def find(shape, mode, backend, precision="fp32"):
        for r in results:
            if (r["shape"], r["mode"], r["backend"], r["precision"]) == (shape, mode, backend, precision):
                return r
        return None

    rows = []
    for r in results:
        ref = find(r["shape"], r["mode"], "reference")
        gemm = find(r["shape"], "fwd", "gemm", r["precision"])
        rows.append([
            r["shape"], r["mode"], r["backend"], r["precision"], f"{r['seconds'] * 1000:.1f}",
            H.fmt_bytes(r["peak_bytes"]) if r["peak_bytes"] is not None else "n/a",
            f"{r['seconds'] / ref['seconds']:.2f}" if ref else "",
            f"{r['peak_bytes'] / ref['peak_bytes']:.3f}" if ref and r["peak_bytes"] and ref["peak_bytes"] else "",
            f"{r['seconds'] / gemm['seconds']:.2f}" if gemm and r["mode"] == "fwd" else "",
        ])
    print()
    H.print_table(["shape", "mode", "backend", "precision", "median ms", "peak extra memory", "time / ref",
                   "memory / ref", "time / GEMM"], rows)
    checks = {}
    ref_tb = find("train", "fwd+bwd", "reference")
    for b in ("cpp", "tiled"):
        row = find("train", "fwd+bwd", b)
        if row and ref_tb and row["peak_bytes"] and ref_tb["peak_bytes"]:
            checks[f"train fwd+bwd memory {b}/ref <= 0.1"] = row["peak_bytes"] / ref_tb["peak_bytes"]
            checks[f"train fwd+bwd time {b}/ref <= 1"] = row["seconds"] / ref_tb["seconds"]
    cpp_ev, gemm_ev = find("eval", "fwd", "cpp"), find("eval", "fwd", "gemm")
    if cpp_ev and gemm_ev:
        checks["eval fwd time cpp/GEMM <= 1.5"] = cpp_ev["seconds"] / gemm_ev["seconds"]
    tiled_ev = find("eval", "fwd", "tiled")
    if tiled_ev and tiled_ev["peak_bytes"]:
        d = shapes["eval"]
        output = d["Bq"] * d["Bt"] * d["T"] * d["T2"] * 4 * 2  # the fp32 map and its contiguous copy
        checks["eval fwd tiled (peak - output) / workspace <= 1"] = (tiled_ev["peak_bytes"] - output) / workspace
    for p in precisions:
        low, full = find("eval", "fwd", "tiled", p), find("eval", "fwd", "tiled")
        if p != "fp32" and low and full:
            checks[f"eval fwd throughput tiled {p}/fp32 (info) <= inf"] = full["seconds"] / low["seconds"]
    if checks:
        print()
        for name, value in checks.items():
            limit = float(name.rsplit(" ", 1)[-1])
            print(f"{'PASS' if value <= limit else 'FAIL'}  {name}: {value:.3f}")
    if args.json:
        H.write_json(args.json, dict(torch=torch.__version__, threads=torch.get_num_threads(), quick=args.quick,
                                     workspace_bytes=workspace, results=results, skipped=skipped, checks=checks))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
