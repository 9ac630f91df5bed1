"""Shards: several index folders searched as one collection (hapvr/retrieval/shards.py).

A 3-shard search must equal the search of one index holding the same videos in shard order,
exhaustively and through the coarse stage, with and without inset views; shards sharing an id
are refused; the commands split a collection with ``index build --shard I/N`` and search it
with repeated ``--index``. Synthetic features are fresh random draws (``fresh_seed``)."""

from __future__ import annotations

import json
import os
import sys
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.retrieval.index_store import IndexStore, feature_space
from hapvr.retrieval.search import Searcher
from hapvr.retrieval.shards import ShardedSearcher, shard_of

sys.path.insert(0, os.path.dirname(__file__))
from test_api import _frames, _write, default, use_default  # noqa: E402,F401  (fixtures)

R, D = 9, 64


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_shard_of_is_the_crc_of_the_id_and_spreads_ids_evenly():
    assert shard_of("a", 3) == zlib.crc32(b"a") % 3 and shard_of("\u00e9t\u00e9", 5) == zlib.crc32("\u00e9t\u00e9".encode()) % 5
    assert shard_of("anything", 1) == 0
    counts = np.bincount([shard_of(f"video{i:05d}.mp4", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900, counts  # 1000 each expected
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shard_of("a", 0)


@pytest.fixture
def collection(tmp_path, fresh_seed):
    """40 videos, some copies of others and some with an inset view, split into 3 shards by
    shard_of, and one index holding them all in shard order."""
    rng = np.random.default_rng(fresh_seed)
    videos = {}
    for i in range(40):
        base = unit(rng, int(rng.integers(3, 12)), R, D)
        if i % 4 == 3:  # a noisy copy of an earlier video
            src = videos[f"v{i - 3}"][0]
            base = src + 0.3 * unit(rng, *src.shape)
            base = base / np.linalg.norm(base, axis=-1, keepdims=True)
        views = [({"kind": "picture-in-picture", "top": i, "left": 3, "height": 50, "width": 60},
                  unit(rng, 6, R, D))] if i % 5 == 0 else []
        videos[f"v{i}"] = (base.astype(np.float32), views)
    shards = [[v for v in videos if shard_of(v, 3) == n] for n in range(3)]
    assert all(shards), shards
    space = feature_space(ChamferBaseline(), backbone="synthetic")
    paths = []
    for n, ids in enumerate(shards):
        paths.append(tmp_path / f"shard{n}")
        with IndexStore.create(paths[-1], space, (R, D), durable=False, insets=True) as store:
            store.add_many((v, *videos[v]) for v in ids)
    with IndexStore.create(tmp_path / "one", space, (R, D), durable=False, insets=True) as store:
        store.add_many((v, *videos[v]) for ids in shards for v in ids)
    return videos, paths, tmp_path / "one", rng


def _same(a, b):
    assert [h.id for h in a.hits] == [h.id for h in b.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=1e-6, atol=1e-7)
    assert [(h.query_view, h.target_view, h.entry) for h in a.hits] == [(h.query_view, h.target_view, h.entry)
                                                                        for h in b.hits]
    assert a.scored == b.scored
    if a.hits[0].coarse is not None:
        np.testing.assert_allclose([h.coarse for h in a.hits], [h.coarse for h in b.hits], rtol=1e-6)


@contextmanager
def one_and_three(collection):
    """``(one index, its Searcher, the 3 shards' ShardedSearcher)``, the stores closed after."""
    _, paths, one, _ = collection
    stores = [IndexStore.open(p) for p in paths]
    try:
        with IndexStore.open(one) as whole:
            yield whole, Searcher(whole, ChamferBaseline()), ShardedSearcher(stores, ChamferBaseline())
    finally:
        for s in stores:
            s.close()


def test_three_shards_search_as_one_index(collection):
    videos, _, _, rng = collection
    with one_and_three(collection) as (whole, single, sharded):
        assert len(sharded) == len(whole) == 40 and sharded.kind == "flat"
        queries = []
        for v in ("v0", "v3", "v10", "v17"):
            x = videos[v][0]
            queries.append(torch.from_numpy(x[: max(2, len(x) - 2)] + 0.05 * unit(rng, 1, R, D)))
        queries.append([(None, torch.from_numpy(unit(rng, 5, R, D))),  # a query whose inset shows v7
                        ({"kind": "picture-in-picture", "top": 0, "left": 0, "height": 9, "width": 9},
                         torch.from_numpy(videos["v7"][0]))])
        queries.append(torch.from_numpy(videos["v5"][1][0][1][:4]))  # what v5's inset shows
        for q in queries:
            for kwargs in ({"exhaustive": True}, {"candidates": 6}, {"candidates": 50}):
                _same(sharded.search(q, k=8, **kwargs), single.search(q, k=8, **kwargs))
        assert sharded.search(queries[-1], k=1, candidates=6).hits[0].entry == "v5\x001"
        together = sharded.search_many(queries[:3], k=5, exhaustive=True)
        for q, res in zip(queries[:3], together):
            _same(res, single.search(q, k=5, exhaustive=True))
        with pytest.raises(ValueError, match=r"\[T, 9, 64\]"):
            sharded.search(torch.zeros(3, R, D + 1), k=3)


def _same_duplicates(a, b):
    assert [(p.a, p.b, p.relation, p.coverage, p.segments, p.reason) for p in a.pairs] == \
        [(p.a, p.b, p.relation, p.coverage, p.segments, p.reason) for p in b.pairs]
    np.testing.assert_allclose([p.score for p in a.pairs], [p.score for p in b.pairs], rtol=1e-6, atol=1e-7)
    assert a.clusters == b.clusters and a.candidate_pairs == b.candidate_pairs


@pytest.mark.parametrize("symmetric", [False, True])
def test_three_shards_find_the_duplicates_of_one_index(collection, symmetric):
    """Neighbours asked of every shard and merged, pairs scored on the target's shard with the
    query video's features brought over: one index's duplicates, pairs, relations and clusters."""
    from hapvr.retrieval.search import DuplicatesConfig

    with one_and_three(collection) as (_, single, sharded):
        for cfg in (DuplicatesConfig(neighbours=3), DuplicatesConfig(neighbours=10, min_coarse=0.1)):
            found = sharded.duplicates(0.3, symmetric, cfg)
            _same_duplicates(found, single.duplicates(0.3, symmetric, cfg))
            assert found.pairs and found.candidate_pairs > len(found.pairs)
            where = sharded.where
            assert any(where[p.a] != where[p.b] for p in found.pairs)  # pairs across shards, not only within
            if not symmetric:  # every noisy copy is found with its source, in one cluster
                assert all(any({f"v{i - 3}", f"v{i}"} <= set(c) for c in found.clusters) for i in range(3, 40, 4))


def test_a_local_dask_cluster_gives_the_same_results(collection):
    """The shards as actors on a 2-worker local Dask cluster: the same searches and duplicates as
    one index, the shards' files opened and closed on the workers."""
    from hapvr.retrieval.cluster import ClusterError, DaskShards, connect

    videos, paths, one, rng = collection
    scorer = ChamferBaseline()
    queries = [torch.from_numpy(videos["v3"][0] + 0.05 * unit(rng, 1, R, D)),
               [(None, torch.from_numpy(unit(rng, 5, R, D))),
                ({"kind": "picture-in-picture", "top": 0, "left": 0, "height": 9, "width": 9},
                 torch.from_numpy(videos["v7"][0]))]]
    with IndexStore.open(one) as whole, connect("local:2") as client:
        single = Searcher(whole, scorer)
        pool = DaskShards(client, paths, scorer)
        try:
            assert len(set(pool.workers)) == 2  # round robin over both workers
            sharded = ShardedSearcher(pool)
            assert len(sharded) == 40 and sharded.insets
            for q in queries:
                for kwargs in ({"exhaustive": True}, {"candidates": 6}):
                    _same(sharded.search(q, k=8, **kwargs), single.search(q, k=8, **kwargs))
            np.testing.assert_array_equal(sharded.load("v5\x001").numpy(), whole.load("v5\x001").numpy())
            _same_duplicates(sharded.duplicates(0.3), single.duplicates(0.3))
            with pytest.raises(ValueError, match=r"\[T, 9, 64\]"):  # raised on the coordinator
                sharded.search(torch.zeros(3, R, D + 1), k=3)
        finally:
            pool.close()
        with pytest.raises(FileNotFoundError):  # a folder a worker cannot open: its error, here
            DaskShards(client, [paths[0], paths[0].parent / "nothing"], scorer)
        with pytest.raises(ValueError, match="is given twice"):
            ShardedSearcher(DaskShards(client, [paths[0], paths[0]], scorer))
    with pytest.raises(ClusterError, match="expected local:N with N >= 1"):
        with connect("local:0"):
            pass
    with pytest.raises(ClusterError, match="no Dask scheduler answered at tcp://127.0.0.1:9"):
        with connect("tcp://127.0.0.1:9", timeout=1):
            pass


def test_shards_sharing_an_id_are_refused(collection):
    videos, paths, one, _ = collection
    with IndexStore.open(paths[0]) as a, IndexStore.open(one) as b:
        with pytest.raises(ValueError, match=r"is in both .*shard0 and .*one: a video id lives in one shard"):
            ShardedSearcher([a, b], ChamferBaseline())
    with IndexStore.open(paths[0]) as a, IndexStore.open(paths[0]) as b:
        with pytest.raises(ValueError, match=r"shard0 is given twice"):
            ShardedSearcher([a, b], ChamferBaseline())
    with pytest.raises(ValueError, match="at least one index"):
        ShardedSearcher([], ChamferBaseline())


def test_the_commands_split_and_search_a_collection(use_default, tmp_path, capsys):  # noqa: F811
    from hapvr.index import main as index_main
    from hapvr.search import main as search_main

    videos = tmp_path / "videos"
    videos.mkdir()
    source = _frames(12, 0)
    for i in range(4):
        _write(videos / f"other{i}.mp4", _frames(8, 10 + i))
    _write(videos / "source.mp4", source)
    _write(videos / "reupload.mp4", source)
    _write(videos / "excerpt.mp4", _frames(2, 20) + source[4:10] + _frames(2, 21))
    one = tmp_path / "one"
    assert index_main(["build", "--videos", str(videos), "--index", str(one), "--no-progress"]) == 0
    shards = [tmp_path / f"shard{n}" for n in range(3)]
    for n, path in enumerate(shards):
        assert index_main(["build", "--videos", str(videos), "--index", str(path), "--shard", f"{n}/3",
                           "--no-progress"]) == 0
        assert f"--shard {n}/3: " in capsys.readouterr().err
    held = []
    for path in shards:
        with IndexStore.open(path) as store:
            held += store.ids()
            assert all(shard_of(v, 3) == shards.index(path) for v in store.ids())
    assert sorted(held) == sorted(p.stem for p in videos.iterdir())
    out_one, out_three = tmp_path / "one.json", tmp_path / "three.json"
    query = str(videos / "source.mp4")
    assert search_main(["--index", str(one), query, "--json", str(out_one)]) == 0
    argv = [x for path in shards for x in ("--index", str(path))]
    assert search_main([*argv, query, "--json", str(out_three)]) == 0
    assert "7 indexed videos in 3 shards" in capsys.readouterr().out
    a, b = (json.loads(p.read_text())["queries"][0]["results"] for p in (out_one, out_three))
    # the same results; "source" and "reupload" are the same file, so they tie and come in index order
    assert {r["id"] for r in a[:2]} == {r["id"] for r in b[:2]} == {"source", "reupload"}
    assert [r["id"] for r in a[2:]] == [r["id"] for r in b[2:]]
    by_id = {r["id"]: r for r in b}
    np.testing.assert_allclose([r["similarity"] for r in a], [by_id[r["id"]]["similarity"] for r in a], rtol=1e-5)
    assert [r["segments"] for r in a] == [by_id[r["id"]]["segments"] for r in a]
    # the same search on a local Dask cluster, and the duplicates of the shards as of the one index
    out_cluster = tmp_path / "cluster.json"
    assert search_main([*argv, query, "--cluster", "local:2", "--json", str(out_cluster)]) == 0
    assert "7 indexed videos in 3 shards" in capsys.readouterr().out
    c, t = (json.loads(p.read_text())["queries"][0]["results"] for p in (out_cluster, out_three))
    assert [(r["id"], r["segments"]) for r in c] == [(r["id"], r["segments"]) for r in t]
    np.testing.assert_allclose([r["similarity"] for r in c], [r["similarity"] for r in t], rtol=1e-5)
    dup_one, dup_three = tmp_path / "dup_one.json", tmp_path / "dup_three.json"
    assert search_main(["--index", str(one), "--duplicates", "--json", str(dup_one)]) == 0
    assert search_main([*argv, "--duplicates", "--json", str(dup_three)]) == 0
    printed = capsys.readouterr().out
    a, b = (json.loads(p.read_text()) for p in (dup_one, dup_three))
    assert [c["videos"] for c in a["clusters"]] == [c["videos"] for c in b["clusters"]]
    assert any({"source", "reupload"} <= set(c["videos"]) for c in b["clusters"])
    assert [(p["a"], p["b"], p["relation"]) for p in a["pairs"]] == [(p["a"], p["b"], p["relation"]) for p in b["pairs"]]
    assert "7 indexed videos" in printed
    # refusals: an id in two shards, a bad --cluster, a bad --shard
    assert search_main([*argv, query, "--cluster", "local:x"]) == 2
    assert "error: --cluster local:x: expected local:N with N >= 1 workers" in capsys.readouterr().err
    assert search_main(["--index", str(one), "--index", str(shards[0]), query]) == 2
    assert "a video id lives in one shard" in capsys.readouterr().err
    assert index_main(["build", "--videos", str(videos), "--index", str(tmp_path / "x"), "--shard", "3/3"]) == 2
    assert "expected I/N with 0 <= I < N" in capsys.readouterr().err
