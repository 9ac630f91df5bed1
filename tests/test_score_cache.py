"""The score cache's identity (feature data, weights, settings) and its damaged or torn lines."""

import json

import pytest
import torch

from hapvr.evaluation.engine import EngineConfig, compute_scores
from hapvr.evaluation.score_cache import ScoreCache, ScoreCacheError
from hapvr.evaluation.feature_store import FeatureStore, write_features
from hapvr.evaluation.scorers import ModelScorer
from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.models import VideoSimilarityModel
from hapvr.io.serialization import CorruptFileError

D = 16
CFG = EngineConfig(max_map_elements=3000)  # many small batches
QUERIES = ["q0", "q1"]


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [12, 20, 7, 33, 15, 9, 26, 18, 5, 40]
    return {f"{'q' if i < 2 else 'v'}{i}": torch.nn.functional.normalize(torch.randn(t, 9, D, generator=g), dim=-1)
            for i, t in enumerate(lengths)}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "f.hdf5"
    write_features(path, _features())
    with FeatureStore(path) as s:
        yield s


class CountingScorer(ChamferBaseline):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def pairwise(self, *args):
        self.calls += 1
        return super().pairwise(*args)


def _run(store, cache, scorer=None):
    return compute_scores(scorer or ChamferBaseline(), store, QUERIES, sorted(store.ids()), CFG, cache, progress=False)


def _cache_file(cache_dir):
    return cache_dir / "scores.rank0-of-1.jsonl"


def test_re_extracted_features_under_the_same_ids_are_refused(tmp_path):
    path = tmp_path / "f.hdf5"
    feats = _features()
    write_features(path, feats)
    with FeatureStore(path) as s:
        _run(s, tmp_path / "c")
    write_features(path, {"v3": feats["v4"][: feats["v3"].shape[0]].flip(0), "v5": feats["v5"] * 0.5})
    with FeatureStore(path) as s, pytest.raises(ScoreCacheError) as exc:
        _run(s, tmp_path / "c")
    msg = str(exc.value)
    assert "other feature data" in msg and "2 videos" in msg and "v3, v5" in msg
    assert str(_cache_file(tmp_path / "c")) in msg and "--cache-dir" in msg
    write_features(path, {"q1": feats["q1"].flip(0)})
    with FeatureStore(path) as s, pytest.raises(ScoreCacheError, match="the features of queries q1 changed"):
        _run(s, tmp_path / "c")


def test_unchanged_features_rewritten_are_reused(tmp_path):
    """The key is the data, not the file: rewriting identical frames keeps the cache."""
    path = tmp_path / "f.hdf5"
    feats = _features()
    write_features(path, feats)
    with FeatureStore(path) as s:
        first = _run(s, tmp_path / "c")
    write_features(path, {"v3": feats["v3"].clone()})
    counting = CountingScorer()
    with FeatureStore(path) as s:
        assert _run(s, tmp_path / "c", counting) == first
    assert counting.calls == 0


def test_model_weights_and_settings_key_the_cache_not_the_checkpoint_path(store, tmp_path):
    torch.manual_seed(0)
    model = VideoSimilarityModel(D)
    _run(store, tmp_path / "c", ModelScorer(model, name="runs/a/checkpoint.pt"))
    _run(store, tmp_path / "c", ModelScorer(model, name="moved/checkpoint.pt"))  # same weights elsewhere: reused
    with torch.no_grad():
        model.comparator.conv1.weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ScoreCacheError, match="the model weights changed") as exc:
        _run(store, tmp_path / "c", ModelScorer(model))
    assert "delete the file" in str(exc.value)
    model.k_t = 0.05
    with pytest.raises(ScoreCacheError, match=r"k_t changed \(0.03 -> 0.05\)"):
        _run(store, tmp_path / "c", ModelScorer(model))
    with pytest.raises(ScoreCacheError, match=r"the scorer changed \(hapvr-similarity-model -> chamfer-baseline-v1\)"):
        _run(store, tmp_path / "c")
    _run(store, tmp_path / "b")
    with pytest.raises(ScoreCacheError, match=r"precision changed \(fp32 -> bf16\)"):
        _run(store, tmp_path / "b", ChamferBaseline(precision="bf16"))
    with pytest.raises(ScoreCacheError, match=r"--chunk-frames changed \(2048 -> 16\)"):
        compute_scores(ChamferBaseline(), store, QUERIES, sorted(store.ids()), EngineConfig(chunk_frames=16),
                       tmp_path / "b", progress=False)


