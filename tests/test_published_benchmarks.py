"""The benchmarks' annotation files in the layouts the public releases ship, scored with the
releases' protocols (docs/formats.md).

Each benchmark is checked two ways: hand-computed values on a small file (worked out in the
comments), and fresh random scores on a larger file against a plain re-statement of the
release's rule written here from its documented semantics (loops, no shared code with hapvr),
to 1e-6. Scores are continuous random numbers, so rankings have no ties."""

import pickle

import numpy as np
import pytest
import sklearn.metrics

from hapvr.evaluation.annotations import load_benchmark, match_ids
from hapvr.evaluation.benchmarks import evaluate_scores


def _pickle(path, data):
    path.write_bytes(pickle.dumps(data))
    return path


def _ap(ranked_relevant, gt: int) -> float:
    """Sum of precision at each relevant rank over |GT| (the releases' calculate_metric)."""
    hits, total = 0, 0.0
    for k, rel in enumerate(ranked_relevant, 1):
        if rel:
            hits += 1
            total += hits / k
    return total / gt


def _ranked(row: dict, ids) -> list:
    return sorted(ids, key=lambda v: -row[v])


@pytest.fixture
def rng(fresh_seed):
    return np.random.default_rng(fresh_seed)


# --- EVVE ---------------------------------------------------------------------------------------

def _evve_release(data, scores, present):
    """EVVE as the releases score it: a present query ranks the scored database videos; |GT| = its
    event's positives among the present videos; trapezoidal AP (0 without positives or hits);
    mAP over the queries, the events' mean of their queries' mean, and the pooled uAP."""
    event_of = {q: e for e, (qs, _, _) in data["annotation"].items() for q in qs}
    aps, per_event, pool, gt_total = {}, {}, [], 0
    for q in sorted(data["queries"]):
        if q not in scores:
            continue
        pos = data["annotation"][event_of[q]][1] & present
        row = {v: s for v, s in scores[q].items() if v in present}
        ranks = [i for i, v in enumerate(_ranked(row, row)) if v in pos]
        ap = 0.0
        for n, p in enumerate(ranks):
            ap += ((1.0 if p == 0 else n / p) + (n + 1) / (p + 1)) / 2 / len(pos)
        aps[q] = ap
        per_event.setdefault(event_of[q], []).append(ap)
        pool += [(s, v in pos) for v, s in row.items()]
        gt_total += len(pos)
    pool.sort(key=lambda x: -x[0])
    return (np.mean(list(aps.values())), np.mean([np.mean(v) for v in per_event.values()]),
            _ap([r for _, r in pool], gt_total), aps)


def test_evve_pickle_hand_computed(tmp_path):
    # e1: query q1, positives a, b and 'gone' (no features: not counted); e2: queries q2, q3,
    # positive c; e3: query q4 whose only positive has no features (AP 0, counted, as the release).
    data = {"annotation": {"e1": ({"q1"}, {"a", "b", "gone"}, set()), "e2": ({"q2", "q3"}, {"c"}, set()),
                           "e3": ({"q4"}, {"gone2"}, set())},
            "queries": ["q1", "q2", "q3", "q4"], "database": ["a", "b", "c", "d", "gone", "gone2"]}
    bench = load_benchmark("evve", _pickle(tmp_path / "evve.pickle", data))
    present = {"q1", "q2", "q3", "q4", "a", "b", "c", "d"}
    scores = {"q1": {"a": .9, "b": .7, "c": .3, "d": .8},  # a R, d, b R, c
              "q2": {"a": .2, "b": .6, "c": .65, "d": .95},  # d, c R, b, a
              "q3": {"a": .1, "b": .2, "c": .3, "d": .4},  # d, c R, b, a
              "q4": {"a": .5, "b": .4, "c": .3, "d": .2}}
    res = evaluate_scores(bench, scores, present)
    # q1, |GT| = 2: a at p=0 -> (1 + 1)/2/2 = 1/2; b at p=2, n=1 -> (1/2 + 2/3)/2/2 = 7/24: 19/24.
    # q2 and q3, |GT| = 1: c at p=1, n=0 -> (0 + 1/2)/2 = 1/4. q4: no positive present: 0.
    assert res.per_query_ap["EVVE"] == pytest.approx({"q1": 19 / 24, "q2": 1 / 4, "q3": 1 / 4, "q4": 0.0})
    assert res.retrieval["EVVE"] == pytest.approx((19 / 24 + 1 / 4 + 1 / 4) / 4)
    # over events: e1 19/24, e2 (1/4 + 1/4)/2, e3 0
    assert res.retrieval["EVVE (mean over events)"] == pytest.approx((19 / 24 + 1 / 4) / 3)
    want = _evve_release(data, scores, present)
    assert (res.retrieval["EVVE"], res.retrieval["EVVE (mean over events)"], res.detection["EVVE-uAP"]) == \
        pytest.approx(want[:3], abs=1e-6)


