"""What compressing the stored region features costs in retrieval quality, on the built-in benchmark.

    python -m benchmarks.bench_compression [--set test|validation] [--json PATH]

An index stores every video's region features ``[T, 9, D]`` as float16 (2 D bytes a region).
Candidates for storing them smaller, each applied to the database side only (queries stay
exact, as they are extracted at search time):

- ``int8``: each region vector scaled by its largest magnitude to -127..127, the scale kept as
  float16 (D + 2 bytes a region);
- ``pq M``: faiss product quantisation, M sub-vectors of D / M dimensions with 256 centroids each
  (M bytes a region), trained on the other split's region vectors (the validation split for the
  test benchmark), the stored vectors reconstructed from their codes for scoring;
- ``opq M`` / ``opq M/d``: the same after faiss's optimised rotation (OPQ), which balances the
  variance over the sub-vectors; ``/d`` also reduces the vectors to ``d`` dimensions first
  (M bytes a region either way).

Scores: the default model over every query and database video. Printed per storage: bytes per
region vector, the share of each query's float16 top-10 kept in its top-10 (mean over queries),
mAP / uAP per level, and 95 % paired bootstrap intervals of the difference to float16 over the
queries.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks import _harness as H

PQ_SIZES = (32, 64, 128)
OPQ_SIZES = ((64, None), (96, 384), (128, None))  # (bytes, dimensions after the rotation)


@torch.no_grad()
def similarities(model, queries: dict, database: dict, chunk: int = 64) -> dict:
    """``sims[q][t]`` of exact query features against stored database features (t != q)."""
    from hapvr.models.padding import pad_stack

    ids = sorted(database, key=lambda t: database[t].shape[0])
    parts = []
    for s in range(0, len(ids), chunk):
        part = ids[s:s + chunk]
        db, db_len = pad_stack([database[t] for t in part])
        parts.append((part, model.index_video(db), db_len))
    sims = {}
    for q, x in queries.items():
        qx, q_len = pad_stack([x])
        qx = model.index_video(qx)
        row = {}
        for part, db, db_len in parts:
            out = model(qx.expand(1, *qx.shape[1:]), db, q_len, db_len, indexed=True).video.float()[0]
            row.update({t: float(v) for t, v in zip(part, out) if t != q})
        sims[q] = row
    return sims


def int8(x: torch.Tensor) -> torch.Tensor:
    """Round trip through int8 codes with one float16 scale per region vector."""
    scale = (x.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12).half().float()
    return (x / scale).round().clamp(-127, 127) * scale


def train_pq(vectors: np.ndarray, m: int, seed: int = 0):
    import faiss

    pq = faiss.ProductQuantizer(vectors.shape[1], m, 8)
    pq.cp.seed = seed
    pq.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return pq


def pq_round_trip(pq, x: torch.Tensor) -> torch.Tensor:
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]).numpy(), dtype=np.float32)
    return torch.from_numpy(pq.decode(pq.compute_codes(flat))).reshape(x.shape)


def train_opq(vectors: np.ndarray, m: int, dims: int | None, seed: int = 0):
    """faiss OPQ rotation (to ``dims`` dimensions, default D) and the PQ of the rotated vectors."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    opq = faiss.OPQMatrix(x.shape[1], m, dims or x.shape[1])
    opq.train(x)
    return opq, train_pq(opq.apply_py(x), m, seed)


def opq_round_trip(trained, x: torch.Tensor) -> torch.Tensor:
    opq, pq = trained
    flat = opq.apply_py(np.ascontiguousarray(x.reshape(-1, x.shape[-1]).numpy(), dtype=np.float32))
    return torch.from_numpy(opq.reverse_transform(pq.decode(pq.compute_codes(flat)))).reshape(x.shape)


