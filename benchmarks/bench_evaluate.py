"""Benchmark of the evaluation engine against a straightforward per-pair loop.

    python -m benchmarks.bench_evaluate [--quick] [--json PATH] [--memory-run]
    python -m benchmarks.bench_evaluate --host-time [--json PATH]

Throughput (query-target pairs per second) and peak memory of
``hapvr.evaluation.engine.compute_scores`` (length-bucketed batches through the fused
operators, database streamed from HDF5) against a loop that loads each target and scores each
pair with one call, on ``--queries`` x ``--targets`` random videos with lengths drawn from 10 to
300 frames (R = 9, D = ``--dim``). The loop is timed on the first ``--loop-pairs`` pairs (its
throughput is a rate), and its scores are compared with the engine's on those pairs.
``--memory-run`` also scores 50 queries against 20,000 targets (D = ``--memory-dim``) in a
fresh process and reports its peak memory.

``--host-time``: the engine's host work per video (read from HDF5, check for NaN, hash, pad into
the batch) on FIVR-200K-like videos (40 frames, R = 9, D = 512, 1,000 videos, file in the page
cache), as the engine did it before its reader (a copy per video, a check per video, a padded
copy of the batch: :func:`host_before`) and as it does now (:func:`hapvr.evaluation.engine.prepare_batch`:
read straight into one buffer, one check per batch), median of ``--repeats`` passes; and how
much of it the reader thread hides behind scoring (a 4-query features-only run with the reader
against the same work done in turn).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


import numpy as np
import torch

from benchmarks import _harness as H


def make_file(path: Path, n_queries: int, n_targets: int, dim: int, seed: int = 0,
              lengths: tuple[int, int] = (10, 300)) -> list[str]:
    """Random unit region features, written once and reused (the file name encodes the sizes)."""
    import h5py

    ids = [f"q{i:03d}" for i in range(n_queries)] + [f"t{i:06d}" for i in range(n_targets)]
    if path.exists():
        return ids
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        for vid in ids:
            x = rng.standard_normal((int(rng.integers(lengths[0], lengths[1] + 1)), 9, dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=-1, keepdims=True)
            f.create_dataset(vid, data=x)
    os.replace(tmp, path)
    return ids


def make_scorer(kind: str, dim: int, backend: str = "auto"):
    """``baseline``: the features-only Chamfer scorer; ``model``: a HAP-VR similarity model
    (region attention + comparator, random weights, seed 0: the arithmetic of a trained one)."""
    from hapvr.evaluation.scorers import ChamferBaseline

    if kind == "baseline":
        return ChamferBaseline(backend=backend)
    from hapvr.evaluation.scorers import ModelScorer
    from hapvr.models import VideoSimilarityModel

    torch.manual_seed(0)
    return ModelScorer(VideoSimilarityModel(dim, backend=backend))


def run_engine(path: Path, n_queries: int, progress: bool, scorer: str = "baseline"):
    from hapvr.evaluation.engine import compute_scores
    from hapvr.evaluation.feature_store import FeatureStore

    with FeatureStore(path) as store:
        ids = sorted(store.ids())
        queries = [i for i in ids if i.startswith("q")][:n_queries]
        targets = [i for i in ids if i.startswith("t")]
        start = time.perf_counter()
        dim = int(store.load(queries[0], 0, 1).shape[-1])
        scores = compute_scores(make_scorer(scorer, dim), store, queries, targets, progress=progress)
        seconds = time.perf_counter() - start
    return scores, seconds, len(queries) * len(targets)


def run_loop(path: Path, pairs: list[tuple[str, str]], backend: str, scorer: str = "baseline"):
    """The straightforward way: for every pair, read both videos and score them alone."""
    from hapvr.evaluation.feature_store import FeatureStore

    out = {}
    with FeatureStore(path) as store:
        scorer = make_scorer(scorer, int(store.load(pairs[0][0], 0, 1).shape[-1]), backend)
        start = time.perf_counter()
        for q, t in pairs:
            qx, tx = scorer.index(store.load(q))[None], scorer.index(store.load(t))[None]
            out[(q, t)] = float(scorer.pairwise(qx, torch.tensor([qx.shape[1]]), tx, torch.tensor([tx.shape[1]]))[0, 0])
        seconds = time.perf_counter() - start
    return out, seconds


def region_gemm_flops(path: Path, pairs) -> float:
    """Floating-point operations of the region similarities of ``pairs``: every query region
    against every target region, ``2 * (9 T) * (9 T') * D`` per pair. Both the engine and the
    loop must do exactly these (the rest of the scoring is negligible at D = 512)."""
    from hapvr.evaluation.feature_store import FeatureStore

    with FeatureStore(path) as store:
        lengths = {}
        for vid in {v for pair in pairs for v in pair}:
            lengths[vid] = store.length(vid)
        dim = int(store.load(pairs[0][0], 0, 1).shape[-1])
    return float(sum(2 * 81 * lengths[q] * lengths[t] * dim for q, t in pairs))


def gemm_peak_gflops(dim: int) -> float:
    """Sustained fp32 GEMM rate of this machine on a region-GEMM-like shape (two ~256-frame
    videos: [2304, D] x [D, 2304]), median of 5 after warm-up, in GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2304, dim, generator=g), torch.randn(dim, 2304, generator=g)
    out = torch.empty(2304, 2304)
    seconds = H.median_seconds(lambda: torch.mm(a, b, out=out), repeats=5, warmup=2)
    return 2 * 2304 * 2304 * dim / seconds / 1e9


