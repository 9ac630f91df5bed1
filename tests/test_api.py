"""The Python API and python -m hapvr.compare on real decoded clips: a video against itself, a
partial copy inside other footage, an unrelated video; the JSON layout; bad inputs."""

import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import hapvr  # noqa: E402
from hapvr.io import checkpoint as model_files  # noqa: E402


def _frames(n, seed):
    """n distinct 64x48 frames: smooth random colour fields (the backbone tells them apart)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
        out.append(np.kron(base, np.ones((8, 8, 1), np.uint8)))
    return out


def _write(path, frames, fps=2):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"qscale": "2"}
        for img in frames:
            for _ in range(fps):  # each picture held for one second
                for p in s.encode(__import__("av").VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """A default-model file built by export() from a checkpoint whose PCA is learned on the
    clips' own descriptors (the real file needs the default training run); its model has the
    default run's residual head, untrained, so it scores exactly as the Chamfer baseline."""
    from hapvr.features.extractor import RegionFeatureExtractor
    from hapvr.models import VideoSimilarityModel

    d = tmp_path_factory.mktemp("default")
    source, other = _frames(12, 0), _frames(12, 1)
    _write(d / "source.mp4", source)
    _write(d / "copy_inside.mp4", other[:3] + source[2:8] + other[3:6])  # seconds 2-8 of source at 3-9
    _write(d / "other.mp4", other)
    ext = RegionFeatureExtractor("efficientnet_lite0", None, 64)
    from hapvr.data.video import load_frames

    descs = torch.cat([ext.descriptors(load_frames(str(d / n), 1.0, None)) for n in ("source.mp4", "other.mp4")])
    ext.pca.fit(descs.reshape(-1, ext.in_dim))
    ckpt = d / "checkpoint.pt"
    model = VideoSimilarityModel(64, head="residual")
    torch.save({"format": "hapvr-checkpoint-1", "config": {"backbone": "efficientnet_lite0", "pca_dim": 64,
                                                           "head": "residual"},
                "pca": ext.pca.state_dict(), "model": model.state_dict(), "step": 0}, ckpt)
    path = d / "default_model.pt"
    digest = model_files.export_default_model(ckpt, path)
    return d, path, digest


@pytest.fixture
def use_default(default, monkeypatch):
    d, path, digest = default
    monkeypatch.setattr(model_files, "DEFAULT_MODEL_PATH", path)
    monkeypatch.setattr(model_files, "DEFAULT_MODEL_SHA256", digest)
    return d


def test_compare_finds_the_copied_part_in_seconds(use_default):
    d = use_default
    model = hapvr.load_model()
    assert not model.is_baseline and model.model.head == "residual" and model.name == "default"
    assert model.scale is hapvr.api.RESIDUAL_SCALE
    same = hapvr.compare_videos(d / "source.mp4", d / "source.mp4", model)
    assert same.similarity == pytest.approx(1.0, abs=1e-4)
    assert same.frame_map.shape == (12, 12)
    assert len(same.segments) >= 1
    best = same.segments[0]
    assert (best.query_start, best.query_end, best.target_start, best.target_end) == (0, 12, 0, 12)

    part = hapvr.compare_videos(d / "copy_inside.mp4", d / "source.mp4", model)
    assert part.frame_map.shape == (12, 12)
    spans = [(s.query_start, s.query_end, s.target_start, s.target_end) for s in part.segments]
    assert spans[0] == (3, 9, 2, 8), spans  # query seconds 3-9 are the source's seconds 2-8
    other = hapvr.compare_videos(d / "other.mp4", d / "source.mp4", model)
    assert other.segments == [] and other.similarity < part.similarity < same.similarity

    layout = part.to_dict()
    assert list(layout) == ["query", "target", "similarity", "fps", "segments", "reason", "query_view", "target_view"]
    assert layout["reason"] is None  # said only when there is no segment
    assert layout["query_view"] is None and layout["target_view"] is None  # whole frames (no --insets)
    assert list(layout["segments"][0]) == ["query_start", "query_end", "target_start", "target_end", "score",
                                           "reversed"]
    assert layout["segments"][0]["reversed"] is False
    assert other.reason and other.to_dict()["reason"] == other.reason  # why the unrelated pair has none
    assert [s["score"] for s in layout["segments"]] == sorted((s["score"] for s in layout["segments"]), reverse=True)
    sym = model.similarity(d / "copy_inside.mp4", d / "source.mp4", symmetric=True)
    back = model.similarity(d / "source.mp4", d / "copy_inside.mp4")
    assert sym == pytest.approx(0.5 * (part.similarity + back), abs=1e-6)


