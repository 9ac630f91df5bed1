"""``precision`` (bf16/fp16 similarity GEMMs) and ``--device`` across the model, the evaluation
engine and the command lines."""

import json

import pytest
import torch

from hapvr.evaluation.engine import compute_scores
from hapvr.evaluation.feature_store import FeatureStore, write_features
from hapvr.evaluation.scorers import ModelScorer
from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.models import VideoSimilarityModel
from hapvr.precision import precision_dtype
from hapvr.runtime import resolve_device


def _features(n=6, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"v{i}": torch.nn.functional.normalize(torch.randn(int(torch.randint(4, 12, (1,), generator=g)), 9, dim,
                                                               generator=g), dim=-1) for i in range(n)}


def test_precision_names_and_devices_are_checked():
    assert precision_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_dtype("int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        VideoSimilarityModel(16, precision="fp8")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "mps"):
        with pytest.raises(ValueError, match="device must be"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            resolve_device("cuda")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_model_scores_follow_fp32(precision):
    torch.manual_seed(0)
    model = VideoSimilarityModel(32).eval()
    feats = _features()
    q = torch.stack([feats["v0"][:4], feats["v1"][:4]])
    t = torch.stack([feats["v2"][:4], feats["v3"][:4], feats["v4"][:4]])
    with torch.no_grad():
        full = model(q, t)
        model.precision = precision
        low = model(q, t)
    assert low.frame_maps.dtype == torch.float32  # maps are cast back: the comparator runs in fp32
    eps = 2 ** -8 if precision == "bf16" else 2 ** -11
    assert (low.frame_maps - full.frame_maps).abs().max() <= 8 * eps
    assert (low.video - full.video).abs().max() <= 0.05
    assert not torch.equal(low.frame_maps, full.frame_maps)  # really computed in the lower precision


def test_engine_precision_changes_the_cache_key(tmp_path):
    feats = _features()
    path = tmp_path / "f.hdf5"
    write_features(path, feats)
    store = FeatureStore(path)
    ids = sorted(feats)
    full = compute_scores(ChamferBaseline(), store, ids[:2], ids, cache_dir=tmp_path / "c", progress=False)
    low = compute_scores(ChamferBaseline(precision="bf16"), store, ids[:2], ids, cache_dir=tmp_path / "c2",
                         progress=False)
    diff = max(abs(full[q][v] - low[q][v]) for q in full for v in full[q])
    assert 0 < diff <= 0.02
    assert ChamferBaseline(precision="bf16").fingerprint() != ChamferBaseline().fingerprint()
    model = VideoSimilarityModel(32)
    assert ModelScorer(model, precision="bf16").fingerprint() != ModelScorer(model).fingerprint()
    with pytest.raises(RuntimeError, match="other queries, scorer or chunking"):
        compute_scores(ChamferBaseline(precision="bf16"), store, ids[:2], ids, cache_dir=tmp_path / "c",
                       progress=False)


def _vcdb(tmp_path):
    feats = _features()
    path = tmp_path / "f.hdf5"
    write_features(path, feats)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"videos": ["v0", "v1", "v2"], "pairs": [["v0", "v1"]], "distractors": ["v3", "v4"]}))
    return path, ann


def test_evaluate_cli_precision_and_device(tmp_path, capsys, monkeypatch):
    from hapvr.evaluate import main as evaluate_main

    feats, ann = _vcdb(tmp_path)
    out = {}
    for precision in ("fp32", "bf16"):
        assert evaluate_main(["--dataset", "vcdb", "--features", str(feats), "--annotations", str(ann),
                              "--features-only", "--precision", precision, "--device", "cpu", "--no-progress",
                              "--output", str(tmp_path / f"{precision}.json")]) == 0
        out[precision] = json.loads((tmp_path / f"{precision}.json").read_text())
    assert out["fp32"]["vcdb"]["retrieval_mAP"].keys() == out["bf16"]["vcdb"]["retrieval_mAP"].keys()
    capsys.readouterr()
    monkeypatch.setenv("HAPVR_TILED_WORKSPACE_MB", "0")
    assert evaluate_main(["--dataset", "vcdb", "--features", str(feats), "--annotations", str(ann),
                          "--features-only", "--precision", "bf16", "--no-progress"]) == 2
    assert "error: HAPVR_TILED_WORKSPACE_MB must be > 0, got '0'" in capsys.readouterr().err
    monkeypatch.delenv("HAPVR_TILED_WORKSPACE_MB")
    if not torch.cuda.is_available():
        assert evaluate_main(["--dataset", "vcdb", "--features", str(feats), "--annotations", str(ann),
                              "--features-only", "--device", "cuda", "--no-progress"]) == 2
        assert "error: --device: device 'cuda' was asked for but no CUDA device is visible" in capsys.readouterr().err


def test_extract_cli_bf16_features_follow_fp32(tmp_path):
    import h5py

    from hapvr.extract import main as extract_main
    from test_data import _write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "a.mp4")
    feats = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.hdf5"
        assert extract_main(["--videos", str(videos), "--output", str(out), "--raw", "--precision", precision,
                             "--device", "cpu", "--no-progress"]) == 0
        with h5py.File(out) as f:
            feats[precision] = torch.from_numpy(f["a"][()])
    assert feats["bf16"].dtype == torch.float32 and feats["bf16"].shape == feats["fp32"].shape
    cos = torch.nn.functional.cosine_similarity(feats["bf16"], feats["fp32"], dim=-1)
    # bf16 through the whole CNN: close on average; a flat synthetic frame is the worst case
    assert cos.mean() > 0.95 and cos.min() > 0.8 and not torch.equal(feats["bf16"], feats["fp32"])


def test_train_refuses_a_missing_device_and_a_bad_amp(tmp_path, capsys):
    from hapvr.train import main as train_main

    assert train_main(["--amp", "fp8", "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "error: argument --amp: invalid choice: 'fp8'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train_main(["--device", "cuda", "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]) == 2
        assert "error: --device: " in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
@pytest.mark.parametrize("command", ["compare", "search", "index"])
def test_an_absent_device_is_one_error_line_before_any_work(tmp_path, capsys, command):
    import importlib

    main = importlib.import_module(f"hapvr.{command}").main
    argv = {"compare": ["a.mp4", "b.mp4"], "search": ["q.mp4", "--index", str(tmp_path / "none")],
            "index": ["build", "--videos", str(tmp_path / "none"), "--index", str(tmp_path / "i")]}[command]
    assert main([*argv, "--device", "cuda", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device: device 'cuda' was asked for but no CUDA device is visible (use --device cpu)"]


def test_compare_takes_a_precision(tmp_path, capsys):
    from hapvr.compare import main as compare_main
    from hapvr.evaluation.feature_store import write_features

    x = torch.nn.functional.normalize(torch.randn(6, 9, 512), dim=-1)
    write_features(tmp_path / "f.h5", {"a": x, "b": x.flip(0)})
    scores = {}
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / f"{precision}.json"
        assert compare_main(["a", "b", "--features", str(tmp_path / "f.h5"), "--precision", precision,
                             "--json", str(out)]) == 0
        scores[precision] = json.loads(out.read_text())["similarity"]
    assert scores["auto"] == scores["fp32"]  # auto is fp32 on the CPU
    assert scores["bf16"] != scores["fp32"] and abs(scores["bf16"] - scores["fp32"]) < 4e-3