def loop_pairs(scores_or_ids, n: int) -> list[tuple[str, str]]:
    queries = sorted(i for i in scores_or_ids if i.startswith("q"))
    targets = sorted(i for i in scores_or_ids if i.startswith("t"))
    return [(q, t) for t in targets for q in queries][:n]


def host_before(store, chunks):
    """The engine's host work per batch before its background reader (kept here to measure
    against): each chunk read into its own array, converted, checked, hashed, then copied again
    into the padded batch."""
    from hapvr.evaluation.feature_store import frames_digest
    from hapvr.models.padding import pad_stack

    frames = [store.load(c.vid, c.start, c.end) for c in chunks]
    digests = [frames_digest(x) for x in frames]
    return pad_stack(frames), digests


def host_time(args, work: Path) -> dict:
    from hapvr.evaluation import engine
    from hapvr.evaluation.feature_store import FeatureStore

    n, T = 1000, 40
    path = work / f"features_host_n{n}_t{T}_d512.hdf5"
    print(f"generating {path} ...", file=sys.stderr)
    make_file(path, 4, n, 512, seed=2, lengths=(T, T))
    with FeatureStore(path) as store:
        ids = sorted(store.ids())
        targets = [i for i in ids if i.startswith("t")]
        cfg = engine.EngineConfig()
        chunks = [c for vid in targets for c in engine.split_chunks(vid, store.length(vid), cfg.chunk_frames)]
        batches = engine.plan_batches(chunks, 4 * T, cfg)
        for vid in targets:  # warm the page cache
            store.load(vid)

        def before():
            for b in batches:
                host_before(store, b)

        def after(digests=True):
            for b in batches:
                engine.prepare_batch(store, b, 1, digests=digests)

        t_before = H.median_seconds(before, args.repeats)
        t_after = H.median_seconds(after, args.repeats)
        t_unhashed = H.median_seconds(lambda: after(False), args.repeats)
        queries = [i for i in ids if i.startswith("q")]
        scorer = make_scorer("baseline", 512)
        overlapped = H.median_seconds(lambda: engine.compute_scores(scorer, store, queries, targets, cfg, progress=False),
                                      args.repeats)

        def in_turn():  # the same work without the reader thread
            groups = engine.query_groups([scorer.index(store.load(q)) for q in queries], cfg)
            for b in batches:
                p = engine.prepare_batch(store, b, 1, digests=False)  # compute_scores without a cache hashes nothing
                t = scorer.index(p.frames)
                for _, qpad, qlen in groups:
                    scorer.pairwise(qpad, qlen, t, p.lengths).tolist()

        sequential = H.median_seconds(in_turn, args.repeats)
    mb = n * T * 9 * 512 * 4 / 1e6
    rows = [["before (copy, check, hash per video; padded copy)", f"{1e6 * t_before / n:.0f}", f"{mb / t_before:.0f}"],
            ["prepare_batch (read into the batch, one check)", f"{1e6 * t_after / n:.0f}", f"{mb / t_after:.0f}"],
            ["prepare_batch without a score cache (no hashing)", f"{1e6 * t_unhashed / n:.0f}",
             f"{mb / t_unhashed:.0f}"]]
    print(f"\nhost work per video, {n} videos of {T} frames (R = 9, D = 512, float32, page cache), "
          f"{torch.get_num_threads()} threads, {len(batches)} batches\n")
    H.print_table(["host work", "us per video", "MB/s"], rows)
    print(f"\n4 queries, features-only scoring: {sequential:.2f} s with reading and scoring in turn, "
          f"{overlapped:.2f} s with the reader thread ({100 * (1 - overlapped / sequential):.0f}% less)")
    return dict(videos=n, frames=T, batches=len(batches), before_us_per_video=1e6 * t_before / n,
                after_us_per_video=1e6 * t_after / n, after_no_cache_us_per_video=1e6 * t_unhashed / n,
                scoring_in_turn_s=sequential, scoring_with_reader_s=overlapped)


