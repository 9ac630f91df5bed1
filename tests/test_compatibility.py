"""Files written by the package before its library and commands were separated (commit e15dd4a,
2026-11-30; tests/data/legacy/make_legacy_files.py made them) still load and give the same
results: a training checkpoint, an index built with the default model, score caches of the
evaluation engine, an extracted feature file and both PCA file layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from hapvr.api import load_model
from hapvr.evaluation.engine import compute_scores
from hapvr.evaluation.feature_store import FeatureStore
from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.extract import main as extract_main
from hapvr.features.extractor import RegionFeatureExtractor
from hapvr.features.pca import read_pca_file
from hapvr.io.checkpoint import load_checkpoint, read_model_file
from hapvr.models import VideoSimilarityModel
from hapvr.retrieval.building import open_index
from hapvr.retrieval.search import Searcher
from hapvr.training.config import TrainConfig
from hapvr.training.resume import check_resumed_model

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


def test_legacy_checkpoint_loads_and_scores_as_it_did():
    state = load_checkpoint(str(LEGACY / "checkpoint.pt"))  # digest checked
    assert state["format"] == "hapvr-checkpoint-2" and state["step"] == 0
    spec = read_model_file(LEGACY / "checkpoint.pt")
    assert (spec.backbone, spec.pca_dim, spec.head) == ("efficientnet_lite0", 16, "residual")
    expected = torch.load(LEGACY / "checkpoint_expected.pt", weights_only=True)
    extractor = RegionFeatureExtractor.from_spec(spec)
    feats = extractor.whiten(expected["descriptors"])
    assert torch.equal(feats, expected["features"])
    model = VideoSimilarityModel.from_spec(spec)
    assert model.similarity(feats, feats.flip(0)) == pytest.approx(float(expected["similarity"]), abs=1e-6)
    check_resumed_model(TrainConfig(pca_dim=16), state["config"], "checkpoint.pt")  # resumable by today's trainer


def test_legacy_index_opens_with_the_default_model_and_searches(tmp_path):
    index = tmp_path / "default.index"
    shutil.copytree(LEGACY / "default.index", index)
    model = load_model(device="cpu")
    with open_index(index, model) as store:  # the recorded feature space equals today's
        assert store.ids() == ["alpha", "beta"]
        hits = Searcher(store, model.scorer()).search(store.load("alpha"), k=2, exhaustive=True).hits
    assert hits[0].id == "alpha"
    with open_index(index, model, writable=True) as store:  # and can be added to
        store.add("gamma", torch.nn.functional.normalize(torch.randn(4, 9, 512), dim=-1))
        assert len(store) == 3


@pytest.mark.parametrize("cache, features, queries, targets, scorer", [
    ("cache-baseline", "small.hdf5", ["v0", "v1"], ["v2", "v3"], "baseline"),
    ("cache-default", "default.hdf5", ["alpha"], ["alpha", "beta"], "default"),
])
def test_legacy_score_caches_are_reused_without_scoring(tmp_path, cache, features, queries, targets, scorer):
    shutil.copytree(LEGACY / cache, tmp_path / cache)
    expected = json.loads((LEGACY / "scores.json").read_text())[scorer]
    s = ChamferBaseline() if scorer == "baseline" else load_model(device="cpu").scorer()
    calls = []
    pairwise = s.pairwise
    s.pairwise = lambda *a: calls.append(1) or pairwise(*a)
    with FeatureStore(LEGACY / features) as store:
        scores = compute_scores(s, store, queries, targets, cache_dir=tmp_path / cache, progress=False)
    assert calls == [], "the cache was not reused"
    assert scores == expected


def test_legacy_feature_file_is_extended_by_today_s_extract(tmp_path):
    """extract's output of the previous layout, extended with another clip under the same
    checkpoint: the space check accepts it and the old dataset is untouched."""
    import hapvr.data.media as media

    out = tmp_path / "extracted.hdf5"
    shutil.copy(LEGACY / "extracted.hdf5", out)
    with h5py.File(out, "r") as f:
        before = f["v1"][()]
    assert extract_main(["--videos", media.clip_paths()["v2s"], "--output", str(out), "--checkpoint",
                         str(LEGACY / "checkpoint.pt"), "--no-progress"]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["v1", "v2s"] and f.attrs["hapvr_space"] == "whitened"
        assert (f["v1"][()] == before).all() and f["v2s"].shape[1:] == (9, 16)


@pytest.mark.parametrize("name", ["pca_hapvr_pca.pt", "pca_fit_pca.pt"])
def test_both_legacy_pca_layouts_load(name):
    state = read_pca_file(str(LEGACY / name), 1752, 16, "efficientnet_lite0")
    assert tuple(state["projection"].shape) == (1752, 16)
