"""Retrieval metrics against hand-computed values and scikit-learn."""

import numpy as np
import pytest

from hapvr.metrics import average_precision, evaluate_levels, mean_average_precision, micro_average_precision


def test_ap_hand_computed():
    # ranking: pos, neg, pos, neg -> (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # a missed positive (not scored) counts in |GT|
    assert average_precision([0.9, 0.8], [1, 0], num_gt=2) == pytest.approx(0.5)
    assert average_precision([0.1, 0.2, 0.3], [1, 1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        average_precision([0.1], [0])


def test_ap_matches_sklearn_without_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.random(30)
        r = rng.random(30) < 0.3
        if r.any():
            assert average_precision(s, r) == pytest.approx(sklearn.average_precision_score(r, s))


def test_map_and_uap():
    ranked = [(np.array([0.9, 0.1]), np.array([True, False])),  # AP 1
              (np.array([0.8, 0.7]), np.array([False, True])),  # AP 1/2
              (np.array([0.5, 0.4]), np.array([False, False]))]  # skipped
    assert mean_average_precision(ranked) == pytest.approx(0.75)
    # pooled ranking: 0.9 T, 0.8 F, 0.7 T, 0.5 F, 0.4 F, 0.1 F -> (1 + 2/3) / 2
    assert micro_average_precision(ranked) == pytest.approx((1 + 2 / 3) / 2)


def test_levels_exclude_query_and_accumulate_labels():
    db = ["q", "a", "b", "c", "d"]
    sims = {"q": {"q": 1.0, "a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
    labels = {"q": {"DS": ["b"], "CS": ["c"], "IS": ["a"]}}
    res = evaluate_levels(sims, labels, db)
    assert res["DSVR"].map == pytest.approx(1 / 2)  # b at rank 2
    assert res["CSVR"].map == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res["ISVR"].map == pytest.approx(1.0)
    assert res["DSVR"].queries == 1
