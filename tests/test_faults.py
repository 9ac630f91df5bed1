"""Faults: SIGKILL in the middle of an evaluation (one process, and one rank of torchrun) and of
training, then a resumed run that ends exactly where an uninterrupted one does; truncated or
damaged feature files and checkpoints refused with an error naming the file.

Kills are timed on evidence of progress (cache lines, a checkpoint file), never on sleeps, and
every wait has a generous deadline, so a loaded machine only makes the tests slower."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from hapvr.evaluation.feature_store import FeatureStore, write_features
from hapvr.io.serialization import CorruptFileError
from hapvr.io.checkpoint import load_checkpoint, save_checkpoint

from test_data import _write_video
from test_train import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 16
DEADLINE = 240  # seconds any one subprocess may take on a loaded machine


def _env():
    # one thread everywhere: the killed, resumed and reference runs do the same arithmetic
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def _start(args, log):
    """A subprocess in its own session (so a failed test can end all of it), output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(proc, log, timeout=DEADLINE):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{proc.args} did not finish in {timeout} s:\n{open(log).read()[-3000:]}")


def _run(args, log):
    proc = _start(args, log)
    code = _finish(proc, log)
    assert code == 0, open(log).read()[-3000:]


def _wait_until(ready, proc, log, what):
    """Polls ``ready()`` while ``proc`` runs; fails if it ends first or the deadline passes."""
    end = time.monotonic() + DEADLINE
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before {what}:\n{open(log).read()[-3000:]}")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"no {what} within {DEADLINE} s:\n{open(log).read()[-3000:]}")
        time.sleep(0.01)


def _records(path) -> int:
    """Committed chunk records of a cache file (complete lines after the header)."""
    try:
        return max(path.read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


def _cached_scores(cache_dir) -> dict:
    out = {}
    for shard in sorted(cache_dir.iterdir()):
        for line in shard.read_text().splitlines()[1:]:
            rec = json.loads(line)
            out[rec["chunk"]] = rec["scores"]
    return out


# ---- evaluation -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """500 short videos (a few seconds of scoring, one chunk per batch), FIVR-style annotations,
    and an uninterrupted run's JSON and cached scores."""
    tmp = tmp_path_factory.mktemp("evaluation")
    g = torch.Generator().manual_seed(0)

    def unit(t):
        return torch.nn.functional.normalize(torch.randn(t, 9, D, generator=g), dim=-1)

    queries = {f"q{i}": unit(20 + 5 * i) for i in range(3)}
    feats = dict(queries)
    for i in range(500):
        if i < 30:  # noisy copies of the queries
            q = queries[f"q{i % 3}"]
            feats[f"v{i:03d}"] = torch.nn.functional.normalize(q + 0.8 * torch.randn(q.shape, generator=g), dim=-1)
        else:
            feats[f"v{i:03d}"] = unit(int(torch.randint(10, 60, (), generator=g)))
    write_features(tmp / "features.hdf5", feats)
    ann = {q: {"ND": [f"v{i:03d}" for i in range(k, 30, 3)], "DS": [f"v{i:03d}" for i in range(30 + k, 60, 3)]}
           for k, q in enumerate(sorted(queries))}
    data = {"5k": {"queries": sorted(queries), "database": sorted(feats)}, "200k": {"queries": [], "database": []},
            "annotation": ann}
    (tmp / "fivr.pickle").write_bytes(pickle.dumps(data))
    args = ["-m", "hapvr.evaluate", "--dataset", "fivr-5k", "--features", str(tmp / "features.hdf5"),
            "--annotations", str(tmp / "fivr.pickle"), "--features-only", "--no-progress", "--max-map-elements", "3000"]
    _run(args + ["--cache-dir", str(tmp / "cache"), "--output", str(tmp / "full.json")], tmp / "full.log")
    scores = _cached_scores(tmp / "cache")
    assert len(scores) == len(feats)  # every video is one chunk
    return args, json.loads((tmp / "full.json").read_text()), scores


def test_sigkilled_evaluation_resumes_to_the_same_result(evaluation, tmp_path):
    args, full, full_scores = evaluation
    cache = tmp_path / "cache"
    shard = cache / "scores.rank0-of-1.jsonl"
    run = args + ["--cache-dir", str(cache), "--output", str(tmp_path / "out.json")]
    proc = _start(run, tmp_path / "killed.log")
    try:
        _wait_until(lambda: _records(shard) >= 20, proc, tmp_path / "killed.log", "20 cached chunks")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept = shard.read_bytes()
    kept = kept[: kept.rfind(b"\n") + 1]
    assert 20 <= kept.count(b"\n") - 1 < len(full_scores)  # killed in the middle
    assert not (tmp_path / "out.json").exists()
    _run(run, tmp_path / "resumed.log")
    assert shard.read_bytes().startswith(kept)  # the scores of the killed run were kept and reused
    assert _cached_scores(cache) == full_scores  # exactly
    assert json.loads((tmp_path / "out.json").read_text()) == full  # exactly


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _worker_of_rank(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"LOCAL_RANK=") for e in env):
            return pid
    return None


