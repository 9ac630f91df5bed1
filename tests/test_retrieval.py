"""hapvr.retrieval: the on-disk index, the coarse stage, two-stage search and duplicates.

Run with ``python -m pytest`` from the repository root, so that this tree's ``hapvr`` is imported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hapvr
from hapvr.evaluation.engine import compute_scores
from hapvr.models.padding import repeat_to
from hapvr.evaluation.feature_store import FeatureStore, write_features
from hapvr.evaluation.scorers import ChamferBaseline, ModelScorer
from hapvr.models import VideoSimilarityModel
from hapvr.retrieval.coarse import CoarseConfig, CoarseIndex, coarse_index, video_descriptors
from hapvr.retrieval.index_store import IndexStore, feature_space
from hapvr.retrieval.planted import PlantedCollection, PlantedConfig, planted_descriptors
from hapvr.retrieval.search import DuplicatesConfig, Searcher, duplicates
from hapvr.io.serialization import CorruptFileError

R, D = 9, 128


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small fused calls: on a shared 2-core machine, torch's thread pool waits on threads
    descheduled by other work (10x slower here); one thread keeps these tests fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def coarse_chamfer_reference(query_rows: np.ndarray, vectors: np.ndarray, owners: np.ndarray,
                             n_videos: int) -> np.ndarray:
    """The coarse similarity written out: for every query row, the best row of each video; the
    mean over query rows."""
    best = np.full((len(query_rows), n_videos), -np.inf)
    for i, q in enumerate(query_rows):
        for row, owner in zip(vectors, owners):
            best[i, owner] = max(best[i, owner], float(q @ row))
    return best.mean(axis=0)


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def space(scorer=None) -> dict:
    return feature_space(scorer or ChamferBaseline(), backbone="synthetic", pca=None, region_shape=[R, D])


@pytest.fixture(scope="module")
def planted():
    return PlantedCollection(PlantedConfig(n_videos=48, dim=D, planted_fraction=0.35, seed=3))


@pytest.fixture(scope="module")
def planted_index(planted, tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "index"
    with IndexStore.create(path, space(), (R, D), durable=False) as store:
        store.add_many(iter(planted))
    return path


# --- the index store ------------------------------------------------------------------------------


def test_create_add_remove_reopen(tmp_path):
    rng = np.random.default_rng(0)
    videos = {f"vid{i}": unit(rng, int(rng.integers(1, 12)), R, D) for i in range(6)}
    path = tmp_path / "index"
    with IndexStore.create(path, space(), (R, D)) as store:
        for vid, x in videos.items():
            store.add(vid, torch.from_numpy(x) if vid.endswith("1") else x)  # torch or numpy
        assert len(store) == 6 and store.ids() == list(videos)
        with pytest.raises(ValueError, match="already in index"):
            store.add("vid0", videos["vid0"])
        with pytest.raises(ValueError, match=r"\[T >= 1, 9, 128\]"):
            store.add("bad", np.zeros((3, R, D + 1), np.float32))
        with pytest.raises(ValueError, match="NaN"):
            store.add("nan", np.full((2, R, D), np.nan, np.float32))
        with pytest.raises(ValueError, match="float16"):
            store.add("huge", np.full((2, R, D), 1e6, np.float32))
        store.remove("vid2")
        with pytest.raises(KeyError):
            store.remove("vid2")
    as_tuple = {**space(), "region_shape": (R, D)}  # compares equal to the list it reads back as
    with IndexStore.open(path, as_tuple) as store:
        assert store.ids() == ["vid0", "vid1", "vid3", "vid4", "vid5"]
        for vid in store.ids():
            got = store.load(vid)
            assert got.dtype == torch.float32
            assert torch.equal(got, torch.from_numpy(videos[vid].astype(np.float16).astype(np.float32)))
            assert store.length(vid) == videos[vid].shape[0]
        with pytest.raises(KeyError, match="vid2"):
            store.load("vid2")
        desc = store.descriptors()
        assert desc.ids == store.ids()
        for j, vid in enumerate(desc.ids):
            expect = video_descriptors(videos[vid].astype(np.float16), store.descriptor)
            np.testing.assert_array_equal(desc.vectors[desc.owners == j], expect)
        with pytest.raises(PermissionError):
            store.add("x", videos["vid0"])
    with IndexStore.open(path, space(), writable=True) as store:
        store.add("vid2", videos["vid2"])  # an id can come back after removal
        assert store.dead_fraction() > 0
        before = {v: store.load(v) for v in store.ids()}
        store.compact()
        assert store.dead_fraction() == 0 and store.generation == 1
        generation_files = sorted(p.name for p in path.iterdir() if p.name.startswith("g"))
        assert generation_files == ["g1.desc", "g1.frames", "g1.journal"]
    with IndexStore.open(path, space()) as store:
        assert store.ids() == list(before) and all(torch.equal(store.load(v), x) for v, x in before.items())


def test_create_refuses_a_used_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        IndexStore.create(tmp_path, space(), (R, D))


def test_second_writer_is_refused(tmp_path):
    from hapvr.retrieval.index_store import IndexLockedError

    with IndexStore.create(tmp_path / "i", space(), (R, D)):
        with pytest.raises(IndexLockedError, match="another process"):
            IndexStore.open(tmp_path / "i", writable=True)
        IndexStore.open(tmp_path / "i").close()  # readers need no lock


def test_another_feature_space_is_refused(tmp_path):
    IndexStore.create(tmp_path / "i", space(), (R, D)).close()
    other = {**space(), "pca": "0123abcd"}
    with pytest.raises(ValueError) as err:
        IndexStore.open(tmp_path / "i", other)
    message = str(err.value)
    assert "pca: None -> '0123abcd'" in message  # only what differs is named
    assert '"precision"' not in message and "chamfer-baseline-v1" not in message
    # the search checks the scorer itself too: a model with weights is not the baseline
    model = VideoSimilarityModel(D, attention=True, comparator=False)
    with IndexStore.open(tmp_path / "i") as store, pytest.raises(ValueError, match="hapvr-similarity-model"):
        Searcher(store, ModelScorer(model))


def test_an_index_records_its_precision_and_is_searched_at_another(planted, planted_index):
    """The index holds features, not scores: built at fp32, searched at bf16 (allowed), the
    scores agree to the bf16 rounding of the similarity GEMMs (docs/scores.md: about 1e-3)."""
    with IndexStore.open(planted_index, space(ChamferBaseline(precision="bf16"))) as store:
        assert store.space["scorer"]["settings"]["precision"] == "fp32"  # what it was built at
        query = planted.query(0)[0]
        fp32 = Searcher(store, ChamferBaseline(precision="fp32")).search(query, k=5, exhaustive=True)
        bf16 = Searcher(store, ChamferBaseline(precision="bf16")).search(query, k=5, exhaustive=True)
    assert ChamferBaseline(precision="auto").precision == "fp32"  # on the CPU
    by_id = {h.id: h.score for h in bf16.hits}
    assert [h.id for h in fp32.hits][:1] == [h.id for h in bf16.hits][:1]
    shared = [h for h in fp32.hits if h.id in by_id]
    assert len(shared) >= 4
    assert max(abs(h.score - by_id[h.id]) for h in shared) < 4e-3


_CHILD = """
import sys, numpy as np
from hapvr.retrieval.index_store import IndexStore
path, durable, big = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
store = IndexStore.open(path, writable=True, durable=durable)
rng = np.random.default_rng(0)
i = len(store)
while True:
    x = rng.standard_normal((big if i % 2 else 3, 9, 128)).astype(np.float32)
    store.add(f"v{i:05d}", x)
    print(f"v{i:05d}", flush=True)
    i += 1
