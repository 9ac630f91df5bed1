"""python -m hapvr.index build sharded under torchrun (2 CPU ranks) on the real clips the installed
packages ship, against a one-process build; staged videos of an interrupted build are added
without being extracted again."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hapvr.index import main as index_main
from hapvr.retrieval.building import STAGING, staging_area
from hapvr.retrieval.index_store import IndexStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIPS = ("v1", "v2s", "carphone_distorted", "carphone_pristine")  # 1-5 s each: ~2 s of extraction in all


@pytest.fixture
def restore_threads():
    """The builds below set torch's and faiss's threads of this process; later tests get theirs back."""
    import faiss

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from hapvr.data.media import clip_paths

    d = tmp_path_factory.mktemp("clips")
    paths = clip_paths()
    for name in CLIPS:
        shutil.copy(paths[name], d)
    (d / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return d


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory):
    """The one-process build (one thread, as the ranks below), in this process."""
    import faiss

    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    index = tmp_path_factory.mktemp("one") / "one.index"
    start = time.perf_counter()
    try:
        assert index_main(["build", "--videos", str(clips), "--index", str(index), "--threads", "1",
                           "--no-progress"]) == 3  # broken.mp4 failed (listed)
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])
    print(f"one-process build: {time.perf_counter() - start:.1f} s")
    return index


def _contents(index):
    with IndexStore.open(index) as store:
        return store.ids(), {v: store.load(v) for v in store.ids()}


def _torchrun(argv, log, expect: int = 0):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HAPVR_PROGRESS_INTERVAL="1000")  # the progress lines: each rank's last one only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "hapvr.index", *argv]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=240)
    text = open(log).read()
    assert proc.returncode == expect, text[-3000:]
    print(f"2-rank build: {time.perf_counter() - start:.1f} s")
    return text


def test_sharded_build_equals_the_one_process_build_and_takes_up_staged_videos(clips, reference, tmp_path):
    ref_ids, ref_feats = _contents(reference)
    assert ref_ids == sorted(CLIPS)  # the folder's order; broken.mp4 failed
    index = tmp_path / "two.index"
    argv = ["build", "--videos", str(clips), "--index", str(index), "--threads", "1"]

    # an interrupted sharded build: rank 0 made the index, v2s was staged (with its stored features:
    # the float16 round trip is exact, so the index must still equal the reference bit for bit)
    # no input could be used: exit 2, and the (empty) index it made is kept
    assert index_main(["build", "--videos", str(clips / "broken.mp4"), "--index", str(index), "--no-progress"]) == 2
    staging_area(index).write("v2s", ref_feats["v2s"].numpy())

    log = _torchrun(argv, tmp_path / "build.log")
    assert "5 videos, 0 already in" in log and "1 staged by an interrupted run, 4 to add on 2 ranks" in log, log
    # the 4 left are shared out, 2 each, and v2s is extracted by neither
    assert "rank 0: indexing: 2/2" in log and "rank 1: indexing: 2/2" in log, log
    assert "added 4 (1 staged by an interrupted run), already present 0, failed 1" in log, log
    assert not [line for line in log.splitlines() if line.startswith("error")] and "Traceback" not in log, log

    ids, feats = _contents(index)
    assert ids == ref_ids
    for vid in ids:
        assert torch.equal(feats[vid], ref_feats[vid]), vid
    assert (index / "failures.txt").read_text() == (reference / "failures.txt").read_text()
    assert (index / "failures.txt").read_text().startswith("broken\t")
    assert not (index / STAGING).exists()


def test_a_one_process_build_adds_staged_videos_without_extracting_them(clips, reference, tmp_path, capsys,
                                                                         monkeypatch, restore_threads):
    from hapvr import api

    _, ref_feats = _contents(reference)
    index = tmp_path / "i.index"
    one = ["--index", str(index), "--threads", "1", "--no-progress"]  # one thread: the reference's arithmetic
    assert index_main(["build", "--videos", str(clips / "v1.m4v"), *one]) == 0
    staging = staging_area(index)
    fake = ref_feats["carphone_pristine"][:3].clone()  # not what extracting v2s would give
    staging.write("v2s", fake.numpy())
    staging.write("v1", ref_feats["carphone_distorted"].numpy())  # already in the index: dropped
    staging.write("elsewhere", ref_feats["v2s"].numpy())  # not among --videos: added after them
    (staging.dir / "x.tmp").write_bytes(b"half a file")  # a killed writer's
    extracted = []
    features = api.VideoModel.features

    def recorded(self, video):
        extracted.append(os.path.basename(video))
        return features(self, video)

    monkeypatch.setattr(api.VideoModel, "features", recorded)
    capsys.readouterr()
    assert index_main(["info", "--index", str(index)]) == 0
    assert "2 more videos staged by an interrupted sharded build" in capsys.readouterr().out

    assert index_main(["build", "--videos", str(clips), *one]) == 3
    err = capsys.readouterr().err
    assert "5 videos, 1 already in" in err and "2 staged by an interrupted run, 3 to add" in err, err
    assert "added 4 (2 staged by an interrupted run), already present 1, failed 1" in err, err
    assert sorted(extracted) == ["broken.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"]
    with IndexStore.open(index) as store:
        assert store.ids() == ["v1", "v2s", "elsewhere", "carphone_distorted", "carphone_pristine"]
        assert torch.equal(store.load("v2s"), fake)
        assert torch.equal(store.load("v1"), ref_feats["v1"])
        assert torch.equal(store.load("carphone_pristine"), ref_feats["carphone_pristine"])
    assert not staging.dir.exists()


def test_a_sharded_build_keeps_the_inset_views_of_a_one_process_build(tmp_path, fresh_seed, restore_threads):
    """--insets under torchrun: the staged videos carry their views into the index, which equals
    the one-process build's (entries, rectangles and features)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_insets import pip_pair

    videos = tmp_path / "videos"
    videos.mkdir()
    pip_pair(videos, fresh_seed)
    argv = ["build", "--videos", str(videos), "--insets", "--fps", "4", "--threads", "1"]
    assert index_main([*argv, "--index", str(tmp_path / "one"), "--no-progress"]) == 0
    log = _torchrun([*argv, "--index", str(tmp_path / "two")], tmp_path / "build.log")
    assert "added 2" in log, log
    with IndexStore.open(tmp_path / "one") as one, IndexStore.open(tmp_path / "two") as two:
        assert two.insets and one.entries() == two.entries() and len(one.entries()) == 3  # pip has its inset
        assert [one.rect(k) for k in one.entries()] == [two.rect(k) for k in two.entries()]
        for key in one.entries():
            assert torch.equal(one.load(key), two.load(key)), key


