"""Bootstrap intervals over queries (hapvr.evaluation.bootstrap) and the trainer's use of them
(hapvr.evaluation.levels): point values equal the protocol's, hand-computed cases, pairing."""

import numpy as np
import pytest

from hapvr.evaluation.bootstrap import Interval, Ranking, bootstrap, resamples
from hapvr.evaluation.levels import LEVEL_LABELS, bootstrap_levels, evaluate_levels, intervals_table


def _ranking(scores, relevant, n=None):
    r = np.array(relevant, dtype=bool)
    return Ranking(np.array(scores, dtype=np.float64), r, int(r.sum()) if n is None else n)


def test_two_queries_by_hand():
    # query A ranks its positive first (AP 1); query B ranks it second of two (AP 1/2)
    a, b = _ranking([0.9, 0.1], [1, 0]), _ranking([0.9, 0.1], [0, 1])
    out = bootstrap({"m": [a, b]}, n=4000, seed=1)["m"]
    assert out["mAP"].value == pytest.approx(0.75)
    # resamples are {A, A} (1.0), {B, B} (0.5) or mixed (0.75), each pure pair with probability 1/4
    assert out["mAP"].low == pytest.approx(0.5) and out["mAP"].high == pytest.approx(1.0)
    # uAP of the pool [A: .9 pos, .1 neg, B: .9 neg, .1 pos]: ranks .9 (pos, neg), .1 (neg, pos)
    # stable order A before B: pos@1 (P=1), pos@4 (P=2/4): (1 + 0.5) / 2
    assert out["uAP"].value == pytest.approx(0.75)
    # a query drawn twice adds its list twice: {A, A} pools two perfect lists -> 1
    draws = resamples(2, 4000, 1)
    assert any((d == 0).all() for d in draws) and any((d == 1).all() for d in draws)
    assert out["uAP"].high == pytest.approx(1.0)


def test_query_without_positives_is_skipped_for_map_but_pooled_for_uap():
    a = _ranking([0.9, 0.1], [1, 0])
    none = _ranking([0.95, 0.2], [0, 0])  # its best candidate outranks A's positive in the pool
    out = bootstrap({"m": [a, none]}, n=200, seed=0)["m"]
    assert out["mAP"].value == pytest.approx(1.0) and out["mAP"].low == pytest.approx(1.0)
    assert out["uAP"].value == pytest.approx(0.5)  # pool: .95 neg, .9 pos -> P@2 = 1/2


def test_identical_models_differ_by_exactly_zero_and_a_better_model_by_more():
    rng = np.random.default_rng(0)
    rankings = [_ranking(rng.random(20), rng.random(20) < 0.3, None) for _ in range(12)]
    rankings = [r for r in rankings if r.n_relevant] or rankings
    perfect = [Ranking(r.relevant.astype(float) + 0.01 * r.scores, r.relevant, r.n_relevant) for r in rankings]
    out = bootstrap({"a": rankings, "b": list(rankings), "p": perfect}, n=500, seed=3, difference=("a", "b"))
    for metric in ("mAP", "uAP"):
        d = out["a - b"][metric]
        assert d.value == d.low == d.high == 0.0
    better = bootstrap({"p": perfect, "a": rankings}, n=500, seed=3, difference=("p", "a"))["p - a"]
    assert better["mAP"].value > 0 and better["mAP"].low > 0 and better["uAP"].low > 0
    assert bootstrap({"p": perfect}, n=10)["p"]["mAP"].value == pytest.approx(1.0)


def test_level_without_ground_truth_has_no_value():
    none = _ranking([0.5, 0.2], [0, 0])
    out = bootstrap({"a": [none], "b": [none]}, n=20, difference=("a", "b"))
    assert out["a"]["mAP"] == Interval(None, None, None) and out["a - b"]["mAP"].value is None
    assert out["a"]["uAP"].value == 0.0 and str(out["a"]["mAP"]) == "n/a [n/a, n/a]"


def test_bad_inputs():
    a = _ranking([0.9, 0.1], [1, 0])
    with pytest.raises(ValueError, match="same queries"):
        bootstrap({"x": [a], "y": [a, a]})
    with pytest.raises(ValueError, match="confidence"):
        bootstrap({"x": [a]}, confidence=1.5)
    with pytest.raises(ValueError, match="at least one query"):
        bootstrap({"x": []})


def test_trainer_intervals_match_the_protocol():
    """On a toy benchmark, the intervals' point values are evaluate_levels' mAP and uAP."""
    rng = np.random.default_rng(5)
    database = [f"v{i}" for i in range(15)] + ["q0", "q1", "q2", "q3"]
    queries = ["q0", "q1", "q2", "q3"]
    labels = {q: {"DS": [f"v{3 * k}"], "CS": [f"v{3 * k + 1}"], "IS": [f"v{3 * k + 2}"]}
              for k, q in enumerate(queries)}
    labels["q3"] = {"DS": [], "CS": [], "IS": ["v14"]}  # no positive at DSVR / CSVR
    sims = {m: {q: {v: float(rng.random()) for v in database} for q in queries} for m in ("a", "b")}
    iv = bootstrap_levels(sims, labels, database, difference=("a", "b"), n=300)
    for m in ("a", "b"):
        res = evaluate_levels(sims[m], labels, database)
        for task in LEVEL_LABELS:
            assert iv[task][m]["mAP"].value == pytest.approx(res[task].map)
            assert iv[task][m]["uAP"].value == pytest.approx(res[task].uap)
            assert iv[task][m]["mAP"].low <= res[task].map <= iv[task][m]["mAP"].high
    for task in LEVEL_LABELS:
        d = iv[task]["a - b"]["mAP"]
        assert d.value == pytest.approx(iv[task]["a"]["mAP"].value - iv[task]["b"]["mAP"].value)
    text = intervals_table(iv, 4, 300)
    assert "over the 4 queries (300 paired resamples)" in text and "a - b" in text and text.count("\n") == 7
