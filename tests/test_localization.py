"""Copy localisation (hapvr.localization) and its metrics (hapvr.metrics, segment section):
a plain-Python heaviest-path oracle, metric values computed by hand, planted copies on
synthetic maps, and a property test. Every random input comes from a fixed seed."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hapvr import metrics
from hapvr.localization import PRESETS, LocalizationConfig, Segment, _TemporalNetwork, localize, localize_explained


def heaviest_path_sums(sim: np.ndarray, cfg: LocalizationConfig, alive=None) -> dict:
    """Oracle: the heaviest path weight ending at each node, by the textbook DAG recurrence over an
    explicit node list (same nodes as the network: each row's top-k frames)."""
    net = _TemporalNetwork(torch.from_numpy(sim), cfg)
    alive = net.alive if alive is None else alive
    nodes = [(i, int(net.cols[i, k]), float(net.vals[i, k]))
             for i in range(net.T) for k in range(net.K) if alive[i, k]]
    best = {}
    for i, j, s in nodes:  # rows ascending, so predecessors are done
        prev = [best[(a, b)] for a, b, _ in nodes
                if 0 < i - a <= cfg.max_gap and 0 < j - b <= cfg.max_gap
                and 1 / cfg.max_speed <= (j - b) / (i - a) <= cfg.max_speed]
        best[(i, j)] = s - cfg.min_score + max([0.0, *prev])  # a node weighs its similarity less min_score
    return best


def network_sums(net: _TemporalNetwork) -> dict:
    return {(i, int(net.cols[i, k])): float(net.best[i + net.G, k])
            for i in range(net.T) for k in range(net.K) if net.alive[i, k]}


# --- the dynamic programme against the oracle ------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_dp_matches_oracle_and_box_removal_repairs_it(seed):
    rng = np.random.default_rng(seed)
    sim = rng.uniform(0.0, 1.0, (int(rng.integers(5, 25)), int(rng.integers(5, 25))))
    cfg = LocalizationConfig(threshold=0.4, top_k=int(rng.integers(1, 5)), max_gap=int(rng.integers(1, 5)),
                             max_speed=float(rng.choice([1.0, 1.5, 2.0, 3.0])))
    net = _TemporalNetwork(torch.from_numpy(sim), cfg)
    assert network_sums(net) == pytest.approx(heaviest_path_sums(sim, cfg))
    # Incremental repair after deleting a box equals recomputing everything.
    T, T2 = sim.shape
    q0, t0 = int(rng.integers(0, T)), int(rng.integers(0, T2))
    net._remove_box(q0, min(T - 1, q0 + 4), t0, min(T2 - 1, t0 + 4))
    assert network_sums(net) == pytest.approx(heaviest_path_sums(sim, cfg, alive=net.alive))


# --- metrics: one pair, by hand ----------------------------------------------------------------

def prf(p, r, abs=None):
    return pytest.approx((p, r, 2 * p * r / (p + r) if p + r else 0.0), abs=abs)


def as_tuple(x):
    return (x.precision, x.recall, x.f1)


def test_perfect_prediction_scores_one():
    box = (3.0, 13.0, 20.0, 30.0)
    assert as_tuple(metrics.segment_precision_recall([box], [box])) == prf(1.0, 1.0)
    # Segment objects and their dicts are accepted too.
    seg = Segment(*box, score=0.7)
    assert as_tuple(metrics.segment_precision_recall([seg], [seg.to_dict()])) == prf(1.0, 1.0)


def test_half_overlap_on_one_axis():
    # pred q[0,10] t[0,10], gt q[5,15] t[0,10]. Query: TP = |[0,10] n [5,15]| = 5,
    # P_q = 5/10, R_q = 5/10. Target: TP = 10, P_t = R_t = 1.
    # vsc (geometric mean): P = R = sqrt(0.5 * 1); vcsl (product): P = R = 0.5 (less VCSL's 1e-6).
    pred, gt = [(0, 10, 0, 10)], [(5, 15, 0, 10)]
    assert as_tuple(metrics.segment_precision_recall(pred, gt)) == prf(math.sqrt(0.5), math.sqrt(0.5))
    assert as_tuple(metrics.segment_precision_recall(pred, gt, metric="vcsl")) == prf(0.5, 0.5, abs=1e-6)


def test_overlapping_predictions_count_once():
    # gt q[0,10] t[0,10]; preds q[0,10] t[0,10] and q[5,15] t[5,15] overlap each other.
    # Union of preds on each axis = [0,15] (15 s, not 10 + 10), TP = |[0,15] n [0,10]| = 10:
    # P_q = P_t = 10/15, R_q = R_t = 1 -> P = 2/3, R = 1, F1 = 2 (2/3) / (5/3) = 0.8.
    got = metrics.segment_precision_recall([(0, 10, 0, 10), (5, 15, 5, 15)], [(0, 10, 0, 10)])
    assert as_tuple(got) == prf(2 / 3, 1.0)
    assert got.f1 == pytest.approx(0.8)
    # vcsl sums per predicted box: P_a = (10 + 5) / (10 + 10) = 0.75, P = 0.75^2; the gt box is
    # covered by [0,10] u [5,10] = 10 of 10: R = 1.
    vcsl = metrics.segment_precision_recall([(0, 10, 0, 10), (5, 15, 5, 15)], [(0, 10, 0, 10)], metric="vcsl")
    assert as_tuple(vcsl) == prf(0.75 ** 2, 1.0, abs=1e-6)


def test_vcsl_and_vsc_differ_on_multi_box_pairs():
    # preds P1 q[0,10] t[0,10], P2 q[5,15] t[5,15] (overlapping each other); gts G1 q[0,6] t[0,6],
    # G2 q[8,12] t[8,12]. vcsl, per axis: P1 meets G1 on [0,6] and G2 on [8,10] (union 8), P2 meets
    # G1 on [5,6] and G2 on [8,12] (union 5): P_a = 13 / 20 -> P = 0.65^2 = 0.4225. Recall: G1 is
    # covered by [0,6] u [5,6] = 6, G2 by [8,10] u [8,12] = 4: R_a = 10 / 10 -> R = 1.
    # vsc: union of preds [0,15] (15), TP = |[0,15] n ([0,6] u [8,12])| = 10 -> P_a = 2/3 -> P = 2/3.
    preds, gts = [(0, 10, 0, 10), (5, 15, 5, 15)], [(0, 6, 0, 6), (8, 12, 8, 12)]
    vcsl = metrics.segment_precision_recall(preds, gts, metric="vcsl")
    assert as_tuple(vcsl) == prf(0.4225, 1.0, abs=1e-6)
    assert as_tuple(metrics.segment_precision_recall(preds, gts, metric="vsc")) == prf(2 / 3, 1.0, abs=1e-6)
    # one box touching two gt boxes that overlap each other: its covered part is their union on
    # each axis, [0,6] u [4,8] = 8 (not 6 + 4): P_a = 8/10 -> P = 0.64; each gt box is wholly
    # covered: R = 1.
    one = metrics.segment_precision_recall([(0, 10, 0, 10)], [(0, 6, 0, 6), (4, 8, 4, 8)], metric="vcsl")
    assert as_tuple(one) == prf(0.64, 1.0, abs=1e-6)
    # a gt box met on each axis but not in 2D adds nothing in either form
    apart = metrics.segment_precision_recall([(0, 10, 20, 30)], [(0, 10, 0, 10), (20, 30, 20, 30)], metric="vcsl")
    assert as_tuple(apart) == prf(0.0, 0.0)


def test_wrong_target_span_lowers_target_precision_only():
    # gt q[0,10] t[0,10]; preds q[0,10] t[0,10] (right) and q[0,10] t[20,30] (wrong target).
    # Query: union [0,10], TP 10 -> P_q = 1. Target: union 20 s, TP 10 -> P_t = 0.5.
    # P = sqrt(1 * 0.5), R = 1.
    got = metrics.segment_precision_recall([(0, 10, 0, 10), (0, 10, 20, 30)], [(0, 10, 0, 10)])
    assert as_tuple(got) == prf(math.sqrt(0.5), 1.0)


def test_overlap_on_each_axis_separately_is_not_a_match():
    # gts A q[0,10] t[0,10], B q[20,30] t[20,30]; pred q[0,10] t[20,30] meets A's query span and
    # B's target span but neither box (zero area): G* is empty, TP = 0 on both axes.
    got = metrics.segment_precision_recall([(0, 10, 20, 30)], [(0, 10, 0, 10), (20, 30, 20, 30)])
    assert as_tuple(got) == prf(0.0, 0.0)


def test_missed_ground_truth_lowers_recall():
    # gts q[0,10] t[0,10] and q[20,30] t[20,30]; pred = the first: TP = 10 per axis,
    # P = 1, R_q = R_t = 10/20 -> R = 0.5, F1 = 2/3.
    got = metrics.segment_precision_recall([(0, 10, 0, 10)], [(0, 10, 0, 10), (20, 30, 20, 30)])
    assert as_tuple(got) == prf(1.0, 0.5)


def test_empty_sides_follow_vcsl():
    box = (0, 10, 0, 10)
    assert as_tuple(metrics.segment_precision_recall([box], [])) == prf(0.0, 1.0)  # no ground truth
    assert as_tuple(metrics.segment_precision_recall([], [box])) == prf(1.0, 0.0)  # no prediction
    assert as_tuple(metrics.segment_precision_recall([], [])) == prf(1.0, 1.0)


def test_bad_segments_are_refused():
    with pytest.raises(ValueError, match="ends before it starts"):
        metrics.segment_precision_recall([(10, 0, 0, 10)], [(0, 10, 0, 10)])
    with pytest.raises(ValueError, match="NaN"):
        metrics.segment_precision_recall([(0, float("nan"), 0, 10)], [(0, 10, 0, 10)])
    with pytest.raises(ValueError, match="metric"):
        metrics.segment_precision_recall([], [], metric="mean")
    with pytest.raises(ValueError, match="score"):  # the micro-AP ranks by score
        metrics.segment_micro_ap({"A": [(0, 10, 0, 10)]}, {"A": [(0, 10, 0, 10)]})


def test_over_pairs_macro_average_and_groups():
    # a: perfect (1, 1); b: half on the query axis (sqrt .5, sqrt .5); c: prediction without
    # ground truth (0, 1); d: ground truth without prediction (1, 0).
    box = (0, 10, 0, 10)
    pred = {"a": [box], "b": [box], "c": [box]}
    gt = {"a": [box], "b": [(5, 15, 0, 10)], "d": [box]}
    h = math.sqrt(0.5)
    got = metrics.segment_prf_over_pairs(pred, gt)
    assert as_tuple(got) == prf((1 + h + 0 + 1) / 4, (1 + h + 1 + 0) / 4)
    # Groups {a, b} and {c, d}: P = ((1 + h) / 2 + (0 + 1) / 2) / 2, R = ((1 + h) / 2 + (1 + 0) / 2) / 2.
    got = metrics.segment_prf_over_pairs(pred, gt, groups={"a": 1, "b": 1, "c": 2, "d": 2})
    assert as_tuple(got) == prf(((1 + h) / 2 + 0.5) / 2, ((1 + h) / 2 + 0.5) / 2)
    with pytest.raises(ValueError, match="no group"):
        metrics.segment_prf_over_pairs(pred, gt, groups={"a": 1})


# --- metrics: segment micro-AP, by hand ----------------------------------------------------------

def test_micro_ap_hand_ranking():
    # Ground truth: pairs A and B, each q[0,10] t[0,10] -> GL_q = GL_t = 20.
    # 0.9  A q[0,10] t[0,10]: TP (10, 10), PL (10, 10): P = 1, R = sqrt(.5 * .5) = .5   -> +1 * .5
    # 0.8  C q[0,10] t[0,10] (no ground truth): TP (10, 10), PL (20, 20): P = .5, R = .5 -> +0
    # 0.7  B q[0,5]  t[0,10]: TP (15, 20), PL (25, 30): P = sqrt(15/25 * 20/30) = sqrt(.4),
    #      R = sqrt(15/20 * 20/20) = sqrt(.75)                                      -> +sqrt(.4) (sqrt(.75) - .5)
    gt = {"A": [(0, 10, 0, 10)], "B": [(0, 10, 0, 10)]}
    pred = {"B": [(0, 5, 0, 10, 0.7)], "C": [(0, 10, 0, 10, 0.8)], "A": [(0, 10, 0, 10, 0.9)]}
    want = 0.5 + math.sqrt(0.4) * (math.sqrt(0.75) - 0.5)
    assert metrics.segment_micro_ap(pred, gt) == pytest.approx(want)
    # Perfect predictions -> 1; no prediction -> 0; no ground truth -> 0.
    assert metrics.segment_micro_ap({k: [(*v[0], 1.0)] for k, v in gt.items()}, gt) == pytest.approx(1.0)
    assert metrics.segment_micro_ap({}, gt) == 0.0
    assert metrics.segment_micro_ap(pred, {}) == 0.0


def test_micro_ap_equal_scores_are_one_step():
    # A right and a wrong prediction with one score enter together: P = 10/20 per axis = .5 at
    # R = 1 -> AP = .5, whichever is listed first (one at a time it would be 1 or .5).
    gt = {"A": [(0, 10, 0, 10)]}
    right, wrong = ("A", (0, 10, 0, 10, 0.5)), ("C", (0, 10, 0, 10, 0.5))
    for first, second in ((right, wrong), (wrong, right)):
        pred = {first[0]: [first[1]], second[0]: [second[1]]}
        assert metrics.segment_micro_ap(pred, gt) == pytest.approx(0.5)


def test_micro_ap_overlapping_predictions_in_one_pair():
    # gt A q[0,10] t[0,10]. 0.9: q[0,10] t[0,10] -> P = 1, R = 1 -> +1.
    # 0.5: q[5,15] t[5,15] adds 5 s of union per axis: P = 10/15, R stays 1 -> +0. AP = 1.
    pred = {"A": [Segment(0, 10, 0, 10, 0.9), Segment(5, 15, 5, 15, 0.5)]}
    assert metrics.segment_micro_ap(pred, {"A": [(0, 10, 0, 10)]}) == pytest.approx(1.0)


# --- localisation on synthetic maps ----------------------------------------------------------------

def noise_map(rng, T, T2, low=0.0, high=0.2):
    """Unrelated frame pairs as real region Chamfer maps hold them: median about 0.1, rarely past 0.2
    (copy-free pairs of the validation benchmark: median 0.07, 90th percentile 0.21)."""
    return rng.uniform(low, high, (T, T2))


def plant(sim, rng, q0, t0, n, speed, level=(0.8, 0.95)):
    """A copy of n query frames starting at (q0, t0): query frame q0 + i shows target frame
    t0 + floor(i * speed). Returns the planted spans in frames, end-exclusive."""
    cols = t0 + np.floor(np.arange(n) * speed).astype(int)
    sim[q0 + np.arange(n), cols] = rng.uniform(*level, n)
    return (q0, q0 + n, t0, int(cols[-1]) + 1)


def assert_matches(seg, span, fps):
    tol = 1.0 / fps + 1e-9  # one frame, in seconds
    got = (seg.query_start, seg.query_end, seg.target_start, seg.target_end)
    want = tuple(x / fps for x in span)
    assert all(abs(g - w) <= tol for g, w in zip(got, want)), (got, want)


@pytest.mark.parametrize("fps", [1.0, 2.0])
@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_finds_a_planted_copy_at_any_speed(fps, speed):
    rng = np.random.default_rng(7)
    sim = noise_map(rng, 80, 100)
    span = plant(sim, rng, 20, 30, 30, speed)
    segs = localize(sim, fps)
    assert len(segs) == 1
    assert_matches(segs[0], span, fps)
    assert 0.8 <= segs[0].score <= 0.95


@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_two_copies_in_one_pair_best_first(fps):
    rng = np.random.default_rng(8)
    sim = noise_map(rng, 100, 90)
    # Crossing copies: the target runs backwards from one to the other, so no path joins them.
    weaker = plant(sim, rng, 10, 60, 20, 1.0, level=(0.65, 0.75))
    stronger = plant(sim, rng, 55, 5, 25, 1.0, level=(0.85, 0.95))
    segs = localize(sim, fps)
    assert len(segs) == 2
    assert_matches(segs[0], stronger, fps)
    assert_matches(segs[1], weaker, fps)
    assert segs[0].score > segs[1].score


def test_partial_copy_embedded_in_unrelated_content():
    rng = np.random.default_rng(9)
    sim = noise_map(rng, 150, 200)
    span = plant(sim, rng, 70, 120, 15, 1.0)
    segs = localize(torch.from_numpy(sim).float(), 1.0)
    assert len(segs) == 1
    assert_matches(segs[0], span, 1.0)


def test_a_copy_played_backwards_is_found_and_marked():
    rng = np.random.default_rng(12)
    sim = noise_map(rng, 60, 70)
    sim[10 + np.arange(20), 49 - np.arange(20)] = rng.uniform(0.8, 0.95, 20)  # query 10..29 -> target 49..30
    segs = localize(sim, 1.0)
    assert len(segs) == 1 and segs[0].reversed
    assert_matches(segs[0], (10, 30, 30, 50), 1.0)
    assert localize(sim, 1.0, reverse=False) == []


def test_a_copy_shorter_than_the_minimum_length_gets_a_segment():
    """A 1-s clip (one frame) found in a longer video: its segment covers it, although min_length is 3 s."""
    rng = np.random.default_rng(13)
    sim = noise_map(rng, 1, 40)
    sim[0, 17] = 0.9
    segs = localize(sim, 1.0)
    assert [(s.query_start, s.query_end, s.target_start, s.target_end) for s in segs] == [(0.0, 1.0, 17.0, 18.0)]


def test_a_short_re_cut_of_two_parts_gets_both():
    """A 13-frame video (3.25 s at 4 fps) made of a 7-frame and a 6-frame part of a 25-frame one
    (the packaged v2s and v2): both parts are found although each is shorter than min_length, as
    they cover more than min_length_share of the shorter video; at a share of 1 neither is."""
    rng = np.random.default_rng(15)
    sim = noise_map(rng, 25, 13)
    for i in range(7):
        sim[i, i] = 1.0  # v2's first 1.75 s are v2s's first 1.75 s
    for i in range(6):
        sim[19 + i, 7 + i] = 1.0  # v2's last 1.5 s are the rest of v2s
    segs = localize(sim, 4.0)
    spans = sorted((s.query_start, s.query_end, s.target_start, s.target_end) for s in segs)
    assert spans == [(0.0, 1.75, 0.0, 1.75), (4.75, 6.25, 1.75, 3.25)], spans
    none, reason = localize_explained(sim, 4.0, min_length_share=1.0)
    assert none == [] and "shorter than the 3 s a segment needs" in reason


def test_the_thresholds_follow_the_pair_s_background():
    """An edited copy sits low on the map (0.35-0.45) and so does its background: found over a
    background of 0.1-0.2, and not over a background as high as the copy."""
    rng = np.random.default_rng(14)
    sim = noise_map(rng, 40, 40, 0.1, 0.2)
    span = plant(sim, rng, 5, 8, 20, 1.0, level=(0.35, 0.45))
    segs = localize(sim, 1.0)
    assert len(segs) == 1
    assert_matches(segs[0], span, 1.0)
    assert localize(sim, 1.0, threshold=0.5, min_score=0.6, threshold_margin=None, score_margin=None) == []
    high = noise_map(rng, 40, 40, 0.35, 0.45)
    plant(high, rng, 5, 8, 20, 1.0, level=(0.35, 0.45))
    assert localize(high, 1.0) == []


def test_no_segment_comes_with_its_reason():
    from hapvr.localization import localize_explained

    rng = np.random.default_rng(15)
    sim = noise_map(rng, 30, 30)
    plant(sim, rng, 4, 4, 2, 1.0, level=(0.5, 0.5))  # two frames: too short for a 3-s segment
    segs, why = localize_explained(sim, 1.0)
    assert segs == [] and why == "the strongest run of matching frames scores 0.50 over 2 s, shorter than the 3 s a segment needs"
    weak = noise_map(rng, 30, 30)
    plant(weak, rng, 4, 4, 8, 1.0, level=(0.2, 0.2))  # long enough, too weak
    segs, why = localize_explained(weak, 1.0)
    assert segs == [] and why.endswith("below the mean frame similarity of 0.25 a segment needs"), why
    segs, why = localize_explained(np.full((5, 5), 0.1), 1.0)
    assert segs == [] and why == "no frame pair reaches 0.15 (the most similar pair: 0.10)"
    span = plant(sim, rng, 10, 10, 8, 1.0)
    segs, why = localize_explained(sim, 1.0)
    assert len(segs) == 1 and why is None


def test_negative_pair_gives_no_segment():
    rng = np.random.default_rng(10)
    assert localize(noise_map(rng, 120, 140), 1.0) == []
    # A trained model's map: unrelated frames in [-1, 0.2]; the copy is found with its preset.
    sim = noise_map(rng, 60, 60, -1.0, 0.2)
    assert localize(sim, 1.0, **PRESETS["trained"]) == []
    span = plant(sim, rng, 10, 25, 20, 1.0, level=(0.5, 0.9))
    segs = localize(sim, 1.0, **PRESETS["trained"])
    assert len(segs) == 1
    assert_matches(segs[0], span, 1.0)


def test_filters_and_limits():
    rng = np.random.default_rng(11)
    sim = noise_map(rng, 100, 100)
    plant(sim, rng, 5, 5, 20, 1.0)
    plant(sim, rng, 60, 30, 6, 1.0)  # 6 s long
    assert len(localize(sim, 1.0)) == 2
    assert len(localize(sim, 1.0, min_length=8.0)) == 1
    assert len(localize(sim, 1.0, max_segments=1)) == 1
    assert localize(sim, 1.0, min_score=0.99) == []
    # -inf cells (padding) are never matched; an empty map has no segment.
    padded = np.full((120, 100), -np.inf)
    padded[:100] = sim
    assert localize(padded, 1.0) == localize(sim, 1.0)
    assert localize(np.zeros((0, 5)), 1.0) == []


def test_torch_and_numpy_agree_and_to_dict_keys():
    rng = np.random.default_rng(12)
    sim = noise_map(rng, 50, 50)
    plant(sim, rng, 10, 10, 20, 1.0)
    segs = localize(sim, 1.0)
    assert segs == localize(torch.from_numpy(sim), 1.0)
    assert list(segs[0].to_dict()) == ["query_start", "query_end", "target_start", "target_end", "score", "reversed"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(sim=np.zeros((2, 2, 2))), "T, T'"),
    (dict(sim=np.array([[0.0, float("nan")]])), "NaN"),
    (dict(fps=0.0), "fps"),
    (dict(top_k=0), "top_k"),
    (dict(max_speed=0.5), "max_speed"),
    (dict(min_length=-1.0), "min_length"),
    (dict(max_overlap=1.5), "max_overlap"),
    (dict(min_length_share=1.5), "min_length_share"),
    (dict(threshold=float("nan")), "threshold"),
])
def test_bad_arguments_are_refused(kwargs, message):
    args = dict(sim=np.zeros((4, 4)), fps=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        localize(args.pop("sim"), args.pop("fps"), **args)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(T=st.integers(1, 24), T2=st.integers(1, 24), seed=st.integers(0, 2**32 - 1),
       fps=st.sampled_from([0.25, 1.0, 2.0, 3.0]), threshold=st.floats(-0.5, 0.9),
       top_k=st.integers(1, 6), max_gap=st.integers(1, 6), max_speed=st.floats(1.0, 3.0),
       min_length=st.floats(0.0, 4.0), min_score=st.floats(-0.5, 0.9), max_overlap=st.floats(0.0, 1.0))
def test_segments_lie_in_the_videos_and_are_sorted(T, T2, seed, fps, threshold, top_k, max_gap, max_speed,
                                                   min_length, min_score, max_overlap):
    sim = np.random.default_rng(seed).uniform(-1.0, 1.0, (T, T2))
    segs = localize(sim, fps, threshold=threshold, top_k=top_k, max_gap=max_gap, max_speed=max_speed,
                    min_length=min_length, min_score=min_score, max_overlap=max_overlap, max_segments=5)
    assert len(segs) <= 5
    for s in segs:
        assert 0.0 <= s.query_start < s.query_end <= T / fps + 1e-9
        assert 0.0 <= s.target_start < s.target_end <= T2 / fps + 1e-9
        # short videos: at least min_length_share (0.4) of the shorter video
        assert min(s.query_end - s.query_start, s.target_end - s.target_start) >= \
            min(min_length, 0.4 * min(T, T2) / fps) - 1e-9
        assert s.score >= min_score - 1e-12
    assert [s.score for s in segs] == sorted((s.score for s in segs), reverse=True)


# --- the built-in partial copies -------------------------------------------------------------

def test_partial_copies_hold_the_query_frames_at_their_spans(monkeypatch):
    """With the re-edit switched off, every ground-truth span of the target holds exactly the
    query's frames played at the recorded speed, and the footage around it is the host's."""
    import random

    from hapvr.data import corpus

    monkeypatch.setattr(corpus, "_light_edit", lambda frames, rng: frames)
    g = torch.Generator().manual_seed(0)
    bench = corpus.BenchmarkVideos()
    for q in corpus.PARTIAL_HOSTS:  # frame t of video q: its own random colour, so frames are traceable
        bench.queries.append(q)
        T = 24 if q.startswith(("sk", "sklearn")) else 15
        colours = torch.randint(0, 256, (T, 3, 1, 1), generator=g, dtype=torch.uint8)
        bench.videos[q] = colours.expand(T, 3, 256, 256).contiguous()
    corpus.build_partial_copies(bench, random.Random(5))
    assert len(bench.partial) == len(corpus.PARTIAL_HOSTS)
    speeds = [s for p in bench.partial for s in p.speeds]
    assert set(speeds) == set(corpus.SPEEDS) and any(len(p.spans) == 2 for p in bench.partial)
    for p in bench.partial:
        target, query = bench.partial_videos[p.target][:, :, 0, 0], bench.videos[p.query][:, :, 0, 0]
        host = bench.videos[corpus.PARTIAL_HOSTS[p.query]][:, :, 0, 0]
        inside = torch.zeros(target.shape[0], dtype=torch.bool)
        for (q0, q1, t0, t1), speed in zip(p.spans, p.speeds):
            assert 0 <= q0 < q1 <= query.shape[0] and 0 <= t0 < t1 <= target.shape[0]
            assert t1 - t0 == round((q1 - q0) * speed)  # 2x fast: half the frames; 0.5x: twice
            played = [q0 + min(int(k / speed), q1 - q0 - 1) for k in range(t1 - t0)]
            assert torch.equal(target[t0:t1], query[played])
            inside[t0:t1] = True
        outside = target[~inside]
        assert outside.shape[0] >= 12  # unrelated footage before and after each copy
        assert all(any(torch.equal(f, h) for h in host) for f in outside)
        spans = sorted(p.spans, key=lambda s: s[2])
        for a, b in zip(spans, spans[1:]):  # copies further apart than the localiser's max_gap
            assert b[2] - a[3] > LocalizationConfig().max_gap


def test_default_model_localises_the_builtin_copies():
    """The built-in benchmark's copies of every kind (re-edits, picture-in-picture, a re-encoding,
    a re-cut, partial copies inside unrelated footage), localised with compare's map and
    parameters and scored by the VCSL metric against their known spans; every pair the default
    model calls a copy gets a segment or a stated reason."""
    from hapvr.api import compare_videos, load_model
    from hapvr.data import corpus
    from hapvr.data.video import center_crop
    from hapvr.evaluation.copy_localization import copy_truths, evaluate_localization, negative_pairs
    from hapvr.localization import chamfer_frame_map

    bench = corpus.build_benchmark(corpus.CorpusConfig())
    model = load_model()
    truths = copy_truths([dataclasses.asdict(c) for c in bench.copies], [dataclasses.asdict(p) for p in bench.partial])
    needed = {c["query"] for c in truths} | {c["target"] for c in truths}
    with torch.no_grad():
        feats = {v: model.extractor(center_crop(x)) for v, x in {**bench.videos, **bench.partial_videos}.items()
                 if v in needed}
    negatives = negative_pairs([dataclasses.asdict(p) for p in bench.partial], bench.labels)
    assert len(negatives) == 11 and all(t != f"{q}-partial" for q, t in negatives)
    res = evaluate_localization(lambda q, t: (chamfer_frame_map(feats[q], feats[t], model.model.k_s), 1.0), truths,
                                negatives=negatives)
    assert res.pairs == len(truths) and set(res.per_kind) >= {"re-edit", "picture-in-picture", "partial copy"}
    assert res.f1 >= 0.78, (res.precision, res.recall, res.f1)
    partial = res.per_kind["partial copy"]
    assert partial["f1"] >= 0.85 and partial["recall"] >= 0.9, partial
    assert res.per_kind["re-edit"]["f1"] >= 0.85, res.per_kind["re-edit"]
    assert res.negatives_with_segments <= 2
    called = 0
    for c in truths:
        if c["kind"] == "partial copy":
            continue
        result = compare_videos(feats[c["query"]], feats[c["target"]], model)
        if result.similarity >= model.scale.threshold:
            called += 1
            assert result.segments or result.reason, (c["query"], c["target"])
    assert called >= len(truths) // 2
