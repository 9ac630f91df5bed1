"""The trainer end to end on a tiny folder of videos: corrupt files, resume equivalence, DDP, CLI."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--teacher", "cnn", "--benchmark", "false", "--select-on", "none", "--views-per-video", "2", "--batch-videos", "3", "--clip-frames", "6", "--pool-frames", "8",
        "--log-every", "1", "--warmup", "2", "--lr", "1e-3", "--threads", "1"]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return env


def _train(*args, module=("-m", "hapvr.train"), timeout=240):
    cmd = [sys.executable, *module, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    return proc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One short run on a folder with a corrupt file; it also builds the feature cache the other tests reuse."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_data import _write_video

    root = tmp_path_factory.mktemp("videos")
    for i in range(4):
        _write_video(root / f"clip{i}.mp4", seconds=8, fps=2, size=(64 + 16 * i, 48))
    (root / "broken.mp4").write_bytes(os.urandom(3000))
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("run")
    proc = _train("--data", str(root), "--cache-dir", str(cache), "--out", str(out), "--iterations", "2", *TINY)
    return str(root), str(cache), str(out), proc


# runs on the first run's folder end with exit 3: broken.mp4 is skipped (and listed) every time
SKIPPED = 3


@pytest.fixture(scope="module")
def data(first_run):
    return first_run[:2]


def _params(run_dir):
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)
    return ckpt["step"], ckpt["model"]


def test_corrupt_video_is_skipped_and_counted(first_run):
    _, _, out, p = first_run
    assert p.returncode == 3, p.stderr[-2000:]  # finished, some inputs failed (listed)
    assert "warning: skipping" in p.stderr and "broken.mp4" in p.stderr
    assert "4 videos loaded, 1 skipped" in p.stdout
    summary = json.load(open(os.path.join(out, "results.json")))
    assert [os.path.basename(x) for x in summary["skipped_videos"]] == ["broken.mp4"]
    assert os.path.isfile(os.path.join(out, "log.csv")) and os.path.isdir(os.path.join(out, "tensorboard"))


@pytest.mark.parametrize("ema", ["0", "0.6"])
def test_resume_continues_exactly(data, tmp_path, ema):
    root, cache = data
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    common = ["--data", root, "--cache-dir", cache, "--iterations", "6", "--ema", ema, *TINY]
    assert _train(*common, "--out", full).returncode == SKIPPED
    p = _train(*common, "--out", split, "--stop-after", "2")
    assert p.returncode == SKIPPED and "stopped at step 2" in p.stdout, p.stderr[-2000:]
    assert _params(split)[0] == 2
    p = _train(*common, "--out", split, "--resume")
    assert p.returncode == SKIPPED, p.stderr[-2000:]
    (s1, a), (s2, b) = _params(full), _params(split)
    assert s1 == s2 == 6
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    live = [torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True)["extra"].get("train_weights")
            for d in (full, split)]
    if ema == "0":
        assert live == [None, None]  # the saved model is the live model
    else:  # the saved model is the average; the live weights continue exactly too
        for k in a:
            torch.testing.assert_close(live[0][k], live[1][k], rtol=0, atol=0, msg=k)
        assert any(not torch.equal(a[k], live[0][k]) for k in a)


STREAM = ["--preset", "paper", "--backbone", "efficientnet_lite0", "--teacher", "cnn", "--benchmark", "false",
          "--batch-videos", "3", "--clip-frames", "6", "--workers", "0", "--pca-dim", "64", "--pca-videos", "4",
          "--log-every", "1", "--warmup", "1", "--lr", "1e-3", "--threads", "1", "--device", "cpu"]


def _mixed_folder(root):
    """Videos of three codecs / containers and of 3 to 10 s (clips are 6 frames at 1 fps, so the
    3 s ones are shorter than a clip), and a corrupt file."""
    import av
    import numpy as np

    codecs = [("mpeg4", "mp4"), ("mjpeg", "avi"), ("libx264", "mkv")]
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # an FFmpeg build without x264
        codecs[2] = ("mpeg4", "mkv")
    rng = np.random.default_rng(0)
    for i, (seconds, (codec, ext)) in enumerate(zip((3, 10, 8, 3, 9), codecs * 2)):
        with av.open(str(root / f"v{i}.{ext}"), "w") as c:
            st = c.add_stream(codec, rate=4)
            st.width, st.height = 64 + 16 * i, 48
            st.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            base = rng.integers(0, 256, (48, 64 + 16 * i, 3), dtype=np.uint8)
            for k in range(seconds * 4):
                img = np.roll(base, 3 * k, axis=1)  # a moving picture: frames differ
                for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
    (root / "broken.mp4").write_bytes(os.urandom(3000))


def test_paper_preset_streams_and_resumes_exactly(data, tmp_path):
    """--preset paper trains through the streaming path (fresh views decoded every step) on a
    folder of mpeg4 / mjpeg / h264 videos, some shorter than a clip, and a corrupt file; 2 steps
    + --resume to 4 equal 4 steps."""
    _, cache = data
    root = tmp_path / "videos"
    root.mkdir()
    _mixed_folder(root)
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    common = ["--data", str(root), "--cache-dir", cache, *STREAM]
    p = _train(*common, "--iterations", "4", "--out", full)
    assert p.returncode == 3, p.stderr[-2000:]  # broken.mp4 skipped
    assert "data pipeline: streaming (--pipeline streaming)" in p.stdout
    assert "videos streamed" in p.stdout and "fitting the PCA whitening" in p.stdout
    assert "broken.mp4" in p.stderr and "skipping undecodable video" in p.stderr
    assert not any(name.startswith("pool-") for name in os.listdir(cache) if "stream" in name)
    summary = json.load(open(os.path.join(full, "results.json")))
    assert [os.path.basename(x) for x in summary["skipped_videos"]] == ["broken.mp4"]
    with open(os.path.join(full, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(float(r["frame_ap"]) > 0 for r in rows)
    p = _train(*common, "--iterations", "4", "--out", split, "--stop-after", "2")
    assert p.returncode == SKIPPED and "stopped at step 2" in p.stdout, p.stderr[-2000:]
    p = _train(*common, "--iterations", "4", "--out", split, "--resume")
    assert p.returncode == SKIPPED and "resumed from" in p.stdout, p.stderr[-2000:]
    (s1, a), (s2, b) = _params(full), _params(split)
    assert s1 == s2 == 4
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # a finished run extended with a larger --iterations continues from its last step
    p = _train(*common, "--iterations", "5", "--out", split, "--resume")
    # one step whose videos all decode: nothing skipped in this run, exit 0
    assert p.returncode == 0 and "resumed from" in p.stdout and "at step 4" in p.stdout, p.stderr[-2000:]
    assert _params(split)[0] == 5


@pytest.mark.parametrize("workers", ["0", "2"])
def test_streaming_a_folder_of_broken_videos_is_one_error_line(tmp_path, workers):
    root = tmp_path / "bad"
    root.mkdir()
    for name in ("a.mp4", "b.mkv"):
        (root / name).write_bytes(os.urandom(3000))
    p = _train("--data", str(root), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
               "--iterations", "1", *STREAM, "--workers", workers)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --data {root}: ") and "no decodable video" in last
    assert not os.path.exists(tmp_path / "o" / "checkpoint.pt")


def test_auto_pipeline_streams_above_the_cache_budget(data, tmp_path):
    root, cache = data
    p = _train("--data", root, "--cache-dir", cache, "--out", str(tmp_path / "o"), "--iterations", "1",
               *STREAM, "--pipeline", "auto", "--cache-budget-gb", "0.001")
    assert p.returncode == SKIPPED, p.stderr[-2000:]
    assert "data pipeline: streaming (the cached pool of 5 videos x 4 views would take" in p.stdout  # 4 + broken
    assert "over --cache-budget-gb 0.001" in p.stdout


def replay_ranks(args, world, gather=False, steps=2):
    """The trainer's steps redone in this process: every rank's batch (each rank draws with its own
    sampler, seeded ``seed * 1_000_003 + rank``), the objective of each, one AdamW step on the mean
    of the ranks' losses (DDP averages the ranks' gradients, which is the gradient of that mean).
    With ``gather``, rank r's clips are scored against the clips of every rank, labels written out
    by hand: the rank's own block is its positives, another rank's clip of a related video is
    ignored, any other is a negative. The PCA is the run's (from its checkpoint).
    Returns (model, per-step list of each rank's loss parts, each rank's final sampler state)."""
    import random

    import torch.nn.functional as F

    from hapvr.features.pca import PCAWhitening
    from hapvr.models import VideoSimilarityModel
    from hapvr.training.data import load_or_build_pool
    from hapvr.training.schedule import lr_lambda
    from hapvr.training.batches import FeaturePool, draw_batch
    from hapvr.train import parse_config
    from hapvr.runtime import DistInfo
    from hapvr.training.batch_loss import BatchLoss, as_floats, objective_inputs

    cfg = parse_config(args)
    pool, _ = load_or_build_pool(cfg, DistInfo(), None)  # the cache exists: only loaded
    pca_state = torch.load(os.path.join(cfg.out, "checkpoint.pt"), weights_only=True)["pca"]
    pca = PCAWhitening(pca_state["mean"].shape[0], cfg.pca_dim)
    pca.load_state_dict(pca_state)
    fpool = FeaturePool(pool, pca)
    torch.manual_seed(cfg.seed)
    model = VideoSimilarityModel(cfg.pca_dim, cfg.k_s, cfg.k_t, head=cfg.head)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    objective = BatchLoss(cfg)
    samplers = [random.Random(cfg.seed * 1_000_003 + r) for r in range(world)]
    history = []
    for _ in range(steps):
        batches = [draw_batch(fpool, samplers[r], cfg.batch_videos, cfg.clip_frames, max_shift=cfg.clip_shift,
                              guests=cfg.pip_guests) for r in range(world)]
        losses, parts = [], []
        if gather:
            T = max(b.features.shape[1] for b in batches)
            everyone = torch.cat([F.pad(b.features, (0, 0, 0, 0, 0, T - b.features.shape[1])) for b in batches])
            all_lengths = torch.cat([b.lengths for b in batches])
            n = len(batches[0].lengths)
        for r, b in enumerate(batches):
            if not gather:
                out = model(b.features, query_lengths=b.lengths)
                x = objective_inputs(out, b, model.min_frames, torch.device("cpu"))
            else:
                labels = torch.zeros(n, world * n, dtype=torch.int8)
                for i in range(n):
                    for k, other in enumerate(batches):
                        for j in range(n):
                            if k == r:
                                labels[i, k * n + j] = int(b.positives[i, j])
                            elif (b.video_index[i] == other.video_index[j] or b.guests[i] == other.video_index[j]
                                  or other.guests[j] == b.video_index[i]):
                                labels[i, k * n + j] = -1
                out = model(everyone[r * n:(r + 1) * n], everyone, b.lengths, all_lengths)
                x = objective_inputs(out, b, model.min_frames, torch.device("cpu"), labels, r * n)
            loss, p = objective(x)
            losses.append(loss)
            parts.append(as_floats(p))
        optimizer.zero_grad(set_to_none=True)
        (torch.stack(losses).sum() / world).backward()
        optimizer.step()
        scheduler.step()
        history.append(parts)
    return model, history, [s.getstate() for s in samplers]


def check_against_replay(run_dir, args, gather):
    """The 2-rank run's saved weights equal the replayed 2-rank training; its log holds rank 0's
    loss parts of every step; a 1-process replay (rank 0's batches only) ends elsewhere."""
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2
    model, history, samplers = replay_ranks(args, world=2, gather=gather)
    assert [tuple(s) for s in ckpt["extra"]["rank_samplers"]] == [tuple(s) for s in samplers]  # same batches drawn
    with open(os.path.join(run_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    for row, parts in zip(rows, history):
        for name in ("loss", "frame_ap", "video_ap", "infonce", "sshn", "regularizer"):
            assert float(row[name]) == pytest.approx(parts[0][name], rel=1e-4, abs=2e-6), name
    assert history[0][0]["loss"] != pytest.approx(history[0][1]["loss"], rel=1e-3)  # the ranks' batches differ
    single, _, _ = replay_ranks(args, world=1)
    moved = 0.0
    for name, value in model.state_dict().items():
        # 2 AdamW steps of lr 1e-3 move a weight by up to ~2e-3; rounding differences stay far below
        torch.testing.assert_close(ckpt["model"][name], value, rtol=0, atol=2e-6, msg=name)
        moved = max(moved, float((single.state_dict()[name] - value).abs().max()))
    assert moved > 1e-4  # the test tells the 2-rank gradient from rank 0's alone


DDP = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hapvr.train")


def test_two_process_gloo_ddp(data, tmp_path):
    root, cache = data  # the cache exists: both ranks only load it
    args = ["--data", root, "--cache-dir", cache, "--out", str(tmp_path / "ddp"), "--iterations", "2", *TINY]
    p = _train(*args, module=DDP)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 processes" in p.stdout
    check_against_replay(str(tmp_path / "ddp"), args, gather=False)


def test_two_process_gloo_ddp_with_gathered_negatives(data, tmp_path):
    root, cache = data
    args = ["--data", root, "--cache-dir", cache, "--out", str(tmp_path / "ddp"), "--iterations", "2", *TINY,
            "--gather-negatives"]
    p = _train(*args, module=DDP)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 processes" in p.stdout and "negatives gathered from all ranks" in p.stdout
    check_against_replay(str(tmp_path / "ddp"), args, gather=True)


def test_gathered_negatives_gradient_equals_one_process_computation():
    """Two gloo ranks (tests/ddp_gather_worker.py): DDP's gradient of the gathered objective is the
    gradient of the mean of the ranks' objectives computed in one process."""
    p = _train(module=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       os.path.join(ROOT, "tests", "ddp_gather_worker.py")))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "gathered gradients match" in p.stdout


def test_pca_file_from_hapvr_pca_replaces_the_pool_fit(data, tmp_path):
    import h5py

    root, cache = data
    raw = tmp_path / "raw.hdf5"
    with h5py.File(raw, "w") as f:  # raw efficientnet_lite0 descriptors: [T, 9, 1752]
        for k in range(3):
            f.create_dataset(f"v{k}", data=torch.nn.functional.normalize(torch.randn(40, 9, 1752), dim=-1).numpy())
        f.attrs["hapvr_space"], f.attrs["backbone"] = "raw", "efficientnet_lite0"
    pca = tmp_path / "pca.pt"
    p = _train("--features", str(raw), "--output", str(pca), "--no-progress", module=("-m", "hapvr.pca"))
    assert p.returncode == 0, p.stderr[-2000:]
    p = _train("--data", root, "--cache-dir", cache, "--out", str(tmp_path / "run"), "--iterations", "2", *TINY,
               "--pca", str(pca))
    assert p.returncode == SKIPPED, p.stderr[-2000:]
    assert f"PCA whitening loaded from {pca}" in p.stdout
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    for key, value in torch.load(pca, weights_only=True)["pca"].items():
        assert torch.equal(ckpt["pca"][key], value), key
    p = _train("--data", root, "--cache-dir", cache, "--out", str(tmp_path / "o"), *TINY, "--pca", str(tmp_path / "no.pt"))
    assert p.returncode == 2 and p.stderr.strip().startswith("error: --pca ") and "no such file" in p.stderr
    assert "Traceback" not in p.stderr
    p = _train("--data", root, "--cache-dir", cache, "--out", str(tmp_path / "o"), *TINY, "--pca", str(pca),
               "--pca-dim", "256")
    assert p.returncode == 2 and "this run needs 1752 to 256" in p.stderr


def test_cli_help_and_user_errors(tmp_path):
    p = _train("--preset", "paper", "--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    for needle in ("--lr LR", "4e-05", "30000", "resnet50", "dino_vits16", "--batch-videos BATCH_VIDEOS"):
        assert needle in text, needle
    p = _train("--backbone", "resnet50", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and "--backbone-weights" in p.stderr
    assert "Traceback" not in p.stderr
    p = _train("--data", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "--data" in p.stderr and "no such folder" in p.stderr and "Traceback" not in p.stderr
    for flag, value, expected in (("--ema", "1.5", "argument --ema: must be < 1.0, got 1.5"),
                                  ("--clip-shift", "-1", "argument --clip-shift: must be >= 0, got -1"),
                                  ("--batch-videos", "1", "argument --batch-videos: must be >= 2, got 1")):
        p = _train(flag, value, "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o"))
        assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr, p.stderr[-500:]


def test_presets_paper_table_6_and_cpu_overrides():
    from hapvr.train import parse_config

    paper = parse_config(["--preset", "paper"])
    table6 = dict(lambda_f=6.0, lambda_v=4.0, lambda_s=3.0, delta_v=0.05, rho_v=0.10, delta_f=0.05, rho_f=5.0,
                  r_t=0.35, r_b=0.35, tau=0.03, k_s=0.10, k_t=0.03, lr=4e-5, weight_decay=1e-2, warmup=1000,
                  iterations=30000, batch_videos=64, clip_frames=28)
    assert {k: getattr(paper, k) for k in table6} == table6
    # the release's choices where the paper is silent
    release = dict(frame_self_pairs=True, warmup_from=0.01, lr_floor=0.1, lambda_nce=1.0, lambda_reg=1.0,
                   video_loss="quadlinear_ap", clip_frames=28)
    assert {k: getattr(paper, k) for k in release} == release
    assert (paper.head, paper.select_on, paper.benchmark_set) == ("visil", "none", "builtin")
    cpu = parse_config([])
    assert cpu.lambda_f == 10.0 and cpu.iterations == 600 and cpu.batch_videos == 8
    # the CPU preset's model and data (docs/train.md, judged on the validation benchmark)
    assert (cpu.head, cpu.select_on, cpu.benchmark_set, cpu.teacher, cpu.lr) == ("residual", "validation", "test", "cnn", 6e-3)
    assert (cpu.lambda_u, cpu.select_every, paper.lambda_u) == (10.0, 50, 0.0)  # the pooled AP term: hapvr's
    from hapvr.training.config import restarts

    assert (restarts(cpu), restarts(paper)) == (3, 1)  # three rounds of 200 steps on the CPU
    assert restarts(parse_config(["--select-on", "none"])) == restarts(parse_config(["--data", "videos"])) == 1
    assert restarts(parse_config(["--data", "videos", "--restarts", "2"])) == 2
    from hapvr.training.config import train_renders

    assert train_renders(cpu) == 24 and train_renders(paper) == 0
    assert train_renders(parse_config(["--data", "videos"])) == 0  # rendered worlds only join the built-in corpus
    assert train_renders(parse_config(["--train-renders", "5"])) == 5
    from hapvr.training.config import DEFAULT_SIBLINGS, sibling_videos

    assert sibling_videos(cpu) == DEFAULT_SIBLINGS and sibling_videos(paper) == 0
    assert sibling_videos(parse_config(["--data", "videos"])) == 0  # siblings are filmed in the built-in corpus only
    assert sibling_videos(parse_config(["--sibling-videos", "3"])) == 3
    assert parse_config(["--preset", "paper", "--lambda-f", "2"]).lambda_f == 2.0  # flags beat presets


def test_objective_settings_have_one_source():
    """Every objective setting is a training option of the same name whose paper preset is the
    objective's own default; the trainer's objective is built from them with nothing renamed."""
    import dataclasses

    from hapvr.losses import HAPVRObjectiveConfig
    from hapvr.train import parse_config
    from hapvr.training.config import NOT_TRAINING_OPTIONS, TrainConfig, objective_config
    from hapvr.training.batch_loss import BatchLoss

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    paper = parse_config(["--preset", "paper"])
    for f in dataclasses.fields(HAPVRObjectiveConfig):
        if f.name in NOT_TRAINING_OPTIONS:
            continue
        assert f.name in train_fields, f.name
        assert getattr(paper, f.name) == f.default, f.name
    cfg = parse_config(["--lambda-reg", "0.5", "--rho-f", "4", "--video-loss", "adaptive_margin", "--am-scale", "2"])
    built = BatchLoss(cfg).objective.config
    assert built == objective_config(cfg)
    assert (built.lambda_reg, built.rho_f, built.video_loss, built.am_scale, built.lambda_f) == \
        (0.5, 4.0, "adaptive_margin", 2.0, 10.0)


def test_learning_rate_schedule_is_the_releases():
    """Warm-up from 0.01 lr to lr, then a cosine down to 0.1 lr at the last step."""
    from hapvr.training.schedule import lr_lambda
    from hapvr.training.config import TrainConfig

    f = lr_lambda(TrainConfig(iterations=110, warmup=10, restarts=1))
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    steps = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # decays monotonically
    g = lr_lambda(TrainConfig(iterations=10, warmup=0, lr_floor=0.0, restarts=1))
    assert g(0) == 1.0 and g(10) == pytest.approx(0.0, abs=1e-12)


def test_restarts_give_every_round_its_own_schedule():
    """--restarts 3 over 30 steps: three rounds of 10 steps, each with the warm-up and cosine of a
    10-step run; past the end the last round's floor."""
    from hapvr.training.schedule import lr_lambda, round_length
    from hapvr.training.config import TrainConfig

    one = lr_lambda(TrainConfig(iterations=10, warmup=3, restarts=1))
    three = lr_lambda(TrainConfig(iterations=30, warmup=3, restarts=3))
    assert round_length(TrainConfig(iterations=30, restarts=3)) == 10
    for r in range(3):
        assert [three(10 * r + i) for i in range(10)] == pytest.approx([one(i) for i in range(10)])
    assert three(30) == three(45) == pytest.approx(0.1)
    # uneven: 7 steps in 2 rounds of 4 and 3, the second its own (shorter) cosine
    uneven, short = lr_lambda(TrainConfig(iterations=7, warmup=1, restarts=2)), lr_lambda(TrainConfig(iterations=3, warmup=1, restarts=1))
    assert [uneven(4 + i) for i in range(3)] == pytest.approx([short(i) for i in range(3)])
    assert uneven(7) == uneven(9) == pytest.approx(0.1)


def test_restart_starts_from_fresh_weights_and_optimiser(data, tmp_path):
    """A new round loads a fresh initialisation of its own seed (the residual head's, so the
    Chamfer baseline again) and empties AdamW's moments; the global generator is left alone."""
    from hapvr.training import trainer as train
    from hapvr.train import parse_config

    root, cache = data
    cfg = parse_config(["--data", root, "--cache-dir", cache, "--out", str(tmp_path / "run"), "--iterations", "4",
                        *TINY, "--head", "residual"])
    cfg.restarts = 2  # two rounds of 2 steps (without the validation set --select-on would need here)
    s = train.setup(cfg)
    first = {k: v.clone() for k, v in s.model.state_dict().items()}
    train.train_step(s, s.batches.next())
    assert s.optimizer.state and any(not torch.equal(first[k], v) for k, v in s.model.state_dict().items())
    rng = torch.get_rng_state()
    train.restart(s, 2)
    assert torch.equal(torch.get_rng_state(), rng) and not s.optimizer.state
    again = train.new_model(cfg, 1).state_dict()
    for k, v in s.model.state_dict().items():
        torch.testing.assert_close(v, again[k], rtol=0, atol=0, msg=k)
    assert torch.count_nonzero(again["comparator.fconv.weight"]) == 0  # psi's last layer: the baseline again
    assert any(not torch.equal(first[k], again[k]) for k in first)  # another initialisation than round 1's


def test_a_training_step_reads_the_device_at_most_once(data, tmp_path):
    """Host reads (``.item()``, ``nonzero``, ``bool(tensor)``...) in one training step, counted at the
    dispatcher on CPU tensors (the calls are the same on a GPU, where each one waits for the device):
    the forward, the objective (the frame level's pairs found on the host) and the backward read
    nothing; the loss parts stay on the device until a logged step. AdamW's own reads of its
    step counters (host tensors, no device wait) are not counted."""
    from dispatch_probe import OpLog
    from hapvr.train import parse_config
    from hapvr.training import trainer as train
    from hapvr.training.batch_loss import as_floats

    root, cache = data
    cfg = parse_config(["--data", root, "--cache-dir", cache, "--out", str(tmp_path / "run"), "--iterations", "4",
                        *TINY])
    s = train.setup(cfg)
    train.train_step(s, s.batches.next())  # lazy state (AdamW's moments) made outside the count
    log = OpLog()
    step = s.optimizer.step

    def unlogged_step(*args, **kwargs):
        with log.paused():
            return step(*args, **kwargs)

    s.optimizer.step = unlogged_step
    batch = s.batches.next()
    with log:
        parts = train.train_step(s, batch)
    assert log.host_reads() == [], log.host_reads()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in parts.values())
    log.calls.clear()
    with log:
        values = as_floats(parts)  # what a logged step reads: one read for every part
    assert log.host_reads() == ["aten::tolist"] and values["loss"] > 0


def test_seed_offset_moves_the_initialisation_and_the_sampler_only(data, tmp_path):
    """--seed-offset k: the model starts from seed + k and the batch sampler from its seed + k;
    the cached pool (keyed on --seed) is the same one."""
    import random

    from hapvr.training import trainer as train
    from hapvr.training.config import init_seed, sampler_seed
    from hapvr.train import parse_config

    root, cache = data
    args = ["--data", root, "--cache-dir", cache, "--iterations", "2", *TINY, "--head", "visil"]
    plain = train.setup(parse_config([*args, "--out", str(tmp_path / "a")]))
    moved = train.setup(parse_config([*args, "--out", str(tmp_path / "b"), "--seed-offset", "17"]))
    assert (init_seed(moved.cfg), sampler_seed(moved.cfg)) == (init_seed(plain.cfg) + 17, sampler_seed(plain.cfg) + 17)
    torch.manual_seed(17)
    expected = train.new_model(moved.cfg).state_dict()
    for k, v in moved.model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(v, plain.model.state_dict()[k]) for k, v in moved.model.state_dict().items())
    assert moved.sampler.getstate() == random.Random(sampler_seed(moved.cfg)).getstate()
    assert torch.equal(moved.batches.pool.features, plain.batches.pool.features)  # the same cached views


def test_selection_on_validation_keeps_the_best_weights_and_resumes(data, tmp_path, monkeypatch):
    """--select-on validation scores the model at step 0, every --select-every steps and at the
    end on a (here 4 + 6 photo query) validation benchmark; the checkpoint's model is the best-scored
    weights, the live weights continue, and a resumed run selects exactly as an unbroken one."""
    from hapvr.training import trainer as train
    from hapvr.data import corpus
    from hapvr.train import parse_config
    from hapvr.training.selection import selection_score

    monkeypatch.setattr(corpus, "VALIDATION_QUERIES", 4)
    root, _ = data
    cache = str(tmp_path / "cache")  # its own cache: the 4-query validation set is keyed like the full one
    common = ["--data", root, "--cache-dir", cache, "--iterations", "5", *TINY, "--head", "residual", "--select-on",
              "validation", "--select-every", "2"]
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train.run(parse_config([*common, "--out", full]))
    ckpt = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=True)
    sel = ckpt["extra"]["selection"]
    assert [row["step"] for row in sel["history"]] == [0, 2, 4, 5]
    best = max(sel["history"], key=lambda r: r["score"])
    assert sel["best_step"] == best["step"] and abs(100 * sel["best_score"] - best["score"]) < 1e-3
    # step 0 of the residual head is the Chamfer baseline: its row is the baseline's score
    s = train.setup(parse_config([*common, "--out", str(tmp_path / "probe"), "--iterations", "1"]))
    from hapvr.evaluation.levels import evaluate_model

    base = selection_score(evaluate_model(s.baseline, s.selection.features, s.selection.queries, s.selection.labels))
    assert abs(100 * base - sel["history"][0]["score"]) < 1e-3
    # the saved model is the selected weights, the live ones are kept for --resume
    live = ckpt["extra"]["train_weights"]
    if sel["best_step"] != 5:
        assert any(not torch.equal(ckpt["model"][k], live[k]) for k in live)
    p = _train(*common, "--out", split, "--stop-after", "3")
    assert p.returncode == SKIPPED and "stopped at step 3" in p.stdout, p.stderr[-2000:]
    p = _train(*common, "--out", split, "--resume")
    assert p.returncode == SKIPPED, p.stderr[-2000:]
    # without a test benchmark (--benchmark false) the run still prints and keeps its validation history
    assert "model selection on the validation benchmark" in p.stdout and "<- selected" in p.stdout
    with open(os.path.join(split, "results.txt")) as f:
        assert "<- selected" in f.read()
    with open(os.path.join(split, "results.json")) as f:
        assert json.load(f)["selection"]["best_step"] == sel["best_step"]
    again = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert again["extra"]["selection"] == sel
    for k in ckpt["model"]:
        torch.testing.assert_close(again["model"][k], ckpt["model"][k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(again["extra"]["train_weights"][k], live[k], rtol=0, atol=0, msg=k)


def test_restarts_select_over_rounds_and_resume_across_a_boundary(data, tmp_path, monkeypatch, capsys):
    """--restarts 2 over 5 steps (rounds of 3 and 2): the validation benchmark scores the end of
    each round too; a run stopped at the boundary and resumed selects and ends exactly as an
    unbroken one (the new round starts after the resume)."""
    from hapvr.training import trainer as train
    from hapvr.data import corpus
    from hapvr.train import parse_config

    monkeypatch.setattr(corpus, "VALIDATION_QUERIES", 4)
    root, _ = data
    cache = str(tmp_path / "cache")
    common = ["--data", root, "--cache-dir", cache, "--iterations", "5", *TINY, "--head", "residual", "--select-on",
              "validation", "--select-every", "2", "--restarts", "2"]
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train.run(parse_config([*common, "--out", full]))
    assert "round 2 of 2 at step 3" in capsys.readouterr().out
    ckpt = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=True)
    assert [row["step"] for row in ckpt["extra"]["selection"]["history"]] == [0, 2, 3, 4, 5]
    train.run(parse_config([*common, "--out", split, "--stop-after", "3"]))
    assert "round 2" not in capsys.readouterr().out
    train.run(parse_config([*common, "--out", split, "--resume"]))
    out = capsys.readouterr().out
    assert "round 2 of 2 at step 3" in out and "model selection on the validation benchmark" in out
    again = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert again["extra"]["selection"] == ckpt["extra"]["selection"]
    for k in ckpt["model"]:
        torch.testing.assert_close(again["model"][k], ckpt["model"][k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(again["extra"]["train_weights"][k], ckpt["extra"]["train_weights"][k], rtol=0,
                                   atol=0, msg=k)
    # another --iterations would move the rounds' boundaries: --resume refuses it
    from hapvr.errors import InputError as UserError

    with pytest.raises(UserError, match="--iterations"):
        train.run(parse_config([*common, "--out", split, "--resume", "--iterations", "8"]))


def test_resume_refuses_another_head(data, tmp_path):
    """Both heads have the same parameter names, so a checkpoint of one would load into the other
    without an error: --resume names the mismatch instead."""
    root, cache = data
    out = str(tmp_path / "run")
    common = ["--data", root, "--cache-dir", cache, "--out", out, "--iterations", "2", *TINY]
    p = _train(*common, "--head", "visil", "--stop-after", "1")
    assert p.returncode == SKIPPED, p.stderr[-2000:]
    p = _train(*common, "--resume")  # the CPU preset's head is residual
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "--resume" in p.stderr and "--head visil" in p.stderr
    p = _train(*common, "--head", "visil", "--resume")
    assert p.returncode == SKIPPED, p.stderr[-2000:]


def test_resume_refuses_another_pip_guests_setting():
    """--pip-guests changes the batches a step draws: --resume of a run with the other setting (or
    of one written before the option existed, which drew guests by chance) names it instead of
    continuing on other batches."""
    from hapvr.errors import InputError as UserError
    from hapvr.training.resume import check_resumed_model as _check_resumed_model
    from hapvr.train import parse_config

    saved = {"head": "residual", "pca_dim": 512, "k_s": 0.1, "k_t": 0.03, "restarts": 1, "iterations": 600}
    cfg = parse_config(["--restarts", "1"])
    assert cfg.pip_guests
    for old in (saved, {**saved, "pip_guests": False}):
        with pytest.raises(UserError, match="trained with --pip-guests false, this run asks for true; pass "
                                            "--pip-guests false"):
            _check_resumed_model(cfg, old, "run/checkpoint.pt")
        _check_resumed_model(parse_config(["--restarts", "1", "--pip-guests", "false"]), old, "run/checkpoint.pt")
    _check_resumed_model(cfg, {**saved, "pip_guests": True}, "run/checkpoint.pt")


def test_all_similarities_in_length_chunks_equal_one_pair_at_a_time():
    """The benchmark scorer takes queries and database by length, in chunks padded to their own
    longest video: every score equals the model's single-pair similarity."""
    from hapvr.models import VideoSimilarityModel
    from hapvr.evaluation.levels import all_similarities

    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    lengths = torch.randint(1, 30, (11,), generator=g).tolist()
    feats = {f"v{i}": torch.nn.functional.normalize(torch.randn(n, 9, 16, generator=g), dim=-1)
             for i, n in enumerate(lengths)}
    for head in ("residual", "visil"):
        m = VideoSimilarityModel(16, head=head)
        for p in m.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
        queries, database = ["v3", "v0", "v7"], sorted(feats)
        sims = all_similarities(m, feats, queries, database, query_chunk=2, db_chunk=3)
        assert list(sims) == queries and all(list(sims[q]) == database for q in queries)
        for q in queries:
            for t in database:
                assert sims[q][t] == pytest.approx(m.similarity(feats[q], feats[t]), abs=1e-5), (head, q, t)


def test_the_report_counts_copies_found_at_each_models_threshold():
    from types import SimpleNamespace as NS

    from hapvr.models import VideoSimilarityModel
    from hapvr.models.scales import scale_of
    from hapvr.training.report import _found_table

    baseline, trained = VideoSimilarityModel.baseline(16, 0.1, 0.03), VideoSimilarityModel(16, head="residual")
    tb, tt = scale_of(baseline).threshold, scale_of(trained).threshold
    sims = {"baseline": {"q": {"a": tb + 0.01, "b": tb - 0.01, "x": tb + 0.2}},
            "trained": {"q": {"a": tt + 0.01, "b": tt + 0.01, "x": tt - 0.2}}}
    bench = NS(copies=[NS(query="q", target="a", kind="re-edit"), NS(query="q", target="b", kind="picture-in-picture")],
               labels={"q": {"DS": ["a", "b"]}})
    lines = _found_table(NS(baseline=baseline, bench=bench), trained, sims).splitlines()
    assert lines[1].split()[-6:] == ["baseline", ">=", f"{tb:g}", "trained", ">=", f"{tt:g}"]
    assert lines[2].split() == ["re-edit", "1", "1", "1"]
    assert lines[3].split() == ["picture-in-picture", "1", "0", "1"]
    assert lines[4].split()[-3:] == ["1", "1", "0"]  # one unrelated pair; the baseline calls it a copy