def test_evve_pickle_random_against_the_release_rule(tmp_path, rng):
    database = [f"v{i}" for i in range(60)]
    queries = [f"q{i}" for i in range(15)]
    events = {f"e{k}": ({q for i, q in enumerate(queries) if i % 4 == k},
                        {v for v in database if rng.random() < 0.15}, set()) for k in range(4)}
    data = {"annotation": events, "queries": queries, "database": database}
    present = {v for v in database + queries if rng.random() < 0.9}
    scores = {q: {v: float(rng.random()) for v in database if v in present} for q in queries if q in present}
    res = evaluate_scores(load_benchmark("evve", _pickle(tmp_path / "evve.pickle", data)), scores, present)
    mean_q, mean_e, uap, aps = _evve_release(data, scores, present)
    assert res.per_query_ap["EVVE"] == pytest.approx(aps, abs=1e-6)
    assert (res.retrieval["EVVE"], res.retrieval["EVVE (mean over events)"], res.detection["EVVE-uAP"]) == \
        pytest.approx((mean_q, mean_e, uap), abs=1e-6)


# --- SVD ----------------------------------------------------------------------------------------

def _svd_files(folder, labelled: dict, unlabelled: list):
    folder.mkdir(exist_ok=True)
    (folder / "test_groundtruth").write_text(
        "".join(f"{q} {v} {int(y)}\n" for q, rows in labelled.items() for v, y in rows.items()))
    (folder / "unlabeled-data-id").write_text("".join(f"{v}\n" for v in unlabelled))
    return folder


def test_svd_folder_and_two_files_hand_computed(tmp_path):
    labelled = {"q1.mp4": {"a.mp4": 1, "b.mp4": 0}, "q2.mp4": {"c.mp4": 1, "d.mp4": 1, "b.mp4": 0}}
    folder = _svd_files(tmp_path / "svd", labelled, ["u1.mp4", "u2.mp4"])
    scores = {"q1.mp4": {"a.mp4": .5, "b.mp4": .6, "c.mp4": .99, "u1.mp4": .9, "u2.mp4": .1},
              "q2.mp4": {"a.mp4": .97, "b.mp4": .2, "c.mp4": .8, "d.mp4": .3, "u1.mp4": .6, "u2.mp4": .35}}
    present = set(scores) | {v for row in scores.values() for v in row}
    for paths in ([folder], [folder / "test_groundtruth", folder / "unlabeled-data-id"]):
        res = evaluate_scores(load_benchmark("svd", paths), scores, present)
        # q1 ranks a, b, u1, u2 (c is not its candidate): u1 .9 n, b .6 n, a .5 R, u2 n -> 1/3.
        # q2 ranks c, d, b, u1, u2 (a is not its candidate): c .8 R, u1 .6 n, u2 .35 n, d .3 R, b .2 n
        # -> (1/1 + 2/4) / 2 = 3/4.
        assert res.per_query_ap["SVD"] == pytest.approx({"q1.mp4": 1 / 3, "q2.mp4": 3 / 4})
        assert res.retrieval["SVD"] == pytest.approx(13 / 24)
    # without unlabeled-data-id: the labelled candidates alone. q1: b n, a R -> 1/2.
    res = evaluate_scores(load_benchmark("svd", [folder / "test_groundtruth"]), scores, present)
    assert res.per_query_ap["SVD"]["q1.mp4"] == pytest.approx(1 / 2)