def test_compare_command_line(use_default, tmp_path, capsys):
    from hapvr.compare import main

    d = use_default
    out, png = tmp_path / "r" / "result.json", tmp_path / "r" / "map.png"
    assert main([str(d / "copy_inside.mp4"), str(d / "source.mp4"), "--json", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "similarity" in text and "copied segment" in text
    result = json.loads(out.read_text())
    assert result["query"] == str(d / "copy_inside.mp4") and result["fps"] == 1.0
    assert result["segments"][0]["query_start"] == 3.0 and png.stat().st_size > 5000
    # features from a file, by id
    from hapvr.evaluation.feature_store import write_features

    model = hapvr.load_model()
    feats = tmp_path / "f.hdf5"
    write_features(feats, {"a": model.features(d / "copy_inside.mp4"), "b": model.features(d / "source.mp4")})
    assert main(["a", "b", "--features", str(feats), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["segments"][0]["target_start"] == 2.0
    # the mean of both directions is held to the symmetric threshold (docs/scores.md)
    capsys.readouterr()
    assert main(["a", "b", "--features", str(feats), "--symmetric"]) == 0
    assert f"copy threshold {model.scale.symmetric_threshold:g})" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing query", "not a video", "unknown id", "bad checkpoint", "plot under a file"])
def test_compare_bad_input_is_one_line(use_default, tmp_path, capsys, case):
    from hapvr.compare import main

    d = use_default
    (tmp_path / "junk.mp4").write_bytes(os.urandom(2000))
    (tmp_path / "file").write_text("x")
    from hapvr.evaluation.feature_store import write_features

    write_features(tmp_path / "f.hdf5", {"a": torch.randn(3, 9, 64)})
    argv = {"missing query": [str(tmp_path / "nope.mp4"), str(d / "source.mp4")],
            "not a video": [str(tmp_path / "junk.mp4"), str(d / "source.mp4")],
            "unknown id": ["a", "zz", "--features", str(tmp_path / "f.hdf5")],
            "bad checkpoint": [str(d / "source.mp4"), str(d / "source.mp4"), "--checkpoint", str(tmp_path / "file")],
            "plot under a file": [str(d / "source.mp4"), str(d / "source.mp4"), "--plot", str(tmp_path / "file" / "p.png")],
            }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err


def test_default_model_file_is_checked(default, tmp_path):
    d, path, digest = default
    assert model_files.load_default_model(path, digest).kind == model_files.DEFAULT_MODEL_KIND == "trained"
    bad = tmp_path / "m.pt"
    bad.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    from hapvr.io.serialization import CorruptFileError

    with pytest.raises(CorruptFileError, match="SHA-256"):
        model_files.load_default_model(bad, digest)


def test_default_model_of_kind_baseline_is_the_chamfer_baseline(default, tmp_path, monkeypatch):
    """A default-model file of kind "baseline" gives the features-only baseline over its PCA,
    on the baseline's score scale, whatever weights it carries."""
    d, _, _ = default
    path = tmp_path / "baseline_model.pt"
    digest = model_files.export_default_model(d / "checkpoint.pt", path, kind="baseline")
    monkeypatch.setattr(model_files, "DEFAULT_MODEL_PATH", path)
    monkeypatch.setattr(model_files, "DEFAULT_MODEL_SHA256", digest)
    model = hapvr.load_model()
    assert model.is_baseline and model.name == "default (Chamfer baseline)" and model.scale is hapvr.api.BASELINE_SCALE
    trained = hapvr.load_model(d / "checkpoint.pt")
    assert trained.scale is hapvr.api.RESIDUAL_SCALE
    a, b = d / "copy_inside.mp4", d / "source.mp4"
    assert model.similarity(a, b) == pytest.approx(trained.similarity(a, b), abs=1e-5)  # untrained residual = baseline


def test_shipped_default_model_matches_its_hash():
    """The file in the package is the one whose SHA-256 the code records."""
    assert model_files.file_sha256(model_files.DEFAULT_MODEL_PATH) == model_files.DEFAULT_MODEL_SHA256
    spec = model_files.load_default_model()
    assert spec.pca["projection"].shape == (1752, 512) and spec.kind == model_files.DEFAULT_MODEL_KIND


def test_one_name_per_concept_after_the_command_module_is_imported(use_default):
    """``hapvr.compare`` is the command's module and nothing else; the function is
    ``hapvr.compare_videos`` (and ``VideoModel.compare``), whatever was imported before."""
    import importlib
    import types

    importlib.import_module("hapvr.compare")
    d = use_default
    assert isinstance(hapvr.compare, types.ModuleType) and not callable(hapvr.compare)
    assert hapvr.compare_videos(d / "other.mp4", d / "other.mp4").similarity == pytest.approx(1.0, abs=1e-4)
    model = hapvr.load_model()
    assert model.compare(d / "other.mp4", d / "other.mp4").similarity == pytest.approx(1.0, abs=1e-4)


def test_repeated_calls_decode_each_file_once(use_default, monkeypatch):
    """The model keeps the features of the files it decoded (by path, size, modification time
    and fps): repeated similarity calls decode each file once; a changed file is decoded again."""
    import hapvr.api as api

    d = use_default
    model = hapvr.load_model()
    decoded = []
    real = api.load_frames
    monkeypatch.setattr(api, "load_frames", lambda path, *a: decoded.append(path) or real(path, *a))
    first = model.similarity(d / "copy_inside.mp4", d / "source.mp4")
    for _ in range(5):
        assert model.similarity(d / "copy_inside.mp4", d / "source.mp4") == first
    assert len(decoded) == 2
    feats = model.features(d / "source.mp4")
    assert model.similarity(feats, d / "source.mp4") == pytest.approx(model.similarity(d / "source.mp4", feats))
    os.utime(d / "source.mp4", ns=(1, 1))  # another modification time: decoded again
    model.features(d / "source.mp4")
    assert len(decoded) == 3
    model.cache_bytes = 0  # a bound below one video keeps only the last one
    model.features(d / "other.mp4")
    assert len(model._cache) == 1
