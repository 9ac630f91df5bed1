"""Shards searched in this process and on a local Dask cluster, against one index.

    python -m benchmarks.bench_shards [--size 3000] [--shards 3] [--workers 2] [--queries 20]

One planted collection (:class:`hapvr.retrieval.planted.PlantedCollection`, R = 9, D = 512,
features-only Chamfer scorer) is indexed once whole and once split into ``--shards`` folders by
:func:`hapvr.retrieval.shards.shard_of`. The same 30-frame queries (held-out copies) and the
same ``duplicates`` run are answered three ways:

- ``one index``: :class:`hapvr.retrieval.search.Searcher`;
- ``shards, in process``: :class:`hapvr.retrieval.shards.ShardedSearcher`, shards asked one
  after another;
- ``shards, Dask local:W``: the shards as actors on ``W`` worker processes of one thread each
  (:mod:`hapvr.retrieval.cluster`), asked at once.

Printed per way: query latency (median, p95; the cluster's includes the round trips), duplicates
time, whether the top-10 lists equal the one index's (ids in order, scores within 1e-5), and the
share of the one index's duplicate pairs found (beyond ``DuplicatesConfig.flat_rows`` descriptor
rows each shard proposes from its own IVF, one index from one IVF: close, not equal). Torch runs with ``--threads`` threads in this process; a Dask worker uses one.
Results merge into ``--json`` (default ``benchmarks/results/shards.json``) with date, machine
and load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import _harness as H

HERE = Path(__file__).resolve().parent


def build(col, folder: Path, shards: int) -> tuple[Path, list[Path]]:
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.index_store import IndexStore, feature_space
    from hapvr.retrieval.shards import shard_of

    space = feature_space(ChamferBaseline(), backbone="synthetic-planted", pca=None, region_shape=[9, 512])
    one, parts = folder / "one", [folder / f"shard{n}" for n in range(shards)]
    stores = [IndexStore.create(p, space, (9, 512), durable=False) for p in [one, *parts]]
    for b0 in range(0, len(col.ids), 256):
        batch = [(v, col.video(v)) for v in col.ids[b0: b0 + 256]]
        stores[0].add_many(batch)
        for n in range(shards):
            stores[1 + n].add_many([(v, x) for v, x in batch if shard_of(v, shards) == n])
    for s in stores:
        s.close()
    return one, parts


def measure(searcher, queries: list[torch.Tensor], threshold: float, cfg) -> dict:
    searcher.search(queries[0], k=10)  # warm: the first search opens what it reads
    times, tops = [], []
    for q in queries:
        t0 = time.perf_counter()
        res = searcher.search(q, k=10)
        times.append(time.perf_counter() - t0)
        tops.append([(h.id, h.score) for h in res.hits])
    t0 = time.perf_counter()
    found = searcher.duplicates(threshold, cfg=cfg)
    dup_seconds = time.perf_counter() - t0
    return {"median_s": statistics.median(times), "p95_s": float(np.percentile(times, 95)), "tops": tops,
            "duplicates_s": dup_seconds, "pairs": [(p.a, p.b, p.relation, p.score) for p in found.pairs],
            "candidate_pairs": found.candidate_pairs}


def same_tops(a: dict, b: dict) -> bool:
    """Every query's top-10 ids in the same order, scores within 1e-5."""
    return all([i for i, _ in x] == [i for i, _ in y] and np.allclose([s for _, s in x], [s for _, s in y], atol=1e-5)
               for x, y in zip(a["tops"], b["tops"]))


def pairs_kept(a: dict, ref: dict) -> float:
    """Share of the reference's duplicate pairs (a, b, relation) that ``a`` found too."""
    mine = {p[:3] for p in a["pairs"]}
    return sum(p[:3] in mine for p in ref["pairs"]) / max(len(ref["pairs"]), 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=3000)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--json", default=str(HERE / "results" / "shards.json"))
    args = ap.parse_args(argv)
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.retrieval.cluster import DaskShards, connect
    from hapvr.retrieval.index_store import IndexStore
    from hapvr.retrieval.planted import PlantedCollection, PlantedConfig
    from hapvr.retrieval.search import DuplicatesConfig, Searcher
    from hapvr.retrieval.shards import ShardedSearcher

    torch.set_num_threads(args.threads)
    col = PlantedCollection(PlantedConfig(n_videos=args.size))
    queries = [torch.from_numpy(col.query(i, frames=30)[0]) for i in range(args.queries)]
    cfg, scorer, ways = DuplicatesConfig(min_coarse=0.5), ChamferBaseline(), {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        one, parts = build(col, Path(tmp), args.shards)
        print(f"{args.size} planted videos indexed whole and in {args.shards} shards ({time.perf_counter() - t0:.0f} s)")
        with IndexStore.open(one) as store:
            ways["one index"] = measure(Searcher(store, scorer), queries, args.threshold, cfg)
        stores = [IndexStore.open(p) for p in parts]
        ways["shards, in process"] = measure(ShardedSearcher(stores, scorer), queries, args.threshold, cfg)
        for s in stores:
            s.close()
        with connect(f"local:{args.workers}") as client:
            pool = DaskShards(client, parts, scorer)
            ways[f"shards, Dask local:{args.workers}"] = measure(ShardedSearcher(pool), queries, args.threshold, cfg)
            pool.close()
    ref = ways["one index"]
    rows = [[name, f"{1000 * w['median_s']:.0f} ms",
             f"{1000 * w['p95_s']:.0f} ms", "yes" if same_tops(w, ref) else "NO", f"{w['duplicates_s']:.1f} s",
             str(len(w["pairs"])), f"{pairs_kept(w, ref):.3f}"] for name, w in ways.items()]
    H.print_table(["searched as", "query median", "query p95", "top-10s = one index's", "duplicates", "pairs",
                   "of one index's pairs"], rows)
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "load_average": os.getloadavg(),
           "size": args.size, "shards": args.shards, "workers": args.workers, "threads": args.threads,
           "queries": args.queries, "ways": {n: {k: v for k, v in w.items() if k not in ("tops", "pairs")}
                                             | {"pairs": len(w["pairs"]), "top10_same_as_one_index": same_tops(w, ref),
                                                "share_of_one_index_pairs": pairs_kept(w, ref)}
                                             for n, w in ways.items()}}
    saved = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    saved[f"size-{args.size}-shards-{args.shards}-workers-{args.workers}"] = out
    H.write_json(args.json, saved)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