"""


def _child_env() -> dict:
    root = str(Path(hapvr.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.parametrize("durable", [True, False])
def test_sigkill_during_add_loses_at_most_one_video(tmp_path, durable):
    path = tmp_path / "i"
    IndexStore.create(path, space(), (R, D)).close()
    rng = np.random.default_rng(int(durable))
    committed: set[str] = set()  # ids whose add returned before a kill
    for round_ in range(3):  # kill, reopen and resume, three times
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(int(durable)), "400"],
                                stdout=subprocess.PIPE, text=True, env=_child_env())
        printed = []
        deadline = time.monotonic() + 20
        while len(printed) < 3 + round_ and time.monotonic() < deadline:
            printed.append(proc.stdout.readline().strip())
        time.sleep(float(rng.uniform(0, 0.05)))  # land somewhere inside a later add
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed |= set(printed + proc.stdout.read().split()) - {""}
        with IndexStore.open(path) as store:  # readable as is, without a writer's repair
            ids = store.ids()
            assert committed <= set(ids) and len(ids) <= len(committed) + 1  # at most the one in flight
            committed = set(ids)
            for vid in ids:
                assert store.load(vid).shape[1:] == (R, D)
            store.descriptors()
        with IndexStore.open(path, writable=True) as store:  # the writer drops the torn tail
            assert store.ids() == ids
            frames = sum(store.length(v) for v in ids)
            assert (path / "g0.frames").stat().st_size == frames * R * D * 2
    assert len(ids) >= 9


def test_torn_tail_and_lost_unsynced_data_are_dropped(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D)) as store:
        store.add("a", unit(rng, 4, R, D))
    with open(path / "g0.frames", "ab") as f:  # a killed add: frames written, line torn
        f.write(b"\x01" * 1000)
    with open(path / "g0.journal", "ab") as f:
        f.write(b'{"op": "add", "id": "b", "fra')
    with IndexStore.open(path) as store:
        assert store.ids() == ["a"]
    # a power loss: the line of an unsynced add reached the disk but its frames did not
    with IndexStore.open(path, writable=True, durable=False) as store:
        store.add("b", unit(rng, 4, R, D))
        store.add("c", unit(rng, 4, R, D))
        store._fds["frames"], fd = os.open(os.devnull, os.O_RDWR), store._fds["frames"]
        os.pwrite(fd, b"\0" * 100, 4 * R * D * 2)  # zeros over the start of "b"
        os.close(fd)
        store._fds = {}  # no sync on close: the crash
    with IndexStore.open(path) as store:
        assert store.ids() == ["a"]  # "b" failed its CRC; "c" came after it
    with IndexStore.open(path, writable=True) as store:
        store.add("b", unit(rng, 4, R, D))
    with IndexStore.open(path) as store:
        assert store.ids() == ["a", "b"]


def test_compaction_killed_before_the_switch_leaves_the_old_index(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D)) as store:
        store.add_many([("a", unit(rng, 3, R, D)), ("b", unit(rng, 5, R, D))])
        store.remove("a")
    for kind in ("frames", "desc", "journal"):  # what a compaction killed mid-way leaves
        (path / f"g1.{kind}").write_bytes(b"half")
    (path / "manifest.json.tmp").write_text("{")
    with IndexStore.open(path) as store:
        assert store.ids() == ["b"] and store.generation == 0
    with IndexStore.open(path, writable=True) as store:  # the writer clears the debris
        assert sorted(p.name for p in path.iterdir()) == ["g0.desc", "g0.frames", "g0.journal", "lock", "manifest.json"]
        store.compact()
        assert store.ids() == ["b"] and store.generation == 1


def test_damaged_frames_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D)) as store:
        store.add("a", unit(rng, 4, R, D))
    with open(path / "g0.frames", "r+b") as f:
        f.seek(10)
        f.write(b"\x7f")
    with IndexStore.open(path) as store, pytest.raises(CorruptFileError, match="'a' are damaged"):
        store.load("a")
    os.truncate(path / "g0.frames", 100)
    with pytest.raises(CorruptFileError, match="g0.frames is shorter than its journal says"):
        IndexStore.open(path)


# --- the coarse stage ------------------------------------------------------------------------


def _videos(counts: np.ndarray) -> tuple[list[str], np.ndarray]:
    return [f"v{i}" for i in range(len(counts))], np.concatenate([[0], np.cumsum(counts)[:-1]])


def test_flat_search_is_the_written_out_coarse_similarity():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5, size=30)
    vectors = unit(rng, int(counts.sum()), 16)
    ids, starts = _videos(counts)
    index = CoarseIndex.build(vectors, CoarseConfig(kind="flat", block_rows=7))  # blocks cut between videos
    index.set_videos(ids, starts, counts)
    query = unit(rng, 3, 16)
    pos, sims = index.search(query, 30)
    expect = coarse_chamfer_reference(query, vectors, np.repeat(np.arange(30), counts), 30)
    np.testing.assert_array_equal(pos, np.argsort(-expect, kind="stable"))
    np.testing.assert_allclose(sims, expect[pos], rtol=1e-5, atol=1e-6)
    # removed videos leave gaps in the rows: never returned, the others unchanged
    keep = np.array([i for i in range(30) if i % 3])
    index.set_videos([ids[i] for i in keep], starts[keep], counts[keep])
    pos, sims = index.search(query, 30)
    assert len(pos) == len(keep)
    np.testing.assert_allclose(sims, expect[keep][pos], rtol=1e-5, atol=1e-6)


def test_exact_and_ivf_agree():
    vectors = np.concatenate(list(planted_descriptors(4000, dim=32, seed=1)))
    counts = np.full(1000, 4)  # 1000 videos of 4 rows
    ids, starts = _videos(counts)
    flat = CoarseIndex.build(vectors, CoarseConfig(kind="flat"))
    ivf = CoarseIndex.build(vectors, CoarseConfig(kind="ivf", nlist=16))
    assert flat.kind == "flat" and ivf.kind == "ivf" and ivf.ann.nlist == 16 and ivf.ann.ntotal == 4000
    for index in (flat, ivf):
        index.set_videos(ids, starts, counts)
    rng = np.random.default_rng(0)
    overlap = []
    for number in range(0, 1000, 100):
        q = vectors[number * 4: number * 4 + 4] + 0.05 * rng.standard_normal((4, 32)).astype(np.float32)
        exact = flat.search(q, 20)
        everywhere = ivf.search(q, 20, nprobe=16, shortlist_per_row=4000)  # every list, every row: exact
        np.testing.assert_array_equal(exact[0], everywhere[0])
        np.testing.assert_allclose(exact[1], everywhere[1], rtol=1e-5)
        approx = ivf.search(q, 20, nprobe=4, shortlist_per_row=100)  # a quarter of the lists
        assert approx[0][0] == exact[0][0] == number  # the near copy is still first
        overlap.append(len(set(approx[0][:10]) & set(exact[0][:10])) / 10)
    print("IVF (4 of 16 lists, 100 rows a row) top-10 overlap with exact", overlap)
    assert np.mean(overlap) >= 0.6
    assert CoarseIndex.build(vectors, CoarseConfig(ivf_threshold=3999)).kind == "ivf"
    assert CoarseIndex.build(vectors, CoarseConfig(ivf_threshold=4000)).kind == "flat"


def test_ivf_with_pq_lists_shortlists_and_scores_exactly(tmp_path, planted):
    """ivf_bytes: the lists keep PQ codes (an IndexIVFPQ) that only choose the shortlist; the
    videos shortlisted are scored on their exact rows, so with every list and row asked the result
    is the exact search's, and a near copy is still first with a quarter of the lists."""
    vectors = np.concatenate(list(planted_descriptors(12000, dim=32, seed=3)))
    counts = np.full(3000, 4)
    ids, starts = _videos(counts)
    flat = CoarseIndex.build(vectors, CoarseConfig(kind="flat"))
    pq = CoarseIndex.build(vectors, CoarseConfig(kind="ivf", nlist=16, ivf_bytes=8))
    assert type(pq.ann).__name__ == "IndexIVFPQ" and pq.ann.pq.M == 8 and pq.ann.ntotal == 12000
    for index in (flat, pq):
        index.set_videos(ids, starts, counts)
    rng = np.random.default_rng(0)
    for number in range(0, 3000, 300):
        q = vectors[number * 4: number * 4 + 4] + 0.05 * rng.standard_normal((4, 32)).astype(np.float32)
        exact = flat.search(q, 20)
        everywhere = pq.search(q, 20, nprobe=16, shortlist_per_row=12000)
        np.testing.assert_array_equal(exact[0], everywhere[0])
        np.testing.assert_allclose(exact[1], everywhere[1], rtol=1e-5)  # exact rows, not the codes
        assert pq.search(q, 20, nprobe=4, shortlist_per_row=200)[0][0] == number
    with pytest.raises(ValueError, match="ivf_bytes must divide the descriptor dimension 32"):
        CoarseIndex.build(vectors, CoarseConfig(kind="ivf", ivf_bytes=5))
    # a saved IVF of full rows is not taken for a PQ one (trained again); auto: flat, full rows, then PQ
    with IndexStore.create(tmp_path / "i", space(), (R, D)) as store:
        store.add_many((vid, planted.video(vid)) for vid in planted.ids)
        assert type(coarse_index(store, CoarseConfig(kind="ivf", nlist=4)).ann).__name__ == "IndexIVFFlat"
        assert type(coarse_index(store, CoarseConfig(kind="ivf", nlist=4, ivf_bytes=8)).ann).__name__ == "IndexIVFPQ"
        rows = store.state()["rows"]
        for ivf, pq, expect in ((rows, rows, "flat"), (rows - 1, rows, "IndexIVFFlat"), (rows - 1, rows - 1, "IndexIVFPQ")):
            found = coarse_index(store, CoarseConfig(nlist=4, ivf_threshold=ivf, ivfpq_threshold=pq), persist=False)
            assert (found.kind if found.ann is None else type(found.ann).__name__) == expect


