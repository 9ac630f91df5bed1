"""Inset views in the index and in search: an index built with insets keeps each video's views
(rectangles found inside its frames, extracted on their own), search scores every query view
against every candidate entry, and a hit names the pair of views that scored it.

Synthetic features (fresh random draws each run, seed printed by ``fresh_seed``) for the store
and the search; real footage for the commands (a clip pasted as picture-in-picture)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.io.staging import StagedVideos
from hapvr.retrieval.index_store import IndexStore, feature_space, parent_of, view_key
from hapvr.retrieval.search import Searcher, duplicates, score_videos

sys.path.insert(0, os.path.dirname(__file__))
from test_insets import pip_pair  # noqa: E402

R, D = 9, 64
RECT = {"kind": "picture-in-picture", "top": 20, "left": 36, "height": 140, "width": 150, "score": 7.5}


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def space() -> dict:
    return feature_space(ChamferBaseline(), backbone="synthetic", region_shape=[R, D])


def as_stored(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float16).astype(np.float32))


# --- the store ------------------------------------------------------------------------------------


def test_views_are_stored_removed_compacted_and_reopened(tmp_path, fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    a, b, va1, va2 = unit(rng, 5, R, D), unit(rng, 3, R, D), unit(rng, 4, R, D), unit(rng, 6, R, D)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D), insets=True) as store:
        store.add("a", a, [(RECT, va1), ({"top": 0, "left": 0, "height": 128, "width": 256}, torch.from_numpy(va2))])
        store.add("b", b)
        assert store.insets and len(store) == 2 and store.ids() == ["a", "b"] and "a" in store
        assert store.entries() == ["a", view_key("a", 1), view_key("a", 2), "b"]
        assert [parent_of(k) for k in store.entries()] == ["a", "a", "a", "b"]
        assert store.views("a")[0] == (view_key("a", 1), RECT) and store.views("b") == []
        assert torch.equal(store.load(view_key("a", 2)), as_stored(va2)) and store.length(view_key("a", 1)) == 4
        assert store.rect("a") is None and store.rect(view_key("a", 1)) == RECT
        ids, starts, counts = store.row_layout(views=True)
        assert ids == store.entries() and store.row_layout()[0] == ["a", "b"]
        with pytest.raises(ValueError, match="NUL"):
            store.add("x\x001", b)
        with pytest.raises(ValueError, match="view 1: features must be"):
            store.add("c", b, [(RECT, np.zeros((2, R, D + 1), np.float32))])
        with pytest.raises(ValueError, match="rectangle"):
            store.add("c", b, [({"top": 1}, va1)])
        assert "c" not in store
        store.remove("a")
        assert store.entries() == ["b"] and store.dead_fraction() > 0
        with pytest.raises(KeyError, match=r"'a' \(view 1\)"):
            store.load(view_key("a", 1))
        store.add("a", a, [(RECT, va1)])
        store.compact()
        assert store.dead_fraction() == 0 and store.entries() == ["b", "a", view_key("a", 1)]
    with IndexStore.open(path, space()) as store:
        assert store.insets and store.views("a") == [(view_key("a", 1), RECT)]
        assert torch.equal(store.load(view_key("a", 1)), as_stored(va1)) and torch.equal(store.load("a"), as_stored(a))
        store.descriptor_matrix()  # every entry's rows pass their CRCs


def test_a_plain_index_refuses_views(tmp_path, fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    with IndexStore.create(tmp_path / "i", space(), (R, D)) as store:
        with pytest.raises(ValueError, match="keeps no inset views"):
            store.add("a", unit(rng, 3, R, D), [(RECT, unit(rng, 3, R, D))])
        store.add("a", unit(rng, 3, R, D), [])  # no views: fine
        assert not store.insets and store.entries() == ["a"]


def test_views_without_their_add_line_are_dropped(tmp_path, fresh_seed):
    """A kill after a video's view lines but before its add line: the video is not there, and
    when it is added again it gets the new views only."""
    rng = np.random.default_rng(fresh_seed)
    path = tmp_path / "i"
    a, old1, old2, new1 = (unit(rng, 3, R, D) for _ in range(4))
    with IndexStore.create(path, space(), (R, D), insets=True) as store:
        store.add("keep", unit(rng, 2, R, D), [(RECT, unit(rng, 2, R, D))])
        real = store._write_entry

        def killed(event, *encoded):
            if event["op"] == "add":
                raise KeyboardInterrupt  # the process dies before the add line
            real(event, *encoded)

        store._write_entry = killed
        with pytest.raises(KeyboardInterrupt):
            store.add("a", a, [(RECT, old1), (RECT, old2)])
        store._write_entry = real
    with IndexStore.open(path, writable=True) as store:
        assert store.ids() == ["keep"] and store.entries() == ["keep", view_key("keep", 1)]
        assert store.dead_fraction() > 0  # the orphaned views' frames
        store.add("a", a, [(RECT, new1)])
        assert store.views("a") == [(view_key("a", 1), RECT)]
        assert torch.equal(store.load(view_key("a", 1)), as_stored(new1))
        store.compact()
        assert store.dead_fraction() == 0


def test_staged_videos_keep_their_views(tmp_path, fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    staging = StagedVideos(tmp_path / "staging")
    x, v = unit(rng, 3, R, D), unit(rng, 2, R, D)
    staging.write("a", x, [(RECT, v)])
    staging.write("b", x)
    done = staging.done()
    np.testing.assert_array_equal(staging.read(done["a"]), x)
    (rect, got), = staging.read_views(done["a"])
    assert rect == RECT and np.array_equal(got, v) and staging.read_views(done["b"]) == []


# --- search ---------------------------------------------------------------------------------------


@pytest.fixture
def collection(tmp_path, fresh_seed):
    """Twelve videos; ``host`` shows ``inner`` (a video not indexed on its own) in a rectangle,
    kept as a view in the index with insets and absent from the plain index."""
    rng = np.random.default_rng(fresh_seed)
    videos = {f"v{i}": unit(rng, int(rng.integers(4, 10)), R, D) for i in range(11)}
    videos["host"] = unit(rng, 8, R, D)
    inner = unit(rng, 8, R, D)
    out = {}
    for name, insets in (("plain", False), ("insets", True)):
        path = tmp_path / name
        with IndexStore.create(path, space(), (R, D), insets=insets, durable=False) as store:
            for vid, x in videos.items():
                store.add(vid, x, [(RECT, inner)] if insets and vid == "host" else [])
        out[name] = path
    return videos, inner, out


def test_a_copy_inside_a_view_is_found_with_its_rectangle(collection):
    videos, inner, paths = collection
    scorer = ChamferBaseline()
    query = torch.from_numpy(inner[1:7])  # an excerpt of what the host shows
    with IndexStore.open(paths["plain"]) as plain, IndexStore.open(paths["insets"]) as store:
        missed = Searcher(plain, scorer).search(query, k=12, candidates=12)
        for searcher_result in (Searcher(store, scorer).search(query, k=12, candidates=13),  # 13 entries
                                Searcher(store, scorer).search(query, k=12, exhaustive=True)):
            top = searcher_result.hits[0]
            assert top.id == "host" and top.target_view == RECT and top.entry == view_key("host", 1)
            assert top.target == view_key("host", 1) and top.query_view == 0
            assert top.score > 0.99 and searcher_result.scored == 12  # videos, not entries
            assert [h.id for h in searcher_result.hits].count("host") == 1
        host_plain = next(h for h in missed.hits if h.id == "host")
        assert host_plain.score < 0.5 and host_plain.target_view is None
        # a video's score is the best over its entries; the others are their whole frames'
        entries = store.entries()
        direct = score_videos(scorer, store, [query], entries)[0]
        best = {}
        for e, s in zip(entries, direct):
            best[parent_of(e)] = max(best.get(parent_of(e), -np.inf), float(s))
        hits = Searcher(store, scorer).search(query, k=12, exhaustive=True).hits
        np.testing.assert_allclose([h.score for h in hits], [best[h.id] for h in hits], rtol=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_without_views_the_search_is_the_plain_search(collection, fresh_seed):
    """The same videos without any view: views-aware search gives the plain results, whether
    the query is features or a list of one view."""
    videos, _, paths = collection
    rng = np.random.default_rng(fresh_seed + 1)
    scorer = ChamferBaseline()
    with IndexStore.open(paths["plain"]) as store:
        searcher = Searcher(store, scorer)
        for vid in ("v0", "v3"):
            query = torch.from_numpy(videos[vid][: max(2, len(videos[vid]) // 2)] + 0.02 * unit(rng, 1, R, D))
            a = searcher.search(query, k=5, candidates=8)
            b = searcher.search([(None, query)], k=5, candidates=8)
            assert a.hits == b.hits and a.hits[0].id == vid and all(h.target_view is None for h in a.hits)


def test_query_views_find_the_source_of_an_inset(collection, fresh_seed):
    """The query shows an indexed video in a rectangle: its second view finds it."""
    videos, _, paths = collection
    rng = np.random.default_rng(fresh_seed + 2)
    scorer = ChamferBaseline()
    with IndexStore.open(paths["plain"]) as store:
        searcher = Searcher(store, scorer)
        views = [(None, torch.from_numpy(unit(rng, 6, R, D))), (RECT, torch.from_numpy(videos["v5"][:4]))]
        for result in (searcher.search(views, k=3, candidates=6), searcher.search(views, k=3, exhaustive=True)):
            assert result.hits[0].id == "v5" and result.hits[0].query_view == 1 and result.hits[0].target_view is None
        joint = searcher.search_many([views, views[1][1]], k=3, exhaustive=True)
        assert joint[0].hits[0].query_view == 1 and joint[1].hits[0].query_view == 0
        assert joint[0].hits[0].score == pytest.approx(joint[1].hits[0].score, rel=1e-6)
        with pytest.raises(ValueError, match="at least one"):
            searcher.search([], k=3)


def test_duplicates_take_proposals_through_views_as_their_videos(collection):
    videos, _, paths = collection
    with IndexStore.open(paths["insets"]) as store:
        found = duplicates(store, ChamferBaseline(), threshold=-1.0)
        assert found.candidate_pairs > 0
        for p in found.pairs:
            assert p.a in store and p.b in store and p.a != p.b


# --- the commands ---------------------------------------------------------------------------------


def test_index_and_search_find_a_picture_in_picture_copy(tmp_path, fresh_seed, capsys):
    from hapvr.index import main as index_main
    from hapvr.search import main as search_main

    videos = tmp_path / "videos"
    videos.mkdir()
    top, left, side = pip_pair(videos, fresh_seed)
    (videos / "clip.mp4").rename(tmp_path / "clip.mp4")  # the query: not in the collection
    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(videos), "--index", str(index), "--insets", "--fps", "4",
                       "--no-progress"]) == 0
    assert index_main(["info", "--index", str(index)]) == 0
    assert "1 videos (1 inset views, kept for 1 of them)" in capsys.readouterr().out
    out = tmp_path / "s.json"
    assert search_main(["--index", str(index), str(tmp_path / "clip.mp4"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    hit = json.loads(out.read_text())["queries"][0]["results"][0]
    assert hit["id"] == "pip" and hit["query_view"] is None and hit["target_view"]["kind"] == "picture-in-picture"
    assert abs(hit["target_view"]["top"] - top) <= 6 and abs(hit["target_view"]["left"] - left) <= 6
    assert hit["segments"], hit  # localised on the view's frames
    assert f"pip: picture-in-picture {hit['target_view']['width']}x" in printed
    # the same search of a plain index scores the whole frame only, lower
    plain = tmp_path / "plain"
    assert index_main(["build", "--videos", str(videos), "--index", str(plain), "--fps", "4", "--no-progress"]) == 0
    assert search_main(["--index", str(plain), str(tmp_path / "clip.mp4"), "--json", str(out)]) == 0
    whole = json.loads(out.read_text())["queries"][0]["results"][0]
    assert whole["target_view"] is None and whole["similarity"] < hit["similarity"] - 0.1
    # the other way: the picture-in-picture video as the query of a plain index of the clip
    clips = tmp_path / "clips"
    assert index_main(["build", "--videos", str(tmp_path / "clip.mp4"), "--index", str(clips), "--fps", "4",
                       "--no-progress"]) == 0
    assert search_main(["--index", str(clips), str(videos / "pip.mp4"), "--insets", "--json", str(out)]) == 0
    found = json.loads(out.read_text())["queries"][0]["results"][0]
    assert found["id"] == "clip" and found["target_view"] is None and found["segments"]
    assert abs(found["query_view"]["top"] - top) <= 6 and abs(found["query_view"]["left"] - left) <= 6
    assert found["similarity"] > whole["similarity"] + 0.1


def test_insets_on_a_plain_index_is_refused(tmp_path, fresh_seed, capsys):
    from hapvr.index import main as index_main

    pip_pair(tmp_path, fresh_seed)
    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(tmp_path / "clip.mp4"), "--index", str(index), "--fps", "4",
                       "--no-progress"]) == 0
    capsys.readouterr()
    assert index_main(["build", "--videos", str(tmp_path / "pip.mp4"), "--index", str(index), "--insets",
                       "--fps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert lines == [f"error: --insets: --index {index} was built without inset views; build a new index with "
                     "--insets"], err


def test_a_mirrored_copy_is_found_through_the_mirrored_query(tmp_path, fresh_seed, capsys):
    """A clip re-encoded mirrored left-right: --mirror compares the query mirrored too, which
    scores the pair as the clip scores itself, above the plain comparison."""
    import hapvr
    from hapvr.compare import main as compare_main
    from hapvr.data.video import decode_video
    from hapvr.index import main as index_main
    from hapvr.search import main as search_main
    from test_insets import _write

    videos = tmp_path / "videos"
    videos.mkdir()
    pip_pair(tmp_path, fresh_seed)
    clip = decode_video(str(tmp_path / "clip.mp4"), 4).numpy()
    _write(videos / "mirrored.mp4", np.ascontiguousarray(clip[..., ::-1]))
    model = hapvr.load_model(fps=4)
    query, copy = str(tmp_path / "clip.mp4"), str(videos / "mirrored.mp4")
    plain = hapvr.compare_videos(query, copy, model)
    found = hapvr.compare_videos(query, copy, model, mirror=True)
    itself = hapvr.compare_videos(query, query, model)
    assert found.query_view is not None and found.query_view.kind == "mirrored" and found.target_view is None
    assert found.similarity > plain.similarity + 0.02 and found.similarity == pytest.approx(itself.similarity, abs=0.05)
    assert compare_main([query, copy, "--mirror", "--fps", "4"]) == 0
    assert "compared the query mirrored left-right" in capsys.readouterr().out
    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(videos), "--index", str(index), "--fps", "4", "--no-progress"]) == 0
    out = tmp_path / "s.json"
    assert search_main(["--index", str(index), query, "--mirror", "--json", str(out)]) == 0
    hit = json.loads(out.read_text())["queries"][0]["results"][0]
    assert hit["query_view"]["kind"] == "mirrored" and hit["similarity"] == pytest.approx(found.similarity, abs=2e-3)
    assert "(query: the whole frame mirrored; mirrored: the whole frame)" in capsys.readouterr().out
    assert compare_main(["a", "b", "--features", str(out), "--mirror"]) == 2
    assert "error: --mirror needs the videos' frames" in capsys.readouterr().err