def test_sigkilled_torchrun_rank_resumes_to_the_same_result(evaluation, tmp_path):
    """SIGKILL one of two ranks: the launcher tears the other down; a second torchrun resumes
    both shards and ends with the one-process result, exactly."""
    args, full, full_scores = evaluation
    cache = tmp_path / "cache"
    run = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args,
           "--cache-dir", str(cache), "--output", str(tmp_path / "out.json")]
    proc = _start(run, tmp_path / "killed.log")
    try:
        _wait_until(lambda: _records(cache / "scores.rank1-of-2.jsonl") >= 10, proc, tmp_path / "killed.log",
                    "10 chunks cached by rank 1")
        victim = _worker_of_rank(proc.pid, 1)
        assert victim is not None, "rank 1's process not found under the launcher"
        others = [p for p in _descendants(proc.pid) if p != victim]
        os.kill(victim, signal.SIGKILL)
        assert _finish(proc, tmp_path / "killed.log") != 0  # the launcher reports the failed rank
        assert not [p for p in others if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]  # none left running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = _records(cache / "scores.rank0-of-2.jsonl") + _records(cache / "scores.rank1-of-2.jsonl")
    assert 10 <= done < len(full_scores)
    assert not (tmp_path / "out.json").exists()
    _run(run, tmp_path / "resumed.log")
    assert _cached_scores(cache) == full_scores
    assert json.loads((tmp_path / "out.json").read_text()) == full


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# ---- training ---------------------------------------------------------------------------------


