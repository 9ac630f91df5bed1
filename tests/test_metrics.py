"""hapvr.metrics against hand-computed values and scikit-learn."""

import numpy as np
import pytest

from hapvr import metrics


def test_ap_hand_computed():
    # ranking: rel, non, rel, non -> (1/1 + 2/3) / 2
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # a third relevant video never retrieved counts in |GT|
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0], n_relevant=3) == pytest.approx((1 + 2 / 3) / 3)
    assert metrics.average_precision([0.3, 0.2], [0, 0]) == 0.0


def test_ap_order_of_input_does_not_matter_without_ties():
    s = np.array([0.1, 0.9, 0.5, 0.7])
    r = np.array([0, 1, 0, 1], dtype=bool)
    perm = np.array([2, 0, 3, 1])
    assert metrics.average_precision(s, r) == metrics.average_precision(s[perm], r[perm]) == 1.0


def test_tie_handling_is_documented_and_deterministic():
    # Stable: equal scores keep the given order.
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == 1.0
    assert metrics.average_precision([0.5, 0.5], [0, 1]) == 0.5
    # Tie groups: the pair is one step, order no longer matters.
    assert metrics.average_precision([0.5, 0.5], [1, 0], tie_groups=True) == 0.5
    assert metrics.average_precision([0.5, 0.5], [0, 1], tie_groups=True) == 0.5


def test_ap_matches_sklearn_on_tie_free_data():
    import sklearn.metrics as sklearn_metrics
    rng = np.random.default_rng()
    for _ in range(20):
        n = int(rng.integers(2, 300))
        s = rng.permutation(n) / n  # distinct scores
        r = rng.random(n) < 0.3
        r[int(rng.integers(n))] = True
        want = sklearn_metrics.average_precision_score(r, s)
        assert metrics.average_precision(s, r) == pytest.approx(want, abs=1e-12)
        assert metrics.average_precision(s, r, tie_groups=True) == pytest.approx(want, abs=1e-12)


def test_tie_groups_match_sklearn_with_ties():
    import sklearn.metrics as sklearn_metrics
    rng = np.random.default_rng()
    s = rng.integers(0, 5, 200) / 5.0
    r = rng.random(200) < 0.4
    r[0] = True
    assert metrics.average_precision(s, r, tie_groups=True) == pytest.approx(
        sklearn_metrics.average_precision_score(r, s), abs=1e-12)


def test_trapezoidal_ap_hand_computed():
    # relevant at ranks 0 and 2 of 3: (1 + 1)/2/2 + (1/2 + 2/3)/2/2
    want = 0.5 + (0.5 + 2 / 3) / 4
    assert metrics.trapezoidal_average_precision([0.9, 0.5, 0.3], [1, 0, 1]) == pytest.approx(want)
    assert metrics.trapezoidal_average_precision([0.9, 0.5], [1, 1]) == pytest.approx(1.0)


def test_micro_ap_pools_queries():
    # two queries pooled: scores 0.9(r) 0.8(n) 0.6(r) 0.4(r), |GT| = 4 (one never retrieved)
    s = [0.9, 0.6, 0.8, 0.4]
    r = [1, 1, 0, 1]
    want = (1 + 2 / 3 + 3 / 4) / 4
    assert metrics.micro_average_precision(s, r, n_relevant=4) == pytest.approx(want)


def test_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        metrics.average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_precision([float("nan")], [1])
    with pytest.raises(ValueError, match="no query to average"):
        metrics.mean_average_precision([])
    with pytest.raises(ValueError, match="n_relevant=1 is smaller"):
        metrics.average_precision([0.1, 0.2], [1, 1], n_relevant=1)


def test_builtin_levels_exclude_query_and_accumulate_labels():
    from hapvr.evaluation.levels import evaluate_levels

    db = ["q", "a", "b", "c", "d"]
    sims = {"q": {"q": 1.0, "a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
    labels = {"q": {"DS": ["b"], "CS": ["c"], "IS": ["a"]}}
    res = evaluate_levels(sims, labels, db)
    assert res["DSVR"].map == pytest.approx(1 / 2)  # b at rank 2 (the query itself is excluded)
    assert res["CSVR"].map == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res["ISVR"].map == pytest.approx(1.0)
    assert res["DSVR"].queries == 1
    assert res["DSVR"].uap == pytest.approx(1 / 2)
