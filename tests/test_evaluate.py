"""Evaluation end to end on generated feature files and annotations in the real formats."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from hapvr import metrics
from hapvr.evaluate import main as evaluate_main
from hapvr.evaluation.benchmarks import evaluate_scores, load_benchmark
from hapvr.evaluation.engine import EngineConfig, compute_scores, split_chunks
from hapvr.evaluation.feature_store import FeatureStore, write_features
from hapvr.evaluation.scorers import ChamferBaseline

D = 16


def unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def noisy(x, eps=0.05):
    return torch.nn.functional.normalize(x + eps * torch.randn_like(x), dim=-1)


@pytest.fixture
def corpus(tmp_path):
    """Two source videos with near-duplicate / partial copies, distractors, a 2049-frame target."""
    a, b = unit(20, 9, D), unit(12, 9, D)
    feats = {
        "qa": a, "qb": b, "qc": unit(8, 9, D),
        "a_nd": noisy(a), "a_ds": noisy(a[5:15]), "a_cs": unit(10, 9, D),
        "b_nd": noisy(b), "b_is": unit(6, 9, D),
        "long": unit(2049, 9, D),
        "tiny": unit(2, 9, D),
    }
    for i in range(8):
        feats[f"d{i}"] = unit(int(torch.randint(3, 30, ())), 9, D)
    path = tmp_path / "features.hdf5"
    write_features(path, feats)
    return path, feats


def fivr_annotations(tmp_path):
    database = ["qa", "qb", "qc", "a_nd", "a_ds", "a_cs", "b_nd", "b_is", "long", "tiny", "gone"] + [f"d{i}" for i in range(8)]
    ann = {
        "qa": {"ND": ["a_nd"], "DS": ["a_ds"], "CS": ["a_cs"]},
        "qb": {"ND": ["b_nd", "gone"], "IS": ["b_is"]},  # 'gone' has no features: not counted
        "qc": {},  # no ground truth: skipped
    }
    data = {"5k": {"queries": ["qa", "qb", "qc", "qmissing"], "database": database},
            "200k": {"queries": [], "database": []}, "annotation": ann}
    path = tmp_path / "fivr.pickle"
    path.write_bytes(pickle.dumps(data))
    return path


def per_pair_scores(feats, queries, targets, chunk=2048):
    """Straightforward loop: one scorer call per (query, chunk) pair, chunks averaged."""
    s = ChamferBaseline()
    out = {}
    for q in queries:
        qx = s.index(feats[q])[None]
        out[q] = {}
        for v in targets:
            vals = []
            for c in split_chunks(v, feats[v].shape[0], chunk):
                tx = s.index(feats[v][c.start:c.end])[None]
                vals.append(float(s.pairwise(qx, torch.tensor([qx.shape[1]]), tx, torch.tensor([tx.shape[1]]))[0, 0]))
            out[q][v] = sum(vals) / len(vals)
    return out


def test_engine_equals_per_pair_loop_with_chunking_and_tiny_tail(corpus):
    path, feats = corpus
    queries, targets = ["qa", "qb"], sorted(k for k in feats if not k.startswith("q"))
    cfg = EngineConfig(chunk_frames=2048, max_map_elements=4000)  # forces many small batches
    with FeatureStore(path) as store:
        got = compute_scores(ChamferBaseline(), store, queries, targets, cfg, progress=False)
    want = per_pair_scores(feats, queries, targets)
    for q in queries:
        for v in targets:
            assert abs(got[q][v] - want[q][v]) < 1e-5, (q, v)
    assert len(split_chunks("long", 2049, 2048)) == 2  # the 1-frame tail chunk was scored


def test_fivr_end_to_end(corpus, tmp_path, capsys):
    path, feats = corpus
    ann = fivr_annotations(tmp_path)
    out = tmp_path / "res.json"
    plot = tmp_path / "pr.png"
    assert evaluate_main(["--dataset", "fivr-5k", "--features", str(path), "--annotations", str(ann),
                          "--features-only", "--output", str(out), "--plot", str(plot), "--no-progress"]) == 0
    res = json.loads(out.read_text())["fivr-5k"]
    assert set(res["retrieval_mAP"]) == {"DSVR", "CSVR", "ISVR"}
    assert set(res["detection_uAP"]) == {"DSVD", "CSVD", "ISVD"}
    assert res["retrieval_mAP"]["DSVR"] == pytest.approx(1.0)  # near copies outrank everything
    assert res["queries_skipped"]["DSVR"] == ["qc"]
    assert res["queries_used"]["DSVR"] == 2
    # The same numbers from the protocol applied by hand to per-pair scores.
    bench = load_benchmark("fivr-5k", ann)
    present = set(feats)
    queries = ["qa", "qb", "qc"]
    scores = per_pair_scores(feats, queries, sorted(present))
    want = evaluate_scores(bench, scores, present)
    for task in ("DSVR", "CSVR", "ISVR"):
        assert res["retrieval_mAP"][task] == pytest.approx(want.retrieval[task], abs=1e-6)
    # CSVR for qa by hand: candidates exclude qa itself; a_cs is an unrelated video ranked low.
    cands = sorted(v for v in present if v != "qa")
    ap = metrics.average_precision([scores["qa"][v] for v in cands], [v in {"a_nd", "a_ds", "a_cs"} for v in cands])
    assert res["per_query_AP"]["CSVR"]["qa"] == pytest.approx(ap, abs=1e-6)
    assert plot.stat().st_size > 1000
    assert "DSVR" in capsys.readouterr().out


def test_fivr_hard_variant_drops_easy_duplicates(corpus, tmp_path):
    path, _ = corpus
    ann = fivr_annotations(tmp_path)
    easy = tmp_path / "easy.txt"
    easy.write_text("a_nd\nb_nd\n")
    out = tmp_path / "res.json"
    evaluate_main(["--dataset", "fivr-5k", "--features", str(path), "--annotations", str(ann),
                   "--features-only", "--easy-duplicates", str(easy), "--output", str(out), "--no-progress"])
    res = json.loads(out.read_text())
    assert "fivr-5k-hard" in res
    # qb's only DSVR positive was an easy duplicate: it has no ground truth left in the hard variant.
    assert "qb" in res["fivr-5k-hard"]["queries_skipped"]["DSVR"]


@pytest.mark.parametrize("dataset", ["evve", "svd", "vcdb", "custom"])
def test_other_datasets_end_to_end(corpus, tmp_path, dataset):
    path, feats = corpus
    distractors = [f"d{i}" for i in range(8)]
    if dataset == "evve":
        ann = {"database": ["a_nd", "a_ds", "b_nd", "long"] + distractors,
               "events": {"e1": {"queries": ["qa"], "positives": ["a_nd", "a_ds"]},
                          "e2": {"queries": ["qb"], "positives": ["b_nd"]}}}
        keys = ({"EVVE"}, {"EVVE-uAP"})
    elif dataset == "svd":
        ann = {"queries": {"qa": {"positives": ["a_nd"], "negatives": ["a_cs"]},
                           "qb": {"positives": ["b_nd"], "negatives": []}},
               "unlabelled": distractors}
        keys = ({"SVD"}, {"SVD-uAP"})
    elif dataset == "vcdb":
        ann = {"videos": ["qa", "a_nd", "a_ds", "qb", "b_nd"], "pairs": [["qa", "a_nd"], ["qa", "a_ds"], ["a_nd", "a_ds"], ["qb", "b_nd"]],
               "distractors": distractors}
        keys = ({"VCDB"}, {"VCDB-uAP"})
    else:
        ann = {"queries": ["qa", "qb"], "database": ["a_nd", "b_nd", "a_cs"] + distractors,
               "levels": {"copy": {"qa": ["a_nd"], "qb": ["b_nd"]}}, "detection": True}
        keys = ({"copy"}, {"copy-uAP"})
    ann_path = tmp_path / f"{dataset}.json"
    ann_path.write_text(json.dumps(ann))
    out = tmp_path / "res.json"
    assert evaluate_main(["--dataset", dataset, "--features", str(path), "--annotations", str(ann_path),
                          "--features-only", "--output", str(out), "--no-progress"]) == 0
    res = next(iter(json.loads(out.read_text()).values()))
    assert set(res["retrieval_mAP"]) == keys[0]
    assert set(res["detection_uAP"]) == keys[1]
    # Every positive here is a near copy (or a copy of a copy): perfect retrieval.
    for v in res["retrieval_mAP"].values():
        assert v == pytest.approx(1.0)


class FlakyScorer(ChamferBaseline):
    """Fails on the n-th call (an interruption), counting calls."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def pairwise(self, *args):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return super().pairwise(*args)