def test_svd_random_against_scikit_learn(tmp_path, rng):
    queries = [f"{1000 + i}.mp4" for i in range(12)]
    pool = [f"{5000 + i}.mp4" for i in range(80)]
    labelled = {q: {v: int(rng.random() < 0.3) for v in rng.choice(pool, 15, replace=False)} for q in queries}
    for q in queries:
        labelled[q][str(rng.choice(pool))] = 1  # at least one positive
    unlabelled = [f"{9000 + i}.mp4" for i in range(30)]
    folder = _svd_files(tmp_path / "svd", labelled, unlabelled)
    bench = load_benchmark("svd", [folder])
    # features named without the extension (as hapvr's extractor names them): matched
    feature_ids = {v[:-4] for v in queries + pool + unlabelled if rng.random() < 0.95} | {q[:-4] for q in queries}
    bench, renamed = match_ids(bench, feature_ids)
    assert renamed == len(bench.all_videos() & feature_ids)
    scores = {q: {v: float(rng.random()) for v in feature_ids} for q in (x[:-4] for x in queries)}
    res = evaluate_scores(bench, scores, feature_ids)
    for q in queries:
        cands = [v[:-4] for v in labelled[q] if v[:-4] in feature_ids] + [v[:-4] for v in unlabelled
                                                                         if v[:-4] in feature_ids]
        y = [labelled[q].get(v + ".mp4", 0) for v in cands]
        if sum(y):
            want = sklearn.metrics.average_precision_score(y, [scores[q[:-4]][v] for v in cands])
            assert res.per_query_ap["SVD"][q[:-4]] == pytest.approx(want, abs=1e-6)


def test_svd_text_of_another_layout_is_one_line(tmp_path):
    bad = tmp_path / "svd"
    bad.mkdir()
    (bad / "test_groundtruth").write_text("q1 a yes\n")
    with pytest.raises(ValueError, match=r"line 1: expected 'QUERY CANDIDATE LABEL'.*it reads SVD's folder"):
        load_benchmark("svd", [bad])


# --- VCDB ---------------------------------------------------------------------------------------

def _vcdb_release(data, scores, present, distractors):
    """VCDB as the S2VS release scores it: the database is the core (plus the distractors);
    a query ranks every scored database video but itself; |GT| = its positives among the present
    database videos (itself included if listed); uAP pools every query's pairs."""
    db = set(data["queries"]) | (set(data["dataset"]) if distractors else set())
    all_db = db & present
    aps, pool, gt_total = {}, [], 0
    for q in data["queries"]:
        if q not in scores:
            continue
        gt = data["positives"][q] & all_db
        row = {v: s for v, s in scores[q].items() if v != q and v in all_db}
        if gt:
            aps[q] = _ap([v in gt for v in _ranked(row, row)], len(gt))
        pool += [(s, v in gt) for v, s in row.items()]
        gt_total += len(gt)
    pool.sort(key=lambda x: -x[0])
    return aps, _ap([r for _, r in pool], gt_total)


