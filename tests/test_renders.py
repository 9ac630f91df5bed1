"""Rendered worlds (hapvr.data.renders) and the rendered benchmark queries (hapvr.data.corpus)."""

import random

import numpy as np
import pytest
from PIL import Image
import torch

from hapvr.data import corpus
from hapvr.data.renders import KINDS, make_world, render, world_frame


@pytest.mark.parametrize("kind", KINDS)
def test_worlds_are_a_function_of_their_seed_and_move(kind):
    a, b, other = make_world(7, kind), make_world(7, kind), make_world(8, kind)
    va = render(a, [0, 1, 2, 3], (0.5, 0.5, 0.6), (0.55, 0.5, 0.6))
    assert va.shape == (4, 3, 256, 256) and va.dtype == torch.uint8
    assert torch.equal(va, render(b, [0, 1, 2, 3], (0.5, 0.5, 0.6), (0.55, 0.5, 0.6)))
    assert not torch.equal(va, render(other, [0, 1, 2, 3], (0.5, 0.5, 0.6), (0.55, 0.5, 0.6)))
    # a still camera on a moving world: frames differ over time, and a frame is the world at its time
    still = render(a, [0.0, 5.0], (0.5, 0.5, 1.0), (0.5, 0.5, 1.0))
    assert (still[0].float() - still[1].float()).abs().mean() > 1.0
    def whole(t):  # the world at time t, resized like the render (which crops with a box first)
        return torch.from_numpy(np.array(world_frame(a, t).resize((256, 256), Image.BILINEAR))).permute(2, 0, 1)

    same, before = (still[1].float() - whole(5.0).float()).abs().mean(), (still[1].float() - whole(0.0).float()).abs().mean()
    assert same < 0.5 * before, (same, before)
    with pytest.raises(ValueError, match="kind"):
        make_world(1, "cartoon")


def test_rendered_queries_and_their_levels():
    bench = corpus.BenchmarkVideos()
    corpus.add_render_queries(bench, 4, 500, random.Random(0))
    assert bench.queries == ["render500", "render501", "render502", "render503"]
    assert len(bench.videos) == 4 * 5
    for i, q in enumerate(bench.queries):
        lab = bench.labels[q]
        assert lab["DS"][:2] == [f"{q}-ds1", f"{q}-ds2"] and lab["CS"] == [f"{q}-cs0"] and lab["IS"] == [f"{q}-is0"]
        n = bench.videos[f"{q}-ds2"].shape[0]
        assert n == (2 * corpus.RENDER_FRAMES if i % 2 == 0 else corpus.RENDER_FRAMES)  # 0.5x / 2x re-render
        assert bench.videos[q].shape[0] == corpus.RENDER_FRAMES
    # the third query's first copy is shown inside the second query's footage: a copy of both
    assert "render502-ds1" in bench.labels["render501"]["DS"]
    # splits use disjoint worlds
    seeds = corpus.RENDER_SEEDS
    assert len(set(seeds.values())) == 3 and seeds["validation"] - seeds["test"] >= corpus.RENDER_QUERIES
    assert seeds["test"] - seeds["train"] >= 1000


def test_photo_queries_and_the_photo_splits(monkeypatch):
    """Training, test and validation photos are disjoint; the validation photos' queries are built
    like the test's (DS copy and picture-in-picture copy, two CS cameras, one IS far side)."""
    photos = corpus.load_photos()
    test, val = set(corpus.BENCHMARK_PHOTOS), set(corpus.VALIDATION_PHOTOS)
    assert not test & val and test | val <= set(photos) and len(val) == 6
    monkeypatch.setattr(corpus, "load_photos", lambda: {k: photos[k] for k in sorted(photos)[:8] + sorted(val)})
    train = corpus.build_train_videos(corpus.CorpusConfig(train_frames=4))
    assert train and not {k.rsplit("-", 1)[0] for k in train} & (test | val)
    bench = corpus.BenchmarkVideos()
    names = corpus.VALIDATION_PHOTOS[:3]
    corpus.add_photo_queries(bench, photos, names, random.Random(0), 6)
    assert bench.queries == list(names)
    for i, q in enumerate(names):
        lab = bench.labels[q]
        prev = names[(i - 1) % 3]
        # its copies, and the previous photo's picture-in-picture copy, shown inside its footage
        assert sorted(lab["DS"]) == sorted([f"{q}-ds1", f"{q}-ds2", f"{prev}-ds2"])
        assert lab["CS"] == [f"{q}-cs0", f"{q}-cs1"] and lab["IS"] == [f"{q}-is0"]
        assert bench.videos[q].shape == (6, 3, 256, 256)


def test_split_names_are_checked():
    with pytest.raises(ValueError, match="split must be one of"):
        corpus.build_benchmark(corpus.CorpusConfig(), "holdout")


def test_training_siblings_film_the_same_scene_beside_each_video_without_changing_the_videos(monkeypatch):
    """Each video gets a sibling (another camera on its scene at the same times), reproducibly,
    and asking for siblings leaves the training videos themselves unchanged."""
    photos = corpus.load_photos()
    held_out = set(corpus.BENCHMARK_PHOTOS) | set(corpus.VALIDATION_PHOTOS)
    keep = {k: photos[k] for k in [k for k in sorted(photos) if k not in held_out][:3]}
    monkeypatch.setattr(corpus, "load_photos", lambda: keep)
    cfg = corpus.CorpusConfig(train_frames=6)
    plain = corpus.build_train_videos(cfg, renders=2)
    videos, siblings = corpus.build_train_corpus(cfg, renders=2, siblings=True)
    assert sorted(videos) == sorted(plain) == sorted(siblings) and len(videos) == 5
    for k in videos:
        assert torch.equal(videos[k], plain[k]) and siblings[k].shape == videos[k].shape
        assert not torch.equal(siblings[k], videos[k])

    again = corpus.build_train_corpus(cfg, renders=2, siblings=True)[1]
    assert all(torch.equal(again[k], siblings[k]) for k in siblings)  # a function of the corpus seed
    assert corpus.build_train_corpus(cfg, renders=2)[1] == {}
