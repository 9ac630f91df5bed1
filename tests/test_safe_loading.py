"""Files users hand in are data, never code: crafted pickles are refused and their payload never
runs; hapvr's own checkpoints and the published state dicts load with ``weights_only=True``."""

import argparse
import json
import os
import pickle

import numpy as np
import pytest
import torch

from hapvr.evaluation.feature_store import write_features
from hapvr.models.loading import load_similarity_model
from hapvr.models import VideoSimilarityModel
from hapvr.io.serialization import CorruptFileError, UnsafeFileError, load_plain_pickle, load_torch_file
from hapvr.io.checkpoint import load_checkpoint

from test_checkpoints_and_extract import _published, _randomised


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_torch_file(tmp_path, wrap=lambda p: {"model": p, "format": "hapvr-checkpoint-1"}):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save(wrap(_Payload(marker)), path)
    return path, marker


def test_the_payload_really_runs_when_unpickled_unsafely(tmp_path):
    # guards the other tests: if this stops running code, their "never ran" proves nothing
    path, marker = _evil_torch_file(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {"model": p, "format": "hapvr-checkpoint-1"},
                                  lambda p: {"state_dict": {"w": torch.zeros(2)}, "args": p}],
                         ids=["bare", "in-checkpoint", "beside-weights"])
def test_crafted_torch_file_is_refused_and_never_runs(tmp_path, wrap):
    path, marker = _evil_torch_file(tmp_path, wrap)
    with pytest.raises(UnsafeFileError, match=r"--checkpoint .*evil\.pt: refused.*posix\.system|system"):
        load_torch_file(path, "--checkpoint")
    with pytest.raises(UnsafeFileError):
        load_similarity_model(path)
    with pytest.raises(UnsafeFileError):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_crafted_legacy_pickle_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.raises(UnsafeFileError, match="refused"):
        load_similarity_model(path)
    assert not marker.exists()


def _store(tmp_path):
    gen = torch.Generator().manual_seed(0)
    feats = {v: torch.nn.functional.normalize(torch.randn(6, 9, 16, generator=gen), dim=-1) for v in ("q", "a", "b")}
    path = tmp_path / "f.hdf5"
    write_features(path, feats)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"videos": ["q", "a"], "pairs": [["q", "a"]], "distractors": ["b"]}))
    return path, ann


