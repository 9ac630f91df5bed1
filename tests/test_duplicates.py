"""``--duplicates`` as a copy graph: pairs related as the same video, one inside the other, or
sharing a part; clusters that join only the same videos, so a host or filler two unrelated
sources share does not chain them. Synthetic region features with known groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.retrieval.index_store import IndexStore, feature_space
from hapvr.retrieval.search import RELATIONS, duplicates

R, D = 9, 512  # random unit regions at D = 512 are as unrelated as real ones (frame similarity ~0.1)


def video(rng, T):
    """Frames of distinct content: each frame its own random unit regions."""
    x = rng.standard_normal((T, R, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def copy_of(rng, x, noise=0.3):
    """The same video re-encoded: every region moved a little."""
    y = x + noise * rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(D)
    return y / np.linalg.norm(y, axis=-1, keepdims=True)


@pytest.fixture
def collection(tmp_path):
    """Two sources with whole copies each, a host (shared footage), and two videos that hold a part
    of the host and a part of one source each: the true groups are the sources with their copies."""
    rng = np.random.default_rng(0)
    s1, s2, host = video(rng, 20), video(rng, 20), video(rng, 24)
    videos = {"s1": s1, "s1-copy": copy_of(rng, s1), "s1-reupload": copy_of(rng, s1),
              "s2": s2, "s2-copy": copy_of(rng, s2), "host": host,
              "x1": np.concatenate([host[:10], copy_of(rng, s1[5:15])]),  # filler + part of s1
              "x2": np.concatenate([host[10:20], copy_of(rng, s2[3:13])]),  # other filler + part of s2
              "clip": copy_of(rng, s1[2:12]),  # a clip cut from s1
              "other": video(rng, 18)}
    store = IndexStore.create(tmp_path / "i", feature_space(ChamferBaseline()), (R, D))
    for vid, x in videos.items():
        store.add(vid, x)
    return store


def test_clusters_are_the_true_groups_and_shared_footage_does_not_chain_them(collection):
    found = duplicates(collection, ChamferBaseline(), threshold=0.5)
    assert found.clusters == [["s1", "s1-copy", "s1-reupload"], ["s2", "s2-copy"]]
    relation = {(p.a, p.b): p.relation for p in found.pairs}
    assert set(relation.values()) <= set(RELATIONS)
    assert relation[("clip", "s1")] == "a in b"  # a clip cut from s1: inside it, not the same video
    for x, source in (("x1", "s1"), ("x2", "s2")):
        assert relation.get((x, source), relation.get((source, x))) == "share a part"
        assert relation.get((x, "host"), relation.get(("host", x))) == "share a part"
    assert not any("other" in (p.a, p.b) for p in found.pairs)
    # the links that joined each cluster, with their segments
    links = found.links(found.clusters[1])
    assert [(p.a, p.b) for p in links] == [("s2", "s2-copy")] and links[0].segments
    assert links[0].coverage[0] >= 0.8 and links[0].coverage[1] >= 0.8


def test_connected_components_alone_would_have_chained_them(collection):
    """The same pairs joined whatever their relation: one cluster through the host."""
    from hapvr.retrieval.search import _components

    found = duplicates(collection, ChamferBaseline(), threshold=0.5)
    chained = _components([(p.a, p.b) for p in found.pairs])
    assert any({"s1", "s2", "host"} <= set(c) for c in chained)