def test_saved_ivf_is_reused_and_extended(tmp_path, planted):
    cfg = CoarseConfig(kind="ivf", nlist=4)
    with IndexStore.create(tmp_path / "i", space(), (R, D)) as store:
        store.add_many((vid, planted.video(vid)) for vid in planted.ids[:30])
        first = coarse_index(store, cfg)
        assert (tmp_path / "i" / "coarse-ivf.faiss").exists() and first.ann.ntotal == store.state()["rows"]
        centroids = first.ann.quantizer.reconstruct_n(0, 4)
        store.add_many((vid, planted.video(vid)) for vid in planted.ids[30:])
        store.remove(planted.ids[0])
        again = coarse_index(store, cfg)
        np.testing.assert_array_equal(again.ann.quantizer.reconstruct_n(0, 4), centroids)  # not trained again
        assert again.ann.ntotal == store.state()["rows"] and again.ids == store.ids()
        q = video_descriptors(planted.video(planted.ids[0]), store.descriptor)
        found = [again.ids[p] for p in again.search(q, len(store), nprobe=4, shortlist_per_row=10_000)[0]]
        assert planted.ids[0] not in found and len(found) == len(store)


# --- search -------------------------------------------------------------------------------------


def test_two_stage_finds_planted_copies_and_matches_exhaustive(planted, planted_index):
    with IndexStore.open(planted_index, space()) as store:
        searcher = Searcher(store, ChamferBaseline())
        for number in range(len(planted.sources)):
            query, source = planted.query(number)
            group = {source, *planted.groups[source]}
            two_stage = searcher.search(query, k=len(group), candidates=12)
            assert len(group & {h.id for h in two_stage.hits}) >= len(group) - 1
            assert two_stage.hits[0].id in group
            every = searcher.search(query, k=10, candidates=len(store))  # C >= N
            exhaustive = searcher.search(query, k=10, exhaustive=True)
            assert [h.id for h in every.hits] == [h.id for h in exhaustive.hits]
            assert [h.score for h in every.hits] == [h.score for h in exhaustive.hits]
            assert exhaustive.scored == len(store) and all(h.coarse is None for h in exhaustive.hits)
        # several queries scored together give each one's own scores
        queries = [planted.query(n)[0] for n in range(3)]
        together = searcher.search_many(queries, k=10, exhaustive=True)
        for query, joint in zip(queries, together):
            alone = searcher.search(query, k=10, exhaustive=True)
            assert [h.id for h in joint.hits] == [h.id for h in alone.hits]
            np.testing.assert_allclose([h.score for h in joint.hits], [h.score for h in alone.hits], rtol=1e-6)


