"""Every bad invocation of every command: exit code 2, exactly one ``error:`` line naming the
argument or file, no traceback, and nothing half-written. docs/reliability.md lists these cases."""

import json
import os
import sys

import h5py
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_data import _write_video  # noqa: E402

from hapvr.evaluate import main as evaluate_main  # noqa: E402
from hapvr.evaluation.feature_store import write_features  # noqa: E402
from hapvr.extract import main as extract_main  # noqa: E402
from hapvr.pca import main as pca_main  # noqa: E402
from hapvr.train import main as train_main  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(0)
    feats = {v: torch.nn.functional.normalize(torch.randn(n, 9, 16, generator=g), dim=-1)
             for v, n in (("q", 6), ("a", 5), ("b", 7), ("c", 4))}
    write_features(d / "feats.hdf5", feats)
    (d / "ann.json").write_text(json.dumps({"queries": ["q"], "database": ["a", "b", "c"], "positives": {"q": ["a"]}}))
    (d / "garbage.bin").write_bytes(os.urandom(2000))
    (d / "text.txt").write_text("hello\n")
    data = (d / "feats.hdf5").read_bytes()
    (d / "truncated.hdf5").write_bytes(data[: len(data) // 2])
    with h5py.File(d / "flat.hdf5", "w") as f:
        f.create_dataset("q", data=np.zeros((6, 16), np.float32))  # [T, D]: no region axis
    (d / "bad.json").write_text("{not json")
    (d / "nokey.json").write_text(json.dumps({"database": []}))
    videos = d / "videos"
    videos.mkdir()
    _write_video(videos / "one.mp4", seconds=2, fps=4)
    _write_video(videos / "two.avi", seconds=2, fps=4)
    (d / "empty").mkdir()
    return d


def _run(main, argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


EVAL = ["--dataset", "custom", "--features-only", "--no-progress"]


def evaluate_cases(d):
    good = ["--features", d / "feats.hdf5", "--annotations", d / "ann.json"]
    return [
        ("chunk-frames 0", [*EVAL, *good, "--chunk-frames", "0"], "--chunk-frames"),
        ("chunk-frames not a number", [*EVAL, *good, "--chunk-frames", "many"], "--chunk-frames"),
        ("max-map-elements 0", [*EVAL, *good, "--max-map-elements", "0"], "--max-map-elements"),
        ("unknown backend", [*EVAL, *good, "--backend", "fast"], "--backend"),
        ("unknown precision", [*EVAL, *good, "--precision", "int8"], "--precision"),
        ("unknown dataset", ["--dataset", "fivr-1m", "--features-only", *good], "--dataset"),
        ("missing features", [*EVAL, "--features", d / "nope.hdf5", "--annotations", d / "ann.json"], "--features"),
        ("features is a folder", [*EVAL, "--features", d, "--annotations", d / "ann.json"], "--features"),
        ("truncated HDF5", [*EVAL, "--features", d / "truncated.hdf5", "--annotations", d / "ann.json"],
         "truncated.hdf5"),
        ("features not HDF5", [*EVAL, "--features", d / "text.txt", "--annotations", d / "ann.json"], "text.txt"),
        ("features without region axis", [*EVAL, "--features", d / "flat.hdf5", "--annotations", d / "ann.json"],
         "flat.hdf5"),
        ("missing annotations", [*EVAL, "--features", d / "feats.hdf5", "--annotations", d / "nope.json"],
         "--annotations"),
        ("annotations not JSON", [*EVAL, "--features", d / "feats.hdf5", "--annotations", d / "bad.json"], "bad.json"),
        ("annotations without key", [*EVAL, "--features", d / "feats.hdf5", "--annotations", d / "nokey.json"],
         "queries"),
        ("annotations are random bytes", ["--dataset", "fivr-5k", "--features-only", "--features", d / "feats.hdf5",
                                          "--annotations", d / "garbage.bin"], "garbage.bin"),
        ("checkpoint missing", ["--dataset", "custom", *good, "--checkpoint", d / "nope.pt"], "--checkpoint"),
        ("checkpoint not a checkpoint", ["--dataset", "custom", *good, "--checkpoint", d / "garbage.bin"],
         "garbage.bin"),
        ("checkpoint and features-only", [*EVAL, *good, "--checkpoint", d / "garbage.bin"], "--checkpoint"),
        ("output is a folder", [*EVAL, *good, "--output", d], "--output"),
        ("output under a file", [*EVAL, *good, "--output", d / "text.txt" / "r.json"], "--output"),
        ("plot not an image name", [*EVAL, *good, "--plot", d / "curves.txt"], "--plot"),
        ("plot under a file", [*EVAL, *good, "--plot", d / "text.txt" / "pr.png"], "--plot"),
        ("cache-dir is a file", [*EVAL, *good, "--cache-dir", d / "text.txt"], "--cache-dir"),
        ("easy-duplicates missing", [*EVAL, *good, "--easy-duplicates", d / "nope.txt"], "--easy-duplicates"),
        ("easy-duplicates binary", [*EVAL, *good, "--easy-duplicates", d / "garbage.bin"], "--easy-duplicates"),
        ("unknown device", [*EVAL, *good, "--device", "tpu"], "--device"),
        ("no query has features", [*EVAL, "--features", d / "feats.hdf5", "--annotations", d / "other.json"],
         "--features"),
    ]


EVAL_IDS = [c[0] for c in evaluate_cases(__import__("pathlib").Path("/x"))]


@pytest.mark.parametrize("case", range(len(EVAL_IDS)), ids=EVAL_IDS)
def test_evaluate_bad_input(files, capsys, case):
    (files / "other.json").write_text(json.dumps({"queries": ["zz"], "database": ["a"], "positives": {"zz": ["a"]}}))
    name, argv, needle = evaluate_cases(files)[case]
    code, err = _run(evaluate_main, argv, capsys)
    assert code == 2, (name, err)
    assert needle in _one_error(err), (name, err)
    assert not (files / "text.txt").is_dir()


def test_evaluate_creates_a_missing_output_folder_before_scoring(files, capsys, tmp_path):
    out, plot = tmp_path / "new" / "deeper" / "r.json", tmp_path / "plots" / "pr.png"
    code, err = _run(evaluate_main, [*EVAL, "--features", files / "feats.hdf5", "--annotations", files / "ann.json",
                                     "--output", out, "--plot", plot], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["custom"]["retrieval_mAP"]["retrieval"] > 0 and plot.stat().st_size > 1000


def extract_cases(d):
    out = d / "out" / "f.hdf5"
    v = ["--videos", d / "videos"]
    return [
        ("fps 0", [*v, "--output", out, "--raw", "--fps", "0"], "--fps"),
        ("fps negative", [*v, "--output", out, "--raw", "--fps", "-1"], "--fps"),
        ("fps nan", [*v, "--output", out, "--raw", "--fps", "nan"], "--fps"),
        ("max-frames 0", [*v, "--output", out, "--raw", "--max-frames", "0"], "--max-frames"),
        ("fit-pca 0", [*v, "--output", out, "--fit-pca", "0"], "--fit-pca"),
        ("backbone with the default model", [*v, "--output", out, "--backbone", "resnet50"], "--backbone"),
        ("insets with raw", [*v, "--output", out, "--raw", "--insets"], "--insets"),
        ("unknown backbone", [*v, "--output", out, "--raw", "--backbone", "vgg"], "--backbone"),
        ("backbone weights missing", [*v, "--output", out, "--raw", "--backbone-weights", d / "nope.pth"],
         "--backbone-weights"),
        ("videos missing", ["--videos", d / "nope", "--output", out, "--raw"], "--videos"),
        ("videos is random bytes", ["--videos", d / "garbage.bin", "--output", out, "--raw"], "--videos"),
        ("videos is an empty folder", ["--videos", d / "empty", "--output", out, "--raw"], "--videos"),
        ("list file with a bad line", ["--videos", d / "badlist.txt", "--output", out, "--raw"], "line 2"),
        ("output is a folder", [*v, "--output", d / "videos", "--raw"], "--output"),
        ("output under a file", [*v, "--output", d / "text.txt" / "f.hdf5", "--raw"], "--output"),
        ("output exists, not HDF5", [*v, "--output", d / "text.txt", "--raw"], "text.txt"),
        ("checkpoint missing", [*v, "--output", out, "--checkpoint", d / "nope.pt"], "--checkpoint"),
        ("checkpoint not a checkpoint", [*v, "--output", out, "--checkpoint", d / "garbage.bin"], "garbage.bin"),
        ("unknown device", [*v, "--output", out, "--raw", "--device", "tpu"], "--device"),
    ]


EXTRACT_IDS = [c[0] for c in extract_cases(__import__("pathlib").Path("/x"))]


@pytest.mark.parametrize("case", range(len(EXTRACT_IDS)), ids=EXTRACT_IDS)
def test_extract_bad_input(files, capsys, case):
    (files / "badlist.txt").write_text(f"one\t{files / 'videos' / 'one.mp4'}\nthree words here\n")
    name, argv, needle = extract_cases(files)[case]
    code, err = _run(extract_main, argv, capsys)
    assert code == 2, (name, err)
    assert needle in _one_error(err), (name, err)
    assert not (files / "out" / "f.hdf5").exists() and not (files / "out" / "f.hdf5.parts").exists()
    assert (files / "text.txt").read_text() == "hello\n"


def train_cases(d):
    run = ["--out", d / "run", "--cache-dir", d / "cache"]
    return [
        ("log-every 0", [*run, "--log-every", "0"], "--log-every"),
        ("iterations 0", [*run, "--iterations", "0"], "--iterations"),
        ("lr negative", [*run, "--lr", "-1e-4"], "--lr"),
        ("lr nan", [*run, "--lr", "nan"], "--lr"),
        ("fps 0", [*run, "--fps", "0"], "--fps"),
        ("k-s 0", [*run, "--k-s", "0"], "--k-s"),
        ("k-t above 1", [*run, "--k-t", "1.5"], "--k-t"),
        ("r-t 0", [*run, "--r-t", "0"], "--r-t"),
        ("tau 0", [*run, "--tau", "0"], "--tau"),
        ("batch-videos 1", [*run, "--batch-videos", "1"], "--batch-videos"),
        ("clip-frames 0", [*run, "--clip-frames", "0"], "--clip-frames"),
        ("threads -1", [*run, "--threads", "-1"], "--threads"),
        ("ema 1", [*run, "--ema", "1"], "--ema"),
        ("checkpoint-every -1", [*run, "--checkpoint-every", "-1"], "--checkpoint-every"),
        ("bad boolean", [*run, "--benchmark", "maybe"], "--benchmark"),
        ("unknown teacher", [*run, "--teacher", "clip"], "--teacher"),
        ("unknown amp", [*run, "--amp", "fp8"], "--amp"),
        ("unknown preset", [*run, "--preset", "huge"], "--preset"),
        ("resume without a run", [*run, "--resume"], "--resume"),
        ("data missing", [*run, "--data", d / "nope"], "--data"),
        ("data is a video file", [*run, "--data", d / "videos" / "one.mp4"], "--data"),
        ("backbone weights missing", [*run, "--backbone", "resnet50", "--backbone-weights", d / "nope.pth"],
         "--backbone-weights"),
        ("resnet50 without weights", [*run, "--backbone", "resnet50"], "--backbone-weights"),
        ("teacher weights missing", [*run, "--teacher", "dino_vits16", "--teacher-weights", d / "nope.pth"],
         "--teacher-weights"),
        ("pca file missing", [*run, "--pca", d / "nope.pt"], "--pca"),
        ("pca file is random bytes", [*run, "--pca", d / "garbage.bin"], "garbage.bin"),
        ("out is a file", ["--out", d / "text.txt", "--cache-dir", d / "cache"], "--out"),
        ("cache-dir under a file", ["--out", d / "run", "--cache-dir", d / "text.txt" / "c"], "--cache-dir"),
        ("unknown device", [*run, "--device", "tpu"], "--device"),
        ("unknown pipeline", [*run, "--pipeline", "fast"], "--pipeline"),
        ("unknown video loss", [*run, "--video-loss", "triplet"], "--video-loss"),
        ("adaptive margin with gathered negatives", [*run, "--video-loss", "adaptive_margin", "--gather-negatives"],
         "--gather-negatives"),
        ("workers -1", [*run, "--workers", "-1"], "--workers"),
        ("cache budget 0", [*run, "--cache-budget-gb", "0"], "--cache-budget-gb"),
        ("lr floor above 1", [*run, "--lr-floor", "1.5"], "--lr-floor"),
        ("train-renders with data", [*run, "--train-renders", "2", "--data", d / "videos"], "--train-renders"),
        ("sibling-videos with data", [*run, "--sibling-videos", "2", "--data", d / "videos"], "--sibling-videos"),
        ("sibling-videos -1", [*run, "--sibling-videos", "-1"], "--sibling-videos"),
        ("sibling-videos with gathered negatives", [*run, "--sibling-videos", "2", "--gather-negatives"],
         "--sibling-videos"),
        ("unknown benchmark set", [*run, "--benchmark-set", "holdout"], "--benchmark-set"),
        ("unknown head", [*run, "--head", "resnet"], "--head"),
        ("unknown selection set", [*run, "--select-on", "test"], "--select-on"),
        ("select every 0 steps", [*run, "--select-every", "0"], "--select-every"),
        ("restarts 0", [*run, "--restarts", "0"], "--restarts"),
        ("restarts without selection", [*run, "--restarts", "2", "--select-on", "none"], "--restarts"),
        ("more restarts than steps", [*run, "--restarts", "5", "--iterations", "3"], "--restarts"),
    ]


TRAIN_IDS = [c[0] for c in train_cases(__import__("pathlib").Path("/x"))]


@pytest.mark.parametrize("case", range(len(TRAIN_IDS)), ids=TRAIN_IDS)
def test_train_bad_input(files, capsys, case):
    name, argv, needle = train_cases(files)[case]
    code, err = _run(train_main, argv, capsys)
    assert code == 2, (name, err)
    assert needle in _one_error(err), (name, err)
    assert not (files / "cache").exists() and not (files / "run" / "checkpoint.pt").exists()


def test_train_resume_of_a_corrupt_checkpoint(files, capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(os.urandom(500))
    code, err = _run(train_main, ["--out", tmp_path / "run", "--cache-dir", tmp_path / "c", "--resume"], capsys)
    assert code == 2 and "checkpoint.pt" in _one_error(err)


def pca_cases(d):
    return [
        ("dim 0", ["--features", d / "feats.hdf5", "--output", d / "p.pt", "--dim", "0"], "--dim"),
        ("seed negative", ["--features", d / "feats.hdf5", "--output", d / "p.pt", "--seed", "-1"], "--seed"),
        ("features missing", ["--features", d / "nope.hdf5", "--output", d / "p.pt"], "--features"),
        ("features truncated", ["--features", d / "truncated.hdf5", "--output", d / "p.pt"], "truncated.hdf5"),
        ("features not HDF5", ["--features", d / "text.txt", "--output", d / "p.pt"], "text.txt"),
        ("output is a folder", ["--features", d / "feats.hdf5", "--output", d], "--output"),
    ]


PCA_IDS = [c[0] for c in pca_cases(__import__("pathlib").Path("/x"))]


@pytest.mark.parametrize("case", range(len(PCA_IDS)), ids=PCA_IDS)
def test_pca_bad_input(files, capsys, case):
    name, argv, needle = pca_cases(files)[case]
    code, err = _run(pca_main, [*argv, "--no-progress"], capsys)
    assert code == 2, (name, err)
    assert needle in _one_error(err), (name, err)
    assert not (files / "p.pt").exists()


@pytest.mark.parametrize("module", ["hapvr.train", "hapvr.evaluate", "hapvr.extract", "hapvr.pca", "hapvr.search"])
def test_help_shows_defaults_and_examples(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and out.count(f"-m {module}") + out.count(f"-m {module} ") >= 2
    assert "SPEC" not in out
    assert "(default: " in out
    if module == "hapvr.train":
        text = " ".join(out.split())
        assert "--k-s K_S k s" not in text and "(turnoffwith--no-benchmark)" in "".join(out.split())


def test_evaluate_nan_features_and_a_stale_cache_are_one_line(files, capsys, tmp_path):
    g = torch.Generator().manual_seed(1)
    feats = {v: torch.nn.functional.normalize(torch.randn(5, 9, 16, generator=g), dim=-1) for v in ("q", "a", "b")}
    path = tmp_path / "f.hdf5"
    write_features(path, feats)
    argv = [*EVAL, "--features", path, "--annotations", files / "ann.json", "--cache-dir", tmp_path / "cache"]
    assert _run(evaluate_main, argv, capsys)[0] == 0
    feats["a"] = torch.nn.functional.normalize(torch.randn(5, 9, 16, generator=g), dim=-1)  # re-extracted
    write_features(path, feats)
    code, err = _run(evaluate_main, argv, capsys)
    line = _one_error(err)
    assert code == 2 and "score cache" in line and "features of 1 video" in line and "changed" in line and "(a)" in line
    feats["b"][2, 3, 0] = float("nan")
    write_features(path, feats)
    code, err = _run(evaluate_main, argv[:-2], capsys)
    assert code == 2 and "f.hdf5" in _one_error(err) and "NaN" in err


def test_pca_nan_descriptors_are_refused(tmp_path, capsys):
    raw = tmp_path / "raw.hdf5"
    x = np.random.default_rng(0).standard_normal((30, 9, 24)).astype(np.float32)
    x[3, 2, 1] = np.nan
    with h5py.File(raw, "w") as f:
        f.create_dataset("v", data=x)
    code, err = _run(pca_main, ["--features", raw, "--output", tmp_path / "p.pt", "--dim", "4", "--no-progress"], capsys)
    assert code == 2 and "'v' holds NaN" in _one_error(err) and not (tmp_path / "p.pt").exists()


def test_progress_is_throttled_off_a_terminal(monkeypatch, capsys):
    import io

    from hapvr import progress as P

    clock = iter(range(0, 10_000, 3))  # each update is 3 "seconds" later
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    log = io.StringIO()  # not a terminal
    bar = P.progress(range(100), desc="train", unit="step", file=log)
    assert isinstance(bar, P.LineProgress)
    for _ in bar:
        bar.set_postfix(loss="0.5")
    lines = log.getvalue().splitlines()
    # 100 updates 3 s apart, a line at most every 10 s, plus the final one: 30 + 1 lines, no "\r"
    assert 25 <= len(lines) <= 35 and "\r" not in log.getvalue()
    assert lines[-1].startswith("train: 100/100 (100%)") and lines[-1].endswith("loss=0.5")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm import tqdm

    assert isinstance(P.progress(range(3), file=Tty()), tqdm)  # live bar on a terminal


def test_reliability_table_names_tests_that_exist():
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "reliability.md")).read()
    files = dict(re.findall(r"`(\w+)` =\s+tests/(test_\w+\.py)", text))
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 30
    for short, name in re.findall(r"`(\w+)::(test_\w+)", text):
        source = open(os.path.join(root, "tests", files[short])).read()
        assert f"def {name}(" in source, (short, name)


@pytest.mark.parametrize("module,argv,needle", [
    ("hapvr.compare", ["a.mp4", "b.mp4", "--threshold", "nan"], "--threshold"),
    ("hapvr.compare", ["a.mp4", "b.mp4", "--fps", "0"], "--fps"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--threshold", "inf"], "--threshold"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--fps", "0"], "--fps"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--top", "0"], "--top"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--coarse", "hnsw"], "--coarse"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--nprobe", "0"], "--nprobe"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--coarse", "flat", "--nprobe", "4"], "--nprobe"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--exhaustive", "--coarse", "ivf"], "--exhaustive"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--threads", "0"], "--threads"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--threads", "two"], "--threads"),
    ("hapvr.search", ["--index", "i", "--duplicates", "--neighbours", "0"], "--neighbours"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--neighbours", "5"], "--neighbours"),
    ("hapvr.search", ["--index", "i", "--duplicates", "--min-coarse", "1.5"], "--min-coarse"),
    ("hapvr.search", ["--index", "i", "--duplicates", "--min-coarse", "nan"], "--min-coarse"),
    ("hapvr.search", ["--index", "i", "q.mp4", "--min-coarse", "0.5"], "--min-coarse"),
    ("hapvr.index", ["build", "--videos", "v", "--index", "i", "--fps", "-1"], "--fps"),
    ("hapvr.index", ["build", "--videos", "v", "--index", "i", "--threads", "0"], "--threads"),
    ("hapvr.index", ["add", "--videos", "v", "--index", "i", "--threads", "1.5"], "--threads"),
    ("hapvr.default_model", ["--from", "missing.pt"], "--from"),
])
def test_compare_search_index_arguments(module, argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = __import__(module, fromlist=["main"]).main
    assert main(argv) == 2
    assert needle in _one_error(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())  # nothing written


def test_run_main_exit_codes_for_interrupts_and_closed_pipes(capsys):
    """Ctrl-C: one ``interrupted`` line (with what the job kept), 130; a closed output pipe: no
    output on stderr, 141."""
    from hapvr.cli import run_main
    from hapvr.errors import Interrupted

    def interrupted(argv):
        raise Interrupted("3 videos saved in out.parts; run the same command to continue")

    def plain_interrupt(argv):
        raise KeyboardInterrupt

    def closed_pipe(argv):
        raise BrokenPipeError

    assert run_main(interrupted) == 130
    assert capsys.readouterr().err == "interrupted: 3 videos saved in out.parts; run the same command to continue\n"
    assert run_main(plain_interrupt) == 130 and capsys.readouterr().err == "interrupted\n"
    assert run_main(closed_pipe) == 141 and capsys.readouterr().err == ""