def test_resumed_evaluation_equals_uninterrupted(corpus, tmp_path):
    path, feats = corpus
    queries, targets = ["qa", "qb"], sorted(feats)
    cfg = EngineConfig(max_map_elements=3000)
    cache = tmp_path / "cache"
    with FeatureStore(path) as store:
        full = compute_scores(ChamferBaseline(), store, queries, targets, cfg, progress=False)
        with pytest.raises(KeyboardInterrupt):
            compute_scores(FlakyScorer(fail_at=3), store, queries, targets, cfg, cache, progress=False)
        resumed_scorer = FlakyScorer()
        resumed = compute_scores(resumed_scorer, store, queries, targets, cfg, cache, progress=False)
        total = FlakyScorer()
        compute_scores(total, store, queries, targets, cfg, progress=False)
    assert resumed_scorer.calls == total.calls - 2  # the two finished batches were not redone
    for q in queries:
        for v in targets:
            assert resumed[q][v] == pytest.approx(full[q][v], abs=1e-7)


def test_cache_from_other_settings_is_refused(corpus, tmp_path):
    path, feats = corpus
    with FeatureStore(path) as store:
        compute_scores(ChamferBaseline(), store, ["qa"], ["a_nd"], cache_dir=tmp_path, progress=False)
        with pytest.raises(RuntimeError, match="other queries, scorer or chunking"):
            compute_scores(ChamferBaseline(), store, ["qb"], ["a_nd"], cache_dir=tmp_path, progress=False)


