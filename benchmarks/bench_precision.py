"""Inference precision on the built-in held-out benchmark: fp32 against bf16 (and fp16) similarity
GEMMs, for the untrained Chamfer baseline and a trained checkpoint, side by side in one process.

    python -m hapvr.train                       # once: builds the benchmark cache and runs/hapvr
    python -m benchmarks.bench_precision [--run runs/hapvr] [--precision bf16,fp16] [--json PATH]
    python -m benchmarks.bench_precision --pair     # the spatial op at four shapes, no trained run needed

For each model and precision: the time to score every query against the whole benchmark
(median of ``--repeats`` runs after a warm-up), the throughput ratio against fp32, the largest
score difference against fp32, and mAP / uAP per level with their change against fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


import torch

from benchmarks import _harness as H


def load(run: str, cache_dir: str):
    from hapvr.data.corpus import CorpusConfig
    from hapvr.models.loading import load_similarity_model
    from hapvr.features.pca import PCAWhitening
    from hapvr.models import VideoSimilarityModel
    from hapvr.io.checkpoint import load_checkpoint
    from hapvr.evaluation.builtin import BenchmarkFeatures, cache_key
    from hapvr.io.serialization import load_torch_file

    ckpt_path = os.path.join(run, "checkpoint.pt")
    ckpt = load_checkpoint(ckpt_path, "--run")
    cfg = ckpt["config"]
    key = cache_key(bench=dataclasses.asdict(CorpusConfig()), backbone=cfg["backbone"], weights=cfg["backbone_weights"])
    bench_path = os.path.join(cache_dir, f"benchmark-{key}.pt")
    bench = BenchmarkFeatures(**load_torch_file(bench_path, "benchmark cache"))
    proj = ckpt["pca"]["projection"]
    pca = PCAWhitening(proj.shape[0], proj.shape[1])
    pca.load_state_dict(ckpt["pca"])
    with torch.no_grad():
        feats = {k: pca(v.float()) for k, v in bench.desc.items()}
    trained = load_similarity_model(ckpt_path)
    baseline = VideoSimilarityModel(cfg["pca_dim"], cfg["k_s"], cfg["k_t"], attention=False, comparator=False)
    return bench, feats, {"baseline (features-only Chamfer)": baseline, "HAP-VR (trained)": trained}


def pair(repeats: int) -> list[dict]:
    """What the CPU's ``precision="auto"`` rests on (hapvr/precision.py): the whole spatial op in fp32
    and in bf16 against the bf16 GEMM alone; the difference is the bf16 path's cost outside its GEMM."""
    from hapvr.ops import choose_spatial_backend, spatial_topk_chamfer

    from hapvr.precision import cpu_bf16_hardware

    torch.manual_seed(0)
    R, D = 9, 512
    rows = []
    # a built-in-benchmark batch, a search batch, an engine batch, an eval pair
    for Bq, T, Bt, T2 in ((4, 32, 52, 40), (1, 32, 64, 32), (16, 40, 256, 40), (1, 512, 4, 512)):
        q = torch.nn.functional.normalize(torch.randn(Bq, T, R, D), dim=-1)
        t = torch.nn.functional.normalize(torch.randn(Bt, T2, R, D), dim=-1)
        times = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            times[name] = H.median_seconds(lambda: spatial_topk_chamfer(q.to(dtype), t.to(dtype), 1), repeats)
        a, b = q.reshape(-1, D).bfloat16(), t.reshape(-1, D).bfloat16()
        gemm = H.median_seconds(lambda: a @ b.T, repeats)
        rows.append(dict(shape=[Bq, T, Bt, T2], fp32_s=times["fp32"], bf16_s=times["bf16"], bf16_gemm_s=gemm))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 hardware: "
          f"{cpu_bf16_hardware() or 'none'}; R={R}, D={D}, k=1; fp32 through {choose_spatial_backend(q, t, 1)}, "
          f"bf16 (casts included) through {choose_spatial_backend(q.bfloat16(), t.bfloat16(), 1)}")
    H.print_table(["frames", "fp32 ms", "bf16 ms", "fp32 / bf16", "bf16 GEMM alone ms"],
                  [[f"{r['shape'][0]} x {r['shape'][1]} against {r['shape'][2]} x {r['shape'][3]}",
                    f"{1000 * r['fp32_s']:.0f}", f"{1000 * r['bf16_s']:.0f}", f"{r['fp32_s'] / r['bf16_s']:.2f}",
                    f"{1000 * r['bf16_gemm_s']:.0f}"] for r in rows])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/hapvr", help="training run folder holding checkpoint.pt")
    ap.add_argument("--cache-dir", default=None, help="hapvr cache (default: HAPVR_CACHE or ~/.cache/hapvr)")
    ap.add_argument("--precision", default="bf16", help="comma-separated precisions compared with fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--pair", action="store_true",
                    help="time the spatial op in fp32 and in bf16 at four shapes instead (no trained run needed)")
    args = ap.parse_args()
    if args.pair:
        rows = pair(args.repeats)
        if args.json:
            H.write_json(args.json, dict(torch=torch.__version__, threads=torch.get_num_threads(), pair=rows))
            print(f"wrote {args.json}")
        return
    from hapvr.precision import PRECISIONS
    from hapvr.runtime import default_cache_dir
    from hapvr.evaluation.levels import LEVEL_LABELS, all_similarities, evaluate_levels

    precisions = ["fp32"] + [p.strip() for p in args.precision.split(",") if p.strip() and p.strip() != "fp32"]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        ap.error(f"--precision: unknown {bad}; choose from {sorted(PRECISIONS)}")
    try:
        bench, feats, models = load(args.run, args.cache_dir or default_cache_dir())
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc} (run python -m hapvr.train first)", file=sys.stderr)
        raise SystemExit(2)
    database = sorted(feats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(bench.queries)} queries x "
          f"{len(database)} videos; precisions {precisions}")
    results, rows = [], []
    for name, model in models.items():
        base_sims, base_levels, base_time = None, None, None
        for p in precisions:
            model.precision = p
            sims = all_similarities(model, feats, bench.queries, database)
            seconds = H.median_seconds(lambda: all_similarities(model, feats, bench.queries, database), args.repeats)
            levels = evaluate_levels(sims, bench.labels, database)
            if p == "fp32":
                base_sims, base_levels, base_time = sims, levels, seconds
            diff = max(abs(sims[q][t] - base_sims[q][t]) for q in sims for t in sims[q])
            results.append(dict(model=name, precision=p, seconds=seconds, throughput_vs_fp32=base_time / seconds,
                                max_score_diff=diff,
                                levels={t: dict(map=r.map, uap=r.uap) for t, r in levels.items()}))
            rows.append([name, p, f"{seconds * 1000:.0f}", f"{base_time / seconds:.2f}", f"{diff:.2e}"]
                        + [f"{100 * levels[t].map:.2f} ({100 * (levels[t].map - base_levels[t].map):+.2f})"
                           for t in LEVEL_LABELS]
                        + [f"{100 * levels[t].uap:.2f} ({100 * (levels[t].uap - base_levels[t].uap):+.2f})"
                           for t in LEVEL_LABELS])
        model.precision = "fp32"
    print()
    H.print_table(["model", "precision", "ms (all queries)", "throughput / fp32", "max |score - fp32|"]
                  + [f"mAP {t} (change)" for t in LEVEL_LABELS] + [f"uAP {t} (change)" for t in LEVEL_LABELS], rows)
    worst = max((abs(r["levels"][t][m] - next(b for b in results if b["model"] == r["model"]
                                              and b["precision"] == "fp32")["levels"][t][m])
                 for r in results for t in LEVEL_LABELS for m in ("map", "uap")), default=0.0)
    print(f"\nlargest mAP/uAP change against fp32: {100 * worst:.2f} points "
          f"({'within' if worst <= 0.001 else 'above'} the 0.1-point bar for switching the default)")
    if args.json:
        H.write_json(args.json, dict(torch=torch.__version__, threads=torch.get_num_threads(), results=results,
                                     largest_change_points=100 * worst))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
