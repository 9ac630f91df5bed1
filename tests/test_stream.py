"""The streaming data path: decoded windows, fresh views, in-batch video-in-video, determinism
across workers and resumes, skipped files, and the trainer's Batch out of the frozen networks."""

import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from hapvr.data.augment import AugmentConfig
from hapvr.data.video import decode_samples, decode_video, expected_samples, list_videos, load_frame_folder
from hapvr.training import stream

torch.set_num_threads(1)
CLIP = 6
SMALL = dict(size=64)  # views at 64 px keep the tests fast; the network test uses 224


def _write(path, codec, seconds, fps=5, size=(64, 48)):
    """Each 1 s of video has its own grey level (so a decoded sample says which second it shows)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = size
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(seconds * fps):
            img = np.full((size[1], size[0], 3), 16 + 12 * (i // fps), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _h264():
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:
        return "mpeg4"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Mixed codecs and lengths at 1 fps: 14, 9 and 7 samples, and 3 and 1 (shorter than a clip),
    plus a corrupt file."""
    root = tmp_path_factory.mktemp("stream")
    _write(root / "a_long.mp4", "mpeg4", 14)
    _write(root / "b_h264.mkv", _h264(), 9)
    _write(root / "c_mjpeg.avi", "mjpeg", 3)
    _write(root / "d_one.mp4", "mpeg4", 1)
    _write(root / "e_mid.mp4", "mpeg4", 7)
    (root / "f_corrupt.mp4").write_bytes(os.urandom(4096))
    shots = root / "g_frames"  # a folder of frames is a video too
    shots.mkdir()
    for i in range(8):
        Image.fromarray(np.full((48, 64, 3), 16 + 12 * i, dtype=np.uint8)).save(shots / f"{i:03d}.png")
    return list_videos(str(root))


def _good(paths):
    return [p for p in paths if "corrupt" not in p]


def _frames(path):
    return load_frame_folder(path) if os.path.isdir(path) else decode_video(path)


def _clip_batches(paths, steps, start=0, workers=0, batch=3, **aug):
    """The ClipBatch of steps ``start`` to ``steps - 1`` (seed 5), views at 64 px."""
    sampler = stream.StepSampler(len(paths), batch, seed=5, start_step=start, steps=steps)
    ds = stream.ClipDataset(paths, clip_frames=CLIP, seed=5, aug=AugmentConfig(**{**SMALL, **aug}))
    return list(stream.clip_loader(ds, sampler, workers))


# --- decoding only what a clip needs ------------------------------------------------------------


def test_decode_samples_keeps_the_chosen_samples_of_decode_video(folder):
    for path in [p for p in _good(folder) if not os.path.isdir(p)]:
        full = decode_video(path)
        assert expected_samples(path) == full.shape[0]  # the plan from the declared duration is exact here
        keep = {0, full.shape[0] - 1}
        images, count = decode_samples(path, keep=keep)
        assert count == full.shape[0] and sorted(images) == sorted(keep)
        for k, im in images.items():
            assert torch.equal(torch.from_numpy(np.array(im)).permute(2, 0, 1), full[k])
        _, count = decode_samples(path, keep=(), max_frames=1)
        assert count == 1