def test_vcdb_pickle_hand_computed(tmp_path):
    data = {"queries": ["v1", "v2", "v3"], "positives": {"v1": {"v2"}, "v2": {"v1", "v3"}, "v3": {"v2", "v3"}},
            "dataset": ["x", "y"]}
    path = _pickle(tmp_path / "vcdb.pickle", data)
    scores = {"v1": {"v2": .4, "v3": .6, "x": .2, "y": .1},
              "v2": {"v1": .3, "v3": .9, "x": .7, "y": .5},
              "v3": {"v1": .8, "v2": .75, "x": .05, "y": .15}}
    present = {"v1", "v2", "v3", "x", "y"}
    core = evaluate_scores(load_benchmark("vcdb", path), scores, present)
    # core only: v1 ranks v3, v2 R -> 1/2; v2 ranks v3 R, v1 R -> 1; v3 lists itself as a positive
    # (the release keeps it in |GT| and never ranks it): v1, v2 R -> (1/2) / 2 = 1/4.
    assert core.per_query_ap["VCDB"] == pytest.approx({"v1": 1 / 2, "v2": 1.0, "v3": 1 / 4})
    dist = evaluate_scores(load_benchmark("vcdb-distractors", path), scores, present)
    # with distractors: v2 ranks v3 R, x, y, v1 R -> (1 + 2/4) / 2 = 3/4
    assert dist.per_query_ap["VCDB"] == pytest.approx({"v1": 1 / 2, "v2": 3 / 4, "v3": 1 / 4})
    for res, d in ((core, False), (dist, True)):
        aps, uap = _vcdb_release(data, scores, present, d)
        assert res.per_query_ap["VCDB"] == pytest.approx(aps, abs=1e-6)
        assert res.detection["VCDB-uAP"] == pytest.approx(uap, abs=1e-6)


def test_vcdb_pickle_random_against_the_release_rule(tmp_path, rng):
    queries = [f"c{i}" for i in range(30)]
    data = {"queries": queries, "dataset": [f"x{i}" for i in range(40)],
            "positives": {q: {v for v in queries if v != q and rng.random() < 0.15} | {q} for q in queries}}
    path = _pickle(tmp_path / "vcdb.pickle", data)
    present = {v for v in queries + data["dataset"] if rng.random() < 0.9}
    for dataset, distractors in (("vcdb", False), ("vcdb-distractors", True)):
        db = [v for v in queries + (data["dataset"] if distractors else []) if v in present]
        scores = {q: {v: float(rng.random()) for v in db} for q in queries if q in present}
        res = evaluate_scores(load_benchmark(dataset, path), scores, present)
        aps, uap = _vcdb_release(data, scores, present, distractors)
        assert res.per_query_ap["VCDB"] == pytest.approx(aps, abs=1e-6)
        assert res.detection["VCDB-uAP"] == pytest.approx(uap, abs=1e-6)


def test_vcdb_annotation_folder_gives_queries_positives_and_segments(tmp_path):
    folder = tmp_path / "annotation"
    folder.mkdir()
    (folder / "topic_a.txt").write_text("a1.mp4,a2.flv,00:00:05,00:00:20,00:01:00,00:01:15\n"
                                        "a1.mp4,a2.flv,00:02:00,00:02:10,00:00:00,00:00:10\n"
                                        "a3.mp4,a3.mp4,00:00:00,00:00:09,00:00:00,00:00:09\n")
    (folder / "topic_b.txt").write_text("b1.mp4,b2.mp4,00:00:00,00:00:30,00:00:10,00:00:40\n")
    bench = load_benchmark("vcdb", folder)
    assert bench.queries == ["a1.mp4", "a2.flv", "a3.mp4", "b1.mp4", "b2.mp4"]
    assert bench.positives["VCDB"] == {"a1.mp4": {"a2.flv"}, "a2.flv": {"a1.mp4"}, "a3.mp4": set(),
                                       "b1.mp4": {"b2.mp4"}, "b2.mp4": {"b1.mp4"}}
    assert bench.segments[("a1.mp4", "a2.flv")] == [(5.0, 20.0, 60.0, 75.0), (120.0, 130.0, 0.0, 10.0)]
    assert bench.segments[("b1.mp4", "b2.mp4")] == [(0.0, 30.0, 10.0, 40.0)]
    with pytest.raises(ValueError, match="lists no distractors"):
        load_benchmark("vcdb-distractors", folder)
    (folder / "topic_c.txt").write_text("c1.mp4,c2.mp4,00:00:00,00:00:30\n")
    with pytest.raises(ValueError, match=r"topic_c.txt line 1: expected 'a,b,a_start"):
        load_benchmark("vcdb", folder)