def test_two_process_sharded_run_equals_one_process(corpus, tmp_path):
    path, feats = corpus
    ann = fivr_annotations(tmp_path)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    common = ["--dataset", "fivr-5k", "--features", str(path), "--annotations", str(ann), "--features-only",
              "--no-progress", "--max-map-elements", "3000"]
    assert evaluate_main(common + ["--output", str(one)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "hapvr.evaluate", *common, "--output", str(two), "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["scores.rank0-of-2.jsonl", "scores.rank1-of-2.jsonl"]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    for task, v in a["fivr-5k"]["retrieval_mAP"].items():
        assert b["fivr-5k"]["retrieval_mAP"][task] == pytest.approx(v, abs=1e-6)
    for task, v in a["fivr-5k"]["detection_uAP"].items():
        assert b["fivr-5k"]["detection_uAP"][task] == pytest.approx(v, abs=1e-6)


def test_bad_inputs_give_one_clear_line(tmp_path, corpus, capsys):
    path, _ = corpus
    assert evaluate_main(["--dataset", "fivr-5k", "--features", str(path), "--annotations",
                          str(tmp_path / "nope.pickle"), "--features-only"]) == 2
    assert "error: --annotations" in capsys.readouterr().err
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps({"annotation": {}}))
    assert evaluate_main(["--dataset", "fivr-5k", "--features", str(path), "--annotations", str(bad),
                          "--features-only"]) == 2
    assert "must contain the key '5k'" in capsys.readouterr().err