def test_a_file_holding_fewer_samples_than_it_declares_is_planned_again(tmp_path):
    """A cut AVI keeps its header's frame count: the windows planned on it are drawn again on the
    samples the decoder really finds, and the truncation is reported."""
    _write(tmp_path / "full.avi", "mjpeg", 10)
    data = (tmp_path / "full.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    real = decode_video(str(cut)).shape[0]
    assert expected_samples(str(cut)) == 10 and real < 10
    ds = stream.ClipDataset([str(cut)], clip_frames=4, aug=AugmentConfig(**SMALL))
    replanned = 0
    for step in range(12):
        clips = ds[stream.ClipKey(step, 0, 0, (0,))]
        assert int(clips.source.max()) < real and len(clips.weak_rows) == 4
        weak, strong = stream.plan_windows(10, 4, ds.clip_shift, stream.step_rng(0, "window", step, 0, 0))
        again = max(weak + strong) >= real
        # only a decoding that runs into the cut finds it (one that ends before it has no reason to)
        assert bool(clips.warnings) == again and all(w.startswith("truncated") for _, w in clips.warnings)
        replanned += again
    assert replanned  # some steps needed the second plan


# --- windows and steps --------------------------------------------------------------------------


def test_short_videos_are_looped_to_a_clip_as_the_release_does():
    rng = random.Random(0)
    for n in (1, 3, 5):
        for _ in range(20):
            weak, strong = stream.plan_windows(n, 8, 0.25, rng)
            assert len(weak) == len(strong) == 8
            assert all((b - a) % n == 1 % n for a, b in zip(weak, weak[1:]))  # consecutive in the looped video
    for _ in range(50):  # long videos: windows anywhere, the strong one within 2 samples of the weak one
        weak, strong = stream.plan_windows(40, 8, 0.25, rng)
        assert weak == list(range(weak[0], weak[0] + 8)) and strong == list(range(strong[0], strong[0] + 8))
        assert abs(strong[0] - weak[0]) <= 2


def test_the_videos_of_a_step_are_a_function_of_seed_step_and_rank():
    V, B = 10, 3
    a = stream.StepSampler(V, B, seed=1)
    b = stream.StepSampler(V, B, seed=1)
    steps = [a.videos(s) for s in range(9)]
    assert [b.videos(s) for s in reversed(range(9))] == steps[::-1]  # no state: any order, any instance
    assert all(len(set(v)) == B for v in steps)
    for e in range(3):  # an epoch is 3 batches of a permutation: 9 distinct videos
        assert len({x for v in steps[3 * e:3 * e + 3] for x in v}) == 9
    assert any(stream.StepSampler(V, B, seed=2).videos(s) != steps[s] for s in range(3))
    r0, r1 = stream.StepSampler(V, B, seed=1, rank=0, world=2), stream.StepSampler(V, B, seed=1, rank=1, world=2)
    assert not set(r0.videos(0)) & set(r1.videos(0))  # DDP ranks share an epoch, never a video
    resumed = list(stream.StepSampler(V, B, seed=1, start_step=4, steps=7))
    assert [[k.video for k in keys] for keys in resumed] == steps[4:7]
    assert len(stream.StepSampler(V, B, start_step=4, steps=7)) == 3


# --- the clips of a step ------------------------------------------------------------------------


@pytest.mark.parametrize("edit", ["none", "reverse", "fast_forward", "slow_motion"])
def test_strong_clip_shows_its_window_through_the_temporal_edit(folder, edit):
    paths = _good(folder)
    (cb,) = _clip_batches(paths, 1, temporal_edits={edit: 1.0}, p_mixup=0.0)
    for v in cb.videos:
        weak = v.source[v.weak_rows].tolist()
        shown = v.strong_source.tolist()
        assert v.edit == edit and len(weak) == CLIP
        full = _frames(paths[v.video])
        n = full.shape[0]
        window = {"none": shown, "reverse": shown[::-1], "fast_forward": None, "slow_motion": shown[::2]}[edit]
        if edit == "fast_forward":
            assert len(shown) == math.ceil(CLIP / 2)
            assert all((b - a) % n == 2 % n for a, b in zip(shown, shown[1:]))
        else:
            assert len(shown) == CLIP
            if edit == "slow_motion":
                assert shown[1::2] == shown[::2] and len(window) == CLIP // 2
            else:
                assert all((b - a) % n == 1 % n for a, b in zip(window, window[1:]))
        if n >= CLIP:  # the strong window is at most int(0.25 * CLIP) = 1 sample from the weak one
            first = shown[-1] if edit == "reverse" else shown[0]
            assert abs(first - weak[0]) <= 1
        # the weak clip's pixels are the decoded samples it names (uniform grey frames survive the crop)
        got = v.anchor[v.weak_rows].float().mean((1, 2, 3))
        assert torch.allclose(got, full.float().mean((1, 2, 3))[weak], atol=1.5)
    assert cb.lengths.tolist() == [n for v in cb.videos for n in (CLIP, v.strong.shape[0])]


def test_video_in_video_guest_is_in_the_batch_and_a_positive(folder):
    paths = _good(folder)
    (mixed,) = _clip_batches(paths, 1, batch=4, p_mixup=1.0)
    (plain,) = _clip_batches(paths, 1, batch=4, p_mixup=0.0)
    ids = mixed.video_index.tolist()
    vids = ids[::2]
    guests = mixed.guests.tolist()
    assert guests[::2] == [-1] * 4 and plain.guests.tolist() == [-1] * 8
    pos = mixed.positives
    for i, v in enumerate(vids):
        g = guests[2 * i + 1]
        assert g in vids and g != v  # the guest is another video of the same batch
        j = vids.index(g)
        assert pos[2 * i + 1, 2 * j] and pos[2 * i + 1, 2 * j + 1] and pos[2 * j, 2 * i + 1]
        assert pos[2 * i, 2 * i + 1] and not pos[2 * i, 2 * j]  # weak clips are nobody's guests
        # pasted into a rectangle, the same in every frame: the rest of the strong view is unchanged
        diff = (mixed.videos[i].strong != plain.videos[i].strong).any(1).any(0)
        rows, cols = diff.any(1).nonzero(), diff.any(0).nonzero()
        assert diff.any() and diff.float().mean() < 0.5
        assert not diff[:int(rows.min())].any() and not diff[:, :int(cols.min())].any()
        assert torch.equal(mixed.videos[i].anchor, plain.videos[i].anchor)
    expected = torch.tensor([[a == b or guests[x] == b or guests[y] == a for y, b in enumerate(ids)]
                             for x, a in enumerate(ids)])
    assert torch.equal(pos, expected) and pos.diagonal().all()


def test_corrupt_video_is_skipped_reported_and_replaced_deterministically(folder):
    paths = folder
    bad = next(i for i, p in enumerate(paths) if "corrupt" in p)
    sampler = stream.StepSampler(len(paths), 3, seed=5)
    step = next(s for s in range(20) if bad in sampler.videos(s))
    runs = [_clip_batches(paths, step + 1, start=step) for _ in range(2)]
    (cb,), (again,) = runs
    assert [os.path.basename(p) for p, _ in cb.skipped] == ["f_corrupt.mp4"]
    vids = cb.video_index.tolist()[::2]
    assert bad not in vids and len(set(vids)) == 3  # replaced by a video from outside the batch
    assert set(vids) - set(sampler.videos(step))
    assert vids == again.video_index.tolist()[::2]
    # StreamingBatches logs it once, however often it is met
    log = []
    skipped, truncated = {}, {}
    for _ in range(2):
        stream.report(cb, skipped, truncated, log.append)
    assert list(skipped) == [paths[bad]] and len(log) == 1 and "f_corrupt.mp4" in log[0]


def _same(a: stream.ClipBatch, b: stream.ClipBatch):
    assert a.step == b.step
    for name in ("lengths", "positives", "video_index", "guests"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for x, y in zip(a.videos, b.videos):
        for name in ("anchor", "source", "weak_rows", "strong", "strong_source", "strong_rows"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
        assert x.edit == y.edit


def test_batches_are_the_same_for_any_workers_and_after_a_resume(folder):
    serial = _clip_batches(folder, 4, workers=0)
    parallel = _clip_batches(folder, 4, workers=2)
    resumed = _clip_batches(folder, 4, start=3, workers=0)
    assert [b.step for b in serial] == [0, 1, 2, 3] and [b.step for b in resumed] == [3]
    for a, b in zip(serial, parallel):
        _same(a, b)
    _same(serial[3], resumed[0])
    assert not torch.equal(serial[0].videos[0].anchor, serial[1].videos[0].anchor)  # fresh every step


# --- the trainer's Batch ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def networks():
    from hapvr.features import RegionFeatureExtractor, Teacher

    extractor = RegionFeatureExtractor("efficientnet_lite0", None, out_dim=32)
    return extractor, Teacher("cnn", backbone=extractor)


@pytest.mark.parametrize("teacher_all_views", [False, True])
def test_streaming_batches_feed_the_training_step(folder, networks, teacher_all_views):
    from hapvr.models import VideoSimilarityModel
    from hapvr.training.config import TrainConfig
    from hapvr.training.batch_loss import BatchLoss, objective_inputs

    extractor, teacher = networks
    log = []
    sample = stream.pca_sample(folder, extractor, max_videos=6, clip_frames=4, seed=1, log=log.append)
    # the distinct weak samples of every good video (4 + 4 + 3 + 1 + 4), and a replacement for the corrupt one
    assert sample.shape[1:] == (9, extractor.in_dim) and sample.shape[0] >= 16
    assert any("f_corrupt.mp4" in m for m in log)
    extractor.fit_pca(sample)
    batches = stream.StreamingBatches(folder, extractor, teacher, batch_videos=3, clip_frames=4, seed=2,
                                      steps=1, teacher_all_views=teacher_all_views, log=log.append)
    clips = next(batches.clip_batches())
    batch = stream.batch_from_clips(clips, batches.nets, teacher_all_views)
    n = batch.lengths
    T = int(n.max())
    assert batch.features.shape == (6, T, 9, 32) and batch.teacher.shape == (6, T, teacher.dim)
    assert batch.positives.shape == (6, 6) and batch.video_index.shape == batch.guests.shape == (6,)
    valid = torch.arange(T)[None, :] < n[:, None]
    torch.testing.assert_close(batch.features[valid].norm(dim=-1), torch.ones(int(n.sum()), 9))
    torch.testing.assert_close(batch.teacher[valid].norm(dim=-1), torch.ones(int(n.sum())))
    assert not batch.features[~valid].any() and not batch.teacher[~valid].any()
    for i, v in enumerate(clips.videos):  # the same numbers as the networks on each clip alone
        weak = v.anchor[v.weak_rows]
        torch.testing.assert_close(batch.features[2 * i, :4], extractor(weak.float()), atol=1e-4, rtol=1e-4)
        Ls = v.strong.shape[0]
        torch.testing.assert_close(batch.features[2 * i + 1, :Ls], extractor(v.strong.float()), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batch.teacher[2 * i, :4], teacher(weak.float()), atol=1e-4, rtol=1e-4)
        strong_t = teacher(v.strong.float()) if teacher_all_views else teacher(v.anchor[v.strong_rows].float())
        torch.testing.assert_close(batch.teacher[2 * i + 1, :Ls], strong_t, atol=1e-4, rtol=1e-4)
    # the trainer's step runs on it unchanged
    cfg = TrainConfig()
    model = VideoSimilarityModel(32, cfg.k_s, cfg.k_t)
    out = model(batch.features, query_lengths=batch.lengths)
    loss, parts = BatchLoss(cfg)(objective_inputs(out, batch, model.min_frames, torch.device("cpu")))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert set(batches.seconds) >= {"decode", "augment", "wait"} and batches.nets.seconds["backbone"] > 0


def test_cached_pool_size_estimate():
    assert stream.cached_pool_bytes(10, 4, 32, 1752, 384) == 10 * 4 * 32 * (9 * 1752 + 384) * 2
    assert stream.cached_pool_bytes(1, 1, 1, 8, 2, half=False, whitened_dim=4) == (72 + 2) * 4 + (36 + 2) * 4
    paper = stream.cached_pool_bytes(100_000, 4, 64, 3840, 384)
    assert 1.7e12 < paper < 1.9e12