def test_sigkilled_training_resumes_to_the_same_weights(tmp_path):
    """Killed after a checkpoint, resumed with --resume: the final weights equal an uninterrupted
    run's bitwise (what the trainer guarantees; see test_train.test_resume_continues_exactly)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        _write_video(videos / f"clip{i}.mp4", seconds=8, fps=2, size=(64 + 16 * i, 48))
    common = ["-m", "hapvr.train", "--data", str(videos), "--cache-dir", str(tmp_path / "cache"), "--iterations", "24",
              "--checkpoint-every", "2", *TINY]
    full, split = tmp_path / "full", tmp_path / "split"
    _run(common + ["--out", str(full)], tmp_path / "full.log")  # also builds the feature cache
    ckpt = split / "checkpoint.pt"
    proc = _start(common + ["--out", str(split)], tmp_path / "killed.log")
    try:
        _wait_until(ckpt.exists, proc, tmp_path / "killed.log", "a checkpoint")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    step = load_checkpoint(str(ckpt))["step"]
    assert 2 <= step < 24, step
    _run(common + ["--out", str(split), "--resume"], tmp_path / "resumed.log")
    assert f"resumed from {ckpt} at step {step}" in (tmp_path / "resumed.log").read_text()
    a, b = load_checkpoint(str(full / "checkpoint.pt")), load_checkpoint(str(ckpt))
    assert a["step"] == b["step"] == 24
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert not list(split.glob("checkpoint.pt.*.tmp"))
    # the log holds each step once, with the uninterrupted run's losses (rows after the checkpoint
    # that the killed run had logged are dropped on resume)
    import csv

    logs = [list(csv.DictReader(open(d / "log.csv"))) for d in (full, split)]
    assert [r["step"] for r in logs[1]] == [str(i) for i in range(1, 25)]
    assert [r["loss"] for r in logs[1]] == [r["loss"] for r in logs[0]]


# ---- damaged files ----------------------------------------------------------------------------


def _feature_file(path, **extra):
    g = torch.Generator().manual_seed(1)
    write_features(path, {f"v{i}": torch.randn(10 + i, 9, D, generator=g) for i in range(4)})
    with h5py.File(path, "a") as f:
        for name, kw in extra.items():
            f.create_dataset(name, **kw)
    return path


@pytest.mark.parametrize("keep", [0, 7, 500, 0.5, -1])
def test_truncated_feature_file_is_named(tmp_path, keep):
    good = _feature_file(tmp_path / "good.hdf5")
    data = good.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptFileError, match=rf"feature file {cut}: truncated or not an HDF5 file"):
        FeatureStore(cut)


def test_foreign_file_is_named(tmp_path):
    path = tmp_path / "features.hdf5"
    path.write_text("video_id,feature\nv0,0.1\n")
    with pytest.raises(CorruptFileError, match=rf"feature file {path}: truncated or not an HDF5 file"):
        FeatureStore(path)


@pytest.mark.parametrize("extra,message", [
    (dict(data=np.zeros((5, 16), np.float32)), r"dataset 'w_bad' has shape \(5, 16\), expected \[T, R, D\]"),
    (dict(data=np.zeros((5, 9, 16), np.int32)), r"dataset 'w_bad' has dtype int32, expected float"),
    (dict(data=np.zeros((5, 9, 32), np.float32)),
     r"dataset 'w_bad' has 9 regions of size 32, but earlier datasets have 9 of size 16"),
    (dict(data=np.zeros((0, 9, 16), np.float32)), r"dataset 'w_bad' is empty"),
    (dict(shape=(5, 9, 16), dtype="f4"), r"dataset 'w_bad' was created but its frames were never written"),
])
def test_feature_file_layout_is_checked_on_opening(tmp_path, extra, message):
    path = _feature_file(tmp_path / "f.hdf5", w_bad=extra)  # checked after v0..v3 (names in order)
    with pytest.raises(ValueError, match=rf"feature file {path}: {message}"):
        FeatureStore(path)


def test_damaged_frames_are_caught_when_read(tmp_path):
    """Damage inside the frames passes the metadata checks on opening; reading them is an error
    naming file, video and frames, for raw (NaN bytes) and compressed (undecodable chunk) data."""
    packed = np.random.default_rng(0).standard_normal((6, 9, D)).astype(np.float32)
    path = _feature_file(tmp_path / "f.hdf5", packed=dict(data=packed, chunks=(6, 9, D), compression="gzip",
                                                          fletcher32=True))
    with h5py.File(path, "r") as f:
        raw_at = f["v2"].id.get_offset() + 4 * 9 * D * 3  # frame 3 of v2
        packed = f["packed"].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(raw_at)
        f.write(b"\xff" * 16)  # four float32 NaNs
        f.seek(packed.byte_offset + packed.size // 2)
        f.write(b"\x00" * 8)
    with FeatureStore(path) as store:
        assert store.load("v1").shape == (11, 9, D)  # undamaged videos read as before
        assert store.load("v2", 0, 3).shape == (3, 9, D)
        with pytest.raises(CorruptFileError, match=rf"feature file {path}: dataset 'v2' frames 2:5 hold NaN"):
            store.load("v2", 2, 5)
        with pytest.raises(CorruptFileError, match=rf"feature file {path}: dataset 'packed' frames 0:6 cannot be read"):
            store.load("packed")


def _tiny_checkpoint(path):
    model, pca = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(str(path), step=7, model=model, pca=pca, optimizer=opt, scheduler=sched, sampler=random.Random(0),
                    config={"lr": 1e-3, "pca_dim": 2})


@pytest.mark.parametrize("keep", [0, 100, 0.5, -30])
def test_truncated_checkpoint_is_named(tmp_path, keep):
    good = tmp_path / "good.pt"
    _tiny_checkpoint(good)
    assert load_checkpoint(str(good))["step"] == 7
    data = good.read_bytes()
    cut = tmp_path / "checkpoint.pt"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptFileError, match=rf"--resume {cut}: truncated or not a torch file"):
        load_checkpoint(str(cut))


def test_damaged_checkpoint_bytes_are_caught(tmp_path, capsys):
    """torch.load reads a flipped byte inside a tensor back silently; the saved checksum catches it,
    in load_checkpoint and in train --resume (one line, no traceback)."""
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    _tiny_checkpoint(path)
    data = bytearray(path.read_bytes())
    weights = torch.load(path, weights_only=True)["model"]["weight"]
    at = bytes(data).find(weights.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x40
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["weight"], weights)  # loads silently
    with pytest.raises(CorruptFileError, match=rf"--resume {path}: damaged: its content does not match the checksum"):
        load_checkpoint(str(path))
    from hapvr.train import main as train_main

    assert train_main(["--resume", "--out", str(path.parent), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume {path}: damaged") and err.count("\n") == 1


def test_temporaries_of_killed_saves_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / f"checkpoint.pt.{dead.pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f"checkpoint.pt.{os.getppid()}.tmp"  # a running process's save in progress
    live.write_bytes(b"being written")
    _tiny_checkpoint(path)
    assert not stale.exists() and live.exists()
    assert load_checkpoint(str(path))["step"] == 7