def test_exhaustive_scores_equal_the_evaluation_engine(planted, planted_index, tmp_path):
    with IndexStore.open(planted_index, space()) as store:
        h5 = tmp_path / "f.h5"
        write_features(h5, {v: store.load(v) for v in store.ids()} | {"query": torch.from_numpy(planted.query(0)[0])})
        result = Searcher(store, ChamferBaseline()).search(planted.query(0)[0], k=len(store), exhaustive=True)
        with FeatureStore(h5) as fs:
            engine = compute_scores(ChamferBaseline(), fs, ["query"], store.ids(), progress=False)["query"]
    for hit in result.hits:
        assert hit.score == pytest.approx(engine[hit.id], abs=1e-6)


def test_float16_storage_moves_scores_far_less_than_copies_stand_out(planted, planted_index):
    """The index stores float16; against the same videos in float32 the scores move by ~3e-5,
    while a copy and the best distractor are > 0.1 apart."""
    from hapvr.models.padding import pad_stack

    scorer = ChamferBaseline()
    query = torch.from_numpy(planted.query(0)[0])
    with IndexStore.open(planted_index, space()) as store:
        stored = {h.id: h.score for h in Searcher(store, scorer).search(query, k=len(store), exhaustive=True).hits}
    full = [scorer.index(torch.from_numpy(planted.video(v))) for v in planted.ids]
    targets, lengths = pad_stack(full)
    exact = scorer.pairwise(scorer.index(query)[None], torch.tensor([query.shape[0]]), targets, lengths)[0]
    diff = max(abs(stored[v] - float(s)) for v, s in zip(planted.ids, exact))
    print("float16 storage: largest score change", diff)
    assert diff < 1e-3