def top_agreement(ref: dict, other: dict, k: int = 10) -> float:
    kept = []
    for q, row in ref.items():
        a = set(sorted(row, key=row.get, reverse=True)[:k])
        b = set(sorted(other[q], key=other[q].get, reverse=True)[:k])
        kept.append(len(a & b) / len(a))
    return float(np.mean(kept))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="test", choices=("test", "validation"))
    ap.add_argument("--train-sample", type=int, default=200_000, help="region vectors the PQ is trained on")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--only", nargs="+", metavar="STORAGE", help="measure these storages only (float16 is always "
                    "measured as the reference), e.g. --only \"opq 64\" \"opq 96/384\"")
    args = ap.parse_args()
    import hapvr
    from hapvr.evaluation.levels import bootstrap_levels, evaluate_levels, intervals_table

    torch.manual_seed(0)
    model = hapvr.load_model()
    sim_model = model.model.eval()

    def features(split: str) -> tuple[dict, object]:
        bench = H.heldout_benchmark(split)
        return {v: model.extractor.whiten(d.float()).float() for v, d in bench.desc.items()}, bench

    t0 = time.time()
    feats, bench = features(args.set)
    other, _ = features("validation" if args.set == "test" else "test")
    D = next(iter(feats.values())).shape[-1]
    pool = torch.cat([x.reshape(-1, D) for x in other.values()]).numpy()
    rng = np.random.default_rng(0)
    pool = pool[rng.choice(len(pool), min(args.train_sample, len(pool)), replace=False)]
    print(f"{args.set}: {len(feats)} videos, {sum(len(x) for x in feats.values())} frames; PQ trained on "
          f"{len(pool)} region vectors of the other split ({time.time() - t0:.0f} s)", file=sys.stderr)
    queries = {q: feats[q] for q in bench.queries}
    storages = {"float16": (2 * D, lambda x: x.half().float()), "int8": (D + 2, int8)}
    wanted = lambda name: args.only is None or name in args.only or name == "float16"  # noqa: E731
    storages = {name: v for name, v in storages.items() if wanted(name)}
    for m in PQ_SIZES:
        if wanted(f"pq {m}"):
            pq = train_pq(pool, m)
            storages[f"pq {m}"] = (m, lambda x, pq=pq: pq_round_trip(pq, x))
    for m, dims in OPQ_SIZES:
        name = f"opq {m}" + (f"/{dims}" if dims else "")
        if wanted(name):
            start = time.time()
            trained = train_opq(pool, m, dims)
            print(f"{name}: trained in {time.time() - start:.0f} s", file=sys.stderr)
            storages[name] = (m, lambda x, t=trained: opq_round_trip(t, x))
    sims, rows, out = {}, [], {"set": args.set, "storages": {}}
    database = sorted(feats)
    for name, (nbytes, fn) in storages.items():
        start = time.time()
        stored = {v: fn(x) for v, x in feats.items()}
        err = float(np.mean([(stored[v] - feats[v]).norm(dim=-1).mean().item() for v in feats]))
        sims[name] = similarities(sim_model, queries, stored)
        levels = evaluate_levels(sims[name], bench.labels, database)
        agree = top_agreement(sims["float16"], sims[name])
        out["storages"][name] = {"bytes_per_region": nbytes, "bytes_per_frame": 9 * nbytes, "reconstruction_error": err,
                                 "top10_agreement": agree,
                                 "levels": {t: {"mAP": r.map, "uAP": r.uap} for t, r in levels.items()}}
        rows.append([name, str(nbytes), f"{err:.4f}", f"{agree:.3f}"]
                    + [f"{100 * getattr(r, m_):.2f}" for m_ in ("map", "uap") for r in levels.values()])
        print(f"{name}: {time.time() - start:.0f} s", file=sys.stderr)
    H.print_table(["storage", "bytes/region", "|x - stored|", "top-10 kept"]
                  + [f"{m} {t}" for m in ("mAP", "uAP") for t in ("DSVR", "CSVR", "ISVR")], rows)
    out["intervals"] = {}
    for name in list(storages)[1:]:
        diff = f"{name} - float16"
        iv = bootstrap_levels({name: sims[name], "float16": sims["float16"]}, bench.labels, database,
                              difference=(name, "float16"))
        print(intervals_table({t: {diff: per[diff]} for t, per in iv.items()}, len(queries)))
        out["intervals"][name] = {t: {m: [per[diff][m].value, per[diff][m].low, per[diff][m].high]
                                      for m in ("mAP", "uAP")} for t, per in iv.items()}
    if args.json:
        H.write_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