# --- CC_WEB_VIDEO -------------------------------------------------------------------------------

def _cc_web_release(data, scores, star, clean):
    """CC_WEB_VIDEO as the releases score it: per query, walk its scored videos best first, skip
    ids not in the index; a video counts when it is labelled in the topic (or always, in the
    starred variant) and not excluded (clean variants); |GT| = the topic's labelled positives
    (E, S, L, M, V), excluded ones out when clean; mAP over the queries that have scores."""
    total, n = 0.0, 0
    for k, q in enumerate(data["queries"]):
        if q not in scores:
            continue
        labels, gone = data["ground_truth"][k], data["excluded"][k]
        kept = []
        for v in _ranked(scores[q], scores[q]):
            if v not in data["index"]:
                continue
            internal = data["index"][v]
            if (star or internal in labels) and not (clean and internal in gone):
                kept.append(internal in labels and labels[internal] in "ESLMV")
        positives = sum(1 for i, lab in labels.items() if lab in "ESLMV" and not (clean and i in gone))
        total += _ap(kept, positives)
        n += 1
    return total / n


def test_cc_web_video_pickle_hand_computed(tmp_path):
    # two topics; index maps video ids to internal numbers; topic 1 labels 1 E (the query), 2 S,
    # 3 X, 4 V, 6 L (no features); topic 2 labels 5 M; 4 is excluded from topic 1's clean truth.
    data = {"index": {"1_1": 1, "1_2": 2, "1_3": 3, "1_4": 4, "2_1": 5, "1_6": 6, "x": 7},
            "queries": ["1_1", "2_1"],
            "ground_truth": [{1: "E", 2: "S", 3: "X", 4: "V", 6: "L"}, {5: "M", 3: "-1"}],
            "excluded": [{4}, set()]}
    bench = load_benchmark("cc_web_video", _pickle(tmp_path / "cc.pickle", data))
    present = {"1_1", "1_2", "1_3", "1_4", "2_1", "x", "nowhere"}
    scores = {"1_1": {"1_1": 1.0, "x": .9, "1_3": .8, "1_2": .7, "2_1": .6, "1_4": .5, "nowhere": .95},
              "2_1": {"2_1": 1.0, "1_1": .9, "1_2": .4}}
    res = evaluate_scores(bench, scores, present)
    # CC_WEB (labelled only): q 1_1 sees 1_1 E R, 1_3 X n, 1_2 S R, 1_4 V R; |GT| = 4 (E, S, V, L):
    # (1/1 + 2/3 + 3/4) / 4 = 29/48. q 2_1 sees 2_1 M R only: 1/1 (its topic labels 5 and 3; 3 is
    # '-1', not a positive, and has no score).
    assert res.per_query_ap["CC_WEB"] == pytest.approx({"1_1": 29 / 48, "2_1": 1.0})
    # CC_WEB* (every video): 1_1 E R, x n, 1_3 n, 1_2 R, 2_1 n, 1_4 R ('nowhere' is not indexed):
    # (1 + 2/4 + 3/6) / 4 = 1/2. 2_1: 2_1 R, 1_1 n, 1_2 n -> 1.
    assert res.per_query_ap["CC_WEB*"] == pytest.approx({"1_1": 1 / 2, "2_1": 1.0})
    # clean: 1_4 excluded, |GT| = 3: CC_WEB_c 1_1 R, 1_3 n, 1_2 R -> (1 + 2/3) / 3 = 5/9;
    # CC_WEB*_c 1_1 R, x n, 1_3 n, 1_2 R, 2_1 n -> (1 + 2/4) / 3 = 1/2.
    assert res.per_query_ap["CC_WEB_c"] == pytest.approx({"1_1": 5 / 9, "2_1": 1.0})
    assert res.per_query_ap["CC_WEB*_c"] == pytest.approx({"1_1": 1 / 2, "2_1": 1.0})
    for task, star, clean in (("CC_WEB", False, False), ("CC_WEB*", True, False), ("CC_WEB_c", False, True),
                              ("CC_WEB*_c", True, True)):
        assert res.retrieval[task] == pytest.approx(_cc_web_release(data, scores, star, clean), abs=1e-6)