def test_a_codebook_index_is_started_by_one_process_and_extended_under_torchrun(clips, tmp_path, restore_threads):
    """--storage pq8: a sharded build of a new index is refused with one line (one process trains
    the codebook on its first videos); once started, torchrun adds to it with that codebook."""
    from hapvr.data.media import clip_paths

    index = tmp_path / "pq.index"
    argv = ["build", "--videos", str(clips), "--index", str(index), "--threads", "1", "--storage", "pq8", "--fps", "2"]
    log = _torchrun(argv, tmp_path / "refused.log", expect=1)  # torchrun's code when a rank exits non-zero
    assert "error: --storage pq8: a new index with a codebook is started by one process" in log, log
    first = tmp_path / "first"
    first.mkdir()
    for name in ("bikes", "bigbuckbunny", "v2"):  # 46 frames at 2 fps: 414 region vectors
        shutil.copy(clip_paths()[name], first)
    assert index_main([*argv[:2], str(first), *argv[3:], "--no-progress"]) == 0
    with IndexStore.open(index) as store:
        codebook = store.codebook.centroids.copy()
    log = _torchrun(["add", "--videos", str(clips), "--index", str(index), "--threads", "1", "--fps", "2"],
                    tmp_path / "add.log")  # broken.mp4 failed: listed (under torchrun the exit code stays 0)
    assert "added 4" in log and "failed 1" in log, log
    with IndexStore.open(index) as store:
        assert sorted(store.ids()) == sorted([*CLIPS, "bikes", "bigbuckbunny", "v2"])
        assert np.array_equal(store.codebook.centroids, codebook)
        assert all(torch.isfinite(store.load(v)).all() for v in store.ids())