def test_cache_of_the_first_format_is_refused(store, tmp_path):
    path = _cache_file(tmp_path)
    path.write_text(json.dumps({"queries": QUERIES, "scorer": "chamfer-baseline-v1", "chunk_frames": 2048}) + "\n"
                    + json.dumps({"chunk": "v2\t0\t20", "scores": [0.5, 0.5]}) + "\n")
    with pytest.raises(ScoreCacheError, match="another cache format"):
        _run(store, tmp_path)


def test_torn_last_line_is_dropped_and_rescored(store, tmp_path):
    full = _run(store, None)
    _run(store, tmp_path)
    path = _cache_file(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) > 4
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a kill in the last write
    counting = CountingScorer()
    assert _run(store, tmp_path, counting) == full  # exactly
    assert counting.calls == 2  # the one batch that lost a line, once per query group (12 and 20 frames)
    data = path.read_bytes()
    assert data.endswith(b"\n") and data.startswith(b"".join(lines[:-1]))  # truncated back, then appended
    path.write_bytes(data + b'{"chunk": "v2\\t0\\t2')  # torn again, then read by another run: same rule
    counting = CountingScorer()
    assert _run(store, tmp_path, counting) == full and counting.calls == 0


def test_torn_header_of_a_new_cache_starts_afresh(store, tmp_path):
    _cache_file(tmp_path).write_text('{"format": "hapvr-sco')
    assert _run(store, tmp_path) == _run(store, None)


@pytest.mark.parametrize("damage", ["garbage", "flipped digit", "missing score", "complete last line"])
def test_damaged_lines_are_an_error_naming_file_and_line(store, tmp_path, damage):
    _run(store, tmp_path)
    path = _cache_file(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    index = len(lines) - 1 if damage == "complete last line" else 2
    rec = json.loads(lines[index])
    if damage in ("garbage", "complete last line"):
        lines[index] = '{"chunk": "v2\t0\x00\x00\x00\n'
    elif damage == "flipped digit":
        text = lines[index]
        at = text.index('"scores": [') + len('"scores": [') + 4
        lines[index] = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]
        assert json.loads(lines[index])["scores"] != rec["scores"]
    else:
        rec["scores"] = rec["scores"][:1]
        lines[index] = json.dumps(rec) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(CorruptFileError) as exc:
        _run(store, tmp_path)
    assert f"score cache {path} line {index + 1}:" in str(exc.value)
    assert path.read_text() == "".join(lines)  # left as it was for the user to look at


def test_a_second_writer_is_refused(store, tmp_path):
    _run(store, tmp_path)
    path = _cache_file(tmp_path)
    before = path.read_bytes()
    header = json.loads(before.splitlines()[0])
    first = ScoreCache(path, header)
    try:
        with pytest.raises(ScoreCacheError, match="being written by another running evaluation"):
            ScoreCache(path, header)
        assert ScoreCache(path, header, writable=False).done == first.done  # readers need no lock
    finally:
        first.close()
    second = ScoreCache(path, header)  # the lock went with the first
    second.close()
    assert path.read_bytes() == before


def test_non_finite_features_are_never_scored(tmp_path):
    path = tmp_path / "f.hdf5"
    feats = _features()
    feats["v6"][3, 2, 1] = float("nan")
    write_features(path, feats)
    with FeatureStore(path) as s, pytest.raises(CorruptFileError, match=r"f\.hdf5: dataset 'v6' frames 0:26 hold NaN"):
        _run(s, tmp_path / "c")
