"""Loading checkpoints (hapvr's and the published S2VS / HAP-VR state dicts), the model as an
evaluation scorer, and feature extraction to HDF5."""

import json

import h5py
import pytest
import torch

from hapvr.evaluation.engine import compute_scores
from hapvr.evaluation.feature_store import FeatureStore, write_features
from hapvr.evaluation.scorers import ModelScorer
from hapvr.models.loading import convert_published_state_dict, load_similarity_model
from hapvr.extract import main as extract_main
from hapvr.models import VideoSimilarityModel

from test_data import _write_video


def _randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def _published(model, style):
    """The model's tensors under other names, as a foreign release would store them."""
    sd = model.state_dict()
    D = sd["attention.proj.weight"].shape[0]
    if style == "s2vs":
        return {
            "visil_head.attention.W.weight": sd["attention.proj.weight"].reshape(D, D, 1, 1),  # as a 1x1 conv
            "visil_head.attention.W.bias": sd["attention.proj.bias"],
            "visil_head.attention.context_vector": sd["attention.context.weight"].reshape(D, 1),
            "visil_head.cnn.0.weight": sd["comparator.conv1.weight"], "visil_head.cnn.0.bias": sd["comparator.conv1.bias"],
            "visil_head.cnn.3.weight": sd["comparator.conv2.weight"], "visil_head.cnn.3.bias": sd["comparator.conv2.bias"],
            "visil_head.cnn.6.weight": sd["comparator.conv3.weight"], "visil_head.cnn.6.bias": sd["comparator.conv3.bias"],
            "visil_head.out.weight": sd["comparator.fconv.weight"], "visil_head.out.bias": sd["comparator.fconv.bias"],
        }
    return {"model": {
        "comparator_module.att.linear.weight": sd["attention.proj.weight"],
        "comparator_module.att.linear.bias": sd["attention.proj.bias"],
        "comparator_module.att.u": sd["attention.context.weight"],
        **{f"comparator_module.sim.{n}": sd[f"comparator.{n}"] for n in
           ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
            "fconv.weight", "fconv.bias")},
    }}


@pytest.mark.parametrize("style", ["s2vs", "hapvr-release"])
def test_published_state_dicts_load_into_the_model(tmp_path, style):
    model = _randomised(VideoSimilarityModel(64))
    path = tmp_path / "release.pth"
    torch.save(_published(model, style), path)
    loaded = load_similarity_model(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


def test_foreign_state_dict_missing_layers_is_refused():
    with pytest.raises(ValueError, match="comparator.conv1.weight"):
        convert_published_state_dict({"x.weight": torch.zeros(64, 64)}, 64)


def test_engine_with_the_model_equals_model_similarity(tmp_path):
    model = _randomised(VideoSimilarityModel(16)).eval()
    feats = {"q0": torch.randn(9, 9, 16), "q1": torch.randn(30, 9, 16), "t0": torch.randn(2, 9, 16),
             "t1": torch.randn(25, 9, 16), "long": torch.randn(2049, 9, 16)}
    path = tmp_path / "f.hdf5"
    write_features(path, feats)
    with FeatureStore(path) as store:
        got = compute_scores(ModelScorer(model), store, ["q0", "q1"], ["t0", "t1", "long"], progress=False)
    for q in ("q0", "q1"):
        for t in ("t0", "t1", "long"):
            assert got[q][t] == pytest.approx(model.similarity(feats[q], feats[t]), abs=1e-5), (q, t)


def test_hapvr_checkpoint_round_trip_and_extract(tmp_path):
    from hapvr.features.extractor import RegionFeatureExtractor

    ext = RegionFeatureExtractor("efficientnet_lite0", None, 512)
    ext.pca.fit(torch.randn(2000, ext.in_dim))
    model = _randomised(VideoSimilarityModel(512))
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"format": "hapvr-checkpoint-1", "config": {"backbone": "efficientnet_lite0", "pca_dim": 512},
                "pca": ext.pca.state_dict(), "model": model.state_dict()}, ckpt)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(load_similarity_model(ckpt).state_dict()[key], value)

    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "a.mp4", seconds=3)
    _write_video(videos / "b.avi", seconds=2)
    (videos / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "features.hdf5"
    args = ["--videos", str(videos), "--output", str(out), "--checkpoint", str(ckpt), "--no-progress"]
    assert extract_main(args) == 3  # finished, one video failed (listed)
    with h5py.File(out) as f:
        assert sorted(f) == ["a", "b"]
        assert f["a"].shape == (3, 9, 512) and f["b"].shape == (2, 9, 512)
        norms = torch.from_numpy(f["a"][()]).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
        first = f["a"][()]
    failures = (tmp_path / "features.hdf5.failures.txt").read_text()
    assert failures.startswith("broken\t")
    # Resumed: nothing is extracted again, existing features are untouched; the broken one fails again.
    assert extract_main(args) == 3
    with h5py.File(out) as f:
        assert (f["a"][()] == first).all()
    # The features evaluate with the checkpoint's model.
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"queries": ["a"], "database": ["b"], "positives": {"a": ["b"]}}))
    from hapvr.evaluate import main as evaluate_main

    assert evaluate_main(["--dataset", "custom", "--features", str(out), "--annotations", str(ann),
                          "--checkpoint", str(ckpt), "--no-progress"]) == 0


def test_extract_raw_descriptors_for_hapvr_pca(tmp_path, capsys):
    from hapvr.pca import main as pca_main

    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "a.mp4", seconds=3)
    _write_video(videos / "b.mp4", seconds=2)
    raw = tmp_path / "raw.hdf5"
    assert extract_main(["--videos", str(videos), "--output", str(raw), "--raw", "--no-progress"]) == 0
    with h5py.File(raw) as f:
        assert f["a"].shape == (3, 9, 1752) and f["b"].shape == (2, 9, 1752)
        assert (f.attrs["hapvr_space"], f.attrs["backbone"]) == ("raw", "efficientnet_lite0")
        norms = torch.from_numpy(f["a"][()]).norm(dim=-1)  # L2-normalised descriptors, before PCA
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
    pca = tmp_path / "pca.pt"
    assert pca_main(["--features", str(raw), "--output", str(pca), "--dim", "16", "--no-progress"]) == 0
    assert torch.load(pca, weights_only=True)["pca"]["projection"].shape == (1752, 16)
    # Raw and whitened features never share a file.
    assert extract_main(["--videos", str(videos), "--output", str(raw), "--fit-pca", "1", "--no-progress"]) == 2
    assert "holds raw features" in capsys.readouterr().err