def child(args) -> None:
    """Engine run in a fresh process: prints peak extra bytes, seconds, and the scores of the
    pairs the loop will time (to compare)."""
    base = H.reset_peak()
    scores, seconds, pairs = run_engine(Path(args.child_file), args.child_queries, progress=True, scorer=args.scorer)
    peak = H.peak_since_reset(base)
    ids = list(scores) + list(next(iter(scores.values())))
    sample = {f"{q} {t}": scores[q][t] for q, t in loop_pairs(ids, args.child_sample)}
    print(json.dumps({"peak": peak, "seconds": seconds, "pairs": pairs, "sample": sample}))


def in_subprocess(path: Path, n_queries: int, sample: int = 0, scorer: str = "baseline") -> dict:
    proc = subprocess.run([sys.executable, "-m", __spec__.name, "--child-file", str(path), "--child-queries",
                           str(n_queries), "--child-sample", str(sample), "--scorer", scorer], cwd=H.ROOT,
                          stdout=subprocess.PIPE, text=True, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072"))
    if proc.returncode != 0:
        raise SystemExit(f"child run failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--loop-pairs", type=int, default=200, help="pairs the per-pair loop is timed on")
    ap.add_argument("--scorer", choices=("baseline", "model"), default="baseline",
                    help="baseline: features-only Chamfer; model: HAP-VR model (attention + comparator)")
    ap.add_argument("--memory-run", action="store_true", help="also 50 queries x 20,000 targets, peak memory")
    ap.add_argument("--memory-dim", type=int, default=32, help="feature size of the memory run")
    ap.add_argument("--memory-max-length", type=int, default=300, help="longest video of the memory run (frames)")
    ap.add_argument("--memory-only", action="store_true", help="only the memory run")
    ap.add_argument("--host-time", action="store_true", help="only the host work per video, before and after")
    ap.add_argument("--repeats", type=int, default=3, help="passes per --host-time figure (median)")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "hapvr-bench-evaluate"))
    ap.add_argument("--quick", action="store_true", help="4 queries x 100 targets, D = 64")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--child-file", help=argparse.SUPPRESS)
    ap.add_argument("--child-queries", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-sample", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_file:
        child(args)
        return
    if args.quick:
        args.queries, args.targets, args.dim, args.loop_pairs = 4, 100, 64, 40
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.host_time:
        results["host_time"] = host_time(args, work)
    elif not args.memory_only:
        results.update(throughput(args, work))
    if args.memory_run or args.memory_only:
        results["memory_run"] = memory_run(args, work)
    if args.json:
        H.write_json(args.json, dict(scorer=args.scorer, queries=args.queries, targets=args.targets, dim=args.dim,
                                     results=results))
        print(f"wrote {args.json}")


def throughput(args, work: Path) -> dict:
    path = work / f"features_q{args.queries}_t{args.targets}_d{args.dim}.hdf5"
    print(f"generating {path} ...", file=sys.stderr)
    ids = make_file(path, args.queries, args.targets, args.dim)

    engine = in_subprocess(path, args.queries, sample=args.loop_pairs, scorer=args.scorer)
    sample = {tuple(k.split()): v for k, v in engine.pop("sample").items()}
    pairs = list(sample)
    rows, results = [], {"engine": engine}
    rows.append(["engine (batched, streamed)", f"{engine['pairs']}", f"{engine['seconds']:.1f}",
                 f"{engine['pairs'] / engine['seconds']:.0f}", H.fmt_bytes(engine["peak"]), "1.00", ""])
    for backend in ("cpp", "reference"):
        loop, seconds = run_loop(path, pairs, backend, args.scorer)
        diff = max(abs(loop[p] - sample[p]) for p in pairs)
        speed = len(pairs) / seconds
        results[f"loop_{backend}"] = {"pairs": len(pairs), "seconds": seconds, "max_abs_diff": diff}
        rows.append([f"per-pair loop ({backend} backend)", f"{len(pairs)}", f"{seconds:.1f}", f"{speed:.0f}", "",
                     f"{(engine['pairs'] / engine['seconds']) / speed:.1f}", f"{diff:.1e}"])
    print(f"\n{args.scorer} scorer, {args.queries} queries x {args.targets} targets, lengths 10-300 frames, R = 9, D = {args.dim}, "
          f"{torch.get_num_threads()} threads\n")
    H.print_table(["method", "pairs", "seconds", "pairs/s", "peak extra memory", "engine speed-up", "max |score diff|"], rows)
    results["roofline"] = roofline(path, args, ids, pairs, engine, results)
    return results


def roofline(path: Path, args, ids, pairs, engine, results) -> dict:
    """How close each side runs to the machine's fp32 GEMM rate, and so the largest speed-up any
    exact fp32 engine could have over the loop here: the loop's time divided by the time the
    loop's region GEMMs would take at the measured peak."""
    peak = gemm_peak_gflops(args.dim)
    engine_pairs = [(q, t) for q in ids if q.startswith("q") for t in ids if t.startswith("t")]
    engine_gflops = region_gemm_flops(path, engine_pairs) / engine["seconds"] / 1e9
    loop_flops = region_gemm_flops(path, pairs)
    out = dict(gemm_peak_gflops=peak, engine_gflops=engine_gflops)
    rows = [["fp32 GEMM, [2304, D] x [D, 2304]", f"{peak:.0f}", "1.00", ""],
            ["engine", f"{engine_gflops:.0f}", f"{engine_gflops / peak:.2f}", ""]]
    for backend in ("cpp", "reference"):
        gflops = loop_flops / results[f"loop_{backend}"]["seconds"] / 1e9
        out[f"loop_{backend}_gflops"] = gflops
        out[f"max_speedup_over_loop_{backend}"] = peak / gflops
        rows.append([f"per-pair loop ({backend} backend)", f"{gflops:.0f}", f"{gflops / peak:.2f}", f"{peak / gflops:.1f}"])
    print("\nregion-GEMM rate (2 * 81 * T * T' * D flops per pair) against the machine's fp32 GEMM rate\n")
    H.print_table(["run", "GFLOP/s", "fraction of GEMM rate", "largest possible engine speed-up over it"], rows)
    return out


def memory_run(args, work: Path) -> dict:
    mpath = work / f"features_q50_t20000_d{args.memory_dim}_l{args.memory_max_length}.hdf5"
    print(f"generating {mpath} ...", file=sys.stderr)
    make_file(mpath, 50, 20000, args.memory_dim, seed=1, lengths=(10, args.memory_max_length))
    mem = in_subprocess(mpath, 50, scorer=args.scorer)
    print(f"\nmemory run: 50 queries x 20,000 targets (lengths 10-{args.memory_max_length}, "
          f"D = {args.memory_dim}): peak extra memory "
          f"{H.fmt_bytes(mem['peak'])}, {mem['seconds']:.0f} s, {mem['pairs'] / mem['seconds']:.0f} pairs/s")
    return dict(mem, dim=args.memory_dim, max_length=args.memory_max_length)


if __name__ == "__main__":
    main()