class RepeatingScorer(ChamferBaseline):
    """The baseline with a model's minimum length, and a record of the lengths it was given."""

    min_frames = 5

    def __init__(self):
        super().__init__()
        self.query_lengths = []

    def pairwise(self, queries, query_lengths, targets, target_lengths):
        self.query_lengths += query_lengths.tolist()
        assert int(target_lengths.min()) >= self.min_frames
        return super().pairwise(queries, query_lengths, targets, target_lengths)

    def fingerprint(self):
        return {**super().fingerprint(), "scorer": "repeating-test"}


def test_short_queries_and_videos_are_repeated(tmp_path, planted):
    scorer = RepeatingScorer()
    rng = np.random.default_rng(0)
    with IndexStore.create(tmp_path / "i", space(scorer), (R, D)) as store:
        store.add_many((vid, planted.video(vid)) for vid in planted.ids[:20])
        store.add("short", unit(rng, 2, R, D))  # shorter than min_frames too
        searcher = Searcher(store, scorer)
        query = planted.video(planted.ids[3])[:2]
        short = searcher.search(query, k=5, candidates=10)
        assert set(scorer.query_lengths) == {6}  # 2 frames repeated to 6 >= 5
        repeated = searcher.search(repeat_to(torch.from_numpy(query), 5), k=5, candidates=10)
        assert [(h.id, h.score) for h in short.hits] == [(h.id, h.score) for h in repeated.hits]
        assert short.hits[0].id == planted.ids[3]
        assert searcher.search(unit(rng, 1, R, D), k=3, exhaustive=True).scored == 21