def test_cc_web_video_random_against_the_release_rule(tmp_path, rng):
    videos = [f"{t}_{i}" for t in range(1, 6) for i in range(1, 15)]
    index = {v: n for n, v in enumerate(videos)}
    queries = [f"{t}_1" for t in range(1, 6)]
    truth, excluded = [], []
    for t in range(1, 6):
        own = [index[v] for v in videos if v.startswith(f"{t}_")]
        truth.append({i: str(rng.choice(list("ESVMLX") + ["-1"])) for i in own} | {own[0]: "E"})
        excluded.append({i for i in own[1:] if rng.random() < 0.2})
    data = {"index": index, "queries": queries, "ground_truth": truth, "excluded": excluded}
    present = {v for v in videos if rng.random() < 0.9} | set(queries)
    scores = {q: {v: float(rng.random()) for v in present} for q in queries}
    res = evaluate_scores(load_benchmark("cc_web_video", _pickle(tmp_path / "cc.pickle", data)), scores, present)
    for task, star, clean in (("CC_WEB", False, False), ("CC_WEB*", True, False), ("CC_WEB_c", False, True),
                              ("CC_WEB*_c", True, True)):
        assert res.retrieval[task] == pytest.approx(_cc_web_release(data, scores, star, clean), abs=1e-6), task


# --- FIVR with audio labels ---------------------------------------------------------------------

def test_fivr_audio_labels_are_their_own_task(tmp_path):
    # q1 and q2 have DA labels, q3 has none: DAVR and DAVD use q1 and q2 only (as the release does).
    data = {"5k": {"queries": ["q1", "q2", "q3"], "database": ["a", "b", "c", "d"]},
            "200k": {"queries": [], "database": []},
            "annotation": {"q1": {"ND": ["a"], "DA": ["b", "c"]}, "q2": {"DS": ["d"], "DA": ["d"]},
                           "q3": {"ND": ["c"]}}}
    bench = load_benchmark("fivr-5k", _pickle(tmp_path / "fivr_audio.pickle", data))
    assert bench.detection["DAVD"] == "DAVR" and bench.queries_of("DAVR") == ["q1", "q2"]
    scores = {"q1": {"a": .9, "b": .8, "c": .1, "d": .5},  # a, b R, d, c R
              "q2": {"a": .3, "b": .2, "c": .95, "d": .6},  # c, d R, a, b
              "q3": {"a": .99, "b": .98, "c": .97, "d": .96}}  # ranked, but no DA labels
    res = evaluate_scores(bench, scores, {"q1", "q2", "q3", "a", "b", "c", "d"})
    # q1: b at 2, c at 4 -> (1/2 + 2/4) / 2 = 1/2. q2: d at 2 -> 1/2.
    assert res.per_query_ap["DAVR"] == pytest.approx({"q1": 1 / 2, "q2": 1 / 2})
    # DAVD pools q1's and q2's 8 pairs only, |GT| = 3: .95 n, .9 n, .8 R, .6 R, .5 n, .3 n, .2 n, .1 R
    # -> (1/3 + 2/4 + 3/8) / 3; q3's pairs (all above .95) would have pushed every positive down.
    assert res.detection["DAVD"] == pytest.approx((1 / 3 + 2 / 4 + 3 / 8) / 3)


def test_another_layout_names_the_accepted_ones(tmp_path):
    path = _pickle(tmp_path / "x.pickle", {"something": 1})
    for dataset, needle in (("evve", "evve.pickle"), ("cc_web_video", "'ground_truth'"), ("vcdb", "annotation folder")):
        with pytest.raises(ValueError, match=f"does not read this layout.*{needle}") as err:
            load_benchmark(dataset, path)
        assert "\n" not in str(err.value)