def test_evaluate_cli_refuses_crafted_checkpoint(tmp_path, capsys):
    from hapvr.evaluate import main as evaluate_main

    feats, ann = _store(tmp_path)
    path, marker = _evil_torch_file(tmp_path)
    assert evaluate_main(["--dataset", "vcdb", "--features", str(feats), "--annotations", str(ann),
                          "--checkpoint", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: --checkpoint" in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_extract_cli_refuses_crafted_checkpoint(tmp_path, capsys):
    from hapvr.extract import main as extract_main
    from test_data import _write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "a.mp4")
    path, marker = _evil_torch_file(tmp_path)
    assert extract_main(["--videos", str(videos), "--output", str(tmp_path / "out.hdf5"), "--checkpoint", str(path),
                         "--no-progress"]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.hdf5").exists()


def test_train_resume_refuses_crafted_checkpoint(tmp_path, capsys):
    from hapvr.train import main as train_main

    run = tmp_path / "run"
    run.mkdir()
    path, marker = _evil_torch_file(tmp_path)
    os.replace(path, run / "checkpoint.pt")
    code = train_main(["--resume", "--out", str(run), "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: --resume" in err and "refused" in err
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()  # refused before any data preparation


def test_train_resume_without_a_run_is_one_line(tmp_path, capsys):
    from hapvr.train import main as train_main

    assert train_main(["--resume", "--out", str(tmp_path / "none"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: no checkpoint at") and "Traceback" not in err


def test_crafted_annotation_pickle_is_refused(tmp_path):
    from hapvr.evaluation.annotations import load_fivr

    marker = tmp_path / "payload-ran"
    path = tmp_path / "fivr.pickle"
    path.write_bytes(pickle.dumps({"annotation": _Payload(marker), "5k": {"queries": [], "database": []}}))
    with pytest.raises(UnsafeFileError, match="--annotations .*fivr.pickle: refused.*system"):
        load_fivr(path)
    assert not marker.exists()


def test_plain_annotation_pickles_load_including_python2_protocol(tmp_path):
    data = {"5k": {"queries": ["q1"], "database": ["q1", "v1"]},
            "annotation": {"q1": {"ND": ["v1"], "DS": [], "CS": [], "IS": []}}, "set": {"a", "b"}}
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"a{protocol}.pickle"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_plain_pickle(path, "--annotations") == data
    # a Python 2 pickle names its built-ins under __builtin__ (as protocol <= 2 with fix_imports writes)
    py2 = tmp_path / "py2.pickle"
    py2.write_bytes(pickle.dumps(data, protocol=2, fix_imports=True))
    assert b"c__builtin__\nset" in py2.read_bytes()
    assert load_plain_pickle(py2, "--annotations") == data


@pytest.mark.parametrize("cut", [0, 10, 200])
def test_truncated_files_are_named(tmp_path, cut):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(64, 64)}, good)
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good.read_bytes()[:cut])
    with pytest.raises(CorruptFileError, match=r"--checkpoint .*cut\.pt"):
        load_torch_file(bad, "--checkpoint")
    ann = tmp_path / "cut.pickle"
    ann.write_bytes(pickle.dumps({"annotation": {"q": {"ND": [f"v{i}" for i in range(100)]}}})[:cut])
    with pytest.raises(CorruptFileError, match=r"--annotations .*cut\.pickle"):
        load_plain_pickle(ann, "--annotations")


def test_published_state_dicts_with_training_arguments_load_safely(tmp_path):
    # the S2VS training script stores its argparse.Namespace beside the weights
    model = _randomised(VideoSimilarityModel(64))
    path = tmp_path / "s2vs.pth"
    torch.save({"model": _published(model, "s2vs"), "args": argparse.Namespace(lr=4e-5, batch_sz=64), "epoch": 3},
               path)
    loaded = load_similarity_model(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


def test_format1_checkpoint_with_numpy_rng_state_still_loads(tmp_path):
    # checkpoints written before format 2 held numpy's RandomState tuple (an ndarray)
    model = _randomised(VideoSimilarityModel(32))
    path = tmp_path / "old.pt"
    state = dict(step=5, model=model.state_dict(), pca={}, optimizer={}, scheduler={},
                 rng=dict(numpy=np.random.get_state()), config={"pca_dim": 32}, extra={}, format="hapvr-checkpoint-1")
    torch.save(state, path)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses numpy arrays...
        torch.load(path, weights_only=True)
    loaded = load_checkpoint(str(path))  # ...our loader allows exactly these numbers
    np.testing.assert_array_equal(loaded["rng"]["numpy"][1], np.random.get_state()[1])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(load_similarity_model(path).state_dict()[key], value, msg=key)


def test_new_checkpoints_restore_numpy_rng_exactly(tmp_path):
    import random

    from hapvr.io.checkpoint import rng_state, set_rng_state

    sampler = random.Random(3)
    np.random.seed(7)
    np.random.rand(5)
    state = rng_state(sampler)
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    expected = np.random.rand(4), sampler.random()
    np.random.seed(0)
    sampler2 = random.Random(0)
    set_rng_state(torch.load(path, weights_only=True), sampler2)
    np.testing.assert_array_equal(np.random.rand(4), expected[0])
    assert sampler2.random() == expected[1]


def test_pickle_with_an_impossible_length_is_a_corrupt_file(tmp_path):
    """Random bytes can read as a BINBYTES8 of 2**63 bytes (OverflowError) or a length that cannot
    be allocated (MemoryError): one clear error naming the file, as for any other garbage."""
    import struct

    ann = tmp_path / "huge.pickle"
    ann.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**63 + 5) + b"x")
    with pytest.raises(CorruptFileError, match=r"--annotations .*huge\.pickle.*OverflowError"):
        load_plain_pickle(ann, "--annotations")