def test_query_of_another_shape_is_refused(planted_index):
    with IndexStore.open(planted_index, space()) as store:
        with pytest.raises(ValueError, match=r"\[T, 9, 128\]"):
            Searcher(store, ChamferBaseline()).search(np.zeros((4, 9, 64), np.float32))


# --- duplicates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric, flat_rows", [(False, 5000), (True, 5000), (False, 0)])
def test_duplicates_cluster_the_planted_groups(tmp_path, symmetric, flat_rows):
    col = PlantedCollection(PlantedConfig(n_videos=40, dim=D, planted_fraction=0.4, seed=1))
    with IndexStore.create(tmp_path / "i", space(), (R, D), durable=False) as store:
        store.add_many(iter(col))
        found = duplicates(store, ChamferBaseline(), threshold=0.7 if not symmetric else 0.6, symmetric=symmetric,
                           cfg=DuplicatesConfig(neighbours=5, flat_rows=flat_rows))  # 0: through an IVF
    # A cluster is one video with its whole copies: each source with the copies showing nearly all
    # of it (a sub-clip, or a copy missing a cut, is a part of it, listed but not clustered); no
    # cluster mixes two planted groups or takes a distractor. Copies near the 0.8 line are left out.
    cluster_of = {v: i for i, c in enumerate(found.clusters) for v in c}
    relation = {(p.a, p.b): p.relation for p in found.pairs}
    whole = 0
    for source, copies in col.groups.items():
        for c in copies:
            coverage = col.source_coverage(c)
            if coverage >= 0.9:
                whole += 1
                assert source in cluster_of and cluster_of.get(c) == cluster_of[source], (source, c, coverage)
            elif coverage <= 0.7 and (c, source) in relation:
                assert relation[(c, source)] != "same", (source, c, coverage)
    assert whole >= 3
    for c in found.clusters:
        assert len({col.group_of.get(v) for v in c}) == 1 and all(v in col.group_of for v in c), c
    assert found.candidate_pairs < 40 * 39 / 2 / 2  # far from all pairs
    for p in found.pairs:
        assert p.score >= (0.6 if symmetric else 0.7)
        assert (p.backward is not None) == symmetric
        if symmetric:
            assert p.score == pytest.approx((p.forward + p.backward) / 2)
    scores = [p.score for p in found.pairs]
    assert scores == sorted(scores, reverse=True)
