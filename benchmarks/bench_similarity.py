"""Benchmark of spatial_topk_chamfer: every runnable backend and the reference, side by side.

    python benchmarks/bench_similarity.py [--quick] [--json results.json]

Shapes (issue #2): training ``Bq = Bt = 64, T = T' = 28, R = 9, D = 512`` all pairs, forward
and forward+backward; evaluation ``Bq = Bt = 1, T = T' = 1024`` forward. For each: the median
wall time after warm-up, the peak extra memory measured in a fresh process, and the time of the
bare GEMM of all query regions against all target regions (the cost floor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import _harness as H  # noqa: E402

SHAPES = {
    "train": dict(Bq=64, T=28, Bt=64, T2=28, R=9, D=512, k=1, modes=("fwd", "fwd+bwd")),
    "eval": dict(Bq=1, T=1024, Bt=1, T2=1024, R=9, D=512, k=1, modes=("fwd",)),
}
QUICK = {
    "train": dict(Bq=16, T=28, Bt=16, T2=28, R=9, D=512, k=1, modes=("fwd", "fwd+bwd")),
    "eval": dict(Bq=1, T=256, Bt=1, T2=256, R=9, D=512, k=1, modes=("fwd",)),
}


def make_inputs(s: dict, grad: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(s["Bq"], s["T"], s["R"], s["D"], generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(s["Bt"], s["T2"], s["R"], s["D"], generator=g), dim=-1)
    return q.requires_grad_(grad), t.requires_grad_(grad)


def make_call(backend: str, s: dict, mode: str):
    import hapvr

    q, t = make_inputs(s, mode == "fwd+bwd")
    if backend == "gemm":
        q2, t2 = q.detach().reshape(-1, s["D"]), t.detach().reshape(-1, s["D"])
        return lambda: q2 @ t2.T
    if backend == "reference":
        op = lambda: hapvr.ops.spatial_topk_chamfer_reference(q, t, s["k"])  # noqa: E731
    else:
        op = lambda: hapvr.ops.spatial_topk_chamfer(q, t, s["k"], backend=backend)  # noqa: E731
    if mode == "fwd":
        return lambda: torch.no_grad()(op)()

    def fwd_bwd():
        out = op()
        grads = torch.autograd.grad(out.sum(), (q, t))
        return grads

    return fwd_bwd


def peak_child(case: dict) -> None:
    print(H.measure_peak(make_call(case["backend"], case["shape"], case["mode"])))


def backends_to_run():
    import hapvr

    names = [b for b in hapvr.ops.available_backends() if b not in ("reference",)]
    skipped = {}
    for b in ("cpp", "cuda", "triton"):
        why = hapvr.ops.install_reasons()[b]
        if why is not None:
            skipped[b] = why
    # The benchmark is about this CPU: GPU backends are listed as not measured.
    runnable = [b for b in names if b == "cpp"]
    for b in names:
        if b != "cpp":
            skipped[b] = "runs on CUDA tensors; this benchmark measures CPU tensors"
    return runnable + ["reference"], skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, fewer repeats (a smoke run)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case (median reported)")
    ap.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_child:
        peak_child(json.loads(args.peak_child))
        return

    shapes = QUICK if args.quick else SHAPES
    repeats = args.repeats or (2 if args.quick else 3)
    backends, skipped = backends_to_run()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; backends measured: {backends}")
    for b, why in skipped.items():
        print(f"  not measured: {b}: {why}")
    results = []
    for shape_name, s in shapes.items():
        desc = {k: v for k, v in s.items() if k != "modes"}
        for mode in s["modes"]:
            for backend in backends + ["gemm"]:
                if backend == "gemm" and mode != "fwd":
                    continue
                print(f"  measuring {shape_name} {mode} {backend} ...", file=sys.stderr, flush=True)
                call = make_call(backend, s, mode)
                seconds = H.median_seconds(call, repeats)
                del call
                peak = H.peak_in_subprocess(__file__, dict(backend=backend, shape=desc, mode=mode))
                results.append(dict(shape=shape_name, dims=desc, mode=mode, backend=backend,
                                    seconds=seconds, peak_bytes=peak))

    def find(shape, mode, backend):
        for r in results:
            if (r["shape"], r["mode"], r["backend"]) == (shape, mode, backend):
                return r
        return None

    rows = []
    for r in results:
        ref = find(r["shape"], r["mode"], "reference")
        gemm = find(r["shape"], "fwd", "gemm")
        rows.append([
            r["shape"], r["mode"], r["backend"], f"{r['seconds'] * 1000:.1f}",
            H.fmt_bytes(r["peak_bytes"]),
            f"{r['seconds'] / ref['seconds']:.2f}" if ref else "",
            f"{r['peak_bytes'] / ref['peak_bytes']:.3f}" if ref and r["peak_bytes"] and ref["peak_bytes"] else "",
            f"{r['seconds'] / gemm['seconds']:.2f}" if gemm and r["mode"] == "fwd" else "",
        ])
    print()
    H.print_table(["shape", "mode", "backend", "median ms", "peak extra memory", "time / ref",
                   "memory / ref", "time / GEMM"], rows)
    checks = {}
    cpp_tb, ref_tb = find("train", "fwd+bwd", "cpp"), find("train", "fwd+bwd", "reference")
    cpp_ev, gemm_ev = find("eval", "fwd", "cpp"), find("eval", "fwd", "gemm")
    if cpp_tb and ref_tb and cpp_tb["peak_bytes"] and ref_tb["peak_bytes"]:
        checks["train fwd+bwd memory cpp/ref <= 0.1"] = cpp_tb["peak_bytes"] / ref_tb["peak_bytes"]
        checks["train fwd+bwd time cpp/ref <= 1"] = cpp_tb["seconds"] / ref_tb["seconds"]
    if cpp_ev and gemm_ev:
        checks["eval fwd time cpp/GEMM <= 1.5"] = cpp_ev["seconds"] / gemm_ev["seconds"]
    if checks:
        print()
        for name, value in checks.items():
            limit = float(name.rsplit(" ", 1)[-1])
            print(f"{'PASS' if value <= limit else 'FAIL'}  {name}: {value:.3f}")
    if args.json:
        H.write_json(args.json, dict(torch=torch.__version__, threads=torch.get_num_threads(),
                                     quick=args.quick, results=results, skipped=skipped, checks=checks))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
